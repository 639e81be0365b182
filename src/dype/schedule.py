"""The sampling-schedule shift, and the DyPE rule for it (docs/math.md §6), for any family.

FLUX.1 dev and Z-Image shift their sigmas by μ = lin(256 → 0.5, 4096 → 1.15)(image tokens), extrapolated
without a cap: at 4096² μ = 11.55 and nearly every step sits at σ ≈ 1, so DyPE's schedule never decays
(Z-Image's stock schedule is broken there even without DyPE). The official DyPE pipeline pins μ at the
1024² value; while DyPE is active we use the family's `dype_mu` (`dype.families`).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from dype.families import RopeFamily, check_image_side, get_family
from dype.validation import check_choice, check_integer

ShiftMode = Literal["official", "stock"]
SHIFT_MODES: tuple[str, ...] = get_args(ShiftMode)


def image_seq_len(family: str | RopeFamily, *, width: int, height: int) -> int:
    """Number of image tokens for a W×H px image."""
    family = get_family(family)
    per_token = family.pixels_per_token
    return (check_image_side("height", height, family) // per_token) * (
        check_image_side("width", width, family) // per_token
    )


def stock_mu(family: str | RopeFamily, *, width: int, height: int) -> float:
    """The host's own μ for a W×H image (`RopeFamily.stock_mu`)."""
    family = get_family(family)
    return family.stock_mu.mu(image_seq_len(family, width=width, height=height))


def schedule_mu(
    family: str | RopeFamily, *, width: int, height: int, dype_active: bool, shift: str = "official"
) -> float:
    """μ for a generation: the family's `dype_mu` while DyPE is active with shift "official", else stock."""
    family = get_family(family)
    check_choice("dype_shift", shift, SHIFT_MODES)
    if dype_active and shift == "official":
        return family.dype_mu
    return stock_mu(family, width=width, height=height)


def time_shift(mu: float, sigma: float) -> float:
    """σ' = e^μ / (e^μ + 1/σ − 1); 0 stays 0 and 1 stays 1."""
    if sigma <= 0.0 or sigma >= 1.0:  # exact ends (e^μ/(e^μ+0) can round to 1 + 2⁻⁵²)
        return min(max(sigma, 0.0), 1.0)
    return math.exp(mu) / (math.exp(mu) + 1.0 / sigma - 1.0)


def shifted_sigmas(
    family: str | RopeFamily,
    num_steps: int,
    *,
    width: int,
    height: int,
    dype_active: bool,
    shift: str = "official",
    shifted: bool = True,
) -> list[float]:
    """The N+1 sigmas of an N-step schedule (final 0 included), as InvokeAI's `get_schedule` lays them.

    Args:
        num_steps: N ≥ 1.
        shifted: False for FLUX schnell (no shift at all).
    """
    num_steps = check_integer("num_steps", num_steps, minimum=1)
    linear = [1.0 - i / num_steps for i in range(num_steps + 1)]
    if not shifted:
        return linear
    mu = schedule_mu(family, width=width, height=height, dype_active=dype_active, shift=shift)
    return [time_shift(mu, sigma) for sigma in linear]
