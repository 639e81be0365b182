"""The drop-in embedders: layout, dtype, attributes, caching, validation."""

from __future__ import annotations

import pytest
import torch

from dype import DyPEConfig, DyPEEmbedND, DyPEPosEmbed, embed_ids
from tests.core.helpers import FLUX_AXES_DIM, THETA, flux_ids, plain_embed


def make(config: DyPEConfig | None = None) -> DyPEEmbedND:
    return DyPEEmbedND(128, THETA, FLUX_AXES_DIM, config or DyPEConfig())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64])
def test_forward_shape_and_dtype(dtype: torch.dtype) -> None:
    embedder = make()
    embedder.set_step_state(0.5, height=1536, width=2048)
    ids = flux_ids(1536, 2048, text_tokens=5, batch=2).to(dtype) if dtype != torch.bfloat16 else None
    if ids is None:  # bf16 holds these positions (≤ 128) exactly
        ids = flux_ids(1536, 2048, text_tokens=5, batch=2).to(torch.bfloat16)
    pe = embedder(ids)
    assert pe.shape == (2, 1, 5 + 96 * 128, 64, 2, 2)
    assert pe.dtype == torch.float32
    assert torch.equal(pe, embed_ids(ids.float(), "flux1", DyPEConfig(), width=2048, height=1536, sigma=0.5))


def test_attributes_and_no_state() -> None:
    embedder = make()
    assert (embedder.dim, embedder.theta, embedder.axes_dim) == (128, THETA, FLUX_AXES_DIM)
    assert list(embedder.parameters()) == [] and list(embedder.buffers()) == []
    assert embedder.state_dict() == {}


def test_plain_rope_until_step_state_is_set() -> None:
    ids = flux_ids(2048, 2048, text_tokens=2)
    assert torch.equal(make()(ids), plain_embed(ids))


def test_step_state_update_changes_output() -> None:
    embedder = make()
    ids = flux_ids(2048, 2048, text_tokens=2)
    embedder.set_step_state(1.0, height=2048, width=2048)
    early = embedder(ids).clone()
    embedder.set_step_state(0.2, height=2048, width=2048)
    late = embedder(ids)
    assert (embedder.sigma, embedder.height, embedder.width) == (0.2, 2048, 2048)
    assert not torch.equal(early, late)
    assert torch.equal(late, embed_ids(ids, "flux1", DyPEConfig(), width=2048, height=2048, sigma=0.2))


def test_cache_repeated_sigma_returns_cached_and_new_ids_recompute() -> None:
    embedder = make()
    embedder.set_step_state(0.7, height=2048, width=2048)
    ids = flux_ids(2048, 2048, text_tokens=4)
    first = embedder(ids).data_ptr()
    assert embedder(ids.clone()).data_ptr() == first  # Heun: the same σ twice reuses the result
    embedder.set_step_state(0.7, height=2048, width=2048)
    assert embedder(ids).data_ptr() == first
    embedder.set_step_state(0.6, height=2048, width=2048)
    assert embedder(ids).data_ptr() != first
    shifted = ids.clone()
    shifted[0, -1, 2] += 1  # a different grid must not reuse the cached index
    out = embedder(shifted)
    assert torch.equal(out, embed_ids(shifted, "flux1", DyPEConfig(), width=2048, height=2048, sigma=0.6))


def test_positions_exact_at_any_size() -> None:
    """Float32 ids at 8192 px: 512 distinct rows give 512 distinct rotations (no bf16 collisions)."""
    embedder = make()
    embedder.set_step_state(0.5, height=8192, width=8192)
    rows = torch.arange(512, dtype=torch.float32)
    ids = torch.stack([torch.zeros(512), rows, torch.zeros(512)], dim=-1)[None]
    pe = embedder(ids)
    assert torch.unique(pe[0, 0, :, 8:36].reshape(512, -1), dim=0).shape[0] == 512


def test_bf16_ids_beyond_256_are_refused() -> None:
    ids = flux_ids(4608, 1024, text_tokens=1).to(torch.bfloat16)  # rows up to 287
    with pytest.raises(ValueError, match="Pass float32 or integer ids"):
        make()(ids)


@pytest.mark.parametrize("shape", [(10, 3), (1, 10, 2), (1, 10, 4), (2, 1, 10, 3)])
def test_wrong_id_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"ids must have shape \(B, N, 3\)"):
        make()(torch.zeros(shape))


@pytest.mark.parametrize(
    ("sigma", "match"),
    [
        (float("nan"), "sigma"),
        (1.5, "sigma"),
        (-0.1, "sigma"),
        (torch.tensor([0.5, 0.4]), "one value"),
        (torch.tensor([]), "empty"),
        ("0.5", "sigma"),
    ],
)
def test_bad_sigma_is_refused(sigma, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make().set_step_state(sigma, height=1024, width=1024)


def test_batched_sigma_tensor_with_one_value_is_accepted() -> None:
    embedder = make()
    embedder.set_step_state(torch.tensor([0.25, 0.25], dtype=torch.bfloat16), height=2048, width=2048)
    assert embedder.sigma == 0.25


@pytest.mark.parametrize(("height", "width"), [(1000, 1024), (1024, 0), (1024, -16), (1024.0, 1024)])
def test_bad_sizes_are_refused(height, width) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        make().set_step_state(0.5, height=height, width=width)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="add up to dim"):
        DyPEEmbedND(100, THETA, FLUX_AXES_DIM, DyPEConfig())
    with pytest.raises(ValueError, match="axes_dim"):
        DyPEEmbedND(128, THETA, [64, 64], DyPEConfig())
    with pytest.raises(ValueError, match="config must be a DyPEConfig"):
        DyPEEmbedND(128, THETA, FLUX_AXES_DIM, {"method": "yarn"})


def test_from_embednd_copies_invokeai_embednd_and_matches_it_at_base_size() -> None:
    from invokeai.backend.flux.modules.layers import EmbedND

    original = EmbedND(dim=128, theta=THETA, axes_dim=FLUX_AXES_DIM)
    embedder = DyPEEmbedND.from_embednd(original, DyPEConfig(method="yarn"))
    assert (embedder.dim, embedder.theta, embedder.axes_dim) == (original.dim, original.theta, original.axes_dim)
    ids = flux_ids(1024, 768, text_tokens=8)
    for sigma in (1.0, 0.3):
        embedder.set_step_state(sigma, height=1024, width=768)
        assert torch.equal(embedder(ids), original(ids))


def test_diffusers_layout_has_the_same_numbers() -> None:
    config = DyPEConfig(method="vision_yarn")
    pos_embed = DyPEPosEmbed(THETA, FLUX_AXES_DIM, config)
    assert (pos_embed.theta, pos_embed.axes_dim) == (THETA, FLUX_AXES_DIM)
    bfl = make(config)
    for module in (pos_embed, bfl):
        module.set_step_state(0.45, height=2048, width=3072)
    ids = flux_ids(2048, 3072, text_tokens=6)
    cos, sin = pos_embed(ids[0])
    pe = bfl(ids)
    assert cos.shape == sin.shape == (ids.shape[1], 128) and cos.dtype == sin.dtype == torch.float32
    assert torch.equal(cos[:, 0::2], pe[0, 0, :, :, 0, 0]) and torch.equal(cos[:, 1::2], cos[:, 0::2])
    assert torch.equal(sin[:, 0::2], pe[0, 0, :, :, 1, 0]) and torch.equal(sin[:, 1::2], sin[:, 0::2])
    cos3, _ = pos_embed(ids)  # diffusers' deprecated 3-D ids: the first row
    assert torch.equal(cos3, cos)
    with pytest.raises(ValueError, match=r"ids must have shape \(N, 3\)"):
        pos_embed(torch.zeros(5, 2))


def test_diffusers_layout_equals_diffusers_flux_pos_embed_at_base_size() -> None:
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    original = FluxPosEmbed(theta=THETA, axes_dim=FLUX_AXES_DIM)
    pos_embed = DyPEPosEmbed.from_pos_embed(original, DyPEConfig())
    pos_embed.set_step_state(0.8, height=1024, width=1024)
    ids = flux_ids(1024, 1024, text_tokens=4)[0]
    for ours, theirs in zip(pos_embed(ids), original(ids), strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize(("dtype", "limit"), [(torch.bfloat16, 256), (torch.float16, 2048)])
def test_low_precision_ids_are_refused_from_the_first_ambiguous_row(dtype: torch.dtype, limit: int) -> None:
    """Issue #12 item 4: bf16 rounds 257 to 256, so rows 0…257 hold two rows at 256; fp16 likewise at 2049."""
    rows = torch.arange(limit + 2, dtype=torch.float32)
    ids = torch.stack([torch.zeros_like(rows), rows, torch.zeros_like(rows)], dim=-1)[None]
    assert torch.unique(ids.to(dtype)[0, :, 1]).numel() < limit + 2  # the collision the guard prevents
    with pytest.raises(ValueError, match=f"holds integers exactly only below {limit}"):
        make()(ids.to(dtype))
    exact = ids[:, :limit].to(dtype)  # rows 0 … limit−1: every position exact
    assert torch.unique(exact[0, :, 1]).numel() == limit
    make()(exact)


@pytest.mark.parametrize("axes_dim", [[2, 2, 2], [16, 2, 56], [8, 56, 2]])
def test_spatial_axes_of_dimension_two_are_refused(axes_dim: list[int]) -> None:
    """Issue #12 item 9: NTK divides by d − 2; a 2-dimensional spatial axis is a clear error, not a crash."""
    with pytest.raises(ValueError, match=r"a spatial axis\) must be at least 4"):
        DyPEEmbedND(sum(axes_dim), THETA, axes_dim, DyPEConfig(method="ntk"))


def test_empty_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="ids must hold at least one token"):
        make()(torch.zeros(1, 0, 3))
