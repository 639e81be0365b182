"""dype.tiled_vae on a tiny FLUX-architecture VAE: tiled vs untiled, both layouts, layout and validation."""

from __future__ import annotations

import copy
import gc
import itertools
import weakref

import pytest
import torch

from dype import tiled_vae
from dype.tiled_vae import TiledDecodeConfig, latent_scale, plan_axis, tiled_decode

from .conftest import MAX_ABS_BOUND, MEAN_ABS_BOUND, SCALE_FACTOR, SHIFT_FACTOR


@pytest.fixture(scope="module")
def ours(bfl_vae, latents):
    return tiled_decode(bfl_vae, latents, tile_size=128, overlap=32)


def test_tiled_matches_untiled_within_bound(ours, untiled):
    error = (ours - untiled).abs()
    assert ours.shape == untiled.shape == (1, 3, 256, 256)
    assert error.max() < MAX_ABS_BOUND
    assert error.mean() < MEAN_ABS_BOUND


def test_closer_to_untiled_than_diffusers_tiled_decode(ours, untiled, diffusers_vae, latents):
    diffusers_vae.tile_sample_min_size = 128
    diffusers_vae.tile_latent_min_size = 16
    diffusers_vae.tile_overlap_factor = 0.25  # 32 px, as ours
    with torch.no_grad():
        theirs = diffusers_vae.tiled_decode(latents / SCALE_FACTOR + SHIFT_FACTOR).sample
    ours_error = (ours - untiled).abs().mean()
    theirs_error = (theirs - untiled).abs().mean()
    # Tile-local GroupNorm statistics shift whole tiles; measured 0.21 vs 3e-7.
    assert theirs_error > 0.05
    assert theirs_error > 1000 * ours_error


def test_diffusers_layout_gives_the_same_image(ours, diffusers_vae, latents):
    # The node pre-scales latents for diffusers VAEs, as InvokeAI's core node does.
    theirs = tiled_decode(diffusers_vae, latents / SCALE_FACTOR + SHIFT_FACTOR, tile_size=128, overlap=32)
    assert torch.allclose(theirs, ours, atol=1e-4)


def test_one_tile_is_the_untiled_decode(bfl_vae, latents, untiled):
    out = tiled_decode(bfl_vae, latents, tile_size=256, overlap=0)
    assert torch.allclose(out, untiled, atol=1e-4)


def test_overlap_below_the_halo_reach_leaves_seams(bfl_vae, latents, untiled):
    # 256 px in 128 px tiles without overlap: the zero padding at x = y = 128 shows (hard seams).
    seamed = (tiled_decode(bfl_vae, latents, tile_size=128, overlap=0) - untiled).abs()
    assert seamed.max() > 0.1
    # 16 px (one latent cell per side) is below the 32 px the halo exchange needs: small seams.
    thin = (tiled_decode(bfl_vae, latents, tile_size=128, overlap=16) - untiled).abs()
    assert MAX_ABS_BOUND < thin.max() < seamed.max()


def test_bf16_runs_in_bf16(bfl_vae, latents, untiled):
    vae = copy.deepcopy(bfl_vae).to(torch.bfloat16)
    out = tiled_decode(vae, latents.to(torch.bfloat16), tile_size=128, overlap=32)
    assert out.dtype == torch.bfloat16
    with torch.no_grad():
        reference = vae.decode(latents.to(torch.bfloat16)).float()
    # bf16 rounding differs between the two op orders; tile-local statistics would be ~0.2.
    assert (out.float() - reference).abs().mean() < 0.02


def test_progress_reports_every_round(bfl_vae, latents):
    calls: list[tuple[int, int]] = []
    tiled_decode(
        bfl_vae, latents[:, :, :16, :24], tile_size=96, overlap=32, progress=lambda d, t: calls.append((d, t))
    )
    total = calls[-1][1]
    # One round per GroupNorm of the tail (4 levels x 2 ResnetBlocks x 2 + norm_out) plus the last.
    assert total == 4 * 2 * 2 + 1 + 1
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_latent_scale_is_eight(bfl_vae, diffusers_vae):
    assert latent_scale(bfl_vae) == latent_scale(diffusers_vae) == 8


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(32, 16, 4), (33, 16, 4), (100, 24, 8), (16, 16, 4), (10, 16, 2)]
)
def test_plan_axis_covers_and_partitions(length, tile, overlap):
    tiles = plan_axis(length, tile, overlap)
    assert tiles[0].start == 0 and tiles[-1].end == length
    assert len({t.end - t.start for t in tiles}) == 1 and tiles[0].end - tiles[0].start <= tile
    # Owned ranges partition the axis, inside their tiles.
    assert tiles[0].own_start == 0 and tiles[-1].own_end == length
    for a, b in itertools.pairwise(tiles):
        assert a.own_end == b.own_start
        assert a.end - b.start >= min(overlap, length)
    assert all(t.start <= t.own_start < t.own_end <= t.end for t in tiles)


def test_plan_axis_uses_the_fewest_tiles_of_the_smallest_size():
    tiles = plan_axis(256, 128, 8)  # 2048 px at tile_size 1024, overlap 64
    assert len(tiles) == 3 and tiles[0].end == 91  # not 3 tiles of 128 overlapping by 64


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tile_size": 100}, "tile_size"),
        ({"tile_size": 32}, "tile_size"),
        ({"tile_size": 512.0}, "tile_size"),
        ({"tile_size": True}, "tile_size"),
        ({"overlap": -8}, "overlap"),
        ({"overlap": 12}, "overlap"),
        ({"tile_size": 256, "overlap": 136}, "overlap"),
        ({"overlap": None}, "overlap"),
        ({"park": "gpu"}, "park"),
        ({"park": None}, "park"),
    ],
)
def test_bad_tile_settings_raise(kwargs, field, bfl_vae, latents):
    with pytest.raises(ValueError, match=field):
        TiledDecodeConfig(**kwargs)
    with pytest.raises(ValueError, match=field):
        tiled_decode(bfl_vae, latents, **kwargs)


def test_bad_inputs_raise(bfl_vae, latents):
    with pytest.raises(ValueError, match="vae"):
        tiled_decode(torch.nn.Linear(2, 2), latents)
    with pytest.raises(ValueError, match="latents"):
        tiled_decode(bfl_vae, latents[0])
    for empty in (latents[:, :, :0], latents[:, :, :, :0], latents[:0]):  # issue #12 item 9: a 0-size latent
        with pytest.raises(ValueError, match=r"latents must be a non-empty \(B, C, H, W\) tensor"):
            tiled_decode(bfl_vae, empty)


def test_model_is_left_unchanged(bfl_vae, latents):
    before = {k: v.clone() for k, v in bfl_vae.state_dict().items()}
    tiled_decode(bfl_vae, latents[:, :, :16, :16], tile_size=64, overlap=16)
    after = bfl_vae.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not bfl_vae.training


def test_parked_tiles_leave_nothing_behind(bfl_vae, latents, untiled, monkeypatch):
    # On a GPU, parking in host RAM copies a tile to the CPU; if anything (a generator frame's local) still
    # held the device tensor, every tile would stay on the device and tiling would save nothing. Simulate
    # the copy.
    sources: list[weakref.ref] = []

    def copy_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        sources.append(weakref.ref(tensor))
        return tensor.clone()

    monkeypatch.setattr(tiled_vae, "_to", copy_to)
    alive: list[int] = []
    copies: list[int] = []

    def progress(done: int, total: int) -> None:
        # Generations 0 and 1 hold everything made since the last round (a full collection of this test
        # process's heap, invokeai included, costs ~0.5 s a round).
        gc.collect(1)
        alive.append(sum(ref() is not None for ref in sources))
        copies.append(len(sources))
        sources.clear()

    out = tiled_decode(bfl_vae, latents, tile_size=128, overlap=32, park="host", progress=progress)
    assert len(alive) == 18 and max(alive) == 0
    assert min(copies[:-1]) >= 9  # every one of the 3 x 3 tiles went to host RAM at every GroupNorm
    assert (out - untiled).abs().max() < MAX_ABS_BOUND
