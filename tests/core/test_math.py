"""Properties of the FLUX.1 frequency math, looped over the method registry (docs/math.md §2–§5)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dype import DYPE_METHOD_REGISTRY, DyPEConfig, dype_frequencies, embed_ids
from dype.math import SpatialAxis, base_frequencies, correction_range, ntk_frequencies, yarn_mscale
from tests.core.helpers import THETA, flux_ids, plain_embed

METHODS = sorted(DYPE_METHOD_REGISTRY)
BASE = base_frequencies(56, THETA)


def freqs(method: str, height: int, width: int, sigma: float, **config):
    config = DyPEConfig(method=method, **config)
    return dype_frequencies(config, "flux1", width=width, height=height, sigma=sigma)


def embed(ids, config: DyPEConfig, height: int, width: int, sigma: float):
    return embed_ids(ids, "flux1", config, width=width, height=height, sigma=sigma)


def test_registry_holds_the_four_methods() -> None:
    assert METHODS == ["base", "ntk", "vision_yarn", "yarn"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [(1024, 1024), (1024, 768), (512, 1024), (1024, 16)])
@pytest.mark.parametrize("dynamic", [True, False])
def test_at_or_below_base_equals_plain_rope(method: str, size: tuple[int, int], dynamic: bool) -> None:
    height, width = size
    ids = flux_ids(height, width, text_tokens=3)
    for sigma in (1.0, 0.5, 0.0):
        pe = embed(ids, DyPEConfig(method=method, enable_dype=dynamic), height, width, sigma)
        assert torch.equal(pe, plain_embed(ids))


@pytest.mark.parametrize("size", [(2048, 2048), (4096, 2160)])
def test_method_base_is_plain_rope_at_any_size(size: tuple[int, int]) -> None:
    ids = flux_ids(*size, text_tokens=3)
    pe = embed(ids, DyPEConfig(method="base"), *size, 0.7)
    assert torch.equal(pe, plain_embed(ids))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sigma", [1.0, 0.4, 0.0])
def test_axis_zero_is_always_plain(method: str, sigma: float) -> None:
    index_axis = freqs(method, 4096, 4096, sigma, dype_scale=8.0)[0]
    assert torch.equal(index_axis.omega, base_frequencies(16, THETA))
    assert index_axis.amplitude == 1.0


@pytest.mark.parametrize("method", ["ntk", "yarn", "base"])
@pytest.mark.parametrize("sigma", [1.0, 0.5, 0.1])
def test_axes_are_independent(method: str, sigma: float) -> None:
    """2048×1024 (H×W): only the row axis may change."""
    _, rows, columns = freqs(method, 2048, 1024, sigma)
    assert torch.equal(columns.omega, BASE) and columns.amplitude == 1.0
    if method != "base":
        assert not torch.equal(rows.omega, BASE)


def test_vision_yarn_reaches_the_unscaled_axis_through_the_global_scale() -> None:
    config = DyPEConfig()
    _, rows, columns = freqs("vision_yarn", 2048, 1024, 0.6)
    # Columns: interpolation by their own scale 1, NTK and amplitude from the global scale 2.
    rule = DYPE_METHOD_REGISTRY["vision_yarn"]
    expected = rule.frequencies(config, SpatialAxis(56, THETA, 64, 1.0, 2.0), rule.kappa(config, 0.6), 0.6)
    assert torch.equal(columns.omega, expected.omega) and columns.amplitude == expected.amplitude
    assert not torch.equal(columns.omega, BASE) and not torch.equal(columns.omega, rows.omega)
    assert rows.amplitude == columns.amplitude > 1.0


@pytest.mark.parametrize("size", [(2048, 2048), (1536, 3072)])
def test_dynamic_at_sigma_one_versus_static(size: tuple[int, int]) -> None:
    height, width = size
    # yarn: at τ = 1 (defaults) dynamic equals static.
    static_yarn = freqs("yarn", height, width, 1.0, enable_dype=False)
    for dyn, static in zip(freqs("yarn", height, width, 1.0), static_yarn, strict=True):
        assert torch.equal(dyn.omega, static.omega) and dyn.amplitude == static.amplitude
    # ntk: at τ = 1 the dynamic exponent is κ = 2 times the static one.
    for axis, scale in ((1, height / 1024), (2, width / 1024)):
        dyn, static = freqs("ntk", height, width, 1.0)[axis], freqs("ntk", height, width, 1.0, enable_dype=False)[axis]
        assert torch.equal(static.omega, ntk_frequencies(56, THETA, scale))
        assert torch.equal(dyn.omega, ntk_frequencies(56, THETA, scale, strength=2.0))
    # vision_yarn: static is κ = 1 with full amplitude, i.e. dynamic at σ = 1 with λs = 1.
    static = freqs("vision_yarn", height, width, 0.3, enable_dype=False)
    dynamic = freqs("vision_yarn", height, width, 1.0, dype_scale=1.0)
    for d, s in zip(dynamic, static, strict=True):
        assert torch.equal(d.omega, s.omega) and d.amplitude == s.amplitude
    assert not torch.equal(freqs("vision_yarn", height, width, 1.0)[1].omega, static[1].omega)


@pytest.mark.parametrize("method", ["ntk", "yarn", "vision_yarn"])
def test_sigma_modulates_dynamic_and_not_static(method: str) -> None:
    early, late = freqs(method, 2048, 2048, 1.0)[1], freqs(method, 2048, 2048, 0.3)[1]
    assert not torch.equal(early.omega, late.omega)
    static_early = freqs(method, 2048, 2048, 1.0, enable_dype=False)[1]
    static_late = freqs(method, 2048, 2048, 0.3, enable_dype=False)[1]
    assert torch.equal(static_early.omega, static_late.omega) and static_early.amplitude == static_late.amplitude


def test_vision_yarn_scaling_at_2048() -> None:
    """Static thresholds at κ = 1: j=0 base, 1–4 base/NTK, 5–6 NTK, 7 half NTK/half linear, ≥ 8 linear."""
    rows = freqs("vision_yarn", 2048, 2048, 1.0, dype_scale=1.0)[1]
    ntk = ntk_frequencies(56, THETA, 2.0)
    assert rows.omega[0] == BASE[0]
    for j in range(1, 5):
        assert ntk[j] < rows.omega[j] < BASE[j]
    assert torch.equal(rows.omega[5:7], ntk[5:7])
    assert float(rows.omega[7]) == pytest.approx(float(0.5 * ntk[7] + 0.5 * BASE[7] / 2), rel=1e-15)
    assert torch.equal(rows.omega[8:], BASE[8:] / 2)
    assert rows.amplitude == pytest.approx(1 + 0.1 * math.log(2.0), rel=1e-15)
    # Amplitude decays with σ^λt below the start σ, and vision_yarn does not return to plain at σ = 0.
    late = freqs("vision_yarn", 2048, 2048, 0.0)[1]
    assert late.amplitude == 1.0
    assert torch.equal(late.omega[8:], BASE[8:] / 2)


def test_yarn_mscale_is_per_axis() -> None:
    _, rows, columns = freqs("yarn", 3072, 2048, 0.5)
    assert rows.amplitude == pytest.approx(yarn_mscale(3.0)) and columns.amplitude == pytest.approx(yarn_mscale(2.0))


@pytest.mark.parametrize("rotations", [(1.25, 0.75), (16.0, 2.0)])
@pytest.mark.parametrize("factor", [0.0, 1e-9, 1e-4, 0.01, 0.024, 0.5, 1.0, 4.0, 50.0, 1e6])
def test_correction_range_never_inverts(rotations: tuple[float, float], factor: float) -> None:
    lo, hi = correction_range((rotations[0] * factor, rotations[1] * factor), 56, THETA, 64)
    assert 0.0 <= lo < hi <= 28.001


def test_guard_yarn_tiny_sigma_moves_monotonically_to_base() -> None:
    """No inverted ramp for tiny σ (the official yarn jumps to interpolation below τ ≈ 0.024 and divides by
    zero at 0): as σ falls every frequency moves towards ω_base, never away, and reaches it at σ = 0."""
    sigmas = [1.0, 0.5, 0.2, 0.1, 0.05, 0.024, 0.01, 1e-3, 1e-5, 0.0]
    omegas = [freqs("yarn", 4096, 4096, s)[1].omega for s in sigmas]
    for earlier, later in itertools.pairwise(omegas):
        assert torch.all(later >= earlier * (1 - 1e-12))
    assert torch.equal(omegas[-1], BASE)


def test_guard_vision_yarn_tiny_sigma_settles_at_the_sigma_zero_frequencies() -> None:
    """κ ≤ 0.0066 gives the t = 0 frequencies (boundaries (7, 8)): j ≤ 7 base, j ≥ 8 interpolated."""
    at_zero = freqs("vision_yarn", 4096, 4096, 0.0)[1].omega
    assert torch.equal(at_zero[:8], BASE[:8]) and torch.equal(at_zero[8:], BASE[8:] / 4)
    for sigma in (1e-2, 1e-3, 1e-6):  # κ = 2σ² ≤ 2e-4
        assert torch.equal(freqs("vision_yarn", 4096, 4096, sigma)[1].omega, at_zero)


def test_guard_large_kappa_keeps_extrapolating() -> None:
    """κ ≥ 3.823 (λs = 8 at σ = 1): the port falls back to plain RoPE; we keep j = 0 base, the rest stage 1."""
    rows = freqs("vision_yarn", 4096, 4096, 1.0, dype_scale=8.0)[1]
    assert rows.omega[0] == BASE[0]
    assert torch.all(rows.omega[1:] < BASE[1:])
    # Continuity with the port's own result just below the guarded region (κ = 3.6 and 3.82).
    below = freqs("vision_yarn", 4096, 4096, 1.0, dype_scale=3.6)[1]
    assert torch.all(below.omega[1:] < BASE[1:])


def test_zero_scale_and_zero_exponent() -> None:
    """λs = 0 pins κ to 0 (not "off"); λt = 0 gives κ = λs at every σ (0^0 = 1)."""
    pinned = freqs("vision_yarn", 2048, 2048, 0.9, dype_scale=0.0)[1]
    at_zero = freqs("vision_yarn", 2048, 2048, 0.0)[1]
    assert torch.equal(pinned.omega, at_zero.omega)
    flat = [freqs("vision_yarn", 2048, 2048, s, dype_exponent=0.0)[1].omega for s in (1.0, 0.5, 0.0)]
    assert torch.equal(flat[0], flat[1]) and torch.equal(flat[1], flat[2])
    yarn_zero = freqs("yarn", 2048, 2048, 0.7, dype_scale=0.0)[1]
    assert torch.equal(yarn_zero.omega, BASE)
