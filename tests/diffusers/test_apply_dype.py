"""apply_dype on real diffusers FLUX pipelines (tiny random weights, CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetPipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxKontextPipeline,
    FluxMultiControlNetModel,
    FluxPipeline,
)
from diffusers.models.transformers.transformer_flux import FluxPosEmbed
from PIL import Image

from dype import DyPEConfig, DyPEPosEmbed
from dype.diffusers import PIPELINE_KINDS, apply_dype, pinned_mu
from dype.families import FLUX1
from dype.schedule import shifted_sigmas, stock_mu, time_shift

DYPE_MU = FLUX1.dype_mu

# The tiny models run DyPE at a 128 px base so that a 256² image (16×16 tokens) is 2× the base.
CONFIG = DyPEConfig(base_resolution=128)
SIZE = 256
TEXT_LEN = 16  # short T5 sequences keep the tests fast (the pipelines default to 512)


def run(pipe: Any, steps: int = 2, width: int = SIZE, height: int = SIZE, **kwargs: Any) -> torch.Tensor:
    """One seeded generation returning the packed latents."""
    return pipe(
        prompt="a cat",
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=3.5,
        max_sequence_length=TEXT_LEN,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **kwargs,
    ).images


@contextmanager
def recorded_sigmas(model: torch.nn.Module) -> Iterator[list[float]]:
    """The σ the model's (DyPE) pos_embed holds at each of its calls."""
    seen: list[float] = []
    handle = model.pos_embed.register_forward_pre_hook(lambda module, args: seen.append(module.sigma))
    try:
        yield seen
    finally:
        handle.remove()


def pipeline_state(pipe: Any) -> dict[str, Any]:
    """Everything apply_dype may touch, for before/after comparisons."""
    models = [pipe.transformer]
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is not None:
        models += list(getattr(controlnet, "nets", [controlnet]))
    return {
        "pos_embed": [model.pos_embed for model in models],
        "hooks": [(len(model._forward_pre_hooks), len(model._forward_hooks)) for model in models],
        "scheduler": dict(pipe.scheduler.config),
        "shadowed_ids": vars(pipe).get("_prepare_latent_image_ids"),
    }


def pinned_schedule(steps: int) -> list[float]:
    return [time_shift(DYPE_MU, s) for s in np.linspace(1.0, 1.0 / steps, steps)]


def test_patch_and_restore(flux_pipe: FluxPipeline) -> None:
    before = pipeline_state(flux_pipe)
    original = flux_pipe.transformer.pos_embed
    state_keys = set(flux_pipe.transformer.state_dict())
    with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE) as patch:
        embedder = flux_pipe.transformer.pos_embed
        assert isinstance(embedder, DyPEPosEmbed)
        assert patch.embedders == {"transformer": embedder}
        assert (embedder.theta, list(embedder.axes_dim)) == (original.theta, list(original.axes_dim))
        assert (embedder.height, embedder.width) == (SIZE, SIZE)
        assert patch.active and patch.mu == DYPE_MU
        assert flux_pipe.scheduler.config.base_shift == flux_pipe.scheduler.config.max_shift == DYPE_MU
        assert set(flux_pipe.transformer.state_dict()) == state_keys  # no parameters or buffers added
        assert not list(embedder.parameters()) and not list(embedder.buffers())
    assert flux_pipe.transformer.pos_embed is original
    assert pipeline_state(flux_pipe) == before
    assert not patch.active and patch.mu is None


def test_restores_after_an_exception(flux_pipe: FluxPipeline) -> None:
    before = pipeline_state(flux_pipe)
    with pytest.raises(RuntimeError, match="boom"), apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE):
        raise RuntimeError("boom")
    assert pipeline_state(flux_pipe) == before


def test_reversible_function_and_double_apply(flux_pipe: FluxPipeline) -> None:
    before = pipeline_state(flux_pipe)
    patch = apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE)
    assert isinstance(flux_pipe.transformer.pos_embed, DyPEPosEmbed)
    pinned_state = pipeline_state(flux_pipe)
    with pytest.raises(ValueError, match="FluxPipeline already has an active apply_dype"):
        apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE)
    assert pipeline_state(flux_pipe) == pinned_state  # the refused second patch left nothing behind
    patch.remove()
    patch.remove()  # idempotent
    assert pipeline_state(flux_pipe) == before
    with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE):  # applicable again
        assert isinstance(flux_pipe.transformer.pos_embed, DyPEPosEmbed)
    assert pipeline_state(flux_pipe) == before


def test_sigma_fed_per_call_and_mu_pinned(flux_pipe: FluxPipeline) -> None:
    steps = 3
    with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE), recorded_sigmas(flux_pipe.transformer) as seen:
        run(flux_pipe, steps=steps)
    expected = pinned_schedule(steps)
    assert seen == pytest.approx(expected, abs=1e-6)
    schedule = shifted_sigmas("flux1", steps, width=SIZE, height=SIZE, dype_active=True)
    assert seen == pytest.approx(schedule[:-1], abs=1e-6)
    # The scheduler itself ran the pinned schedule (its sigmas keep the last run's values).
    assert flux_pipe.scheduler.sigmas[:-1].tolist() == pytest.approx(expected, abs=1e-6)
    # Stock μ at 256 tokens is 0.5: a different schedule, so pinning is observable.
    stock = [time_shift(stock_mu("flux1", width=SIZE, height=SIZE), s) for s in np.linspace(1.0, 1.0 / steps, steps)]
    assert abs(stock[1] - expected[1]) > 0.05


def test_shift_stock_keeps_diffusers_mu(flux_pipe: FluxPipeline) -> None:
    steps = 3
    before = dict(flux_pipe.scheduler.config)
    with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE, shift="stock") as patch:
        assert patch.mu is None and dict(flux_pipe.scheduler.config) == before
        with recorded_sigmas(flux_pipe.transformer) as seen:
            run(flux_pipe, steps=steps)
    mu = stock_mu("flux1", width=SIZE, height=SIZE)
    assert seen == pytest.approx([time_shift(mu, s) for s in np.linspace(1.0, 1.0 / steps, steps)], abs=1e-6)


def test_schnell_schedule_is_left_alone(tiny_components: dict[str, Any]) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(**{**tiny_components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    before = dict(scheduler.config)
    with apply_dype(pipe, CONFIG, width=SIZE, height=SIZE) as patch, recorded_sigmas(pipe.transformer) as seen:
        assert patch.mu is None and dict(scheduler.config) == before
        run(pipe, steps=2)
    assert seen == pytest.approx([1.0, 0.5], abs=1e-6)  # schnell: the plain linear schedule
    assert dict(scheduler.config) == before


def test_pinned_mu_restores_missing_keys() -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler._internal_dict = type(scheduler.config)(
        {k: v for k, v in scheduler.config.items() if k not in ("base_shift", "max_shift")}
    )
    before = dict(scheduler.config)
    pipe = SimpleNamespace(scheduler=scheduler)
    with pinned_mu(pipe, PIPELINE_KINDS[0], DYPE_MU) as guard:
        assert guard.mu == DYPE_MU and scheduler.config["base_shift"] == scheduler.config["max_shift"] == DYPE_MU
    assert dict(scheduler.config) == before


def test_off_is_bit_identical_and_on_differs(flux_pipe: FluxPipeline) -> None:
    reference = run(flux_pipe)
    before = pipeline_state(flux_pipe)
    for dype in ("off", None, "auto"):  # auto is off at 256 px with the 1024 px base
        with apply_dype(flux_pipe, dype, width=SIZE, height=SIZE) as patch:
            assert patch.config is None and not patch.active
            assert pipeline_state(flux_pipe) == before
            assert torch.equal(run(flux_pipe), reference)
    with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE):
        assert not torch.allclose(run(flux_pipe), reference)
    assert torch.equal(run(flux_pipe), reference)


def test_size_mismatch_is_an_error(flux_pipe: FluxPipeline) -> None:
    before = pipeline_state(flux_pipe)
    with (
        pytest.raises(ValueError, match=r"set up for width=256, height=256.*generating 256×128 px"),
        apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE),
    ):
        run(flux_pipe, steps=1, height=128)
    assert pipeline_state(flux_pipe) == before


def test_image_ids_stay_float32(flux_pipe: FluxPipeline) -> None:
    # 300 rows: bf16 cannot hold positions above 256; the pipelines cast ids to the model dtype.
    bf16_ids = flux_pipe._prepare_latent_image_ids(1, 300, 2, "cpu", torch.bfloat16)
    assert bf16_ids.dtype == torch.bfloat16
    with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE):
        ids = flux_pipe._prepare_latent_image_ids(1, 300, 2, "cpu", torch.bfloat16)
        assert ids.dtype == torch.float32 and ids[:, 1].max() == 299
        with pytest.raises(ValueError, match="Pass float32"):
            flux_pipe.transformer.pos_embed(bf16_ids)
        cos, _ = flux_pipe.transformer.pos_embed(ids)
        assert cos.shape == (600, 16)
    assert "_prepare_latent_image_ids" not in vars(flux_pipe)


@pytest.mark.parametrize(
    ("dype", "kwargs", "match"),
    [
        ("bogus", {}, "dype_preset must be one of off, manual, auto, area, 4k"),
        ("4k", {"method": "rope"}, "dype_method must be one of vision_yarn, yarn, ntk, base"),
        ("manual", {"dype_scale": 9.0}, r"dype_scale must be in \[0, 8\]"),
        ("4k", {"width": 250}, "width must be a positive multiple of 16"),
        ("4k", {"shift": "none"}, "shift must be one of official, stock"),
        (CONFIG, {"dype_scale": 2.0}, "apply to a preset name, not to a DyPEConfig"),
        (3.0, {}, "dype must be a preset name, a DyPEConfig or None"),
    ],
)
def test_bad_arguments(flux_pipe: FluxPipeline, dype: Any, kwargs: dict[str, Any], match: str) -> None:
    before = pipeline_state(flux_pipe)
    kwargs = {"width": SIZE, "height": SIZE, **kwargs}
    with pytest.raises(ValueError, match=match):
        apply_dype(flux_pipe, dype, **kwargs)
    assert pipeline_state(flux_pipe) == before


def test_not_a_flux_pipeline() -> None:
    message = r"pipe must be a diffusers pipeline of a supported family .*FluxPipeline.*ZImagePipeline"
    with pytest.raises(ValueError, match=message):
        apply_dype(object(), "4k", width=SIZE, height=SIZE)


def _image(size: int = SIZE) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def controlnet(tiny_components: dict[str, Any], make_controlnet: Any) -> Any:
    return make_controlnet(tiny_components["transformer"])


def test_controlnet_patched_and_fed(tiny_components: dict[str, Any], controlnet: Any) -> None:
    pipe = FluxControlNetPipeline(**tiny_components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    before = pipeline_state(pipe)
    with apply_dype(pipe, CONFIG, width=SIZE, height=SIZE) as patch:
        assert set(patch.embedders) == {"transformer", "controlnet"}
        assert isinstance(controlnet.pos_embed, DyPEPosEmbed)
        assert controlnet.pos_embed is not pipe.transformer.pos_embed
        with recorded_sigmas(controlnet) as seen_control, recorded_sigmas(pipe.transformer) as seen:
            run(pipe, steps=2, control_image=_image(), controlnet_conditioning_scale=1.0)
    assert seen_control == seen == pytest.approx(pinned_schedule(2), abs=1e-6)
    assert pipeline_state(pipe) == before


def test_multi_controlnet_every_net_patched(
    tiny_components: dict[str, Any], controlnet: Any, make_controlnet: Any
) -> None:
    other = make_controlnet(tiny_components["transformer"], seed=2)
    pipe = FluxControlNetPipeline(**tiny_components, controlnet=FluxMultiControlNetModel([controlnet, other]))
    before = pipeline_state(pipe)
    with apply_dype(pipe, CONFIG, width=SIZE, height=SIZE) as patch:
        assert set(patch.embedders) == {"transformer", "controlnet.nets.0", "controlnet.nets.1"}
        assert isinstance(controlnet.pos_embed, DyPEPosEmbed) and isinstance(other.pos_embed, DyPEPosEmbed)
    assert pipeline_state(pipe) == before


@pytest.mark.parametrize("pipeline_class", [FluxImg2ImgPipeline, FluxInpaintPipeline, FluxKontextPipeline])
def test_image_pipelines(tiny_components: dict[str, Any], pipeline_class: type) -> None:
    pipe = pipeline_class(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = {"image": _image()}
    if pipeline_class is FluxInpaintPipeline:
        kwargs["mask_image"] = Image.new("L", (SIZE, SIZE), 255)
    if pipeline_class is FluxKontextPipeline:
        kwargs.update(max_area=SIZE * SIZE, _auto_resize=False)  # else Kontext picks ~1024² itself
    else:
        kwargs["strength"] = 0.7
    steps = 3
    before = pipeline_state(pipe)
    with apply_dype(pipe, CONFIG, width=SIZE, height=SIZE), recorded_sigmas(pipe.transformer) as seen:
        run(pipe, steps=steps, **kwargs)
    expected = pinned_schedule(steps)
    assert len(seen) >= 2
    # img2img / inpaint skip the first steps (strength); every σ seen is from the pinned schedule.
    assert seen == pytest.approx(expected[len(expected) - len(seen) :], abs=1e-6)
    assert pipeline_state(pipe) == before


def test_with_a_first_block_cache(make_components: Any) -> None:
    """diffusers' cache hooks wrap `forward`; DyPE's pre-hook still sees every call's σ."""
    from diffusers import FirstBlockCacheConfig

    # A fresh transformer: diffusers 0.40 caches a model's child hook list at its first cache_context,
    # so enable_cache on a model that already ran a pipeline leaves the new hooks without a context.
    pipe = FluxPipeline(**make_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # 0: never skip, so σ each step
    steps = 3
    with apply_dype(pipe, CONFIG, width=SIZE, height=SIZE), recorded_sigmas(pipe.transformer) as seen:
        latents = run(pipe, steps=steps)
    assert seen == pytest.approx(pinned_schedule(steps), abs=1e-6)
    assert torch.isfinite(latents).all()
    assert isinstance(pipe.transformer.pos_embed, FluxPosEmbed)


def test_bfloat16_pipeline(make_components: Any) -> None:
    """bf16 models with float32 image ids next to bf16 text ids (the pipelines' dtypes in real use)."""
    pipe = FluxPipeline(**make_components()).to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    with apply_dype(pipe, CONFIG, width=SIZE, height=SIZE), recorded_sigmas(pipe.transformer) as seen:
        latents = run(pipe, steps=2)
    assert latents.dtype == torch.bfloat16 and torch.isfinite(latents.float()).all()
    assert seen == pytest.approx(pinned_schedule(2), abs=4e-3)  # σ arrives as bf16 timestep / 1000
