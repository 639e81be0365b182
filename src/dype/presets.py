"""User-facing presets (DYPE_SPEC.md §7): the values InvokeAI's UI sends, resolved to a `DyPEConfig`."""

from __future__ import annotations

import math
from typing import Literal, get_args

from dype.config import (
    DYPE_EXPONENT_RANGE,
    DYPE_METHODS,
    DYPE_SCALE_RANGE,
    DyPEConfig,
    check_choice,
    check_image_size,
    check_range,
)

DyPEPreset = Literal["off", "manual", "auto", "area", "4k"]
DYPE_PRESETS: tuple[str, ...] = get_args(DyPEPreset)

# What each preset does, in words (CLI help, node descriptions, README).
DYPE_PRESET_DESCRIPTIONS: dict[str, str] = {
    "off": "no DyPE (unless a scale is given: then vision_yarn with that scale)",
    "manual": "vision_yarn with the given scale/exponent (default 2 and 2)",
    "auto": "off up to 1536 px on the longer side; above, vision_yarn with scale min(2·side/1024, 8)",
    "area": "as auto, with √(W·H) in place of the longer side (milder for extreme aspect ratios)",
    "4k": "vision_yarn, scale 2, exponent 2 (tuned for 3840×2160 / 4096×2160)",
}

DEFAULT_SCALE = 2.0
DEFAULT_EXPONENT = 2.0
AUTO_ACTIVATION_THRESHOLD = 1536


def _auto_config(side: float, base_resolution: int, activation_threshold: float) -> DyPEConfig | None:
    """The auto rule on one effective side length: off up to the threshold, else λs = min(2·side/B, 8)."""
    if side <= activation_threshold:
        return None
    return DyPEConfig(
        base_resolution=base_resolution,
        dype_scale=min(2.0 * side / base_resolution, DYPE_SCALE_RANGE[1]),
        dype_exponent=DEFAULT_EXPONENT,
    )


def get_dype_config_for_resolution(
    width: int, height: int, base_resolution: int = 1024, activation_threshold: int = AUTO_ACTIVATION_THRESHOLD
) -> DyPEConfig | None:
    """The `auto` preset: None while max(W, H) ≤ `activation_threshold`, else vision_yarn scaled to the size."""
    check_image_size("width", width)
    check_image_size("height", height)
    return _auto_config(max(width, height), base_resolution, activation_threshold)


def resolve_dype_config(
    preset: str,
    width: int,
    height: int,
    dype_scale: float | None = None,
    dype_exponent: float | None = None,
    method: str = "vision_yarn",
    base_resolution: int = 1024,
) -> DyPEConfig | None:
    """Resolve a preset and optional overrides for a W×H image to a config, or None for "no DyPE".

    Args:
        preset: one of `DYPE_PRESETS`.
        width, height: target image size in pixels (positive multiples of 16).
        dype_scale: λs in [0, 8]; `off` + a scale turns DyPE on; with the other presets it replaces the
            preset's λs whenever the preset turns DyPE on.
        dype_exponent: λt in [0, 1000]; replaces the preset's λt whenever DyPE is on.
        method: one of vision_yarn, yarn, ntk, base (the presets are tuned for vision_yarn).
        base_resolution: the model's training size B (1024 for FLUX dev and schnell).
    """
    check_choice("dype_preset", preset, DYPE_PRESETS)
    check_image_size("width", width)
    check_image_size("height", height)
    check_choice("dype_method", method, DYPE_METHODS)
    if dype_scale is not None:
        check_range("dype_scale", dype_scale, *DYPE_SCALE_RANGE)
    if dype_exponent is not None:
        check_range("dype_exponent", dype_exponent, *DYPE_EXPONENT_RANGE)
    check_image_size("base_resolution", base_resolution)

    if preset == "off":
        if dype_scale is None:
            return None
        config = DyPEConfig(base_resolution=base_resolution)
    elif preset == "auto":
        config = _auto_config(max(width, height), base_resolution, AUTO_ACTIVATION_THRESHOLD)
    elif preset == "area":
        config = _auto_config(math.sqrt(width * height), base_resolution, AUTO_ACTIVATION_THRESHOLD)
    else:  # "manual" and "4k": vision_yarn at λs = λt = 2 unless overridden
        config = DyPEConfig(base_resolution=base_resolution)
    if config is None:
        return None
    return DyPEConfig(
        base_resolution=base_resolution,
        method=method,
        dype_scale=config.dype_scale if dype_scale is None else dype_scale,
        dype_exponent=config.dype_exponent if dype_exponent is None else dype_exponent,
    )
