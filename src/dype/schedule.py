"""FLUX's sampling-schedule shift, and the DyPE rule for it (DYPE_SPEC.md §6).

FLUX dev shifts its sigmas by μ = lin(256 → 0.5, 4096 → 1.15)(image tokens), extrapolated without a
cap: at 4096² μ = 11.55 and nearly every step sits at σ ≈ 1, so DyPE's schedule never decays. The
official DyPE pipeline pins μ = 1.15 (the 1024² value); we do the same while DyPE is active.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from dype.config import check_choice, check_image_size

ShiftMode = Literal["official", "stock"]
SHIFT_MODES: tuple[str, ...] = get_args(ShiftMode)

DYPE_MU = 1.15
BASE_SHIFT, MAX_SHIFT = 0.5, 1.15
BASE_SEQ_LEN, MAX_SEQ_LEN = 256, 4096


def image_seq_len(width: int, height: int) -> int:
    """Number of FLUX image tokens for a W×H px image (16×16 px per token)."""
    return (check_image_size("height", height) // 16) * (check_image_size("width", width) // 16)


def flux_mu(seq_len: int, base_shift: float = BASE_SHIFT, max_shift: float = MAX_SHIFT) -> float:
    """Stock FLUX μ: linear in the image token count through (256, 0.5) and (4096, 1.15), no cap."""
    slope = (max_shift - base_shift) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return base_shift + slope * (seq_len - BASE_SEQ_LEN)


def schedule_mu(width: int, height: int, dype_active: bool, shift: str = "official") -> float:
    """μ for a generation: 1.15 while DyPE is active with shift "official", else stock FLUX μ."""
    check_choice("dype_shift", shift, SHIFT_MODES)
    if dype_active and shift == "official":
        return DYPE_MU
    return flux_mu(image_seq_len(width, height))


def time_shift(mu: float, sigma: float) -> float:
    """σ' = e^μ / (e^μ + 1/σ − 1); 0 stays 0 and 1 stays 1."""
    if sigma <= 0.0 or sigma >= 1.0:  # exact ends (e^μ/(e^μ+0) can round to 1 + 2⁻⁵²)
        return min(max(sigma, 0.0), 1.0)
    return math.exp(mu) / (math.exp(mu) + 1.0 / sigma - 1.0)


def shifted_sigmas(
    num_steps: int, width: int, height: int, dype_active: bool, shift: str = "official", shifted: bool = True
) -> list[float]:
    """The N+1 sigmas of an N-step FLUX schedule (final 0 included), as InvokeAI's `get_schedule` lays them.

    Args:
        num_steps: N ≥ 1.
        shifted: False for FLUX schnell (no shift at all).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    linear = [1.0 - i / num_steps for i in range(num_steps + 1)]
    if not shifted:
        return linear
    mu = schedule_mu(width, height, dype_active, shift)
    return [time_shift(mu, sigma) for sigma in linear]
