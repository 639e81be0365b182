"""The DyPE configuration: one frozen, self-validating dataclass (DYPE_SPEC.md §3–§7)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

DyPEMethod = Literal["vision_yarn", "yarn", "ntk", "base"]
DYPE_METHODS: tuple[str, ...] = get_args(DyPEMethod)

DYPE_SCALE_RANGE = (0.0, 8.0)
DYPE_EXPONENT_RANGE = (0.0, 1000.0)


def _check_number(field: str, value: object) -> float:
    """Return `value` as a float, or raise a ValueError naming `field` (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{field} must be finite, got {value!r}")
    return float(value)


def check_range(field: str, value: object, low: float, high: float) -> float:
    """Return `value` as a float if `low <= value <= high`, else raise a ValueError naming `field`."""
    number = _check_number(field, value)
    if not low <= number <= high:
        raise ValueError(f"{field} must be in [{low:g}, {high:g}], got {value!r}")
    return number


def check_choice(field: str, value: object, allowed: tuple[str, ...]) -> str:
    """Return `value` if it is one of `allowed`, else raise a ValueError naming `field` and the choices."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def check_image_size(field: str, value: object) -> int:
    """Return a pixel size if it is a positive multiple of 16 (one FLUX token is 16×16 px)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 16:
        raise ValueError(f"{field} must be a positive multiple of 16 (pixels), got {value!r}")
    return value


@dataclass(frozen=True)
class DyPEConfig:
    """How DyPE rescales FLUX's RoPE. Immutable; every field is validated on construction.

    Args:
        enable_dype: `True` makes the method time-dependent (dynamic, per sampling step); `False` gives
            its static form. `base` ignores it.
        base_resolution: training resolution B in pixels (1024 for FLUX dev and schnell); a positive
            multiple of 16. Axes at or below it get plain RoPE.
        method: one of `vision_yarn` (default; ComfyUI-DyPE v2.3.0), `yarn` and `ntk` (official DyPE),
            `base` (plain RoPE, a control).
        dype_scale: λs in [0, 8], the strength κ starts from (κ = λs·τ^λt). Used by all but `base`.
        dype_exponent: λt in [0, 1000], how fast κ decays with σ. Used by all but `base`.
        dype_start_sigma: in (0, 1]. For `ntk`/`yarn` the σ below which the decay starts; for
            `vision_yarn` it only shapes the amplitude (DYPE_SPEC.md §5).
    """

    enable_dype: bool = True
    base_resolution: int = 1024
    method: DyPEMethod = "vision_yarn"
    dype_scale: float = 2.0
    dype_exponent: float = 2.0
    dype_start_sigma: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.enable_dype, bool):
            raise ValueError(f"enable_dype must be True or False, got {self.enable_dype!r}")
        check_image_size("base_resolution", self.base_resolution)
        check_choice("method", self.method, DYPE_METHODS)
        object.__setattr__(self, "dype_scale", check_range("dype_scale", self.dype_scale, *DYPE_SCALE_RANGE))
        object.__setattr__(
            self, "dype_exponent", check_range("dype_exponent", self.dype_exponent, *DYPE_EXPONENT_RANGE)
        )
        start = _check_number("dype_start_sigma", self.dype_start_sigma)
        if not 0.0 < start <= 1.0:
            raise ValueError(f"dype_start_sigma must be in (0, 1], got {self.dype_start_sigma!r}")
        object.__setattr__(self, "dype_start_sigma", start)

    @property
    def base_tokens(self) -> int:
        """L0: tokens per side at the base resolution (one token = 16 px)."""
        return self.base_resolution // 16
