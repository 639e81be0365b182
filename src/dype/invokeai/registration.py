"""Registering the pack's nodes with InvokeAI: one owner, node counts, and uninstall without a restart.

What InvokeAI 6.14.2 does, and what this module adds:

* ``@invocation`` records a node's pack as the first part of its module name, so every class defined in
  ``dype.invokeai.*`` says ``node_pack="dype"``. The Nodes tab counts a pack's nodes by comparing that
  with the folder name in ``nodes/`` (``dype_flux_pack`` for ``dype invokeai install``, the repository
  name for a git-URL install), and shows 0. ``register_pack`` sets ``UIConfig.node_pack`` of every pack
  node to the folder it was loaded from.
* The Nodes tab's Uninstall calls ``InvocationRegistry.unregister_pack(folder)``, which drops our
  classes; the core classes they had replaced were dropped by ``register_invocation`` when ours came in,
  so ``flux_denoise`` would be gone until a restart. A hook around ``unregister_pack`` (installed once)
  registers the core class again for every type the pack had overridden.
* InvokeAI re-executes a pack's ``__init__.py`` on reload, and purges a pack's modules on uninstall (for
  a clone named ``dype`` that is this whole package, which is then imported afresh on a reinstall).
  Everything here is idempotent, and a fresh import takes over the dispatch wrappers and the hook that
  an earlier import of this package installed, instead of stacking a second set behind them.
* Two copies of the pack (``dype invokeai install`` and a git clone, say) must not fight over
  ``flux_denoise``: the first pack to register owns the nodes; a second one is refused with a
  ``PackConflictError`` (InvokeAI logs it as "Failed to load node pack ...") naming both folders.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invokeai.app.invocations.baseinvocation import BaseInvocation, InvocationRegistry

from dype import __version__ as DYPE_VERSION
from dype.invokeai import dispatch

# The InvokeAI releases this pack supports; pyproject's `invokeai` extra declares the same range.
SUPPORTED_INVOKEAI = ">=6.14,<6.15"
SUPPORTED_INVOKEAI_RANGE = ((6, 14), (6, 15))  # (lowest major.minor, first major.minor not supported)
TESTED_INVOKEAI = "6.14.2"

# What `@invocation` records for classes defined in `dype.*` (and what the nodes say when no pack loaded them).
DEFAULT_PACK = "dype"

# Set on our `unregister_pack` hook, so a second install (or a fresh import of this module) recognises it.
HOOK_MARK = "__dype_unregister_hook__"


class PackConflictError(ValueError):
    """A second copy of the dype node pack tried to register while the first one is installed."""


@dataclass(frozen=True)
class PackNode:
    """One invocation class of the pack and the core class it replaces (None: a new node type)."""

    node: type[BaseInvocation]
    core: type[BaseInvocation] | None

    @property
    def type(self) -> str:
        return self.node.get_type()

    @classmethod
    def of(cls, node: type[BaseInvocation]) -> PackNode:
        """The entry for `node`: its core class is the nearest base class defined by InvokeAI (module
        `invokeai.*`) with the same invocation type; None if there is none (a new node type)."""
        node_type = node.get_type()
        core = next(
            (
                base
                for base in node.__mro__[1:]
                if issubclass(base, BaseInvocation)
                and base.__module__.split(".")[0] == "invokeai"
                and "type" in base.model_fields
                and base.get_type() == node_type
            ),
            None,
        )
        return cls(node=node, core=core)


@dataclass(frozen=True)
class PackOrigin:
    """Where the pack that owns the nodes was loaded from: its folder name (= ``node_pack``) and folder."""

    name: str
    folder: Path | None = None

    def is_present(self) -> bool:
        """Whether the pack is still on disk (an unknown folder counts as present)."""
        return self.folder is None or (self.folder / "__init__.py").is_file()

    def describe(self) -> str:
        return f"'{self.name}' ({self.folder})" if self.folder is not None else f"'{self.name}'"


_LOCK = threading.RLock()
_owner: PackOrigin | None = None
_nodes: tuple[PackNode, ...] = ()
_version_checked = False


def owner() -> PackOrigin | None:
    """The pack the nodes are registered for, if a pack (not a plain `import dype.invokeai`) registered them."""
    return _owner


def registered_nodes() -> tuple[PackNode, ...]:
    """The pack nodes of the last `register_pack` call."""
    return _nodes


def register_pack(
    nodes: Sequence[PackNode],
    pack: str | None = None,
    folder: Path | str | None = None,
    logger: logging.Logger | None = None,
) -> str:
    """Register `nodes` with InvokeAI for the pack `pack` (its folder name); idempotent, thread-safe.

    Args:
        nodes: every node of the pack with the core class it replaces (`dype.invokeai.PACK_NODES`).
        pack: the pack's folder name in InvokeAI's `nodes/`, or None for a plain import (keeps the
            current owner, if any, else ``"dype"``).
        folder: the pack's folder, used to tell whether an earlier owner is still installed.
        logger: for the version warning; InvokeAI's logger when None.

    Returns:
        The `node_pack` name the nodes now report.

    Raises:
        PackConflictError: another pack owns the nodes and is still installed.
    """
    global _owner, _nodes
    with _LOCK:
        claimant = PackOrigin(pack, Path(folder) if folder is not None else None) if pack is not None else None
        if claimant is not None and _owner is not None and _owner.name != claimant.name and _owner.is_present():
            raise PackConflictError(
                f"the dype nodes are already provided by the node pack {_owner.describe()}; the node pack "
                f"{claimant.describe()} was not loaded. Keep one copy: uninstall one of them (Nodes tab ▸ "
                "Uninstall, or `dype invokeai uninstall --root <root>` for dype_flux_pack) and restart InvokeAI"
            )
        _check_version_once(logger)
        _adopt_dispatch()
        dispatch.install()
        _install_unregister_hook()
        if claimant is not None:
            _owner = claimant
        name = _owner.name if _owner is not None else DEFAULT_PACK
        _nodes = tuple(nodes)
        for entry in _nodes:
            entry.node.UIConfig.node_pack = name
            if InvocationRegistry.get_invocation_for_type(entry.type) is not entry.node:
                InvocationRegistry.register_invocation(entry.node)
        return name


def restore_after_unregister(node_pack: str) -> list[str]:
    """Run after InvokeAI's `unregister_pack(node_pack)`: give every type the pack had taken a class again.

    If `node_pack` is the owner, the owner is cleared and each overridden type gets its core class back
    (`flux_denoise` is InvokeAI's own node again); if another pack was unregistered and took one of our
    types with it, our node comes back while our pack is installed. Returns the types re-registered.
    """
    global _owner
    with _LOCK:
        if _owner is not None and _owner.name == node_pack:
            _owner = None
        restored: list[str] = []
        for entry in _nodes:
            if InvocationRegistry.get_invocation_for_type(entry.type) is not None:
                continue
            replacement = entry.node if _owner is not None else entry.core
            if replacement is not None:
                InvocationRegistry.register_invocation(replacement)
                restored.append(entry.type)
        return restored


# --- the unregister hook ---------------------------------------------------------------------------------


def _is_current_hook(function: Callable[..., Any]) -> bool:
    return bool(getattr(function, HOOK_MARK, False)) and getattr(function, "__globals__", None) is globals()


def _install_unregister_hook() -> None:
    """Wrap `InvocationRegistry.unregister_pack` once so that uninstalling a pack restores core nodes."""
    current = InvocationRegistry.__dict__["unregister_pack"].__func__
    if _is_current_hook(current):
        return
    original = current
    while getattr(original, HOOK_MARK, False):  # a hook from an earlier import of this module: unwrap it
        original = original.__wrapped__

    @functools.wraps(original)
    def unregister_pack(cls: type[InvocationRegistry], node_pack: str) -> list[str]:
        removed = original(cls, node_pack)
        restore_after_unregister(node_pack)
        return removed

    setattr(unregister_pack, HOOK_MARK, True)
    InvocationRegistry.unregister_pack = classmethod(unregister_pack)  # type: ignore[method-assign, assignment]


def _adopt_dispatch() -> None:
    """Unwrap dispatch wrappers installed by an earlier import of this package's node modules.

    Their ContextVars are not the ones our nodes set, so they would pass every call through unchanged;
    after this, `dispatch.install()` wraps the originals with the current modules' wrappers (still once).
    A wrapper belongs to the current import when it was defined in the module of its table's `wrap`.
    """
    for table in dispatch.WRAPPER_TABLES:
        for module_name, wrappers in table.items():
            module = importlib.import_module(module_name)
            for name, wrap in wrappers.items():
                current_globals = wrap.__globals__
                function = getattr(module, name)
                while (
                    getattr(function, dispatch.DISPATCH_MARK, False)
                    and getattr(function, "__globals__", None) is not current_globals
                ):
                    function = function.__wrapped__
                setattr(module, name, function)


# --- the version check -----------------------------------------------------------------------------------


def _major_minor(version: str) -> tuple[int, int] | None:
    parts: list[int] = []
    for part in version.split(".")[:2]:
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            return None
        parts.append(int(digits))
    return (parts[0], parts[1]) if len(parts) == 2 else None


def is_supported_invokeai(version: str) -> bool:
    """Whether `version` (e.g. "6.14.2") is in `SUPPORTED_INVOKEAI`."""
    parsed = _major_minor(version)
    low, high = SUPPORTED_INVOKEAI_RANGE
    return parsed is not None and low <= parsed < high


def check_invokeai_version(version: str, logger: logging.Logger | None = None) -> bool:
    """Log a warning if the running InvokeAI is outside the supported range; returns whether it is inside."""
    if is_supported_invokeai(version):
        return True
    (logger or _invokeai_logger()).warning(
        f"dype {DYPE_VERSION} supports InvokeAI {SUPPORTED_INVOKEAI} (tested with {TESTED_INVOKEAI}); this is "
        f"InvokeAI {version}. Its FLUX nodes may have changed: FLUX Denoise with DyPE can fail or differ. "
        "Use a dype release made for this InvokeAI, or InvokeAI 6.14."
    )
    return False


def _check_version_once(logger: logging.Logger | None) -> None:
    global _version_checked
    if _version_checked:
        return
    from invokeai.version import __version__ as invokeai_version

    check_invokeai_version(invokeai_version, logger)
    _version_checked = True


def _invokeai_logger() -> logging.Logger:
    from invokeai.backend.util.logging import InvokeAILogger

    return InvokeAILogger.get_logger()
