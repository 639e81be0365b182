"""`dype invokeai install|uninstall|status --root PATH`: the loader pack for InvokeAI's `nodes/` folder.

The pack is one `__init__.py` that imports the installed `dype` package (no code is copied), so
upgrading dype with pip upgrades the node. InvokeAI imports every folder in `nodes/` as a top-level
module named after the folder: a folder called `dype` would shadow the `dype` package itself, hence
`dype_flux_pack`. Nothing here imports invokeai (`dype --help` stays fast).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

PACK_NAME = "dype_flux_pack"
PACK_MARKER = "# written by `dype invokeai install`"
PACK_INIT = f'''"""DyPE for InvokeAI's FLUX Denoise: a loader for the installed `dype` package (no code here)."""

{PACK_MARKER}; remove with `dype invokeai uninstall --root <root>`.
try:
    import dype.invokeai
except ImportError as error:  # InvokeAI logs this and carries on without the pack
    raise ImportError(
        "the dype node pack needs the dype package in InvokeAI's Python environment: "
        "install it there with `pip install 'dype[invokeai]'`"
    ) from error

dype.invokeai.register()
'''
CONFIG_FILE = "invokeai.yaml"
DEFAULT_NODES_DIR = "nodes"
_NODES_DIR_SETTING = re.compile(r"^\s*custom_nodes_dir\s*:\s*['\"]?([^'\"#\n]+?)['\"]?\s*(#.*)?$", re.MULTILINE)


@dataclass(frozen=True)
class PackStatus:
    """Where the pack goes for a root, whether it is there, and what Python environment would run it."""

    nodes_dir: Path
    pack_dir: Path
    installed: bool
    invokeai_version: str | None
    dype_version: str | None


def nodes_dir(root: Path) -> Path:
    """The custom nodes folder of an InvokeAI root: `custom_nodes_dir` from invokeai.yaml, else `nodes`.

    Raises ValueError when the root is missing, not a folder, or does not look like an InvokeAI root
    (no invokeai.yaml and no nodes/ folder).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise ValueError(f"--root {root} does not exist (give the InvokeAI root folder, the one with invokeai.yaml)")
    if not root.is_dir():
        raise ValueError(f"--root {root} is not a folder")
    config = root / CONFIG_FILE
    if not config.is_file() and not (root / DEFAULT_NODES_DIR).is_dir():
        raise ValueError(
            f"--root {root} does not look like an InvokeAI root: it has neither {CONFIG_FILE} nor a "
            f"{DEFAULT_NODES_DIR}/ folder (start InvokeAI once with this root, or pass the right folder)"
        )
    setting = _NODES_DIR_SETTING.search(config.read_text(encoding="utf-8")) if config.is_file() else None
    folder = Path(setting.group(1).strip()) if setting else Path(DEFAULT_NODES_DIR)
    return folder if folder.is_absolute() else root / folder


def _is_ours(pack_dir: Path) -> bool:
    init = pack_dir / "__init__.py"
    return init.is_file() and PACK_MARKER in init.read_text(encoding="utf-8")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pack_status(root: Path) -> PackStatus:
    nodes = nodes_dir(root)
    pack = nodes / PACK_NAME
    invokeai = _version("invokeai") if importlib.util.find_spec("invokeai") is not None else None
    return PackStatus(nodes, pack, _is_ours(pack), invokeai, _version("dype"))


def install_pack(root: Path) -> Path:
    """Write `<nodes>/dype_flux_pack/__init__.py`; idempotent. Returns the pack folder."""
    nodes = nodes_dir(root)
    shadow = nodes / "dype"
    if (shadow / "__init__.py").exists():
        raise ValueError(
            f"{shadow} exists: InvokeAI would import it as `dype` and shadow the dype package; remove it first"
        )
    pack = nodes / PACK_NAME
    if pack.exists() and not _is_ours(pack):
        raise ValueError(f"{pack} exists and was not written by dype; move it away first")
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "__init__.py").write_text(PACK_INIT, encoding="utf-8")
    return pack


def uninstall_pack(root: Path) -> bool:
    """Remove the pack folder if it is ours; returns whether there was one. Idempotent."""
    pack = nodes_dir(root) / PACK_NAME
    if not pack.exists():
        return False
    if not _is_ours(pack):
        raise ValueError(f"{pack} was not written by dype; not removing it")
    shutil.rmtree(pack)
    return True


def _install(args: argparse.Namespace) -> int:
    pack = install_pack(args.root)
    print(f"installed the DyPE node pack: {pack}")
    print("restart InvokeAI (or reload custom nodes); FLUX Denoise then shows the DyPE fields")
    if _version("invokeai") is None:
        print("note: invokeai is not installed in this Python environment; install dype into InvokeAI's")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    removed = uninstall_pack(args.root)
    where = nodes_dir(args.root) / PACK_NAME
    print(f"removed {where}; restart InvokeAI" if removed else f"not installed ({where} does not exist)")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = pack_status(args.root)
    print(f"pack: {'installed' if status.installed else 'not installed'} ({status.pack_dir})")
    print(f"invokeai importable here: {status.invokeai_version or 'no'} (dype is tested with 6.14.2)")
    print(f"dype: {status.dype_version or 'not installed as a distribution'}")
    return 0 if status.installed else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `dype invokeai install|uninstall|status --root PATH`."""
    parser = subparsers.add_parser(
        "invokeai",
        help="install the DyPE FLUX Denoise node pack into an InvokeAI root",
        description=(
            "Manage the loader pack that makes InvokeAI's FLUX Denoise run dype's DyPE. "
            "dype must be installed in InvokeAI's Python environment."
        ),
    )
    actions = parser.add_subparsers(dest="invokeai_command", metavar="ACTION", required=True)
    for name, func, text in (
        ("install", _install, f"write nodes/{PACK_NAME}/ (idempotent)"),
        ("uninstall", _uninstall, f"remove nodes/{PACK_NAME}/"),
        ("status", _status, "say whether the pack is installed (exit 1 if not) and which InvokeAI is importable"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--root", type=Path, required=True, help="the InvokeAI root (holds invokeai.yaml)")
        action.set_defaults(func=func)
