"""DyPE frequency math (docs/math.md): small pure functions, one registry of methods, N axes.

Every method has one signature (`FrequencyFn`): given the config, one spatial axis (`SpatialAxis`: its
rotary dimension, θ, the base grid L0 = B / pixels-per-token, its own scale s_a = target / base size and
the image's global scale S = max(1, s_rows, s_columns)), the step's κ (from the method's own `KappaFn`;
None for a static method) and σ, it returns that axis's angular frequencies ω (float64 [dim/2]) and its
amplitude (the YaRN attention factor, multiplied into cos and sin). The family's other axes (index, text,
reference axes) never reach a method: they are always plain RoPE with amplitude 1.

Provenance: `ntk` and `yarn` follow the official DyPE code (github.com/guyyariv/DyPE @ 436fe61);
`vision_yarn` follows ComfyUI-DyPE v2.3.0 (github.com/wildminder/ComfyUI-DyPE @ 3fd9149), computed in
float64, with the boundary guard of docs/math.md §4 where both references break.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from dype.config import DyPEConfig
from dype.families import Layout, RopeFamily, get_family

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


class SpatialAxis(NamedTuple):
    """One spatial axis as a method sees it.

    Attributes:
        dim: rotary dimension d of the axis.
        theta: the family's RoPE base.
        base_tokens: L0 = B / pixels-per-token, tokens per side at the base resolution.
        scale: s_a = target / B along this axis (the larger one on both axes when isotropic).
        global_scale: S = max(1, s_rows, s_columns).
    """

    dim: int
    theta: float
    base_tokens: int
    scale: float
    global_scale: float


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
    """Ramp boundaries (lo, hi) for a threshold pair, with the boundary guard of docs/math.md §4.

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
    axis: SpatialAxis,
    omega_base: Tensor,
    omega_linear: Tensor,
    omega_ntk: Tensor,
    stage1: tuple[float, float],
    stage2: tuple[float, float],
) -> Tensor:
    """Two-stage NTK-by-parts blend [dim/2]: ω¹ = ρ·ω_lin + (1−ρ)·ω_ntk, ω = ρ'·ω¹ + (1−ρ')·ω_base."""
    half = axis.dim // 2
    ramp1 = linear_ramp(*correction_range(stage1, axis.dim, axis.theta, axis.base_tokens), half)
    blended = ramp1 * omega_linear + (1.0 - ramp1) * omega_ntk
    ramp2 = linear_ramp(*correction_range(stage2, axis.dim, axis.theta, axis.base_tokens), half)
    return ramp2 * blended + (1.0 - ramp2) * omega_base


def yarn_mscale(scale: float) -> float:
    """YaRN attention factor 1 + 0.1·ln(scale), 1 for scale ≤ 1."""
    return 1.0 + MSCALE_COEFFICIENT * math.log(scale) if scale > 1.0 else 1.0


def decay_kappa(config: DyPEConfig, sigma: float) -> float | None:
    """ntk, yarn: κ = λs·τ^λt with τ = clamp(σ / start σ, 0, 1), 0^0 = 1; None when static."""
    if not config.enable_dype:
        return None
    tau = min(max(sigma / config.dype_start_sigma, 0.0), 1.0)
    return config.dype_scale * tau**config.dype_exponent


def vision_yarn_kappa(config: DyPEConfig, sigma: float) -> float | None:
    """vision_yarn: κ = λs·t^λt with t = clamp(σ, 0, 1) (the start σ does not act here); None when static."""
    if not config.enable_dype:
        return None
    return config.dype_scale * min(max(sigma, 0.0), 1.0) ** config.dype_exponent


def no_kappa(config: DyPEConfig, sigma: float) -> None:
    """base: no time dependence."""
    return None


def vision_yarn_amplitude(config: DyPEConfig, global_scale: float, sigma: float) -> float:
    """m = 1 + 0.1·ln(S)·τ_m^λt, τ_m = 1 above the start σ, else t / start σ (static: τ_m = 1)."""
    t = min(max(sigma, 0.0), 1.0)
    tau_m = 1.0 if not config.enable_dype or t > config.dype_start_sigma else t / config.dype_start_sigma
    return 1.0 + MSCALE_COEFFICIENT * math.log(global_scale) * tau_m**config.dype_exponent


KappaFn = Callable[[DyPEConfig, float], float | None]
FrequencyFn = Callable[[DyPEConfig, SpatialAxis, float | None, float], AxisFrequencies]


def _base(config: DyPEConfig, axis: SpatialAxis, kappa: float | None, sigma: float) -> AxisFrequencies:
    """Plain RoPE at any size: no extrapolation (a control)."""
    return AxisFrequencies(base_frequencies(axis.dim, axis.theta), 1.0)


def _ntk(config: DyPEConfig, axis: SpatialAxis, kappa: float | None, sigma: float) -> AxisFrequencies:
    """NTK-aware θ scaling on the axis; dynamic: the exponent is multiplied by κ. No amplitude."""
    if axis.scale <= 1.0:
        return _base(config, axis, kappa, sigma)
    strength = 1.0 if kappa is None else kappa
    return AxisFrequencies(ntk_frequencies(axis.dim, axis.theta, axis.scale, strength), 1.0)


def _yarn(config: DyPEConfig, axis: SpatialAxis, kappa: float | None, sigma: float) -> AxisFrequencies:
    """Official DyPE YaRN: static NTK-by-parts; dynamic moves all four thresholds by κ/2."""
    if axis.scale <= 1.0:
        return _base(config, axis, kappa, sigma)
    factor = 1.0 if kappa is None else kappa / 2.0
    omega_base = base_frequencies(axis.dim, axis.theta)
    omega = yarn_blend(
        axis,
        omega_base,
        omega_base / axis.scale,
        ntk_frequencies(axis.dim, axis.theta, axis.scale),
        (STAGE1_ROTATIONS[0] * factor, STAGE1_ROTATIONS[1] * factor),
        (STAGE2_ROTATIONS[0] * factor, STAGE2_ROTATIONS[1] * factor),
    )
    return AxisFrequencies(omega, yarn_mscale(axis.scale))


def _vision_yarn(config: DyPEConfig, axis: SpatialAxis, kappa: float | None, sigma: float) -> AxisFrequencies:
    """ComfyUI-DyPE v2.3.0 vision_yarn: per-axis interpolation, global NTK, thresholds raised to κ."""
    if axis.global_scale <= 1.0:
        return _base(config, axis, kappa, sigma)
    exponent = 1.0 if kappa is None else kappa
    omega_base = base_frequencies(axis.dim, axis.theta)
    omega = yarn_blend(
        axis,
        omega_base,
        omega_base / max(axis.scale, 1.0),
        ntk_frequencies(axis.dim, axis.theta, axis.global_scale),
        (STAGE1_ROTATIONS[0] ** exponent, STAGE1_ROTATIONS[1] ** exponent),
        (STAGE2_ROTATIONS[0] ** exponent, STAGE2_ROTATIONS[1] ** exponent),
    )
    return AxisFrequencies(omega, vision_yarn_amplitude(config, axis.global_scale, sigma))


@dataclass(frozen=True)
class DyPEMethodRule:
    """One method: its per-axis frequencies and the κ it uses at σ (as transformers' ROPE_INIT_FUNCTIONS)."""

    frequencies: FrequencyFn
    kappa: KappaFn


# Maps `DyPEConfig.method` to its rule.
DYPE_METHOD_REGISTRY: dict[str, DyPEMethodRule] = {
    "base": DyPEMethodRule(_base, no_kappa),
    "ntk": DyPEMethodRule(_ntk, decay_kappa),
    "yarn": DyPEMethodRule(_yarn, decay_kappa),
    "vision_yarn": DyPEMethodRule(_vision_yarn, vision_yarn_kappa),
}


def method_kappa(config: DyPEConfig, sigma: float) -> float | None:
    """The κ `config.method` uses at σ, None when it has no time dependence (static, or `base`)."""
    return DYPE_METHOD_REGISTRY[config.method].kappa(config, sigma)


def spatial_scales(config: DyPEConfig, family: str | RopeFamily, *, width: int, height: int) -> tuple[float, float]:
    """(s_rows, s_columns) = (H/B, W/B); both the larger one when the config is isotropic for the family."""
    family = get_family(family)
    base = config.base_resolution_for(family)
    rows, columns = height / base, width / base
    if config.isotropic_for(family):
        rows = columns = max(rows, columns)
    return rows, columns


def dype_frequencies(
    config: DyPEConfig, family: str | RopeFamily, *, width: int, height: int, sigma: float
) -> list[AxisFrequencies]:
    """Frequencies and amplitude for every axis of `family` at one step.

    Args:
        config: the DyPE configuration.
        family: the model's RoPE family (its θ, axes, spatial axes, pixels per token).
        width, height: target image size in pixels.
        sigma: flow-matching σ of this step, in [0, 1].

    Returns:
        One `AxisFrequencies` per id axis; plain axes are plain RoPE with amplitude 1.
    """
    family = get_family(family)
    rule = DYPE_METHOD_REGISTRY[config.method]
    rows, columns = spatial_scales(config, family, width=width, height=height)
    global_scale = max(1.0, rows, columns)
    base_tokens = config.base_resolution_for(family) // family.pixels_per_token
    kappa = rule.kappa(config, sigma)
    scale_of = {family.row_axis: rows, family.column_axis: columns}
    frequencies = []
    for axis, dim in enumerate(family.axes_dim):
        if axis in scale_of:
            spatial = SpatialAxis(dim, family.theta, base_tokens, scale_of[axis], global_scale)
            frequencies.append(rule.frequencies(config, spatial, kappa, sigma))
        else:
            frequencies.append(AxisFrequencies(base_frequencies(dim, family.theta), 1.0))
    return frequencies


# --- rounding: positions → float32 cos and sin, as the host computes them ------------------------------


def cos_sin_float64_angles(positions: Tensor, axis: AxisFrequencies) -> tuple[Tensor, Tensor]:
    """FLUX rounding: angles, cos and sin in float64, rounded to float32, times the float32 amplitude.

    positions [P] → (cos, sin), each float32 [P, dim/2] (the official order, docs/math.md §1).
    """
    angles = positions.to(torch.float64)[:, None] * axis.omega.to(positions.device)[None, :]
    cos, sin = torch.cos(angles).float(), torch.sin(angles).float()
    if axis.amplitude != 1.0:
        amplitude = torch.tensor(axis.amplitude, dtype=torch.float32)
        cos, sin = cos * amplitude, sin * amplitude
    return cos, sin


def cos_sin_float32_angles(positions: Tensor, axis: AxisFrequencies) -> tuple[Tensor, Tensor]:
    """Z-Image rounding: the float64 angle rounded to float32, then `torch.polar(amplitude, angle)`.

    positions [P] → (cos, sin), the real and imaginary parts of that complex64 [P, dim/2].
    """
    angles = (positions.to(torch.float64)[:, None] * axis.omega.to(positions.device)[None, :]).float()
    rotation = torch.polar(torch.full_like(angles, axis.amplitude), angles)
    return rotation.real, rotation.imag


ROUNDING_FUNCTIONS: dict[str, Callable[[Tensor, AxisFrequencies], tuple[Tensor, Tensor]]] = {
    "float64_angle": cos_sin_float64_angles,
    "float32_angle": cos_sin_float32_angles,
}


# --- output layouts: per-axis tables [P, ...] that are gathered per token and concatenated ------------


def bfl_rotation(cos: Tensor, sin: Tensor) -> tuple[Tensor]:
    """[P, d] cos and sin → ([P, d, 2, 2] rotation matrices [[cos, −sin], [sin, cos]],) (BFL layout)."""
    return (torch.stack([cos, -sin, sin, cos], dim=-1).unflatten(-1, (2, 2)),)


def interleaved_cos_sin(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """[P, d] cos and sin → two [P, 2d] tensors, each slot in two adjacent columns (diffusers)."""
    return cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)


def complex_rotation(cos: Tensor, sin: Tensor) -> tuple[Tensor]:
    """[P, d] cos and sin → ([P, d] complex64 cos + i·sin,) (Z-Image)."""
    return (torch.complex(cos, sin),)


@dataclass(frozen=True)
class OutputLayout:
    """How one layout builds a per-axis table and joins the axes.

    `table(cos, sin)` makes a tuple of per-position tensors [P, ...]; tokens gather rows of each, and the
    axes are concatenated along `concat_dim` (of the gathered [M, ...] tensors). A one-tensor tuple is
    returned as that tensor.
    """

    table: Callable[[Tensor, Tensor], tuple[Tensor, ...]]
    concat_dim: int

    def join(self, parts_per_axis: list[tuple[Tensor, ...]]) -> Tensor | tuple[Tensor, ...]:
        joined = tuple(torch.cat(parts, dim=self.concat_dim) for parts in zip(*parts_per_axis, strict=True))
        return joined[0] if len(joined) == 1 else joined


OUTPUT_LAYOUTS: dict[str, OutputLayout] = {
    "bfl": OutputLayout(bfl_rotation, concat_dim=-3),
    "diffusers": OutputLayout(interleaved_cos_sin, concat_dim=-1),
    "complex": OutputLayout(complex_rotation, concat_dim=-1),
}


def embed_positions(
    positions: Tensor, frequencies: list[AxisFrequencies], family: RopeFamily, layout: Layout
) -> Tensor | tuple[Tensor, ...]:
    """[M, A] positions → the layout's embedding of M tokens, computed directly (no caching).

    Returns (per layout): bfl [M, Σd/2, 2, 2]; diffusers (cos, sin) each [M, Σd]; complex [M, Σd/2].
    """
    rounding, output = ROUNDING_FUNCTIONS[family.rounding], OUTPUT_LAYOUTS[layout]
    return output.join([output.table(*rounding(positions[:, i], axis)) for i, axis in enumerate(frequencies)])


def embed_ids(
    ids: Tensor,
    family: str | RopeFamily,
    config: DyPEConfig,
    *,
    width: int,
    height: int,
    sigma: float,
    layout: Layout | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """The full DyPE position embedding of `ids`, computed directly (the reference for the cached embedder).

    Args:
        ids: [B, N, A] (bfl) or [N, A] positions, A = len(family.axes_dim).
        family: the model's RoPE family.
        layout: the family's first layout when None. bfl returns pe [B, 1, N, Σd/2, 2, 2]; diffusers
            (cos, sin), each [N, Σd]; complex [N, Σd/2] complex64.
    """
    family = get_family(family)
    layout = family.layouts[0] if layout is None else layout
    frequencies = dype_frequencies(config, family, width=width, height=height, sigma=sigma)
    out = embed_positions(ids.reshape(-1, ids.shape[-1]), frequencies, family, layout)
    if layout == "bfl":
        return out.reshape(*ids.shape[:-1], -1, 2, 2).unsqueeze(1)
    return out
