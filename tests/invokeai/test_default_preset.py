"""`dype invokeai install --default-preset off`: the FLUX.2 and Z-Image nodes InvokeAI then loads default to off.

The nodes are defined once per process, so the pack is loaded by InvokeAI's own loader in a fresh Python.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dype.cli import main as dype_main
from dype.pack_settings import set_default_preset
from tests.cli_helpers import run_python

LOAD_AND_REPORT = textwrap.dedent(
    """
    import json, logging, sys
    from dype._torchvision_compat import import_torchvision
    import_torchvision()
    import invokeai.app.invocations  # the core nodes, as at InvokeAI's startup
    from invokeai.app.invocations.baseinvocation import InvocationRegistry
    from invokeai.app.invocations.load_custom_nodes import load_custom_nodes
    from pathlib import Path
    load_custom_nodes(Path(sys.argv[1]), logging.getLogger("test"))
    report = {}
    for node_type in ("flux2_denoise", "z_image_denoise", "flux_denoise"):
        node = InvocationRegistry.get_invocation_for_type(node_type)
        report[node_type] = [node.__module__, node.model_fields["dype_preset"].default]
    print(json.dumps(report))
    """
)


def test_install_default_preset_off_reaches_the_nodes(tmp_path: Path) -> None:
    (tmp_path / "invokeai.yaml").write_text("schema_version: 4.0.2\n")
    assert dype_main(["invokeai", "install", "--root", str(tmp_path), "--default-preset", "off"]) == 0
    init = (tmp_path / "nodes" / "dype_flux_pack" / "__init__.py").read_text()
    assert 'set_default_preset("off")' in init
    result = run_python("-c", LOAD_AND_REPORT, str(tmp_path / "nodes"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["flux2_denoise"] == ["dype.invokeai.flux2_denoise", "off"]
    assert report["z_image_denoise"] == ["dype.invokeai.z_image_denoise", "off"]
    assert report["flux_denoise"] == ["dype.invokeai.flux_denoise", "off"]  # FLUX.1's default is off anyway


def test_default_preset_choices_are_checked(tmp_path: Path, capsys) -> None:
    (tmp_path / "invokeai.yaml").write_text("schema_version: 4.0.2\n")
    with pytest.raises(SystemExit) as exit_info:
        dype_main(["invokeai", "install", "--root", str(tmp_path), "--default-preset", "4k"])
    assert exit_info.value.code == 2 and "invalid choice: '4k'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="default_preset must be one of auto, off"):
        set_default_preset("manual")
