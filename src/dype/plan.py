"""What DyPE will do for one image size, step by step: the numbers behind `dype plan`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dype.config import DyPEConfig
from dype.families import RopeFamily, get_family
from dype.math import base_frequencies, dype_frequencies, method_kappa, spatial_scales
from dype.schedule import schedule_mu, shifted_sigmas


@dataclass(frozen=True)
class AxisStep:
    """One spatial axis at one step: ω/ω_base per slot [dim/2], slot counts, amplitude."""

    ratio: list[float]
    at_base: int
    blended: int
    interpolated: int
    amplitude: float


@dataclass(frozen=True)
class PlanStep:
    """One sampling step: the σ the model receives, κ, and per spatial axis (rows, columns) what changes."""

    index: int
    sigma: float
    kappa: float | None
    axes: tuple[AxisStep, AxisStep]


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A whole run: the family, the size, the config (None = DyPE off), μ (None = no shift), per-axis scales."""

    family: RopeFamily
    width: int
    height: int
    config: DyPEConfig | None
    mu: float | None
    axis_scales: tuple[float, float]
    steps: list[PlanStep]


def _axis_step(omega: torch.Tensor, dim: int, theta: float, scale: float, amplitude: float) -> AxisStep:
    ratio = omega / base_frequencies(dim, theta)
    at_base = torch.isclose(ratio, torch.ones_like(ratio), rtol=0, atol=1e-12)
    interpolated = torch.isclose(ratio, torch.full_like(ratio, 1 / scale), rtol=0, atol=1e-12) & ~at_base
    return AxisStep(
        ratio=ratio.tolist(),
        at_base=int(at_base.sum()),
        blended=int((~at_base & ~interpolated).sum()),
        interpolated=int(interpolated.sum()),
        amplitude=amplitude,
    )


def make_plan(
    config: DyPEConfig | None,
    family: str | RopeFamily,
    *,
    width: int,
    height: int,
    num_steps: int,
    shift: str = "official",
    shifted: bool = True,
) -> Plan:
    """Per-step σ, κ and per-axis frequency ratios for an N-step run at W×H (config None = no DyPE)."""
    family = get_family(family)
    active = config is not None
    sigmas = shifted_sigmas(
        family, num_steps, width=width, height=height, dype_active=active, shift=shift, shifted=shifted
    )[:-1]  # the N model calls
    mu = schedule_mu(family, width=width, height=height, dype_active=active, shift=shift) if shifted else None
    plan_config = config if config is not None else DyPEConfig(method="base")
    scales = spatial_scales(plan_config, family, width=width, height=height)
    steps = []
    for index, sigma in enumerate(sigmas):
        frequencies = dype_frequencies(plan_config, family, width=width, height=height, sigma=sigma)
        axes = tuple(
            _axis_step(frequencies[axis].omega, family.axes_dim[axis], family.theta, max(scale, 1.0),
                       frequencies[axis].amplitude)
            for axis, scale in zip(family.spatial_axes, scales, strict=True)
        )  # fmt: skip
        steps.append(PlanStep(index, sigma, method_kappa(plan_config, sigma) if active else None, axes))
    return Plan(family=family, width=width, height=height, config=config, mu=mu, axis_scales=scales, steps=steps)
