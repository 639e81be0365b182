"""FLUX Denoise with our override, through `invoke()`, on every sampling path InvokeAI 6.14.2 has.

DyPE off must be bit-identical to InvokeAI's own class (with one fewer transformer call on the default
Euler path); DyPE on must run every path with our embedder patched in, fed the σ of each call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FlowMatchHeunDiscreteScheduler, FlowMatchLCMScheduler
from invokeai.app.invocations.fields import (
    DenoiseMaskField,
    FluxConditioningField,
    FluxFillConditioningField,
    FluxKontextConditioningField,
    ImageField,
    LatentsField,
    TensorField,
)
from invokeai.app.invocations.ip_adapter import IPAdapterField
from invokeai.app.invocations.model import VAEField
from invokeai.backend.flux.ip_adapter.xlabs_ip_adapter_flux import XlabsIpAdapterFlux, XlabsIpAdapterParams
from invokeai.backend.flux.modules.autoencoder import AutoEncoder, AutoEncoderParams
from invokeai.backend.flux.sampling_utils import get_schedule
from invokeai.backend.model_manager.taxonomy import FluxVariantType, ModelType
from PIL import Image

from dype.schedule import shifted_sigmas

from .conftest import (
    FakeServices,
    assert_unpatched,
    make_flux,
    model_id,
    node,
    record_calls,
    run,
    text_conditioning,
)

SIZE = 512  # DyPE-on path tests: small and fast; the 2048² tests live further down
STEPS = 3


def bf16(values: list[float]) -> list[float]:
    """What the transformer receives: InvokeAI builds its timestep vector in the latents' bf16."""
    return [float(torch.tensor(v, dtype=torch.bfloat16).float()) for v in values]


def add_init_latents(svc: FakeServices, size: int) -> LatentsField:
    svc.tensors["init"] = torch.randn(1, 16, size // 8, size // 8, generator=torch.Generator().manual_seed(7))
    return LatentsField(latents_name="init")


def add_mask(svc: FakeServices, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
    mask = torch.zeros(shape, dtype=dtype)
    mask[..., : shape[-2] // 2, :] = 1
    svc.tensors[name] = mask


def path_fields(path: str, svc: FakeServices, size: int) -> dict[str, Any]:
    """Node fields that select one sampling path (and put what it needs into the fake stores)."""
    if path in ("euler", "heun", "lcm"):
        return {"scheduler": path}
    if path == "img2img":
        return {"latents": add_init_latents(svc, size), "denoising_start": 0.4}
    if path == "img2img_heun":
        return {"latents": add_init_latents(svc, size), "denoising_start": 0.4, "scheduler": "heun"}
    if path == "denoising_end":
        return {"denoising_end": 0.7}
    if path == "inpaint":
        add_mask(svc, "mask", (1, 1, size // 8, size // 8))
        return {"latents": add_init_latents(svc, size), "denoise_mask": DenoiseMaskField(mask_name="mask")}
    if path == "cfg":
        return {
            "negative_text_conditioning": FluxConditioningField(conditioning_name="neg"),
            "cfg_scale": 2.5,
        }
    if path == "regional":
        add_mask(svc, "region", (1, size // 8, size // 8), torch.bool)
        svc.tensors["region_inv"] = ~svc.tensors["region"]
        return {
            "positive_text_conditioning": [
                FluxConditioningField(conditioning_name="pos", mask=TensorField(tensor_name="region")),
                FluxConditioningField(conditioning_name="neg", mask=TensorField(tensor_name="region_inv")),
            ]
        }
    raise AssertionError(path)


PATHS = ["euler", "heun", "lcm", "img2img", "img2img_heun", "denoising_end", "inpaint", "cfg", "regional"]


@pytest.mark.parametrize("path", PATHS)
def test_dype_off_is_bit_identical_to_invokeai(path, services, dev_model, core_class, dype_class):
    fields = path_fields(path, services, 256)
    with record_calls(dev_model) as core_calls:
        expected, _ = run(node(core_class, width=256, height=256, num_steps=STEPS, **fields), services)
    with record_calls(dev_model) as our_calls:
        got, _ = run(node(dype_class, width=256, height=256, num_steps=STEPS, **fields), services)

    assert torch.equal(got, expected)
    assert [c.embedder for c in our_calls] == ["EmbedND"] * len(our_calls)
    assert all(c.ids_dtype == torch.bfloat16 for c in our_calls)  # untouched when off
    ours = [c.model_sigma for c in our_calls]
    theirs = [c.model_sigma for c in core_calls]
    if fields.get("scheduler", "euler") == "euler" and path != "denoising_end":
        # InvokeAI's extra step at σ = 0 (one call, two with CFG) is gone; every other call is the same.
        extra = 2 if path == "cfg" else 1
        assert len(theirs) == len(ours) + extra and theirs[len(ours) :] == [0.0] * extra
        assert ours == theirs[: len(ours)]
    else:
        assert ours == theirs
    assert_unpatched(dev_model)


def test_euler_makes_exactly_n_calls(services, dev_model, dype_class):
    for steps in (1, 4):
        with record_calls(dev_model) as calls:
            run(node(dype_class, width=256, height=256, num_steps=steps), services)
        assert len(calls) == steps
        assert all(c.model_sigma > 0 for c in calls)


def expected_sigmas(path: str, steps: int, width: int, height: int, *, pinned: bool, schnell: bool = False):
    if path == "heun":
        scheduler = FlowMatchHeunDiscreteScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(num_inference_steps=steps)
        return bf16([float(t) / 1000 for t in scheduler.timesteps])
    if path == "lcm":
        scheduler = FlowMatchLCMScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(num_inference_steps=steps)
        return bf16([float(t) / 1000 for t in scheduler.timesteps])
    if pinned:
        sigmas = shifted_sigmas("flux1", steps, width=width, height=height, dype_active=True)
    else:
        sigmas = get_schedule(steps, (width // 16) * (height // 16), shift=not schnell)
    return bf16(sigmas[:-1])


@pytest.mark.parametrize(
    ("path", "shift", "pinned"),
    [
        ("euler", "official", True),
        ("euler", "stock", False),
        ("heun", "official", False),  # Heun and LCM build their own linear schedule
        ("lcm", "official", False),
    ],
)
def test_embedder_gets_the_sigma_of_every_call(path, shift, pinned, services, dev_model, dype_class):
    invocation = node(
        dype_class, width=SIZE, height=SIZE, num_steps=STEPS, scheduler=path, dype_preset="manual", dype_shift=shift
    )
    with record_calls(dev_model) as calls:
        latents, ctx = run(invocation, services)

    sigmas = [c.model_sigma for c in calls]
    assert sigmas == expected_sigmas(path, STEPS, SIZE, SIZE, pinned=pinned)
    if path == "heun":
        assert len(sigmas) == 2 * STEPS - 1 and len(set(sigmas)) < len(sigmas)  # the repeats are there
    assert [c.embedder for c in calls] == ["DyPEEmbedND"] * len(calls)
    assert [c.embedder_sigma for c in calls] == sigmas
    assert all(c.ids_dtype == torch.float32 for c in calls)
    assert torch.isfinite(latents).all()
    assert_unpatched(dev_model)
    (message,), _ = ctx.logger.info.call_args
    assert message.startswith(f"DyPE enabled: {SIZE}×{SIZE}, vision_yarn, λs=2.00, λt=2.00, ")
    assert ("μ=1.15 (pinned)" in message) == pinned


def test_mu_is_stock_when_dype_is_off(services, dev_model, dype_class):
    with record_calls(dev_model) as calls:
        _, ctx = run(node(dype_class, width=SIZE, height=SIZE, num_steps=STEPS, dype_shift="official"), services)
    assert [c.model_sigma for c in calls] == expected_sigmas("euler", STEPS, SIZE, SIZE, pinned=False)
    assert not any("DyPE enabled" in str(call) for call in ctx.logger.info.call_args_list)


def test_schnell_keeps_no_shift_and_gets_dype(schnell_model, dype_class):
    svc = FakeServices(models={"flux": schnell_model}, variant=FluxVariantType.Schnell)
    svc.conditionings["pos"] = text_conditioning(1)
    with record_calls(schnell_model) as calls:
        latents, ctx = run(node(dype_class, width=SIZE, height=SIZE, num_steps=STEPS, dype_preset="manual"), svc)
    assert [c.model_sigma for c in calls] == expected_sigmas("euler", STEPS, SIZE, SIZE, pinned=False, schnell=True)
    assert [c.embedder for c in calls] == ["DyPEEmbedND"] * STEPS
    assert torch.isfinite(latents).all()
    assert "μ none (schnell: no shift)" in ctx.logger.info.call_args.args[0]


@pytest.mark.parametrize("path", ["img2img", "img2img_heun", "inpaint", "cfg", "regional", "denoising_end"])
def test_dype_runs_on_every_path(path, services, dev_model, dype_class):
    fields = path_fields(path, services, SIZE)
    invocation = node(dype_class, width=SIZE, height=SIZE, num_steps=STEPS, dype_preset="manual", **fields)
    with record_calls(dev_model) as calls:
        latents, _ = run(invocation, services)
    assert calls, "the transformer never ran"
    assert all(c.embedder == "DyPEEmbedND" and c.embedder_sigma == c.model_sigma for c in calls)
    assert all(c.ids_dtype == torch.float32 for c in calls)
    if path == "img2img":  # (Heun starts its own schedule at 1: InvokeAI's known limitation)
        assert max(c.model_sigma for c in calls) <= 0.6 + 2**-8  # 1 − denoising_start, in bf16
    if path == "cfg":
        assert len(calls) == 2 * STEPS  # positive and negative pass, both patched
    assert latents.shape == (1, 16, SIZE // 8, SIZE // 8)
    assert torch.isfinite(latents).all()
    assert_unpatched(dev_model)


# --- models that need a VAE, an image encoder or a different transformer ------------------------------


@pytest.fixture(scope="module")
def tiny_vae() -> AutoEncoder:
    torch.manual_seed(3)
    params = AutoEncoderParams(
        resolution=256,
        in_channels=3,
        ch=32,
        out_ch=3,
        ch_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        z_channels=16,
        scale_factor=0.3611,
        shift_factor=0.1159,
    )
    return AutoEncoder(params).to(torch.bfloat16).eval()


def rgb_image(size: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def capture_pe() -> tuple[list[torch.Tensor], Any]:
    """Collect the output of every DyPE embedder call (a global hook: the embedder exists only in-run)."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
        if type(module).__name__ == "DyPEEmbedND":
            seen.append(output.detach().clone())

    return seen, torch.nn.modules.module.register_module_forward_hook(hook)


def test_kontext_reference_tokens(services, dev_model, dype_class, tiny_vae):
    """Reference tokens: axis 0 (= 1) keeps plain RoPE; rows/columns use the target size's DyPE scaling."""
    services.models["vae"] = tiny_vae
    services.images["ref"] = rgb_image((64, 64), seed=5)
    size = 1536  # above 1024, so DyPE really changes the spatial frequencies
    invocation = node(
        dype_class,
        width=size,
        height=size,
        num_steps=1,
        dype_preset="manual",
        kontext_conditioning=FluxKontextConditioningField(image=ImageField(image_name="ref")),
        controlnet_vae=VAEField(vae=model_id("vae", ModelType.VAE)),
    )
    seen, handle = capture_pe()
    try:
        with record_calls(dev_model) as calls:
            latents, _ = run(invocation, services)
    finally:
        handle.remove()

    assert torch.isfinite(latents).all() and latents.shape == (1, 16, size // 8, size // 8)
    assert [c.embedder for c in calls] == ["DyPEEmbedND"] and calls[0].ids_dtype == torch.float32
    pe = seen[0][0, 0]  # [N, 32, 2, 2]: T5 tokens, image tokens, then the 4×4 reference tokens
    tokens = (size // 16) ** 2
    image_pe, ref_pe = pe[8 : 8 + tokens], pe[8 + tokens :]
    assert ref_pe.shape[0] == 16
    # Axis 0 (4 slots for axes_dim 8): reference tokens sit at index 1, plain RoPE, amplitude 1.
    omega = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    assert torch.allclose(ref_pe[:, :4, 0, 0].double(), torch.cos(omega).expand(16, 4), atol=1e-6)
    assert torch.allclose(ref_pe[:, :4, 1, 0].double(), torch.sin(omega).expand(16, 4), atol=1e-6)
    # Rows/columns: a reference token at (r, c) gets exactly what an image token at (r, c) gets.
    side = size // 16
    for index, (r, c) in enumerate([(r, c) for r in range(4) for c in range(4)]):
        assert torch.equal(ref_pe[index, 4:], image_pe[r * side + c, 4:])
    # …and that is DyPE's, not plain RoPE: spatial slots carry the vision_yarn amplitude (> 1).
    amplitude = torch.hypot(image_pe[1, 4:, 0, 0], image_pe[1, 4:, 1, 0])
    assert float(amplitude.min()) > 1.01
    assert_unpatched(dev_model)


def test_flux_fill(dype_class, tiny_vae):
    fill_model = make_flux(in_channels=384, seed=4)  # 64 latent + 64 image + 256 mask channels
    svc = FakeServices(models={"flux": fill_model, "vae": tiny_vae}, variant=FluxVariantType.DevFill)
    svc.conditionings["pos"] = text_conditioning(1)
    svc.images["fill"] = rgb_image((256, 256), seed=6)
    svc.tensors["fill_mask"] = torch.zeros(1, 256, 256, dtype=torch.bool)
    svc.tensors["fill_mask"][:, 64:192, 64:192] = True
    invocation = node(
        dype_class,
        width=256,
        height=256,
        num_steps=2,
        guidance=30.0,
        dype_preset="manual",
        fill_conditioning=FluxFillConditioningField(
            image=ImageField(image_name="fill"), mask=TensorField(tensor_name="fill_mask")
        ),
        controlnet_vae=VAEField(vae=model_id("vae", ModelType.VAE)),
    )
    with record_calls(fill_model) as calls:
        latents, _ = run(invocation, svc)
    assert [c.embedder for c in calls] == ["DyPEEmbedND"] * 2
    assert torch.isfinite(latents).all()
    assert_unpatched(fill_model)


def test_ip_adapter(services, dev_model, dype_class):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(8)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=224,
            patch_size=32,
            projection_dim=16,
        )
    ).eval()
    adapter = XlabsIpAdapterFlux(
        XlabsIpAdapterParams(
            num_double_blocks=1, context_dim=32, hidden_dim=128, clip_embeddings_dim=16, clip_extra_context_tokens=4
        )
    )
    services.models.update({"ipa": adapter, "clip": encoder})
    services.images["prompt_image"] = rgb_image((64, 64), seed=9)
    ip_adapter = IPAdapterField(
        image=ImageField(image_name="prompt_image"),
        ip_adapter_model=model_id("ipa", ModelType.IPAdapter),
        image_encoder_model=model_id("clip", ModelType.CLIPVision),
        weight=1.0,
    )
    fields = dict(width=SIZE, height=SIZE, num_steps=2, ip_adapter=ip_adapter, dype_preset="manual")
    with record_calls(dev_model) as calls:
        with_adapter, _ = run(node(dype_class, **fields), services)
    without_adapter, _ = run(node(dype_class, **{**fields, "ip_adapter": None}), services)
    assert [c.embedder for c in calls] == ["DyPEEmbedND"] * 2
    assert torch.isfinite(with_adapter).all()
    assert not torch.equal(with_adapter, without_adapter)  # the adapter took part
    assert_unpatched(dev_model)


def test_instantx_controlnet_is_patched_too(services, dev_model, dype_class, tiny_vae, monkeypatch):
    from invokeai.app.invocations.flux_controlnet import FluxControlNetField
    from invokeai.backend.flux.controlnet.instantx_controlnet_flux import InstantXControlNetFlux
    from invokeai.backend.flux.extensions.instantx_controlnet_extension import InstantXControlNetExtension

    from .conftest import tiny_params

    original_init = InstantXControlNetExtension.__init__

    def init_for_tiny_flux(self, *args, **kwargs):  # upstream hard-codes FLUX's 19 + 38 blocks
        original_init(self, *args, **kwargs)
        self._flux_transformer_num_double_blocks = len(dev_model.double_blocks)
        self._flux_transformer_num_single_blocks = len(dev_model.single_blocks)

    monkeypatch.setattr(InstantXControlNetExtension, "__init__", init_for_tiny_flux)
    torch.manual_seed(13)
    controlnet = InstantXControlNetFlux(tiny_params()).to(torch.bfloat16).eval()
    services.models.update({"instantx": controlnet, "vae": tiny_vae})
    services.images["control"] = rgb_image((SIZE, SIZE), seed=14)
    control = FluxControlNetField(
        image=ImageField(image_name="control"), control_model=model_id("instantx", ModelType.ControlNet)
    )
    invocation = node(
        dype_class,
        width=SIZE,
        height=SIZE,
        num_steps=2,
        dype_preset="manual",
        control=control,
        controlnet_vae=VAEField(vae=model_id("vae", ModelType.VAE)),
    )
    with record_calls(controlnet) as cn_calls, record_calls(dev_model) as calls:
        latents, _ = run(invocation, services)
    assert [c.embedder for c in cn_calls] == ["DyPEEmbedND"] * 2
    assert [c.embedder_sigma for c in cn_calls] == [c.model_sigma for c in cn_calls] == [c.model_sigma for c in calls]
    assert torch.isfinite(latents).all()
    assert_unpatched(controlnet)
    assert_unpatched(dev_model)
