"""Input checks shared by the library, the nodes and the CLI: each returns the clean value or raises
`ValueError` naming the field, what it got and what is allowed. One wording everywhere, so the same bad
input reads the same in Python, in InvokeAI and on the command line.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path


def check_number(field: str, value: object) -> float:
    """A finite real number of any numeric type (int, float, numpy scalars, 0-d tensors); bools are refused."""
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a number, got the bool {value!r}")
    if not isinstance(value, numbers.Real):
        item = getattr(value, "item", None)  # numpy / torch scalars that are not registered as numbers.Real
        if callable(item) and getattr(value, "ndim", 1) == 0:
            return check_number(field, item())
        raise ValueError(f"{field} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{field} must be a finite number, got {number!r}")
    return number


def check_range(field: str, value: object, low: float, high: float) -> float:
    """A number in the closed interval [low, high]."""
    number = check_number(field, value)
    if not low <= number <= high:
        raise ValueError(f"{field} must be in [{low:g}, {high:g}], got {number:g}")
    return number


def check_open_low_range(field: str, value: object, low: float, high: float) -> float:
    """A number in the half-open interval (low, high]."""
    number = check_number(field, value)
    if not low < number <= high:
        raise ValueError(f"{field} must be in ({low:g}, {high:g}], got {number:g}")
    return number


def check_integer(field: str, value: object, minimum: int | None = None) -> int:
    """An integer of any integer type (int, numpy integers), optionally at least `minimum`; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{field} must be an integer, got {value!r} ({type(value).__name__})")
    number = int(value)
    if minimum is not None and number < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{field} must be {wanted}, got {number}")
    return number


def check_multiple(field: str, value: object, multiple: int, unit: str = "pixels") -> int:
    """A positive integer multiple of `multiple` (an image side is a whole number of tokens)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) <= 0 or int(value) % multiple:
        raise ValueError(f"{field} must be a positive multiple of {multiple} ({unit}), got {value!r}")
    return int(value)


def check_choice(field: str, value: object, allowed: Iterable[str]) -> str:
    """One of the `allowed` strings, exactly (case included)."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def check_bool(field: str, value: object) -> bool:
    """True or False (numpy bools included); numbers and strings are refused."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ValueError(f"{field} must be True or False, got {value!r}")


def check_output_file(field: str, value: object, suffixes: Iterable[str] = (".png",)) -> Path:
    """A file path that can be written, checked without writing anything.

    The name must end in one of `suffixes` (case ignored) and must not be a folder; an existing file must
    be writable. Missing parent folders are fine (the writers create them) as long as the nearest
    existing one is a folder this process may create files in.
    """
    allowed = " or ".join(suffixes)
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise ValueError(f"{field} must be a file path ending in {allowed}, got {value!r}")
    path = Path(value).expanduser()
    try:
        if path.is_dir():
            raise ValueError(f"{field} {path} is a folder; give a file name ending in {allowed}")
        if path.suffix.lower() not in tuple(suffixes):
            got = repr(path.suffix) if path.suffix else "no suffix"
            raise ValueError(f"{field} {path} must end in {allowed}, got {got}")
        if path.exists():
            if not path.is_file() or not os.access(path, os.W_OK):
                raise ValueError(f"{field} {path} exists and is not a file this process may overwrite")
            return path
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise ValueError(f"{field} {path}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{field} {path}: cannot write in {folder} (no permission, or read-only)")
    except OSError as error:  # e.g. a parent that may not even be looked into
        raise ValueError(f"{field} {path}: cannot check it ({error.strerror or error})") from error
    return path
