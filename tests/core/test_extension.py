"""Patching a real (tiny, random-weight) InvokeAI FLUX model: swap, σ per call, restore."""

from __future__ import annotations

import pytest
import torch

from dype import DyPEConfig, DyPEEmbedND, DyPEExtension
from dype.hosts import argument_position
from tests.core.helpers import tiny_flux_params


@pytest.fixture(scope="module")
def tiny_flux():
    from invokeai.backend.flux.model import Flux

    torch.manual_seed(0)
    return Flux(tiny_flux_params()).eval()


def flux_inputs(height: int, width: int, text_tokens: int = 4):
    h, w = height // 16, width // 16
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(1, -1, 3).float()
    return {
        "img": torch.randn(1, h * w, 64),
        "img_ids": img_ids,
        "txt": torch.randn(1, text_tokens, 64),
        "txt_ids": torch.zeros(1, text_tokens, 3),
        "y": torch.randn(1, 32),
        "guidance": torch.full((1,), 3.5),
    }


def call(model, inputs, sigma: float, positional: bool = False):
    from invokeai.backend.flux.extensions.regional_prompting_extension import RegionalPromptingExtension

    t = torch.full((1,), sigma)
    rest = (0, 1, None, None, [], RegionalPromptingExtension(regional_text_conditioning=None))
    if positional:
        i = inputs
        return model(i["img"], i["img_ids"], i["txt"], i["txt_ids"], t, i["y"], i["guidance"], *rest)
    names = ("timestep_index", "total_num_timesteps", "controlnet_double_block_residuals",
             "controlnet_single_block_residuals", "ip_adapter_extensions", "regional_prompting_extension")  # fmt: skip
    return model(**inputs, timesteps=t, **dict(zip(names, rest, strict=True)))


def test_pre_hook_feeds_the_sigma_of_each_call(tiny_flux) -> None:
    original = tiny_flux.pe_embedder
    inputs = flux_inputs(2048, 2048)
    ext = DyPEExtension(DyPEConfig(), width=2048, height=2048)
    seen: list[float] = []
    with ext.patched(tiny_flux) as embedder:
        assert isinstance(tiny_flux.pe_embedder, DyPEEmbedND) and tiny_flux.pe_embedder is embedder
        recorder = embedder.register_forward_hook(lambda module, args, out: seen.append(module.sigma))
        for sigma, positional in ((1.0, False), (0.75, True), (0.75, False), (0.5, True), (0.5, True), (0.0, False)):
            call(tiny_flux, inputs, sigma, positional)
        recorder.remove()
    assert seen == [1.0, 0.75, 0.75, 0.5, 0.5, 0.0]
    assert tiny_flux.pe_embedder is original
    assert not tiny_flux._forward_pre_hooks


def test_patched_output_differs_above_base_and_restores_exactly(tiny_flux) -> None:
    inputs = flux_inputs(2048, 1024)
    with torch.no_grad():
        plain = call(tiny_flux, inputs, 0.9)
        with DyPEExtension(DyPEConfig(), width=1024, height=2048).patched(tiny_flux):
            dype = call(tiny_flux, inputs, 0.9)
        after = call(tiny_flux, inputs, 0.9)
    assert torch.isfinite(dype).all() and not torch.equal(plain, dype)
    assert torch.equal(plain, after)


def test_state_dict_unchanged_while_patched(tiny_flux) -> None:
    keys = set(tiny_flux.state_dict())
    with DyPEExtension(DyPEConfig(), width=2048, height=2048).patched(tiny_flux):
        assert set(tiny_flux.state_dict()) == keys


def test_restored_after_an_exception(tiny_flux) -> None:
    original = tiny_flux.pe_embedder
    ext = DyPEExtension(DyPEConfig(), width=2048, height=2048)
    with pytest.raises(RuntimeError, match="boom"), ext.patched(tiny_flux):
        call(tiny_flux, flux_inputs(2048, 2048), 0.5)
        raise RuntimeError("boom")
    assert tiny_flux.pe_embedder is original and not tiny_flux._forward_pre_hooks


def test_restored_when_the_hook_rejects_sigma(tiny_flux) -> None:
    original = tiny_flux.pe_embedder
    ext = DyPEExtension(DyPEConfig(), width=2048, height=2048)
    with pytest.raises(ValueError, match="sigma"), ext.patched(tiny_flux):
        call(tiny_flux, flux_inputs(2048, 2048), float("nan"))
    assert tiny_flux.pe_embedder is original and not tiny_flux._forward_pre_hooks


def test_patching_twice_is_refused(tiny_flux) -> None:
    ext = DyPEExtension(DyPEConfig(), width=2048, height=2048)
    original = tiny_flux.pe_embedder
    with ext.patched(tiny_flux):
        with pytest.raises(ValueError, match="already has an active DyPE patch"), ext.patched(tiny_flux):
            pass
        assert isinstance(tiny_flux.pe_embedder, DyPEEmbedND)
    assert tiny_flux.pe_embedder is original


def test_bad_arguments(tiny_flux) -> None:
    with pytest.raises(ValueError, match="width must be a positive multiple of 16"):
        DyPEExtension(DyPEConfig(), width=1000, height=1024)
    with pytest.raises(ValueError, match="config"):
        DyPEExtension("vision_yarn", width=1024, height=1024)
    ext = DyPEExtension(DyPEConfig(), width=2048, height=2048)
    with pytest.raises(ValueError, match="host must be one of"):
        ext.patched(tiny_flux, host="comfyui")
    with pytest.raises(ValueError, match="no DyPE host adapter for Linear"):
        ext.patched(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="has no argument 'sigma'"):
        argument_position(tiny_flux.forward, "sigma", "Flux")
    assert argument_position(tiny_flux.forward, "timesteps", "Flux") == 4
