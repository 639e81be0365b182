"""Config validation, presets (docs/math.md §7) and the schedule rule (§6)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dype import DYPE_PRESETS, DyPEConfig, resolve_dype_config
from dype.families import FLUX1
from dype.schedule import image_seq_len, schedule_mu, shifted_sigmas, stock_mu, time_shift

DYPE_MU = FLUX1.dype_mu


def resolve(preset: str, width: int, height: int, **kwargs):
    return resolve_dype_config(preset, width=width, height=height, **kwargs)


def test_defaults() -> None:
    config = DyPEConfig()
    assert (config.enable_dype, config.base_resolution, config.method) == (True, None, "vision_yarn")
    assert config.base_resolution_for("flux1") == 1024 and config.base_resolution_for("flux2") == 2048
    assert config.isotropic is None and config.isotropic_for("z_image") and not config.isotropic_for("flux1")
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
        ("dype_scale", float("nan"), "dype_scale must be a finite number"),
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


def test_off_is_off_whatever_scale_and_exponent_hold() -> None:
    """docs/math.md §7: InvokeAI's UIs always send a scale and an exponent; only `manual` reads them."""
    assert resolve("off", 4096, 4096) is None
    assert resolve("off", 4096, 4096, dype_scale=3.0) is None
    assert resolve("off", 4096, 4096, dype_scale=2.0, dype_exponent=2.0) is None  # the Linear UI's payload
    assert resolve("off", 4096, 4096, dype_scale=0.0, dype_exponent=0.0) is None  # the workflow editor's


@pytest.mark.parametrize(
    ("width", "height", "scale"),
    [(1536, 1536, None), (1552, 1024, 2 * 1552 / 1024), (2048, 2048, 4.0), (3840, 2160, 7.5), (4096, 4096, 8.0)],
)
def test_auto(width: int, height: int, scale: float | None) -> None:
    config = resolve("auto", width, height)
    assert config == resolve("auto", width, height, dype_scale=2.0, dype_exponent=2.0)  # Linear UI: ignored
    if scale is None:
        assert config is None
    else:
        assert (config.method, config.dype_scale, config.dype_exponent) == ("vision_yarn", pytest.approx(scale), 2.0)


def test_area_uses_the_geometric_side() -> None:
    assert resolve("area", 2048, 1024) is None  # √(2048·1024) = 1448 ≤ 1536
    assert resolve("auto", 2048, 1024) is not None
    config = resolve("area", 3840, 2160)
    assert config.dype_scale == pytest.approx(2 * math.sqrt(3840 * 2160) / 1024)


def test_4k_and_manual() -> None:
    for preset in ("4k", "manual"):
        config = resolve(preset, 3840, 2160)
        assert (config.method, config.dype_scale, config.dype_exponent, config.dype_start_sigma) == (
            "vision_yarn", 2.0, 2.0, 1.0)  # fmt: skip
    manual = resolve("manual", 1024, 1024, dype_scale=5.0, dype_exponent=0.5, method="yarn")
    assert (manual.method, manual.dype_scale, manual.dype_exponent) == ("yarn", 5.0, 0.5)


def test_only_manual_reads_scale_and_exponent() -> None:
    assert resolve("4k", 3840, 2160, dype_scale=6.0).dype_scale == 2.0
    assert resolve("auto", 3840, 2160, dype_exponent=3.0).dype_exponent == 2.0
    assert resolve("auto", 3840, 2160, dype_scale=0.0, dype_exponent=0.0).dype_scale == 7.5  # workflow editor
    manual = resolve("manual", 3840, 2160, dype_scale=0.0, dype_exponent=0.0)  # 0 is taken as given
    assert (manual.dype_scale, manual.dype_exponent) == (0.0, 0.0)


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
        resolve_dype_config(args.pop("preset"), **args)


@pytest.mark.parametrize(
    ("width", "height", "mu"), [(1024, 1024, 1.15), (2048, 2048, 3.23), (3840, 2160, 5.94), (4096, 4096, 11.55)]
)
def test_stock_mu_is_uncapped(width: int, height: int, mu: float) -> None:
    assert stock_mu("flux1", width=width, height=height) == pytest.approx(mu, abs=0.005)
    size = dict(width=width, height=height)
    assert schedule_mu("flux1", **size, dype_active=False) == pytest.approx(mu, abs=0.005)
    assert schedule_mu("flux1", **size, dype_active=True, shift="stock") == pytest.approx(mu, abs=0.005)
    assert schedule_mu("flux1", **size, dype_active=True) == DYPE_MU
    assert image_seq_len("flux1", **size) == (width // 16) * (height // 16)


def test_shifted_sigmas_match_invokeai_get_schedule() -> None:
    from invokeai.backend.flux.sampling_utils import get_schedule

    for size, steps in (((2048, 2048), 8), ((4096, 4096), 30)):
        wh = dict(width=size[0], height=size[1])
        ours = shifted_sigmas("flux1", steps, **wh, dype_active=False)
        theirs = get_schedule(steps, image_seq_len("flux1", **wh))
        assert ours == pytest.approx(theirs, abs=1e-6)
        assert shifted_sigmas("flux1", 4, **wh, dype_active=False, shifted=False) == [1.0, 0.75, 0.5, 0.25, 0.0]
    # At 4096², stock μ keeps 29 of 30 steps at σ ≈ 1; the pinned μ decays.
    stock = shifted_sigmas("flux1", 30, width=4096, height=4096, dype_active=True, shift="stock")[:-1]
    pinned = shifted_sigmas("flux1", 30, width=4096, height=4096, dype_active=True)[:-1]
    assert sum(s > 0.999 for s in stock) >= 28 and sum(s < 0.5 for s in stock) == 0
    assert sum(s < 0.5 for s in pinned) >= 7 and sum(s > 0.999 for s in pinned) <= 1
    assert time_shift(DYPE_MU, 0.0) == 0.0 and time_shift(DYPE_MU, 1.0) == 1.0


def test_schedule_validation() -> None:
    with pytest.raises(ValueError, match="dype_shift must be one of official, stock"):
        schedule_mu("flux1", width=2048, height=2048, dype_active=True, shift="capped")
    with pytest.raises(ValueError, match="num_steps"):
        shifted_sigmas("flux1", 0, width=2048, height=2048, dype_active=True)
    with pytest.raises(ValueError, match="family must be one of flux1, flux2, z_image, chroma"):
        schedule_mu("qwen", width=2048, height=2048, dype_active=True)
