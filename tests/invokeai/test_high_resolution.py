"""Seed plan 4.2 at the size it is for: 2048×2048 end to end, and ControlNet at 2048²."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from invokeai.app.invocations.fields import ImageField
from invokeai.app.invocations.flux_controlnet import FluxControlNetField
from invokeai.backend.flux.controlnet.xlabs_controlnet_flux import XLabsControlNetFlux
from invokeai.backend.flux.extensions.xlabs_controlnet_extension import XLabsControlNetExtension
from invokeai.backend.model_manager.taxonomy import ModelType
from PIL import Image

from dype import DyPEExtension

from .conftest import assert_unpatched, model_id, node, record_calls, run, tiny_params

SIDE = 2048


@pytest.mark.parametrize("preset", ["off", "manual", "auto", "area", "4k"])
def test_node_resolves_a_valid_config_from_each_preset(preset, dype_class):
    invocation = node(dype_class, width=SIDE, height=SIDE, dype_preset=preset)
    config = invocation.resolve_dype_config()
    if preset == "off":
        assert config is None
    else:
        assert config.method == "vision_yarn" and config.base_resolution_for("flux1") == 1024
        assert config.dype_scale == (4.0 if preset in ("auto", "area") else 2.0)  # min(2·2048/1024, 8)
        assert config.dype_exponent == 2.0
    with_scale = node(dype_class, width=SIDE, height=SIDE, dype_preset=preset, dype_scale=3.0, dype_method="yarn")
    resolved = with_scale.resolve_dype_config()
    if preset == "off":  # off is off whatever the scale (docs/math.md §7)
        assert resolved is None
    else:  # only manual reads the scale
        assert resolved.dype_scale == (3.0 if preset == "manual" else config.dype_scale)
        assert resolved.method == "yarn"


def test_auto_stays_off_at_1536(dype_class):
    assert node(dype_class, width=1536, height=1536, dype_preset="auto").resolve_dype_config() is None


def test_2048_end_to_end(services, dev_model, dype_class):
    """FLUX Denoise with DyPE at 2048² through invoke(): finite, right shape, different from DyPE off."""
    with record_calls(dev_model) as calls:
        with_dype, ctx = run(node(dype_class, width=SIDE, height=SIDE, num_steps=1, dype_preset="4k"), services)
    without, _ = run(node(dype_class, width=SIDE, height=SIDE, num_steps=1, dype_preset="off"), services)

    assert with_dype.shape == without.shape == (1, 16, SIDE // 8, SIDE // 8)
    assert torch.isfinite(with_dype).all()
    # One step from σ = 1 with the same noise: only the position embedding differs.
    assert (with_dype - without).abs().max() > 1e-2
    assert [(c.embedder, c.embedder_sigma, c.ids_dtype) for c in calls] == [("DyPEEmbedND", 1.0, torch.float32)]
    ctx.logger.info.assert_any_call("DyPE enabled: 2048×2048, vision_yarn, λs=2.00, λt=2.00, μ=1.15 (pinned)")
    assert any("DyPE 2048x2048:" in str(call) for call in ctx.logger.info.call_args_list)  # the memory plan
    assert_unpatched(dev_model)


@pytest.fixture(scope="module")
def xlabs_controlnet() -> XLabsControlNetFlux:
    torch.manual_seed(11)
    controlnet = XLabsControlNetFlux(tiny_params(), controlnet_depth=1)
    for block in controlnet.controlnet_blocks:  # zero-initialised upstream: make the residuals visible
        torch.nn.init.normal_(block.weight, std=0.05)
    return controlnet.to(torch.bfloat16).eval()


def test_controlnet_gets_the_dype_embedding(services, dev_model, dype_class, xlabs_controlnet, monkeypatch):
    # The extension hard-codes FLUX's 19 double blocks; our tiny transformer has one.
    original_init = XLabsControlNetExtension.__init__

    def init_for_tiny_flux(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._flux_transformer_num_double_blocks = len(dev_model.double_blocks)

    monkeypatch.setattr(XLabsControlNetExtension, "__init__", init_for_tiny_flux)
    services.models["cn"] = xlabs_controlnet
    pixels = np.random.default_rng(12).integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
    services.images["control"] = Image.fromarray(pixels, "RGB")
    control = FluxControlNetField(
        image=ImageField(image_name="control"), control_model=model_id("cn", ModelType.ControlNet)
    )
    residuals: list[torch.Tensor] = []
    collect = xlabs_controlnet.register_forward_hook(
        lambda module, args, output: residuals.append(output.controlnet_double_block_residuals[0].clone())
    )
    inputs: list[dict] = []
    keep_inputs = xlabs_controlnet.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(dict(kwargs)), with_kwargs=True
    )
    try:
        with record_calls(xlabs_controlnet) as cn_calls, record_calls(dev_model) as calls:
            latents, _ = run(
                node(dype_class, width=SIDE, height=SIDE, num_steps=1, dype_preset="4k", control=control), services
            )
    finally:
        collect.remove()
        keep_inputs.remove()

    assert torch.isfinite(latents).all()
    assert [(c.embedder, c.embedder_sigma) for c in cn_calls] == [("DyPEEmbedND", 1.0)]
    assert [c.embedder for c in calls] == ["DyPEEmbedND"]
    assert_unpatched(xlabs_controlnet)

    # The same ControlNet call without DyPE (plain RoPE), and with our embedder patched by hand.
    kwargs = inputs[0]
    with torch.no_grad():
        plain = xlabs_controlnet(**kwargs).controlnet_double_block_residuals[0]
        config = node(dype_class, width=SIDE, height=SIDE, dype_preset="4k").resolve_dype_config()
        with DyPEExtension(config, width=SIDE, height=SIDE).patched(xlabs_controlnet):
            by_hand = xlabs_controlnet(**kwargs).controlnet_double_block_residuals[0]
    assert torch.equal(residuals[0], by_hand)
    assert (residuals[0].float() - plain.float()).abs().max() > 1e-3
    assert_unpatched(xlabs_controlnet)
