"""What DyPE will do for one image size, step by step: the numbers behind `dype plan`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dype.config import DyPEConfig
from dype.math import axis_scales, base_frequencies, decay_kappa, dype_frequencies, vision_yarn_kappa
from dype.schedule import schedule_mu, shifted_sigmas

FLUX_AXES_DIM = (16, 56, 56)
FLUX_THETA = 10_000.0


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


@dataclass(frozen=True)
class Plan:
    width: int
    height: int
    config: DyPEConfig | None
    mu: float | None
    axis_scales: tuple[float, float]
    steps: list[PlanStep]


def step_kappa(config: DyPEConfig, sigma: float) -> float | None:
    """The κ a dynamic method uses at σ (vision_yarn from σ, ntk/yarn from σ / start σ); None if static."""
    if config.method == "base" or not config.enable_dype:
        return None
    return vision_yarn_kappa(config, sigma) if config.method == "vision_yarn" else decay_kappa(config, sigma)


def _axis_step(omega: torch.Tensor, dim: int, scale: float, amplitude: float) -> AxisStep:
    ratio = omega / base_frequencies(dim, FLUX_THETA)
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
    config: DyPEConfig | None, width: int, height: int, num_steps: int, shift: str = "official", shifted: bool = True
) -> Plan:
    """Per-step σ, κ and per-axis frequency ratios for an N-step FLUX run at W×H (config None = no DyPE)."""
    active = config is not None
    sigmas = shifted_sigmas(num_steps, width, height, active, shift, shifted)[:-1]  # the N model calls
    mu = schedule_mu(width, height, active, shift) if shifted else None
    plan_config = config if config is not None else DyPEConfig(method="base")
    scales = axis_scales(plan_config, height, width)
    steps = []
    for index, sigma in enumerate(sigmas):
        _, rows, columns = dype_frequencies(plan_config, FLUX_AXES_DIM, FLUX_THETA, height, width, sigma)
        axes = tuple(
            _axis_step(axis.omega, dim, max(scale, 1.0), axis.amplitude)
            for axis, dim, scale in zip((rows, columns), FLUX_AXES_DIM[1:], scales, strict=True)
        )
        steps.append(PlanStep(index, sigma, step_kappa(plan_config, sigma) if active else None, axes))
    return Plan(width, height, config, mu, scales, steps)
