"""DyPE frequency math (DYPE_SPEC.md §1–§5): small pure functions and one registry of methods.

Every method has the signature of `DyPEMethodFn`: given the config, one spatial axis (its dimension
`dim`, its own scale `axis_scale` = target / base size, and the image's `global_scale` = the larger of
the two) and the step's σ, it returns that axis's angular frequencies ω (float64, (dim/2,)) and its
amplitude (the YaRN attention factor, multiplied into cos and sin). Axis 0 (the index axis) never
reaches a method: it is always plain RoPE.

Provenance: `ntk` and `yarn` follow the official DyPE code (github.com/guyyariv/DyPE @ 436fe61);
`vision_yarn` follows ComfyUI-DyPE v2.3.0 (github.com/wildminder/ComfyUI-DyPE @ 3fd9149), computed in
float64, with the boundary guard of DYPE_SPEC.md §4 where both references break.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from dype.config import DyPEConfig

Layout = Literal["bfl", "diffusers"]

# Threshold pairs (r0, r1) in rotations over the base grid: stage 1 blends NTK into linear
# interpolation, stage 2 blends plain RoPE into stage 1 (official DyPE's "NTK-by-parts").
STAGE1_ROTATIONS = (1.25, 0.75)
STAGE2_ROTATIONS = (16.0, 2.0)
# Official YaRN attention factor: 1 + 0.1·ln(s).
MSCALE_COEFFICIENT = 0.1


class AxisFrequencies(NamedTuple):
    """One axis's RoPE: angular frequencies ω [dim/2] float64, and the amplitude on cos and sin."""

    omega: Tensor
    amplitude: float


def base_frequencies(dim: int, theta: float) -> Tensor:
    """Plain RoPE frequencies ω_j = θ^(−2j/dim), float64 [dim/2] (FLUX's `rope`, same expression)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    return 1.0 / (theta**exponents)


def ntk_frequencies(dim: int, theta: float, scale: float, strength: float = 1.0) -> Tensor:
    """NTK-aware frequencies: θ' = θ·max(1, scale^(strength·dim/(dim−2))), ω_j = θ'^(−2j/dim) [dim/2]."""
    ntk_theta = theta * max(1.0, scale ** (strength * dim / (dim - 2)))
    return base_frequencies(dim, ntk_theta)


def correction_dim(rotations: float, dim: int, theta: float, base_tokens: int) -> float:
    """The dimension index whose base wavelength fits `rotations` turns into `base_tokens` positions.

    corr(r) = dim·ln(L0 / (2π r)) / (2 ln θ); +∞ for r = 0.
    """
    if rotations == 0:
        return math.inf
    return dim * math.log(base_tokens / (2 * math.pi * rotations)) / (2 * math.log(theta))


def correction_range(rotations: tuple[float, float], dim: int, theta: float, base_tokens: int) -> tuple[float, float]:
    """Ramp boundaries (lo, hi) for a threshold pair, with the boundary guard of DYPE_SPEC.md §4.

    The guard keeps both boundaries inside [0, dim/2], so the ramp never inverts (the official code's
    lo can pass its hi for tiny κ) and κ → 0 returns every slot to the base side of the blend.
    """
    half = dim // 2
    corr_lo = correction_dim(rotations[0], dim, theta, base_tokens)
    corr_hi = correction_dim(rotations[1], dim, theta, base_tokens)
    lo = float(half) if math.isinf(corr_lo) else float(max(math.floor(corr_lo), 0))
    hi = float(half) if math.isinf(corr_hi) else float(min(math.ceil(corr_hi), dim - 1, half))
    lo, hi = min(lo, float(half)), max(hi, 0.0)
    if lo == hi:
        hi += 0.001
    return lo, hi


def linear_ramp(lo: float, hi: float, size: int) -> Tensor:
    """ρ_j = clip((j − lo)/(hi − lo), 0, 1) evaluated in float32 as the references do, as float64 [size]."""
    ramp = (torch.arange(size, dtype=torch.float32) - lo) / (hi - lo)
    return ramp.clamp(0.0, 1.0).to(torch.float64)


def yarn_blend(
    omega_base: Tensor,
    omega_linear: Tensor,
    omega_ntk: Tensor,
    stage1: tuple[float, float],
    stage2: tuple[float, float],
    dim: int,
    theta: float,
    base_tokens: int,
) -> Tensor:
    """Two-stage NTK-by-parts blend [dim/2]: ω¹ = ρ·ω_lin + (1−ρ)·ω_ntk, ω = ρ'·ω¹ + (1−ρ')·ω_base."""
    half = dim // 2
    ramp1 = linear_ramp(*correction_range(stage1, dim, theta, base_tokens), half)
    blended = ramp1 * omega_linear + (1.0 - ramp1) * omega_ntk
    ramp2 = linear_ramp(*correction_range(stage2, dim, theta, base_tokens), half)
    return ramp2 * blended + (1.0 - ramp2) * omega_base


def yarn_mscale(scale: float) -> float:
    """YaRN attention factor 1 + 0.1·ln(scale), 1 for scale ≤ 1."""
    return 1.0 + MSCALE_COEFFICIENT * math.log(scale) if scale > 1.0 else 1.0


def decay_kappa(config: DyPEConfig, sigma: float) -> float:
    """κ = λs·τ^λt with τ = clamp(σ / start σ, 0, 1) (ntk, yarn; 0^0 = 1)."""
    tau = min(max(sigma / config.dype_start_sigma, 0.0), 1.0)
    return config.dype_scale * tau**config.dype_exponent


def vision_yarn_kappa(config: DyPEConfig, sigma: float) -> float:
    """κ = λs·t^λt with t = clamp(σ, 0, 1) (vision_yarn; the start σ does not act here)."""
    return config.dype_scale * min(max(sigma, 0.0), 1.0) ** config.dype_exponent


def vision_yarn_amplitude(config: DyPEConfig, global_scale: float, sigma: float) -> float:
    """m = 1 + 0.1·ln(S)·τ_m^λt, τ_m = 1 above the start σ, else t / start σ (static: τ_m = 1)."""
    t = min(max(sigma, 0.0), 1.0)
    tau_m = 1.0 if not config.enable_dype or t > config.dype_start_sigma else t / config.dype_start_sigma
    return 1.0 + MSCALE_COEFFICIENT * math.log(global_scale) * tau_m**config.dype_exponent


# One signature for every method (as transformers' ROPE_INIT_FUNCTIONS):
# (config, dim, theta, axis_scale, global_scale, sigma) -> AxisFrequencies.
DyPEMethodFn = Callable[[DyPEConfig, int, float, float, float, float], AxisFrequencies]


def _base(
    config: DyPEConfig, dim: int, theta: float, axis_scale: float, global_scale: float, sigma: float
) -> AxisFrequencies:
    """Plain RoPE at any size: no extrapolation (a control)."""
    return AxisFrequencies(base_frequencies(dim, theta), 1.0)


def _ntk(
    config: DyPEConfig, dim: int, theta: float, axis_scale: float, global_scale: float, sigma: float
) -> AxisFrequencies:
    """NTK-aware θ scaling on the axis; dynamic: the exponent is multiplied by κ. No amplitude."""
    if axis_scale <= 1.0:
        return _base(config, dim, theta, axis_scale, global_scale, sigma)
    strength = decay_kappa(config, sigma) if config.enable_dype else 1.0
    return AxisFrequencies(ntk_frequencies(dim, theta, axis_scale, strength), 1.0)


def _yarn(
    config: DyPEConfig, dim: int, theta: float, axis_scale: float, global_scale: float, sigma: float
) -> AxisFrequencies:
    """Official DyPE YaRN: static NTK-by-parts; dynamic moves all four thresholds by κ/2."""
    if axis_scale <= 1.0:
        return _base(config, dim, theta, axis_scale, global_scale, sigma)
    factor = decay_kappa(config, sigma) / 2.0 if config.enable_dype else 1.0
    omega_base = base_frequencies(dim, theta)
    omega = yarn_blend(
        omega_base,
        omega_base / axis_scale,
        ntk_frequencies(dim, theta, axis_scale),
        (STAGE1_ROTATIONS[0] * factor, STAGE1_ROTATIONS[1] * factor),
        (STAGE2_ROTATIONS[0] * factor, STAGE2_ROTATIONS[1] * factor),
        dim,
        theta,
        config.base_tokens,
    )
    return AxisFrequencies(omega, yarn_mscale(axis_scale))


def _vision_yarn(
    config: DyPEConfig, dim: int, theta: float, axis_scale: float, global_scale: float, sigma: float
) -> AxisFrequencies:
    """ComfyUI-DyPE v2.3.0 vision_yarn: per-axis interpolation, global NTK, thresholds raised to κ."""
    if global_scale <= 1.0:
        return _base(config, dim, theta, axis_scale, global_scale, sigma)
    kappa = vision_yarn_kappa(config, sigma) if config.enable_dype else 1.0
    omega_base = base_frequencies(dim, theta)
    omega = yarn_blend(
        omega_base,
        omega_base / max(axis_scale, 1.0),
        ntk_frequencies(dim, theta, global_scale),
        (STAGE1_ROTATIONS[0] ** kappa, STAGE1_ROTATIONS[1] ** kappa),
        (STAGE2_ROTATIONS[0] ** kappa, STAGE2_ROTATIONS[1] ** kappa),
        dim,
        theta,
        config.base_tokens,
    )
    return AxisFrequencies(omega, vision_yarn_amplitude(config, global_scale, sigma))


# Maps `DyPEConfig.method` to the function computing one spatial axis's frequencies.
DYPE_METHOD_FUNCTIONS: dict[str, DyPEMethodFn] = {
    "base": _base,
    "ntk": _ntk,
    "yarn": _yarn,
    "vision_yarn": _vision_yarn,
}


def axis_scales(config: DyPEConfig, height: int, width: int) -> tuple[float, float]:
    """Per-axis scales (s_1, s_2) = (H/B, W/B) for axis 1 (rows) and axis 2 (columns)."""
    return height / config.base_resolution, width / config.base_resolution


def dype_frequencies(
    config: DyPEConfig, axes_dim: list[int] | tuple[int, ...], theta: float, height: int, width: int, sigma: float
) -> list[AxisFrequencies]:
    """Frequencies and amplitude for each FLUX axis (index, rows, columns) at one step.

    Args:
        config: the DyPE configuration.
        axes_dim: per-axis rotary dimensions, three of them (FLUX: `[16, 56, 56]`).
        theta: RoPE base (FLUX: 10000).
        height, width: target image size in pixels.
        sigma: flow-matching σ of this step, in [0, 1].

    Returns:
        One `AxisFrequencies` per axis; axis 0 is always plain RoPE with amplitude 1.
    """
    method = DYPE_METHOD_FUNCTIONS[config.method]
    scales = axis_scales(config, height, width)
    global_scale = max(1.0, *scales)
    frequencies = [AxisFrequencies(base_frequencies(axes_dim[0], theta), 1.0)]
    for dim, scale in zip(axes_dim[1:], scales, strict=True):
        frequencies.append(method(config, dim, theta, scale, global_scale, sigma))
    return frequencies


def rotation_cos_sin(positions: Tensor, axis: AxisFrequencies) -> tuple[Tensor, Tensor]:
    """cos and sin of p·ω for positions [P] → two float32 tensors [P, dim/2], amplitude applied.

    Angles, cos and sin are computed in float64 and rounded to float32, then multiplied by the
    float32 amplitude (the official order, DYPE_SPEC.md §1).
    """
    angles = positions.to(torch.float64)[:, None] * axis.omega.to(positions.device)[None, :]
    cos, sin = torch.cos(angles).float(), torch.sin(angles).float()
    if axis.amplitude != 1.0:
        amplitude = torch.tensor(axis.amplitude, dtype=torch.float32)
        cos, sin = cos * amplitude, sin * amplitude
    return cos, sin


def bfl_rotation(cos: Tensor, sin: Tensor) -> Tensor:
    """[P, d] cos and sin → [P, d, 2, 2] rotation matrices [[cos, −sin], [sin, cos]] (BFL layout)."""
    return torch.stack([cos, -sin, sin, cos], dim=-1).unflatten(-1, (2, 2))


def diffusers_rotation(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """[P, d] cos and sin → two [P, 2d] tensors, each frequency in two adjacent columns (diffusers)."""
    return cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)


def rope_dype(
    pos: Tensor,
    dim: int,
    theta: float,
    config: DyPEConfig,
    *,
    axis_scale: float,
    global_scale: float,
    sigma: float,
) -> Tensor:
    """DyPE RoPE for one spatial axis in the BFL layout: the shape of FLUX's `rope`.

    Args:
        pos: positions along the axis, [..., N].
        dim: the axis's rotary dimension.
        theta: RoPE base.
        config: the DyPE configuration.
        axis_scale: this axis's target / base size (s_a); ≤ 1 means plain RoPE for ntk and yarn.
        global_scale: max(1, s_1, s_2), used by vision_yarn.
        sigma: σ of this step, in [0, 1].

    Returns:
        [..., N, dim/2, 2, 2] float32 rotation matrices.
    """
    axis = DYPE_METHOD_FUNCTIONS[config.method](config, dim, theta, axis_scale, global_scale, sigma)
    flat = pos.reshape(-1)
    return bfl_rotation(*rotation_cos_sin(flat, axis)).reshape(*pos.shape, dim // 2, 2, 2)


def embed_ids(
    ids: Tensor,
    axes_dim: list[int] | tuple[int, ...],
    theta: float,
    config: DyPEConfig,
    height: int,
    width: int,
    sigma: float,
    layout: Layout = "bfl",
) -> Tensor | tuple[Tensor, Tensor]:
    """The full DyPE position embedding of `ids`, computed directly (no caching).

    Args:
        ids: [B, N, 3] (bfl) or [N, 3] (diffusers) positions (index, row, column).
        layout: "bfl" returns pe [B, 1, N, Σd/2, 2, 2]; "diffusers" returns (cos, sin), each [N, Σd].
    """
    frequencies = dype_frequencies(config, axes_dim, theta, height, width, sigma)
    pieces = [rotation_cos_sin(ids[..., i].reshape(-1), axis) for i, axis in enumerate(frequencies)]
    if layout == "diffusers":
        cos, sin = zip(*(diffusers_rotation(c, s) for c, s in pieces), strict=True)
        return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)
    pe = torch.cat([bfl_rotation(c, s) for c, s in pieces], dim=-3)
    return pe.reshape(*ids.shape[:-1], -1, 2, 2).unsqueeze(1)
