"""apply_dype on diffusers' FLUX.2 (Klein, dev), Chroma and Z-Image pipelines (tiny random weights, CPU).

Off (and `auto` up to 1.5 × base) leaves every pipeline bit-identical; on, the family's embedder is in
place for every call with that call's σ, its plain axes untouched, the schedule pinned to the family's
DyPE μ through the scheduler and restored after; the Klein KV-cache pipeline is refused while the
frequencies depend on σ.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    ChromaImg2ImgPipeline,
    ChromaPipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinKVPipeline,
    Flux2KleinPipeline,
    Flux2Pipeline,
    ZImagePipeline,
)
from diffusers.models.transformers.transformer_chroma import ChromaTransformer2DModel
from diffusers.models.transformers.transformer_flux2 import Flux2PosEmbed
from PIL import Image

from dype import DyPEConfig
from dype.diffusers import active_dype, apply_dype
from dype.embed import DyPEEmbedder, DyPEPosEmbed, DyPERopeEmbedder
from dype.schedule import time_shift
from tests.invokeai.family_support import tiny_flux2_transformer, tiny_flux2_vae, tiny_z_image_transformer

SIZE = 256  # 16×16 tokens; DyPE on at a 128 px base (S = 2)
ON = DyPEConfig(base_resolution=128)
STEPS = 3


def dynamic_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.2's shipped scheduler config (dynamic, exponential time shift)."""
    return FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096, time_shift_type="exponential",
    )  # fmt: skip


def vae16() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8] * 4, layers_per_block=1, latent_channels=16, norm_num_groups=4,
        shift_factor=0.1, scaling_factor=0.3,
    ).eval()  # fmt: skip


def tiny_chroma() -> ChromaTransformer2DModel:
    torch.manual_seed(0)
    return ChromaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
        num_attention_heads=1, joint_attention_dim=32, axes_dims_rope=(16, 56, 56), approximator_num_channels=8,
        approximator_hidden_dim=32, approximator_layers=1,
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    """One pipeline per family and class; text encoders are left out (the tests pass prompt embeddings)."""
    flux2 = tiny_flux2_transformer().float()
    made = {
        "klein": Flux2KleinPipeline(dynamic_scheduler(), tiny_flux2_vae(), None, None, flux2),
        "flux2": Flux2Pipeline(dynamic_scheduler(), tiny_flux2_vae(), None, None, flux2),
        "chroma": ChromaPipeline(dynamic_scheduler(), vae16(), None, None, tiny_chroma()),
        "z_image": ZImagePipeline(
            FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False), vae16(), None, None,
            tiny_z_image_transformer().float(),
        ),
    }  # fmt: skip
    for pipe in made.values():
        pipe.set_progress_bar_config(disable=True)
    return made


EMBEDS = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(3))
NEGATIVE = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(4))


def run(pipe: Any, name: str, steps: int = STEPS, cfg: bool = False, **kwargs: Any) -> torch.Tensor:
    common = dict(height=SIZE, width=SIZE, num_inference_steps=steps, output_type="latent",
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    if name in ("klein", "flux2"):
        extra = {"negative_prompt_embeds": NEGATIVE, "guidance_scale": 2.0} if cfg else {"guidance_scale": 1.0}
        if name == "flux2":
            extra = {"guidance_scale": 2.5}  # dev: distilled guidance, no CFG
        return pipe(prompt_embeds=EMBEDS, **extra, **common, **kwargs).images
    if name == "chroma":
        return pipe(prompt_embeds=EMBEDS, negative_prompt_embeds=NEGATIVE, prompt_attention_mask=torch.ones(1, 8),
                    negative_prompt_attention_mask=torch.ones(1, 6), guidance_scale=2.0 if cfg else 1.0,
                    **common, **kwargs).images  # fmt: skip
    return pipe(prompt_embeds=[EMBEDS[0]], negative_prompt_embeds=[NEGATIVE[0]], guidance_scale=2.0 if cfg else 1.0,
                **common, **kwargs).images  # fmt: skip


def embedder_of(pipe: Any) -> Any:
    transformer = pipe.transformer
    return transformer.rope_embedder if hasattr(transformer, "rope_embedder") else transformer.pos_embed


def state(pipe: Any) -> dict[str, Any]:
    scheduler = pipe.scheduler
    return {
        "embedder": embedder_of(pipe),
        "hooks": sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in pipe.transformer.modules()),
        "scheduler": dict(scheduler.config),
        "shift": scheduler.shift,
        "instance": sorted(k for k in vars(pipe) if k.startswith("_prepare")),
    }


@pytest.mark.parametrize("name", ["klein", "flux2", "chroma", "z_image"])
def test_off_and_auto_below_threshold_are_bit_identical(name: str, pipes: dict[str, Any]) -> None:
    pipe = pipes[name]
    reference, before = run(pipe, name, steps=2, cfg=True), state(pipe)
    # auto at 256² is off with the family's base (1024 or 2048) and with a 176 px base (1.5·176 ≥ 256)
    for dype, base in (("off", None), ("auto", None), ("auto", 176)):
        with apply_dype(pipe, dype, width=SIZE, height=SIZE, base_resolution=base) as patch:
            assert patch.config is None and not patch.active and state(pipe) == before
            assert torch.equal(run(pipe, name, steps=2, cfg=True), reference)
    assert state(pipe) == before


def model_sigmas(pipe: Any) -> Any:
    """A pre-hook recording the σ of each transformer call (Z-Image: t = 1 − σ, positional)."""
    seen: list[float] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        t = kwargs["timestep"] if "timestep" in kwargs else args[1]
        value = float(t.flatten()[0].double())
        seen.append(1.0 - value if hasattr(module, "rope_embedder") else value)

    return seen, pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("name", ["klein", "flux2", "chroma", "z_image"])
def test_on_every_call_gets_its_sigma_and_everything_is_restored(name: str, pipes: dict[str, Any]) -> None:
    from tests.invokeai.family_support import record_embedder_calls

    pipe = pipes[name]
    before, off = state(pipe), run(pipe, name, cfg=True)
    seen, handle = model_sigmas(pipe)
    try:
        with record_embedder_calls(DyPEEmbedder, "embed") as calls, apply_dype(pipe, ON, width=SIZE, height=SIZE):
            drop_in = embedder_of(pipe)
            assert isinstance(drop_in, DyPERopeEmbedder if name == "z_image" else DyPEPosEmbed)
            on = run(pipe, name, cfg=True)
    finally:
        handle.remove()
    assert torch.isfinite(on).all() and not torch.allclose(on, off)
    per_call = 1 if name == "chroma" else 2  # FLUX.2 and Z-Image embed image and text ids separately
    assert len(calls) == per_call * len(seen) and len(seen) >= STEPS
    for index, sigma in enumerate(seen):
        for call in calls[per_call * index : per_call * (index + 1)]:
            assert call.sigma == pytest.approx(sigma, abs=1e-6)
    assert state(pipe) == before and active_dype(pipe) is None


def test_flux2_pins_mu_2_02_through_a_static_shift_and_restores_it(pipes: dict[str, Any]) -> None:
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    pipe = pipes["klein"]
    scheduler = pipe.scheduler
    before = (dict(scheduler.config), scheduler.shift)
    seen, handle = model_sigmas(pipe)
    try:
        with apply_dype(pipe, ON, width=SIZE, height=SIZE) as patch:
            assert patch.mu == 2.02
            assert scheduler.config.use_dynamic_shifting is False and scheduler.shift == pytest.approx(math.exp(2.02))
            run(pipe, "klein", steps=4)
    finally:
        handle.remove()
    pinned = [time_shift(2.02, s) for s in np.linspace(1.0, 0.25, 4)]
    assert seen == pytest.approx(pinned, abs=2e-6)  # float32 rounding of the scheduler's sigmas
    stock_mu = compute_empirical_mu(SIZE // 16 * (SIZE // 16), 4)
    assert stock_mu != pytest.approx(2.02, abs=0.05)  # the pipeline's own μ would differ
    assert (dict(scheduler.config), scheduler.shift) == before


def test_flux2_plain_axes_untouched(pipes: dict[str, Any]) -> None:
    from tests.invokeai.family_support import record_embedder_calls

    pipe = pipes["klein"]
    stock = Flux2PosEmbed(theta=2000, axes_dim=(32, 32, 32, 32))
    with record_embedder_calls(DyPEEmbedder, "embed") as calls, apply_dype(pipe, ON, width=SIZE, height=SIZE):
        run(pipe, "klein", steps=1)
    assert len(calls) == 2
    for call in calls:
        (cos, sin), (stock_cos, stock_sin) = call.output, stock(call.ids)
        for columns in (slice(0, 32), slice(96, 128)):  # T, L
            assert torch.equal(cos[:, columns], stock_cos[:, columns])
            assert torch.equal(sin[:, columns], stock_sin[:, columns])
        assert call.ids.dtype == torch.int64  # FLUX.2 pipelines pass integer ids: nothing to widen


def test_chroma_ids_stay_float32_and_mu_is_pinned(pipes: dict[str, Any]) -> None:
    pipe = pipes["chroma"]
    dtypes: list[torch.dtype] = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: dtypes.append(kwargs["img_ids"].dtype), with_kwargs=True
    )
    try:
        pipe.transformer.to(torch.bfloat16)
        with apply_dype(pipe, ON, width=SIZE, height=SIZE) as patch:
            assert patch.mu == 1.15 and pipe.scheduler.config.base_shift == pipe.scheduler.config.max_shift == 1.15
            pipe(prompt_embeds=EMBEDS.bfloat16(), negative_prompt_embeds=NEGATIVE.bfloat16(), height=SIZE, width=SIZE,
                 num_inference_steps=1, output_type="latent", prompt_attention_mask=torch.ones(1, 8),
                 negative_prompt_attention_mask=torch.ones(1, 6), guidance_scale=1.0)  # fmt: skip
        pipe(prompt_embeds=EMBEDS.bfloat16(), negative_prompt_embeds=NEGATIVE.bfloat16(), height=SIZE, width=SIZE,
             num_inference_steps=1, output_type="latent", prompt_attention_mask=torch.ones(1, 8),
             negative_prompt_attention_mask=torch.ones(1, 6), guidance_scale=1.0)  # fmt: skip
    finally:
        handle.remove()
        pipe.transformer.to(torch.float32)
    assert dtypes == [torch.float32, torch.bfloat16]  # float32 while patched; the pipeline's own cast after


def test_chroma_img2img_id_builder_of_another_arity() -> None:
    """ChromaImg2ImgPipeline's `_prepare_latent_image_ids(height, width, device, dtype)` has no batch size."""
    pipe = ChromaImg2ImgPipeline(dynamic_scheduler(), vae16(), None, None, tiny_chroma())
    with apply_dype(pipe, ON, width=SIZE, height=SIZE):
        ids = pipe._prepare_latent_image_ids(8, 8, "cpu", torch.bfloat16)
    assert ids.dtype == torch.float32 and ids.shape == (64, 3)
    assert "_prepare_latent_image_ids" not in vars(pipe)


def test_z_image_static_scheduler_untouched_and_dynamic_one_pinned(pipes: dict[str, Any]) -> None:
    pipe = pipes["z_image"]
    with apply_dype(pipe, ON, width=SIZE, height=SIZE) as patch:
        assert patch.mu is None  # the shipped Turbo scheduler is static: μ is ignored, nothing to pin
    dynamic = ZImagePipeline(dynamic_scheduler(), pipe.vae, None, None, pipe.transformer)
    dynamic.set_progress_bar_config(disable=True)
    seen, handle = model_sigmas(dynamic)
    try:
        with apply_dype(dynamic, ON, width=SIZE, height=SIZE) as patch:
            assert patch.mu == 1.15
            run(dynamic, "z_image", steps=2)
    finally:
        handle.remove()
    assert dynamic.scheduler.config.base_shift == 0.5 and dynamic.scheduler.config.max_shift == 1.15
    expected = [float(torch.tensor(time_shift(1.15, s), dtype=torch.float32)) for s in (1.0, 0.5)]
    assert seen == pytest.approx(expected, abs=1e-6)


def test_klein_kv_cache_pipeline_is_refused_while_frequencies_depend_on_sigma(pipes: dict[str, Any]) -> None:
    klein = pipes["klein"]
    kv = Flux2KleinKVPipeline(dynamic_scheduler(), klein.vae, None, None, klein.transformer)
    with pytest.raises(ValueError, match=r"Flux2KleinKVPipeline.*caches the reference keys after RoPE"):
        apply_dype(kv, ON, width=SIZE, height=SIZE)
    assert active_dype(kv) is None and isinstance(klein.transformer.pos_embed, Flux2PosEmbed)
    for static in (DyPEConfig(base_resolution=128, enable_dype=False), DyPEConfig(base_resolution=128, method="base")):
        with apply_dype(kv, static, width=SIZE, height=SIZE) as patch:  # static frequencies are exact under a cache
            assert patch.active
    # The σ hook refuses a cached call while dynamic DyPE is on, whoever makes it.
    with apply_dype(klein, ON, width=SIZE, height=SIZE):
        transformer = klein.transformer
        hidden, ids = torch.randn(1, 256, 128), torch.zeros(256, 4, dtype=torch.long)
        with pytest.raises(ValueError, match="kv_cache_mode='extract'"):
            transformer(hidden_states=hidden, encoder_hidden_states=EMBEDS, timestep=torch.tensor([0.5]), img_ids=ids,
                        txt_ids=torch.zeros(8, 4, dtype=torch.long), kv_cache_mode="extract")  # fmt: skip


def test_reference_image_tokens_keep_their_index_and_share_the_image_frequencies(pipes: dict[str, Any]) -> None:
    from tests.invokeai.family_support import record_embedder_calls

    pipe = pipes["klein"]
    reference = Image.new("RGB", (128, 128), (10, 200, 30))
    with record_embedder_calls(DyPEEmbedder, "embed") as calls, apply_dype(pipe, ON, width=SIZE, height=SIZE):
        run(pipe, "klein", steps=1, image=[reference])
    image_call = next(call for call in calls if (call.ids[:, 0] > 0).any())
    ids, (cos, _) = image_call.ids, image_call.output
    references = ids[:, 0] > 0
    assert set(ids[references, 0].tolist()) == {10}
    for row, column in ((0, 0), (3, 5), (7, 7)):
        ref = torch.nonzero(references & (ids[:, 1] == row) & (ids[:, 2] == column)).flatten()[0]
        own = torch.nonzero(~references & (ids[:, 1] == row) & (ids[:, 2] == column)).flatten()[0]
        assert torch.equal(cos[ref, 32:96], cos[own, 32:96])


def test_z_image_controlnet_pipeline_patches_the_shared_embedders(pipes: dict[str, Any]) -> None:
    from diffusers import ZImageControlNetModel, ZImageControlNetPipeline

    from tests.invokeai.family_support import record_embedder_calls

    base = pipes["z_image"]
    torch.manual_seed(1)
    controlnet = ZImageControlNetModel(
        control_layers_places=[0], control_in_dim=16, dim=128, n_refiner_layers=1, n_heads=1, n_kv_heads=1
    ).eval()
    pipe = ZImageControlNetPipeline(base.scheduler, base.vae, None, None, base.transformer, controlnet)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe.transformer.rope_embedder
    assert pipe.controlnet.rope_embedder is stock  # from_transformer shares it
    control = Image.new("RGB", (SIZE, SIZE), (120, 30, 200))
    with record_embedder_calls(DyPEEmbedder, "embed") as calls, apply_dype(pipe, ON, width=SIZE, height=SIZE) as patch:
        assert set(patch.embedders) == {"transformer", "controlnet"}
        assert isinstance(pipe.controlnet.rope_embedder, DyPERopeEmbedder)
        run(pipe, "z_image", steps=1, control_image=control)
    owners = {call.embedder for call in calls}
    assert owners == {"DyPEEmbedder"} and len(calls) == 4  # image + caption, in the ControlNet and the transformer
    assert pipe.transformer.rope_embedder is stock and pipe.controlnet.rope_embedder is stock
    assert not any(m._forward_pre_hooks for m in pipe.transformer.modules())


def test_z_image_omni_pipeline_is_refused_while_dype_is_on(pipes: dict[str, Any]) -> None:
    from diffusers import ZImageOmniPipeline

    base = pipes["z_image"]
    omni = ZImageOmniPipeline(base.scheduler, base.vae, None, None, base.transformer, None, None)
    with pytest.raises(ValueError, match=r"ZImageOmniPipeline.*omni mode embeds two time steps"):
        apply_dype(omni, ON, width=SIZE, height=SIZE)
    with apply_dype(omni, "off", width=SIZE, height=SIZE) as patch:  # off changes nothing, so it is allowed
        assert not patch.active
    # And the transformer refuses an omni call (nested x) while patched, whoever makes it.
    with apply_dype(base, ON, width=SIZE, height=SIZE), pytest.raises(ValueError, match="omni mode"):
        base.transformer([[torch.randn(16, 1, 32, 32)]], torch.tensor([0.5]), [[EMBEDS[0]]])
