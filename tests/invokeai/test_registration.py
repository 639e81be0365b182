"""The pack as InvokeAI sees it: loaded from a root's nodes/ folder, registered, in the schema, validated."""

from __future__ import annotations

import logging
import sys

import pytest
from invokeai.app.invocations.baseinvocation import InvocationRegistry
from invokeai.app.invocations.load_custom_nodes import load_custom_nodes
from pydantic import ValidationError

import dype.invokeai
from dype.cli import main as dype_main
from dype.cli.invokeai import PACK_NAME, install_pack, nodes_dir, pack_status, uninstall_pack

NEW_FIELDS = ("dype_preset", "dype_scale", "dype_exponent", "dype_method", "dype_shift")


@pytest.fixture
def invokeai_root(tmp_path, monkeypatch):
    (tmp_path / "invokeai.yaml").write_text("# Internal metadata - do not edit:\nschema_version: 4.0.2\n")
    monkeypatch.setenv("INVOKEAI_ROOT", str(tmp_path))
    return tmp_path


def test_load_custom_nodes_picks_the_pack_up(invokeai_root, core_class, dype_class):
    assert dype_main(["invokeai", "install", "--root", str(invokeai_root)]) == 0
    InvocationRegistry.register_invocation(core_class)  # a fresh server: the core node is registered
    try:
        for _ in range(2):  # startup, then "reload custom nodes" re-executes the pack's __init__.py
            load_custom_nodes(invokeai_root / "nodes", logging.getLogger("test"))
            assert PACK_NAME in sys.modules
            assert InvocationRegistry.get_invocation_for_type("flux_denoise") is dype_class
    finally:
        sys.modules.pop(PACK_NAME, None)
        InvocationRegistry.unregister_pack(PACK_NAME)  # as the Nodes tab's Uninstall: the pack lets go
        dype.invokeai.register()
    assert dype_class.UIConfig.version == "4.7.0" and dype_class.UIConfig.title == "FLUX Denoise"
    assert issubclass(dype_class, core_class)


def test_openapi_schema_shows_the_new_fields(dype_class):
    from invokeai.app.api_app import app

    app.openapi_schema = None
    schema = app.openapi()["components"]["schemas"]["FluxDenoiseInvocation"]
    properties = schema["properties"]
    assert schema["version"] == "4.7.0" and schema["title"] == "FLUX Denoise"
    assert properties["type"]["default"] == "flux_denoise"
    assert properties["dype_method"]["enum"] == ["vision_yarn", "yarn", "ntk", "base"]
    assert properties["dype_method"]["default"] == "vision_yarn"
    assert properties["dype_shift"]["enum"] == ["official", "stock"]
    assert properties["dype_shift"]["default"] == "official"
    assert properties["dype_preset"]["enum"] == ["off", "manual", "auto", "area", "4k"]  # what the UI sends
    for name in NEW_FIELDS:
        assert len(properties[name]["description"]) > 40
    # every field of InvokeAI's own node is still there
    from invokeai.app.invocations.flux_denoise import FluxDenoiseInvocation as Core

    assert set(Core.model_fields) <= set(properties)


def minimal_node(**fields):
    base = {
        "type": "flux_denoise",
        "id": "n1",
        "transformer": {
            "transformer": {"key": "k", "hash": "h", "name": "flux", "base": "flux", "type": "main"},
            "loras": [],
        },
        "positive_text_conditioning": {"conditioning_name": "pos"},
    }
    return {**base, **fields}


def test_type_adapter_accepts_ours_and_rejects_invalid_values(dype_class):
    adapter = InvocationRegistry.get_invocation_typeadapter()
    parsed = adapter.validate_python(minimal_node(dype_preset="4k", dype_method="yarn", dype_shift="stock"))
    assert type(parsed) is dype_class
    assert (parsed.dype_preset, parsed.dype_method, parsed.dype_shift) == ("4k", "yarn", "stock")
    defaults = adapter.validate_python(minimal_node())
    assert (defaults.dype_preset, defaults.dype_method, defaults.dype_shift) == ("off", "vision_yarn", "official")
    for bad in (
        {"dype_method": "longrope"},
        {"dype_shift": "none"},
        {"dype_preset": "on"},
        {"dype_scale": 8.5},
        {"dype_scale": -1.0},
        {"dype_exponent": 1001.0},
    ):
        with pytest.raises(ValidationError) as error:
            adapter.validate_python(minimal_node(**bad))
        assert next(iter(bad)) in str(error.value)


def test_cli_install_is_idempotent_and_safe(invokeai_root, capsys):
    pack = install_pack(invokeai_root)
    assert install_pack(invokeai_root) == pack == invokeai_root / "nodes" / PACK_NAME
    init = (pack / "__init__.py").read_text()
    assert "import dype.invokeai" in init and "dype.invokeai.register(pack=" in init
    assert [p.name for p in (invokeai_root / "nodes").iterdir()] == [PACK_NAME]  # never a folder named dype
    assert pack_status(invokeai_root).installed
    assert dype_main(["invokeai", "status", "--root", str(invokeai_root)]) == 0
    out = capsys.readouterr().out
    assert "pack: installed" in out and "invokeai importable here: 6.14.2" in out

    assert uninstall_pack(invokeai_root).existed is True
    assert uninstall_pack(invokeai_root).existed is False
    assert not pack.exists()
    assert dype_main(["invokeai", "status", "--root", str(invokeai_root)]) == 1
    assert "pack: not installed" in capsys.readouterr().out


def test_cli_respects_custom_nodes_dir(invokeai_root):
    (invokeai_root / "invokeai.yaml").write_text("schema_version: 4.0.2\ncustom_nodes_dir: my_nodes  # moved\n")
    assert nodes_dir(invokeai_root) == invokeai_root / "my_nodes"
    assert install_pack(invokeai_root) == invokeai_root / "my_nodes" / PACK_NAME


def test_cli_errors(tmp_path, capsys):
    assert dype_main(["invokeai", "install", "--root", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert dype_main(["invokeai", "install", "--root", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert dype_main(["invokeai", "status", "--root", str(tmp_path / "empty")]) == 2
    assert "does not look like an InvokeAI root" in capsys.readouterr().err

    (tmp_path / "nodes" / PACK_NAME).mkdir(parents=True)
    (tmp_path / "nodes" / PACK_NAME / "__init__.py").write_text("# someone else's pack\n")
    with pytest.raises(ValueError, match="not written by dype"):
        install_pack(tmp_path)
    with pytest.raises(ValueError, match="not written by dype"):
        uninstall_pack(tmp_path)
    (tmp_path / "nodes" / "dype").mkdir()
    (tmp_path / "nodes" / "dype" / "__init__.py").write_text("")
    with pytest.raises(ValueError, match="shadow the dype package"):
        install_pack(tmp_path)
