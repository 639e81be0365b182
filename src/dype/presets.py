"""User-facing presets (docs/math.md §7): the values InvokeAI's UI sends, resolved to a `DyPEConfig`.

Only `manual` reads `dype_scale` and `dype_exponent`: InvokeAI's UIs always send both (the Linear UI 2
and 2 with every preset, "Off" included; the workflow editor 0 and 0 for empty fields), so any other
rule would turn DyPE on, or change its strength, for generations that never asked for it.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from dype.config import DYPE_EXPONENT_RANGE, DYPE_METHODS, DYPE_SCALE_RANGE, DyPEConfig
from dype.families import FLUX1, RopeFamily, check_image_side, get_family
from dype.validation import check_bool, check_choice, check_multiple, check_range

DyPEPreset = Literal["off", "manual", "auto", "area", "4k"]
DYPE_PRESETS: tuple[str, ...] = get_args(DyPEPreset)

DEFAULT_SCALE = 2.0
DEFAULT_EXPONENT = 2.0
AUTO_ACTIVATION_FACTOR = 1.5  # auto/area switch on above 1.5·B (1536 px for B = 1024)
AUTO_SCALE_PER_BASE = 2.0  # auto/area: λs = min(2·side/B, 8)

# What each preset does, in words (CLI help, node descriptions, README); B = the base resolution.
DYPE_PRESET_DESCRIPTIONS: dict[str, str] = {
    "off": "no DyPE (scale and exponent are ignored)",
    "manual": "vision_yarn with the given scale and exponent (each 2 when not given)",
    "auto": "off up to 1.5×B on the longer side (1536 px for FLUX.1); above, vision_yarn with scale "
    "min(2·side/B, 8); scale and exponent are ignored",
    "area": "as auto, with √(W·H) in place of the longer side (milder for extreme aspect ratios)",
    "4k": "vision_yarn, scale 2, exponent 2 (tuned for 3840×2160 / 4096×2160); scale and exponent are ignored",
}


def _auto_scale(side: float, base_resolution: int) -> float | None:
    """The auto rule on one effective side: None (off) up to 1.5·B, else λs = min(2·side/B, 8)."""
    if side <= AUTO_ACTIVATION_FACTOR * base_resolution:
        return None
    return min(AUTO_SCALE_PER_BASE * side / base_resolution, DYPE_SCALE_RANGE[1])


def resolve_dype_config(
    preset: str,
    *,
    width: int,
    height: int,
    dype_scale: float | None = None,
    dype_exponent: float | None = None,
    method: str = "vision_yarn",
    base_resolution: int | None = None,
    isotropic: bool | None = None,
    family: str | RopeFamily = FLUX1,
) -> DyPEConfig | None:
    """Resolve a preset for a W×H image to a config, or None for "no DyPE".

    Args:
        preset: one of `DYPE_PRESETS`.
        width, height: target image size in pixels (positive multiples of the family's token side).
        dype_scale: λs in [0, 8]; read by `manual` only (default 2); the other presets ignore it.
        dype_exponent: λt in [0, 1000]; read by `manual` only (default 2).
        method: one of vision_yarn, yarn, ntk, base (the presets are tuned for vision_yarn).
        base_resolution: the model's training size B; None = the family's default.
        isotropic: both spatial axes share the larger scale; None = the family's default.
        family: the model's RoPE family (`dype.families`).

    Values are validated whichever preset is chosen, so a bad value never passes unnoticed.
    """
    family = get_family(family)
    check_choice("dype_preset", preset, DYPE_PRESETS)
    check_image_side("width", width, family)
    check_image_side("height", height, family)
    check_choice("dype_method", method, DYPE_METHODS)
    if dype_scale is not None:
        dype_scale = check_range("dype_scale", dype_scale, *DYPE_SCALE_RANGE)
    if dype_exponent is not None:
        dype_exponent = check_range("dype_exponent", dype_exponent, *DYPE_EXPONENT_RANGE)
    if base_resolution is not None:
        base_resolution = check_multiple("base_resolution", base_resolution, family.pixels_per_token)
    if isotropic is not None:
        isotropic = check_bool("isotropic", isotropic)
    base = family.base_resolution if base_resolution is None else base_resolution

    if preset == "off":
        return None
    if preset == "manual":
        scale = DEFAULT_SCALE if dype_scale is None else dype_scale
        exponent = DEFAULT_EXPONENT if dype_exponent is None else dype_exponent
    elif preset in ("auto", "area"):
        side = max(width, height) if preset == "auto" else math.sqrt(width * height)
        scale, exponent = _auto_scale(side, base), DEFAULT_EXPONENT
        if scale is None:
            return None
    else:  # "4k"
        scale, exponent = DEFAULT_SCALE, DEFAULT_EXPONENT
    return DyPEConfig(
        base_resolution=base_resolution,
        method=method,
        dype_scale=scale,
        dype_exponent=exponent,
        isotropic=isotropic,
    )
