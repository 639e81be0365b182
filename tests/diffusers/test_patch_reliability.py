"""Issue #12, "wrong output with no warning", items 1–3: each reproduced on a real tiny FluxPipeline.

1. a patch lives until `.remove()` / the end of its `with` block, whoever holds the returned object;
2. the size check runs on every call (a transposed size with the same token count is an error);
3. a scheduler replaced inside the block gets its own μ back on exit; a nested `apply_dype` (also "off")
   and an `apply_dype` on a second pipeline sharing the transformer are refused; a sibling pipeline that
   shares a patched transformer is named in the size error.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.models.transformers.transformer_flux import FluxPosEmbed

from dype import DyPEConfig, DyPEExtension, DyPEPosEmbed, active_patch
from dype.diffusers import active_dype, apply_dype

CONFIG = DyPEConfig(base_resolution=128)
SIZE = 256


def run(pipe: Any, width: int = SIZE, height: int = SIZE) -> torch.Tensor:
    return pipe(
        prompt="a cat", width=width, height=height, num_inference_steps=2, guidance_scale=3.5,
        max_sequence_length=16, generator=torch.Generator().manual_seed(0), output_type="latent",
    ).images  # fmt: skip


def patch_inside_a_helper(pipe: Any) -> Any:
    apply_dype(pipe, CONFIG, width=SIZE, height=SIZE)  # the documented .remove() style, result dropped
    return pipe


def test_a_dropped_patch_object_stays_applied_until_removed(flux_pipe: FluxPipeline) -> None:
    plain = run(flux_pipe)
    patch_inside_a_helper(flux_pipe)
    gc.collect()
    try:
        assert isinstance(flux_pipe.transformer.pos_embed, DyPEPosEmbed)
        assert flux_pipe.scheduler.config.base_shift == flux_pipe.scheduler.config.max_shift == 1.15
        assert not torch.equal(run(flux_pipe), plain)
    finally:
        active_dype(flux_pipe).remove()
    assert isinstance(flux_pipe.transformer.pos_embed, FluxPosEmbed) and active_dype(flux_pipe) is None
    assert torch.equal(run(flux_pipe), plain)


def test_a_dropped_model_patch_stays_applied_until_removed(flux_pipe: FluxPipeline) -> None:
    transformer = flux_pipe.transformer
    DyPEExtension(CONFIG, width=SIZE, height=SIZE).patched(transformer).__enter__()
    gc.collect()
    try:
        assert isinstance(transformer.pos_embed, DyPEPosEmbed) and len(transformer._forward_pre_hooks) == 1
    finally:
        active_patch(transformer).remove()
    assert isinstance(transformer.pos_embed, FluxPosEmbed) and not transformer._forward_pre_hooks


def test_a_transposed_size_after_a_correct_call_is_an_error(flux_pipe: FluxPipeline) -> None:
    with apply_dype(flux_pipe, CONFIG, width=256, height=128):
        run(flux_pipe, width=256, height=128)
        with pytest.raises(ValueError, match=r"set up for width=256, height=128 .* generating 128×256 px"):
            run(flux_pipe, width=128, height=256)  # same token count, rows and columns swapped


def test_a_scheduler_replaced_inside_the_block_gets_its_mu_back(flux_pipe: FluxPipeline) -> None:
    original = flux_pipe.scheduler
    try:
        with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE):
            flux_pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(flux_pipe.scheduler.config)
            assert flux_pipe.scheduler.config.max_shift == 1.15  # pinned inside the block (copied config)
        assert (flux_pipe.scheduler.config.base_shift, flux_pipe.scheduler.config.max_shift) == (0.5, 1.15)
        assert flux_pipe.scheduler.config.base_shift == original.config.base_shift == 0.5
    finally:
        flux_pipe.scheduler = original


def test_a_scheduler_without_the_pinned_mu_is_reported(flux_pipe: FluxPipeline, caplog) -> None:
    original = flux_pipe.scheduler
    try:
        with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE), caplog.at_level(logging.WARNING):
            flux_pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(original.config, base_shift=0.5)
            run(flux_pipe)
        assert "pipe.scheduler was replaced after apply_dype" in caplog.text
    finally:
        flux_pipe.scheduler = original


def test_nested_apply_dype_is_refused_also_off(flux_pipe: FluxPipeline) -> None:
    with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE) as patch:
        for dype in ("off", "4k", CONFIG):
            with pytest.raises(ValueError, match="already has an active apply_dype"):
                apply_dype(flux_pipe, dype, width=SIZE, height=SIZE)
        assert patch.active and isinstance(flux_pipe.transformer.pos_embed, DyPEPosEmbed)
    assert active_dype(flux_pipe) is None


def test_a_second_pipeline_sharing_the_transformer(flux_pipe: FluxPipeline) -> None:
    sibling = FluxPipeline(**flux_pipe.components)
    sibling.set_progress_bar_config(disable=True)
    with apply_dype(flux_pipe, CONFIG, width=SIZE, height=SIZE):
        with pytest.raises(ValueError, match=r"pipe.transformer .* already has an active DyPE patch, from another"):
            apply_dype(sibling, CONFIG, width=SIZE, height=SIZE)
        with pytest.raises(ValueError, match="a pipeline sharing this FluxTransformer2DModel runs DyPE too"):
            run(sibling, width=128, height=128)
    assert active_dype(sibling) is None and isinstance(flux_pipe.transformer.pos_embed, FluxPosEmbed)
