"""Helpers for the command-line tests: the tested `dype` in a fresh process, a folder nobody may write.

The package may be installed elsewhere in editable mode (another checkout): a child's PYTHONPATH
starts with the `src/` folder of the `dype` this test session imported, so it runs the same code (and,
unlike the test session, loads no conftest: no torchvision workaround).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dype

DYPE_SRC = Path(dype.__file__).resolve().parents[1]


def dype_env() -> dict[str, str]:
    """This process's environment with the tested `dype` first on PYTHONPATH."""
    inherited = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(DYPE_SRC), *inherited])}


def run_python(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python ARGS` with this interpreter and the tested `dype`; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=dype_env(), check=False
    )


def unwritable_folder(tmp_path: Path) -> Path | None:
    """An existing folder this process may not create files in, or None where there is none to be had.

    A read-only temp folder for a normal user; as root (permissions do not apply) /proc/1, which the
    kernel keeps read-only even for root.
    """
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    proc = Path("/proc/1")
    return proc if proc.is_dir() and not os.access(proc, os.W_OK) else None
