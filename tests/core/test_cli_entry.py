"""The entry points: `python -m dype`, instant `--version` / `--help` (no torch), lazy top-level names, CI."""

from __future__ import annotations

import json

import pytest

import dype
from tests.cli_helpers import DYPE_SRC, run_python

REPO = DYPE_SRC.parent

# Calls main() for each argv in-process and reports which heavy packages that imported.
_IMPORTS_PROBE = """
import json, sys
from dype.cli import main
codes = []
for argv in (["--version"], ["--help"], ["plan", "--help"], ["generate", "--help"], ["invokeai", "--help"]):
    try:
        main(argv)
    except SystemExit as exit:
        codes.append(exit.code)
heavy = sorted(name for name in ("torch", "numpy", "diffusers", "matplotlib", "invokeai") if name in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_version_and_help_do_not_import_torch() -> None:
    result = run_python("-c", _IMPORTS_PROBE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["codes"] == [0, 0, 0, 0, 0]
    assert report["heavy"] == []  # `dype --version` was ~2 s warm (9 s cold) when `import dype` imported torch


def test_python_dash_m_dype_is_the_dype_command() -> None:
    result = run_python("-m", "dype", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dype {dype.__version__}"


def test_every_public_name_resolves_lazily() -> None:
    for name in dype.__all__:
        assert getattr(dype, name) is not None, name
    assert set(dype.__all__) <= set(dir(dype))
    from dype import DyPEConfig, resolve_dype_config

    assert resolve_dype_config("4k", width=4096, height=2160) == DyPEConfig(dype_scale=2.0, dype_exponent=2.0)
    assert dype.math.embed_ids is dype.embed_ids  # submodules `import dype` used to load stay reachable
    with pytest.raises(AttributeError, match="no attribute 'DyPEConfg'"):
        _ = dype.DyPEConfg


def test_ci_gates_on_ruff_then_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    test_command = (
        "bash scripts/setup.sh --dev && .venv/bin/ruff check . && .venv/bin/ruff format --check . "
        "&& .venv/bin/python -m pytest -q"
    )
    assert test_command in readme
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == test_command  # the README's command, literally, last
    steps = test_command.split(" && ")
    assert steps.index(".venv/bin/ruff check .") < steps.index(".venv/bin/python -m pytest -q")
