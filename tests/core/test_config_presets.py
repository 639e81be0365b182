"""Config validation, presets (spec §7) and the schedule rule (spec §6)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dype import DYPE_PRESETS, DyPEConfig, get_dype_config_for_resolution, resolve_dype_config
from dype.schedule import DYPE_MU, flux_mu, image_seq_len, schedule_mu, shifted_sigmas, time_shift


def test_defaults() -> None:
    config = DyPEConfig()
    assert (config.enable_dype, config.base_resolution, config.method) == (True, 1024, "vision_yarn")
    assert (config.dype_scale, config.dype_exponent, config.dype_start_sigma) == (2.0, 2.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dype_scale = 3.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", "longrope", "method must be one of vision_yarn, yarn, ntk, base"),
        ("method", None, "method must be one of"),
        ("dype_scale", 8.5, r"dype_scale must be in \[0, 8\]"),
        ("dype_scale", -0.1, r"dype_scale must be in \[0, 8\]"),
        ("dype_scale", float("nan"), "dype_scale must be finite"),
        ("dype_scale", "2", "dype_scale must be a number"),
        ("dype_exponent", 1001, r"dype_exponent must be in \[0, 1000\]"),
        ("dype_exponent", True, "dype_exponent must be a number"),
        ("dype_start_sigma", 0.0, r"dype_start_sigma must be in \(0, 1\]"),
        ("dype_start_sigma", 1.5, r"dype_start_sigma must be in \(0, 1\]"),
        ("base_resolution", 1000, "base_resolution must be a positive multiple of 16"),
        ("base_resolution", 0, "base_resolution must be a positive multiple of 16"),
        ("enable_dype", "yes", "enable_dype must be True or False"),
    ],
)
def test_every_invalid_field_raises_naming_it(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DyPEConfig(**{field: value})


def test_presets_listed() -> None:
    assert DYPE_PRESETS == ("off", "manual", "auto", "area", "4k")


def test_off_and_off_with_scale() -> None:
    assert resolve_dype_config("off", 4096, 4096) is None
    config = resolve_dype_config("off", 4096, 4096, dype_scale=3.0)
    assert (config.method, config.dype_scale, config.dype_exponent, config.dype_start_sigma) == (
        "vision_yarn",
        3,
        2,
        1,
    )
    assert resolve_dype_config("off", 4096, 4096, dype_scale=3.0, dype_exponent=5.0).dype_exponent == 5.0


@pytest.mark.parametrize(
    ("width", "height", "scale"),
    [(1536, 1536, None), (1552, 1024, 2 * 1552 / 1024), (2048, 2048, 4.0), (3840, 2160, 7.5), (4096, 4096, 8.0)],
)
def test_auto(width: int, height: int, scale: float | None) -> None:
    config = resolve_dype_config("auto", width, height)
    assert config == get_dype_config_for_resolution(width, height)
    if scale is None:
        assert config is None
    else:
        assert (config.method, config.dype_scale, config.dype_exponent) == ("vision_yarn", pytest.approx(scale), 2.0)


def test_area_uses_the_geometric_side() -> None:
    assert resolve_dype_config("area", 2048, 1024) is None  # √(2048·1024) = 1448 ≤ 1536
    assert resolve_dype_config("auto", 2048, 1024) is not None
    config = resolve_dype_config("area", 3840, 2160)
    assert config.dype_scale == pytest.approx(2 * math.sqrt(3840 * 2160) / 1024)


def test_4k_and_manual() -> None:
    for preset in ("4k", "manual"):
        config = resolve_dype_config(preset, 3840, 2160)
        assert (config.method, config.dype_scale, config.dype_exponent, config.dype_start_sigma) == (
            "vision_yarn", 2.0, 2.0, 1.0)  # fmt: skip
    manual = resolve_dype_config("manual", 1024, 1024, dype_scale=5.0, dype_exponent=0.5, method="yarn")
    assert (manual.method, manual.dype_scale, manual.dype_exponent) == ("yarn", 5.0, 0.5)


def test_overrides_apply_whenever_a_preset_turns_dype_on() -> None:
    assert resolve_dype_config("4k", 3840, 2160, dype_scale=6.0).dype_scale == 6.0
    assert resolve_dype_config("auto", 3840, 2160, dype_exponent=3.0).dype_exponent == 3.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "on"}, "dype_preset must be one of off, manual, auto, area, 4k"),
        ({"preset": "AUTO"}, "dype_preset must be one of"),
        ({"width": 1000}, "width must be a positive multiple of 16"),
        ({"height": 0}, "height must be a positive multiple of 16"),
        ({"dype_scale": 9.0}, r"dype_scale must be in \[0, 8\]"),
        ({"dype_exponent": -1.0}, r"dype_exponent must be in \[0, 1000\]"),
        ({"method": "dynamic"}, "dype_method must be one of vision_yarn, yarn, ntk, base"),
    ],
)
def test_invalid_preset_arguments(kwargs: dict, message: str) -> None:
    args = {"preset": "auto", "width": 2048, "height": 2048} | kwargs
    with pytest.raises(ValueError, match=message):
        resolve_dype_config(**args)


@pytest.mark.parametrize(
    ("width", "height", "mu"), [(1024, 1024, 1.15), (2048, 2048, 3.23), (3840, 2160, 5.94), (4096, 4096, 11.55)]
)
def test_stock_mu_is_uncapped(width: int, height: int, mu: float) -> None:
    assert flux_mu(image_seq_len(width, height)) == pytest.approx(mu, abs=0.005)
    assert schedule_mu(width, height, dype_active=False) == pytest.approx(mu, abs=0.005)
    assert schedule_mu(width, height, dype_active=True, shift="stock") == pytest.approx(mu, abs=0.005)
    assert schedule_mu(width, height, dype_active=True) == DYPE_MU


def test_shifted_sigmas_match_invokeai_get_schedule() -> None:
    from invokeai.backend.flux.sampling_utils import get_schedule

    for size, steps in (((2048, 2048), 8), ((4096, 4096), 30)):
        ours = shifted_sigmas(steps, *size, dype_active=False)
        theirs = get_schedule(steps, image_seq_len(*size))
        assert ours == pytest.approx(theirs, abs=1e-6)
        assert shifted_sigmas(4, *size, dype_active=False, shifted=False) == [1.0, 0.75, 0.5, 0.25, 0.0]
    # At 4096², stock μ keeps 29 of 30 steps at σ ≈ 1; the pinned μ decays.
    stock = shifted_sigmas(30, 4096, 4096, dype_active=True, shift="stock")[:-1]
    pinned = shifted_sigmas(30, 4096, 4096, dype_active=True)[:-1]
    assert sum(s > 0.999 for s in stock) >= 28 and sum(s < 0.5 for s in stock) == 0
    assert sum(s < 0.5 for s in pinned) >= 7 and sum(s > 0.999 for s in pinned) <= 1
    assert time_shift(DYPE_MU, 0.0) == 0.0 and time_shift(DYPE_MU, 1.0) == 1.0


def test_schedule_validation() -> None:
    with pytest.raises(ValueError, match="dype_shift must be one of official, stock"):
        schedule_mu(2048, 2048, True, shift="capped")
    with pytest.raises(ValueError, match="num_steps"):
        shifted_sigmas(0, 2048, 2048, True)
