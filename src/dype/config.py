"""The DyPE configuration: one frozen, self-validating dataclass (docs/math.md §3–§7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from dype.families import PIXEL_MULTIPLE, RopeFamily, get_family
from dype.validation import check_bool, check_choice, check_multiple, check_open_low_range, check_range

DyPEMethod = Literal["vision_yarn", "yarn", "ntk", "base"]
DYPE_METHODS: tuple[str, ...] = get_args(DyPEMethod)

DYPE_SCALE_RANGE = (0.0, 8.0)
DYPE_EXPONENT_RANGE = (0.0, 1000.0)
DYPE_START_SIGMA_RANGE = (0.0, 1.0)  # (low, high]


@dataclass(frozen=True)
class DyPEConfig:
    """How DyPE rescales a model's RoPE. Immutable; every field is validated on construction.

    Args:
        enable_dype: `True` makes the method time-dependent (dynamic, per sampling step); `False` gives
            its static form. `base` ignores it.
        base_resolution: training resolution B in pixels, a positive multiple of 16; `None` takes the
            family's default (`dype.families`: 1024 for FLUX.1, Z-Image and Chroma, 2048 for FLUX.2).
            Axes at or below it get plain RoPE.
        method: one of `vision_yarn` (default; ComfyUI-DyPE v2.3.0), `yarn` and `ntk` (official DyPE),
            `base` (plain RoPE, a control).
        dype_scale: λs in [0, 8], the strength κ starts from (κ = λs·τ^λt). Used by all but `base`.
        dype_exponent: λt in [0, 1000], how fast κ decays with σ. Used by all but `base`.
        dype_start_sigma: in (0, 1]. For `ntk`/`yarn` the σ below which the decay starts; for
            `vision_yarn` it only shapes the amplitude (docs/math.md §5).
        isotropic: `True` scales both spatial axes by the larger of the two scales; `None` takes the
            family's default (on for Z-Image only).
    """

    enable_dype: bool = True
    base_resolution: int | None = None
    method: DyPEMethod = "vision_yarn"
    dype_scale: float = 2.0
    dype_exponent: float = 2.0
    dype_start_sigma: float = 1.0
    isotropic: bool | None = None

    def __post_init__(self) -> None:
        check_bool("enable_dype", self.enable_dype)
        if self.base_resolution is not None:
            object.__setattr__(
                self, "base_resolution", check_multiple("base_resolution", self.base_resolution, PIXEL_MULTIPLE)
            )
        check_choice("method", self.method, DYPE_METHODS)
        object.__setattr__(self, "dype_scale", check_range("dype_scale", self.dype_scale, *DYPE_SCALE_RANGE))
        object.__setattr__(
            self, "dype_exponent", check_range("dype_exponent", self.dype_exponent, *DYPE_EXPONENT_RANGE)
        )
        object.__setattr__(
            self,
            "dype_start_sigma",
            check_open_low_range("dype_start_sigma", self.dype_start_sigma, *DYPE_START_SIGMA_RANGE),
        )
        if self.isotropic is not None:
            object.__setattr__(self, "isotropic", check_bool("isotropic", self.isotropic))

    @property
    def sigma_dependent(self) -> bool:
        """Whether the frequencies change with σ (dynamic and not `base`)."""
        return self.enable_dype and self.method != "base"

    def base_resolution_for(self, family: str | RopeFamily) -> int:
        """B for `family`: this config's value, else the family's default; a multiple of its token side."""
        family = get_family(family)
        if self.base_resolution is None:
            return family.base_resolution
        return check_multiple("base_resolution", self.base_resolution, family.pixels_per_token)

    def isotropic_for(self, family: str | RopeFamily) -> bool:
        """Whether both spatial axes share the larger scale for `family` (this config's value, else its default)."""
        return get_family(family).isotropic if self.isotropic is None else self.isotropic
