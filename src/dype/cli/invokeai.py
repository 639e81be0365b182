"""`dype invokeai install|uninstall|status --root PATH`: the loader pack for pip users.

`install` writes `<nodes>/dype_flux_pack/`: an `__init__.py` that imports the installed `dype` package (no
code is copied, so upgrading dype with pip upgrades the nodes), the example workflows (to upload in the
Workflow Library) and a manifest of what it wrote; `uninstall` removes exactly those files and leaves
anything else in the folder. The folder is not called `dype`: InvokeAI imports every folder in `nodes/`
as a top-level module of that name, and `dype` is the package itself (a git clone of the repository,
installed from the Nodes tab, is the one pack that may use that name; `install` refuses to add a second
copy next to it).

The nodes folder is resolved the way InvokeAI resolves it: with InvokeAI's own config class when invokeai
is importable here (environment `INVOKEAI_*` first, then `invokeai.yaml`, relative paths against the
root), else with the same rules read by dype. Every command says which folder it used. Nothing here
imports invokeai at import time (`dype --help` stays fast).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dype
from dype.pack_settings import DEFAULT_PRESET_CHOICES as PRESET_DEFAULTS
from dype.validation import check_choice

PACK_NAME = "dype_flux_pack"
PACK_MARKER = "# written by `dype invokeai install`"
MANIFEST_NAME = ".dype-install.json"  # the files `install` wrote, with their SHA-256
WORKFLOWS_DIR = "workflows"
PACK_INIT_TEMPLATE = f'''"""DyPE for InvokeAI's FLUX, FLUX.2 and Z-Image nodes: loads the installed dype package."""

{PACK_MARKER}; remove with `dype invokeai uninstall --root <root>`.
from pathlib import Path

try:
    import dype.pack_settings
except ImportError as error:  # InvokeAI logs this and carries on without the pack
    raise ImportError(
        "the dype node pack needs the dype package in InvokeAI's Python environment: install it there "
        "from the repository or a wheel (see docs/invokeai.md), or install the pack from the Nodes tab instead"
    ) from error

# `dype invokeai install --default-preset`: what FLUX2 Denoise and Denoise - Z-Image use when no preset is set
dype.pack_settings.set_default_preset("{{default_preset}}")

import dype.invokeai  # noqa: E402  (after the settings: the nodes are defined on import)

dype.invokeai.register(pack=Path(__file__).parent.name, folder=Path(__file__).parent)
'''


def pack_init(default_preset: str = "auto") -> str:
    """The loader `install` writes, with the default preset of the FLUX.2 and Z-Image nodes."""
    return PACK_INIT_TEMPLATE.replace(
        "{default_preset}", check_choice("default_preset", default_preset, PRESET_DEFAULTS)
    )


CONFIG_FILE = "invokeai.yaml"
DEFAULT_NODES_DIR = "nodes"
NODES_DIR_SETTING = "custom_nodes_dir"
NODES_DIR_ENV = "INVOKEAI_CUSTOM_NODES_DIR"
SUPPORTED_INVOKEAI = ">=6.14,<6.15"  # as dype.invokeai.registration (which imports invokeai)


@dataclass(frozen=True)
class NodesFolder:
    """InvokeAI's custom nodes folder for a root, and where that answer came from."""

    path: Path
    source: str  # "INVOKEAI_CUSTOM_NODES_DIR", "custom_nodes_dir in <file>" or "InvokeAI's default"
    resolver: str  # "InvokeAI <version>'s config" or "dype (invokeai is not importable here)"

    def describe(self) -> str:
        return f"{self.path} ({self.source}; resolved by {self.resolver})"


@dataclass(frozen=True)
class PackStatus:
    """Where the pack goes for a root, whether it is there, and what Python environment would run it."""

    nodes: NodesFolder
    pack_dir: Path
    installed: bool
    clones: list[Path]
    invokeai_version: str | None
    dype_version: str | None


@dataclass
class UninstallResult:
    """What `uninstall` did: the files it removed and the ones it left (not written by install, or changed)."""

    pack_dir: Path
    existed: bool
    removed: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


# --- errors ----------------------------------------------------------------------------------------------


@contextmanager
def os_errors(action: str, path: Path) -> Iterator[None]:
    """Turn an OSError into a one-line ValueError: "cannot <action> <path>: <cause>"."""
    try:
        yield
    except OSError as error:
        cause = error.strerror or str(error)
        where = error.filename if error.filename else path
        raise ValueError(f"cannot {action} {where}: {cause}") from error


# --- the nodes folder ------------------------------------------------------------------------------------


def check_root(root: Path) -> Path:
    """`root`, expanded; ValueError if it is missing, not a folder, or not an InvokeAI root."""
    root = Path(root).expanduser()
    with os_errors("read", root):
        if not root.exists():
            raise ValueError(
                f"--root {root} does not exist (give the InvokeAI root folder, the one with {CONFIG_FILE})"
            )
        if not root.is_dir():
            raise ValueError(f"--root {root} is not a folder")
        if not (root / CONFIG_FILE).exists() and not (root / DEFAULT_NODES_DIR).exists():
            raise ValueError(
                f"--root {root} does not look like an InvokeAI root: it has neither {CONFIG_FILE} nor a "
                f"{DEFAULT_NODES_DIR}/ folder (start InvokeAI once with this root, or pass the right folder)"
            )
    return root


def resolve_nodes_folder(root: Path) -> NodesFolder:
    """InvokeAI's custom nodes folder for `root`, as InvokeAI itself resolves it.

    With invokeai importable: InvokeAI's `InvokeAIAppConfig` (environment variables `INVOKEAI_*`), updated
    from a copy of `invokeai.yaml` read by InvokeAI's own `load_and_migrate_config` (so the user's file is
    never rewritten), then `custom_nodes_path` for this root. Otherwise dype applies the same rules.

    Raises ValueError when the root is not an InvokeAI root, `invokeai.yaml` cannot be read or InvokeAI
    would refuse it, or the folder exists and is not a folder.
    """
    root = check_root(root)
    config_file = root / CONFIG_FILE
    if _invokeai_config_available():
        folder = _resolve_with_invokeai(root, config_file)
    else:
        folder = _resolve_without_invokeai(root, config_file)
    with os_errors("read", folder.path):
        if folder.path.exists() and not folder.path.is_dir():
            raise ValueError(
                f"{folder.path} is not a folder: InvokeAI's custom nodes folder ({folder.source}) must be a "
                "folder (move the file away, or set custom_nodes_dir in invokeai.yaml)"
            )
    return folder


def nodes_dir(root: Path) -> Path:
    """The custom nodes folder of an InvokeAI root (see `resolve_nodes_folder`)."""
    return resolve_nodes_folder(root).path


def _invokeai_config_available() -> bool:
    try:
        return importlib.util.find_spec("invokeai.app.services.config.config_default") is not None
    except (ImportError, ValueError):
        return False


def _resolve_with_invokeai(root: Path, config_file: Path) -> NodesFolder:
    from invokeai.app.services.config.config_default import InvokeAIAppConfig, load_and_migrate_config

    try:
        config = InvokeAIAppConfig()  # reads INVOKEAI_* from the environment, as InvokeAI does
    except Exception as error:  # pydantic's ValidationError: a bad INVOKEAI_* value
        raise ValueError(f"InvokeAI rejects its environment settings (INVOKEAI_*): {_first_line(error)}") from error
    from_env = NODES_DIR_SETTING in config.model_fields_set
    from_file = False
    if config_file.exists():
        with tempfile.TemporaryDirectory(prefix="dype-invokeai-") as scratch:
            copy = Path(scratch) / CONFIG_FILE
            with os_errors("read", config_file):
                shutil.copyfile(config_file, copy)
            try:
                file_config = load_and_migrate_config(copy)  # may migrate and rewrite: the copy only
            except Exception as error:
                cause = _first_line(error).replace(str(copy), str(config_file))
                raise ValueError(f"InvokeAI cannot load {config_file}: {cause}") from error
        from_file = NODES_DIR_SETTING in file_config.model_fields_set
        config.update_config(file_config, clobber=False)  # as InvokeAI: the environment wins over the file
    config._root = root
    source = "InvokeAI's default"
    if from_env:
        source = NODES_DIR_ENV
    elif from_file:
        source = f"{NODES_DIR_SETTING} in {config_file}"
    version = _version("invokeai") or "?"
    return NodesFolder(config.custom_nodes_path, source, f"InvokeAI {version}'s config")


def _resolve_without_invokeai(root: Path, config_file: Path) -> NodesFolder:
    """InvokeAI's rules without InvokeAI: a non-empty `INVOKEAI_CUSTOM_NODES_DIR` (any case) wins; else the
    `custom_nodes_dir` of invokeai.yaml (top level, or under a v3 file's `InvokeAI:` sections); else `nodes`.
    A relative path is relative to the root; an empty string means the root itself."""
    resolver = "dype (invokeai is not importable here)"
    env = {key.upper(): value for key, value in os.environ.items()}.get(NODES_DIR_ENV)
    if env:
        return NodesFolder((root / env).resolve(), NODES_DIR_ENV, resolver)
    value = _read_nodes_setting(config_file) if config_file.exists() else None
    if value is None:
        return NodesFolder((root / DEFAULT_NODES_DIR).resolve(), "InvokeAI's default", resolver)
    return NodesFolder((root / value).resolve(), f"{NODES_DIR_SETTING} in {config_file}", resolver)


def _read_nodes_setting(config_file: Path) -> str | None:
    with os_errors("read", config_file):
        text = config_file.read_text(encoding="utf-8")
    if NODES_DIR_SETTING not in text:
        return None
    try:
        import yaml
    except ImportError as error:
        raise ValueError(
            f"{config_file} sets {NODES_DIR_SETTING}, and neither InvokeAI nor PyYAML is importable here to read "
            "it: run dype from InvokeAI's Python environment"
        ) from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"InvokeAI cannot load {config_file}: {_first_line(error)}") from error
    if not isinstance(data, dict):
        raise ValueError(f"InvokeAI cannot load {config_file}: it is not a YAML mapping")
    sections = [data, *(v for v in (data.get("InvokeAI") or {}).values() if isinstance(v, dict))]
    for section in sections:
        if NODES_DIR_SETTING in section:
            value = section[NODES_DIR_SETTING]
            if not isinstance(value, str):
                raise ValueError(
                    f"InvokeAI cannot load {config_file}: {NODES_DIR_SETTING} is {value!r}, not a path "
                    "(InvokeAI refuses to start with it)"
                )
            return value
    return None


def _first_line(error: BaseException) -> str:
    if isinstance(error, KeyError):
        return f"no {error} key"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(error).__name__


# --- the pack --------------------------------------------------------------------------------------------


def packaged_workflows() -> list[Path]:
    """The example workflows shipped in the dype package (`dype/invokeai/workflows/*.json`)."""
    folder = Path(dype.__file__).parent / "invokeai" / WORKFLOWS_DIR
    return sorted(folder.glob("*.json"))


def is_ours(pack_dir: Path) -> bool:
    """Whether `pack_dir` holds an `__init__.py` written by `dype invokeai install`."""
    init = pack_dir / "__init__.py"
    with os_errors("read", init):
        return init.is_file() and PACK_MARKER in init.read_text(encoding="utf-8")


def is_git_clone_pack(folder: Path) -> bool:
    """Whether `folder` is a copy of the dype repository installed as a pack (Nodes tab ▸ git URL)."""
    return (folder / "__init__.py").is_file() and (folder / "src" / "dype" / "invokeai" / "__init__.py").is_file()


def git_clone_packs(nodes: Path) -> list[Path]:
    """The folders of `nodes` that are git clones of the dype repository."""
    with os_errors("read", nodes):
        if not nodes.is_dir():
            return []
        return sorted(d for d in nodes.iterdir() if d.is_dir() and is_git_clone_pack(d))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pack_status(root: Path) -> PackStatus:
    nodes = resolve_nodes_folder(root)
    pack = nodes.path / PACK_NAME
    invokeai = _version("invokeai") if importlib.util.find_spec("invokeai") is not None else None
    return PackStatus(nodes, pack, is_ours(pack), git_clone_packs(nodes.path), invokeai, _version("dype"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install_pack(root: Path, default_preset: str = "auto") -> Path:
    """Write `<nodes>/dype_flux_pack/` (loader, workflows, manifest); idempotent. Returns the pack folder.

    Args:
        default_preset: the `dype_preset` default of FLUX2 Denoise and Denoise - Z-Image (`auto` or `off`),
            which the Linear UI, sending no DyPE field to them, always uses.
    """
    init = pack_init(default_preset)
    nodes = resolve_nodes_folder(root).path
    clones = git_clone_packs(nodes)
    if clones:
        raise ValueError(
            f"{clones[0]} is a git clone of dype installed as a node pack (Nodes tab): it already provides the "
            "nodes, and InvokeAI can run one copy. Use it, or uninstall it in the Nodes tab first"
        )
    shadow = nodes / "dype"
    if (shadow / "__init__.py").exists():
        raise ValueError(
            f"{shadow} exists: InvokeAI would import it as `dype` and shadow the dype package; remove it first"
        )
    pack = nodes / PACK_NAME
    if (pack / "__init__.py").exists() and not is_ours(pack):
        raise ValueError(f"{pack} is a node pack not written by dype; move it away first")
    files: dict[str, bytes] = {"__init__.py": init.encode("utf-8")}
    for workflow in packaged_workflows():
        with os_errors("read", workflow):
            files[f"{WORKFLOWS_DIR}/{workflow.name}"] = workflow.read_bytes()
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    for name, data in files.items():
        target = pack / name
        with os_errors("create", target.parent):
            target.parent.mkdir(parents=True, exist_ok=True)
        with os_errors("write", target):
            target.write_bytes(data)
    with os_errors("write", pack / MANIFEST_NAME):
        (pack / MANIFEST_NAME).write_text(json.dumps({"files": manifest}, indent=2) + "\n", encoding="utf-8")
    return pack


def _read_manifest(pack: Path) -> dict[str, str]:
    """The files install wrote (relative path → SHA-256); an install without a manifest wrote `__init__.py`."""
    path = pack / MANIFEST_NAME
    if not path.exists():
        with os_errors("read", pack / "__init__.py"):
            return {"__init__.py": _sha256(pack / "__init__.py")}
    with os_errors("read", path):
        text = path.read_text(encoding="utf-8")
    try:
        files: Any = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a dype install manifest ({error}); remove the pack folder by hand") from error
    if not isinstance(files, dict):
        raise ValueError(f"{path} is not a dype install manifest; remove the pack folder by hand")
    return {str(name): str(digest) for name, digest in files.items()}


def uninstall_pack(root: Path) -> UninstallResult:
    """Remove what `install` wrote (unchanged files only), then empty folders; keep and report the rest."""
    pack = resolve_nodes_folder(root).path / PACK_NAME
    result = UninstallResult(pack_dir=pack, existed=pack.exists())
    if not result.existed:
        return result
    if not is_ours(pack):
        raise ValueError(f"{pack} was not written by dype; not removing it")
    manifest = _read_manifest(pack)
    for name, digest in sorted(manifest.items()):
        path = pack / name
        if not path.is_file():
            continue
        with os_errors("read", path):
            unchanged = _sha256(path) == digest
        if not unchanged:
            continue
        with os_errors("remove", path):
            path.unlink()
        result.removed.append(path)
        # the bytecode Python wrote for it when InvokeAI imported the pack
        for cached in sorted((path.parent / "__pycache__").glob(f"{path.stem}.*.pyc")):
            with os_errors("remove", cached):
                cached.unlink()
            result.removed.append(cached)
    manifest_path = pack / MANIFEST_NAME
    if manifest_path.exists():
        with os_errors("remove", manifest_path):
            manifest_path.unlink()
        result.removed.append(manifest_path)
    for folder in sorted((p for p in pack.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            with os_errors("remove", folder):
                folder.rmdir()
    with os_errors("remove", pack):
        if not any(pack.iterdir()):
            pack.rmdir()
    result.kept = sorted(p for p in pack.rglob("*") if p.is_file()) if pack.exists() else []
    return result


# --- the commands ----------------------------------------------------------------------------------------


def _one_line_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Any OSError a command did not expect becomes the CLI's one-line error (exit code 2), not a traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except OSError as error:
            where = error.filename or args.root
            raise ValueError(f"cannot access {where}: {error.strerror or error}") from error

    return run


@_one_line_errors
def _install(args: argparse.Namespace) -> int:
    folder = resolve_nodes_folder(args.root)
    print(f"nodes folder: {folder.describe()}")
    pack = install_pack(args.root, args.default_preset)
    print(f"installed the DyPE node pack: {pack} (FLUX.2 and Z-Image default preset: {args.default_preset})")
    print(
        "restart InvokeAI (or Nodes tab ▸ Custom Nodes ▸ Reload); FLUX Denoise then shows the DyPE fields. "
        f"Example workflows (Workflow Library ▸ Upload): {pack / WORKFLOWS_DIR}"
    )
    if _version("invokeai") is None:
        print("note: invokeai is not installed in this Python environment; install dype into InvokeAI's")
    return 0


@_one_line_errors
def _uninstall(args: argparse.Namespace) -> int:
    folder = resolve_nodes_folder(args.root)
    print(f"nodes folder: {folder.describe()}")
    result = uninstall_pack(args.root)
    if not result.existed:
        print(f"not installed ({result.pack_dir} does not exist)")
        return 0
    print(f"removed {len(result.removed)} file(s) dype installed from {result.pack_dir}")
    if result.kept:
        print(f"kept {len(result.kept)} file(s) dype did not write (or that were changed), and the folder:")
        for path in result.kept:
            print(f"  {path}")
    print(
        "restart InvokeAI: until then the pack's nodes stay registered. Saved workflows that set dype_method "
        "or dype_shift need updating (see docs/invokeai.md)"
    )
    return 0


@_one_line_errors
def _status(args: argparse.Namespace) -> int:
    status = pack_status(args.root)
    print(f"nodes folder: {status.nodes.describe()}")
    print(f"pack: {'installed' if status.installed else 'not installed'} ({status.pack_dir})")
    for clone in status.clones:
        print(f"git clone of dype installed from the Nodes tab: {clone}")
    print(
        f"invokeai importable here: {status.invokeai_version or 'no'} "
        f"(dype supports {SUPPORTED_INVOKEAI}, tested with 6.14.2)"
    )
    print(f"dype: {status.dype_version or 'not installed as a distribution'}")
    return 0 if status.installed or status.clones else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `dype invokeai install|uninstall|status --root PATH`."""
    parser = subparsers.add_parser(
        "invokeai",
        help="install the DyPE FLUX node pack into an InvokeAI root",
        description=(
            "Manage the loader pack that makes InvokeAI's FLUX Denoise run dype's DyPE. "
            "dype must be installed in InvokeAI's Python environment (or install the pack from InvokeAI's "
            "Nodes tab with the repository's git URL instead)."
        ),
    )
    actions = parser.add_subparsers(dest="invokeai_command", metavar="ACTION", required=True)
    for name, func, text in (
        ("install", _install, f"write nodes/{PACK_NAME}/ (idempotent)"),
        ("uninstall", _uninstall, f"remove what install wrote to nodes/{PACK_NAME}/"),
        ("status", _status, "say whether the pack is installed (exit 1 if not) and which InvokeAI is importable"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--root", type=Path, required=True, help="the InvokeAI root (holds invokeai.yaml)")
        if name == "install":
            action.add_argument(
                "--default-preset",
                choices=PRESET_DEFAULTS,
                default="auto",
                help="dype_preset of FLUX2 Denoise and Denoise - Z-Image when a graph sets none (the Linear UI "
                "never does): auto (default; off up to 1.5 × the base resolution, bit-identical to InvokeAI's "
                "node there) or off (InvokeAI's behaviour everywhere unless a workflow sets a preset). "
                "Takes effect at the next InvokeAI start",
            )
        action.set_defaults(func=func)
