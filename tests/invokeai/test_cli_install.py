"""`dype invokeai install|uninstall|status`: the folder InvokeAI really loads, uninstall that keeps your files,
and one-line errors (exit code 2) instead of tracebacks.

Real parts: InvokeAI 6.14.2's own config class and loader for the nodes folder, real files and real
permission bits. As root, permission bits do not apply; those cases then run the CLI in a child process
without the two capabilities that bypass them (`setpriv`, util-linux), so the kernel refuses for real.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dype.cli import invokeai as cli
from dype.cli import main as dype_main

SCHEMA = "schema_version: 4.0.2\n"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "invokeai root"
    folder.mkdir()
    (folder / "invokeai.yaml").write_text(SCHEMA)
    for name in list(os.environ):
        if name.upper().startswith("INVOKEAI_"):
            monkeypatch.delenv(name)
    return folder


@pytest.fixture(params=["invokeai", "dype"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Resolve with InvokeAI's config class, or with dype's reader as when invokeai is not importable."""
    if request.param == "dype":
        monkeypatch.setattr(cli, "_invokeai_config_available", lambda: False)
    return request.param


# (invokeai.yaml after the schema line, INVOKEAI_CUSTOM_NODES_DIR, folder relative to the root, source)
CASES = {
    "default": ("", None, "nodes", "InvokeAI's default"),
    "environment": ("", "from env", "from env", "INVOKEAI_CUSTOM_NODES_DIR"),
    "environment beats the file": (
        "custom_nodes_dir: from_file\n",
        "from env",
        "from env",
        "INVOKEAI_CUSTOM_NODES_DIR",
    ),
    "quoted key": ("\"custom_nodes_dir\": 'my nodes'\n", None, "my nodes", "custom_nodes_dir in"),
    "flow mapping": ("{custom_nodes_dir: flow}\n", None, "flow", "custom_nodes_dir in"),
    "empty string is the root": ('custom_nodes_dir: ""\n', None, ".", "custom_nodes_dir in"),
    "hash inside the value": ("custom_nodes_dir: my#nodes  # moved\n", None, "my#nodes", "custom_nodes_dir in"),
    "absolute": ("custom_nodes_dir: {tmp}/abs_nodes\n", None, "../abs_nodes", "custom_nodes_dir in"),
}


@pytest.mark.parametrize("case", CASES)
def test_install_goes_where_invokeai_looks_and_says_so(case, resolver, root, monkeypatch, capsys):
    """Today's reader ignores the environment, quoted keys, "" and '#' in a value: "installed" elsewhere."""
    setting, env, expected, source = CASES[case]
    config = root / "invokeai.yaml"
    if setting.startswith("{custom"):
        config.write_text(setting.replace("}", ", schema_version: 4.0.2}"))
    else:
        config.write_text(SCHEMA + setting.replace("{tmp}", str(root.parent)))
    if env is not None:
        monkeypatch.setenv("INVOKEAI_CUSTOM_NODES_DIR", str(root / env) if case != "environment" else env)
        monkeypatch.chdir(root.parent)  # InvokeAI resolves a relative value against the root, not the cwd
    folder = (root / expected).resolve()

    assert cli.nodes_dir(root) == folder
    assert dype_main(["invokeai", "install", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"nodes folder: {folder} ({source}" in out
    assert ("InvokeAI 6.14.2's config" if resolver == "invokeai" else "invokeai is not importable") in out
    assert (folder / cli.PACK_NAME / "__init__.py").is_file()
    assert f"installed the DyPE node pack: {folder / cli.PACK_NAME}" in out


def test_a_config_invokeai_refuses_is_an_error(resolver, root, capsys):
    (root / "invokeai.yaml").write_text(SCHEMA + "custom_nodes_dir:\n")  # empty: InvokeAI fails to start
    assert dype_main(["invokeai", "install", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invokeai.yaml" in err and "custom_nodes_dir" in err
    assert not (root / "nodes").exists()


def test_uninstall_keeps_files_you_put_there(root, capsys):
    """Today's uninstall deletes the whole folder, your files included."""
    pack = cli.install_pack(root)
    (pack / "my notes.txt").write_text("mine")
    assert dype_main(["invokeai", "uninstall", "--root", str(root)]) == 0
    assert (pack / "my notes.txt").read_text() == "mine"
    assert not (pack / "__init__.py").exists()  # InvokeAI no longer loads the folder as a pack
    out = capsys.readouterr().out
    assert "kept 1 file(s)" in out and str(pack / "my notes.txt") in out


def test_uninstall_removes_exactly_the_files_install_wrote(root, capsys):
    pack = cli.install_pack(root)
    written = sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file())
    workflows = [f"workflows/{p.name}" for p in cli.packaged_workflows()]
    assert workflows and written == sorted([".dype-install.json", "__init__.py", *workflows])
    (pack / "__pycache__").mkdir()
    (pack / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"bytecode InvokeAI's import left")
    (pack / "workflows" / "my workflow.json").write_text("{}")
    changed = pack / workflows[0]
    changed.write_text(changed.read_text().replace("3840", "4096"))

    assert dype_main(["invokeai", "uninstall", "--root", str(root)]) == 0
    kept = sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file())
    assert kept == sorted(["workflows/my workflow.json", workflows[0]])  # yours, and the one you changed
    assert not (pack / "__pycache__").exists()
    assert "kept 2 file(s)" in capsys.readouterr().out

    for path in kept:
        (pack / path).unlink()
    cli.install_pack(root)  # over the folder the last uninstall left
    assert dype_main(["invokeai", "uninstall", "--root", str(root)]) == 0
    assert not pack.exists()  # nothing of yours there: the folder goes too


def test_install_refuses_a_second_copy_next_to_a_git_clone(root):
    clone = root / "nodes" / "dype"
    (clone / "src" / "dype" / "invokeai").mkdir(parents=True)
    (clone / "__init__.py").write_text("")
    (clone / "src" / "dype" / "invokeai" / "__init__.py").write_text("")
    with pytest.raises(ValueError, match="is a git clone of dype installed as a node pack"):
        cli.install_pack(root)
    assert cli.git_clone_packs(root / "nodes") == [clone]
    assert dype_main(["invokeai", "status", "--root", str(root)]) == 0  # the clone provides the nodes


@pytest.mark.parametrize("action", ["install", "uninstall", "status"])
def test_nodes_being_a_file_is_a_one_line_error(action, root, capsys):
    (root / "nodes").write_text("not a folder")
    assert dype_main(["invokeai", action, "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{root / 'nodes'} is not a folder" in err


# --- permissions ----------------------------------------------------------------------------------------

CHILD = """
import contextlib, io, json, sys
from dype.cli import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_without_permission_override(calls: list[list[str]]) -> list[tuple[int, str, str]]:
    """Run `dype ...` for each argument list where permission bits apply, even when the tests run as root."""
    if os.geteuid() != 0:
        results = []
        for args in calls:
            import contextlib
            import io

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = dype_main(args)
            results.append((code, out.getvalue(), err.getvalue()))
        return results
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root: these checks need `setpriv` (util-linux) to drop CAP_DAC_OVERRIDE"
    command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", CHILD]
    done = subprocess.run([*command, json.dumps(calls)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [tuple(result) for result in json.loads(done.stdout.splitlines()[-1])]


def test_read_only_root_and_unreadable_config_are_one_line_errors(tmp_path):
    """Today: PermissionError tracebacks. Now: exit code 2 and one line naming the path and the cause."""
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    (read_only / "invokeai.yaml").write_text(SCHEMA)
    installed = tmp_path / "installed, then read-only"
    installed.mkdir()
    (installed / "invokeai.yaml").write_text(SCHEMA)
    pack = cli.install_pack(installed)
    unreadable = tmp_path / "unreadable config"
    unreadable.mkdir()
    (unreadable / "invokeai.yaml").write_text(SCHEMA)

    locked = [p for p in (read_only, installed, installed / "nodes", pack, pack / "workflows") if p.is_dir()]
    for folder in locked:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    (unreadable / "invokeai.yaml").chmod(0)
    try:
        calls = [
            ["invokeai", "install", "--root", str(read_only)],
            ["invokeai", "status", "--root", str(read_only)],
            ["invokeai", "uninstall", "--root", str(installed)],
            ["invokeai", "status", "--root", str(installed)],
            *(["invokeai", action, "--root", str(unreadable)] for action in ("install", "uninstall", "status")),
        ]
        results = run_without_permission_override(calls)
    finally:
        for folder in locked:
            folder.chmod(0o755)
        (unreadable / "invokeai.yaml").chmod(0o644)

    install_ro, status_ro, uninstall_ro, status_installed, *unreadable_results = results
    assert install_ro[0] == 2 and install_ro[2].count("\n") == 1
    assert f"cannot create {read_only / 'nodes'}: Permission denied" in install_ro[2]
    assert status_ro[0] == 1 and "pack: not installed" in status_ro[1] and status_ro[2] == ""
    assert uninstall_ro[0] == 2 and uninstall_ro[2].count("\n") == 1
    assert f"cannot remove {pack}" in uninstall_ro[2] and "Permission denied" in uninstall_ro[2]
    assert (pack / "__init__.py").is_file()  # nothing half-removed before the error
    assert status_installed[0] == 0 and "pack: installed" in status_installed[1]
    for code, _, err in unreadable_results:
        assert code == 2 and err.count("\n") == 1
        assert f"cannot read {unreadable / 'invokeai.yaml'}: Permission denied" in err
    assert not (unreadable / "nodes").exists()
