"""What a git clone of this repository contains, and a local clone source for the Nodes-tab installer (no tests).

A clone holds the files git tracks. The working tree may also hold uncommitted work, a `.venv/` (the
setup script puts one there) and build output; the tests want the files a clone of *this* working tree
would have: tracked and untracked-but-not-ignored ones, as `git ls-files` lists them. Without git (or
outside a git checkout) they fall back to every file outside `.git`, virtual environments, caches and build output.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOT_IN_A_CLONE = {".git", ".venv", ".pytest_cache", ".ruff_cache", "__pycache__", "build", "dist", "out"}


def clone_files(repo: Path = REPO) -> list[Path]:
    """The files (relative to `repo`) a clone of the working tree would hold."""
    git = shutil.which("git")
    if git is not None:
        listed = subprocess.run(
            [git, "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=False,
        )
        if listed.returncode == 0:
            names = [name for name in listed.stdout.decode().split("\0") if name]
            return sorted(Path(name) for name in names if (repo / name).is_file())
    return sorted(
        path.relative_to(repo)
        for path in repo.rglob("*")
        if path.is_file()
        and not any(part in NOT_IN_A_CLONE or part.endswith(".egg-info") for part in path.relative_to(repo).parts)
        and not path.name.endswith(".pyc")
    )


def copy_tree(destination: Path, repo: Path = REPO) -> Path:
    """Copy the clone's files to `destination` (created); returns it."""
    for name in clone_files(repo):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)
    return destination


def make_git_source(destination: Path, repo: Path = REPO) -> Path:
    """A local git repository holding the working tree as one commit: a git URL for the Nodes tab, offline.

    Without git on the machine the folder is a plain copy (see `fake_git`)."""
    copy_tree(destination, repo)
    git = shutil.which("git")
    if git is not None:
        identity = [
            "-c",
            "user.name=dype tests",
            "-c",
            "user.email=tests@dype.invalid",
            "-c",
            "init.defaultBranch=main",
        ]
        for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "working tree"]):
            subprocess.run([git, *identity, "-C", str(destination), *command], check=True, capture_output=True)
    return destination


FAKE_GIT = """#!{python}
# Stands in for git on a machine without it: `git clone SOURCE TARGET` copies a local folder.
import shutil, sys
args = sys.argv[1:]
if len(args) != 3 or args[0] != "clone":
    sys.exit("fake git: only `git clone SOURCE TARGET` of a local folder")
shutil.copytree(args[1], args[2], ignore=shutil.ignore_patterns(".git"))
"""


def fake_git(folder: Path, python: str) -> Path | None:
    """If git is missing, write a `git` that copies a local folder (InvokeAI's installer runs `git clone`);
    returns the folder to put first on PATH, or None when the real git is there."""
    if shutil.which("git") is not None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "git"
    script.write_text(FAKE_GIT.format(python=python))
    script.chmod(0o755)
    return folder
