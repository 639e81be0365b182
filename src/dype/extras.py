"""Optional dependencies: find or import them, or say which pip extra of dype brings them.

`dype` itself needs only torch; `dype plan --plot` needs matplotlib (the `cli` extra) and `dype generate`
needs diffusers and transformers (the `diffusers` extra). A missing one is a `MissingExtraError` (an
ImportError) whose message is the install command, never a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip extra that installs it."""


def _missing(module: str, extra: str, purpose: str) -> MissingExtraError:
    return MissingExtraError(
        f"{purpose} needs {module}, which this Python environment cannot import: pip install 'dype[{extra}]'",
        name=module,
    )


def require_modules(modules: Iterable[str], *, extra: str, purpose: str) -> None:
    """Raise MissingExtraError for the first of `modules` that cannot be found; imports nothing."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module without a spec
            found = False
        if not found:
            raise _missing(module, extra, purpose)


def import_extra(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise MissingExtraError naming `extra` when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise _missing(module, extra, purpose) from error
