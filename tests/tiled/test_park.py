"""Where dype.tiled_vae parks the waiting tiles: both places give the untiled image (both VAE kinds, odd
sizes, batch 2), "auto" follows the free memory, the parked bytes are the planned ones, in the decode's dtype.

On a CPU the device and host RAM are the same memory, so "host" is run with its copies made real (a clone
per move, as a GPU -> host copy would be) and "device" with none: the code paths a GPU runs.
"""

from __future__ import annotations

import copy

import pytest
import torch

import dype.memory as memory
from dype import tiled_vae
from dype.tiled_vae import PARK_CHOICES, plan_park, tiled_decode

from .conftest import MAX_ABS_BOUND, MEAN_ABS_BOUND, SCALE_FACTOR, SHIFT_FACTOR, structured_latents, tiny_bfl_vae

GIB = 2**30


class _Parked:
    """Records every move to host RAM (made a real copy) and, at each halo exchange (all tiles waiting),
    the bytes, dtypes and devices of the waiting tensors."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.host_moves = 0
        self.round_bytes: list[int] = []
        self.dtypes: set[torch.dtype] = set()
        exchange = tiled_vae._exchange_halos

        def copy_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
            self.host_moves += device == tiled_vae.HOST
            return tensor.clone()

        def recording_exchange(runs: list) -> None:
            tensors = [getattr(run.slots, name) for run in runs for name in run.slots.tensors()]
            self.round_bytes.append(sum(t.numel() * t.element_size() for t in tensors))
            self.dtypes.update(t.dtype for t in tensors)
            exchange(runs)

        monkeypatch.setattr(tiled_vae, "_to", copy_to)
        monkeypatch.setattr(tiled_vae, "_exchange_halos", recording_exchange)


@pytest.fixture(scope="module")
def odd_batch() -> torch.Tensor:
    """(2, 16, 13, 19): two different samples, 104 x 152 px (odd latent sides, neither a multiple of the tile)."""
    return torch.cat([structured_latents(19, seed=1), structured_latents(19, seed=2)])[:, :, :13, :19]


@pytest.fixture(scope="module")
def odd_untiled(bfl_vae, odd_batch) -> torch.Tensor:
    with torch.no_grad():
        return bfl_vae.decode(odd_batch)


@pytest.mark.parametrize("park", ["device", "host"])
@pytest.mark.parametrize("layout", ["bfl", "diffusers"])
def test_both_park_places_give_the_untiled_image(
    layout, park, bfl_vae, diffusers_vae, odd_batch, odd_untiled, monkeypatch
):
    parked = _Parked(monkeypatch)
    # The node pre-scales latents for diffusers VAEs, as InvokeAI's core node does.
    vae, latents = (
        (bfl_vae, odd_batch) if layout == "bfl" else (diffusers_vae, odd_batch / SCALE_FACTOR + SHIFT_FACTOR)
    )
    lines: list[str] = []
    out = tiled_decode(vae, latents, tile_size=96, overlap=32, park=park, log=lines.append)
    error = (out - odd_untiled).abs()
    assert out.shape == odd_untiled.shape == (2, 3, 104, 152)
    assert error.max() < MAX_ABS_BOUND and error.mean() < MEAN_ABS_BOUND
    assert error[1].max() < MAX_ABS_BOUND  # the second sample has its own statistics
    # 2 x 2 tiles; parked in host RAM they travel at every GroupNorm, on the device never.
    assert (parked.host_moves >= 4 * 17) if park == "host" else (parked.host_moves == 0)
    assert len(lines) == 1 and "4 tiles" in lines[0] and "forced" in lines[0]
    assert ("in host RAM" in lines[0]) == (park == "host")


@pytest.mark.parametrize(("free", "place"), [(100 * GIB, "device"), (GIB // 2, "host")])
def test_auto_parks_where_the_free_memory_says(free, place, bfl_vae, latents, monkeypatch):
    parked = _Parked(monkeypatch)
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    lines: list[str] = []
    tiled_decode(bfl_vae, latents[:, :, :8, :20], tile_size=96, overlap=32, log=lines.append)  # 2 tiles
    assert (parked.host_moves > 0) == (place == "host")
    assert ("in host RAM" in lines[0]) == (place == "host") and "auto" in lines[0]


def test_plan_park_follows_an_injected_free_figure(bfl_vae, latents):
    plan = plan_park(bfl_vae, latents, tile_size=128, overlap=32, free_bytes=100 * GIB)
    assert plan.place == "device" and plan.tiles == 9 and plan.free_bytes == 100 * GIB
    needed = plan.park_bytes + plan.working_bytes
    # The margin: 1 GiB plus 10 % of the free memory.
    assert plan_park(bfl_vae, latents, tile_size=128, overlap=32, free_bytes=GIB + needed).place == "host"
    enough = int((GIB + needed) / 0.9) + 16
    assert plan_park(bfl_vae, latents, tile_size=128, overlap=32, free_bytes=enough).place == "device"
    # Forced choices ignore the free memory.
    assert plan_park(bfl_vae, latents, tile_size=128, park="host", free_bytes=100 * GIB).place == "host"
    assert plan_park(bfl_vae, latents, tile_size=128, park="device", free_bytes=0).place == "device"
    # One tile: nothing waits.
    single = plan_park(bfl_vae, latents, tile_size=256, overlap=0, free_bytes=0)
    assert single.park_bytes == 0 and single.place == "device" and "nothing waits" in single.describe()
    with pytest.raises(ValueError, match=f"park must be one of {', '.join(map(repr, PARK_CHOICES))}"):
        plan_park(bfl_vae, latents, park="cpu")


@pytest.mark.parametrize(("width", "height"), [(2048, 2048), (3840, 2160), (4096, 4096)])
def test_plan_park_of_the_flux_vae_is_the_memory_estimate(width, height):
    from invokeai.backend.flux.modules.autoencoder import AutoEncoder
    from invokeai.backend.flux.util import get_flux_ae_params

    with torch.device("meta"):  # the real architecture, no weights allocated
        vae = AutoEncoder(get_flux_ae_params())
        latents = torch.empty(2, 16, height // 8, width // 8, dtype=torch.bfloat16)
    plan = plan_park(vae, latents, free_bytes=None)
    assert plan.park_bytes == 2 * memory.estimate_park_memory(width, height, element_size=2)
    assert plan.place == "host"  # free memory unknown


def test_parked_bytes_are_the_planned_ones_and_the_wide_input_goes_first(monkeypatch):
    # A full-resolution block that halves the channels (64 -> 32), as FLUX's first one (256 -> 128): with
    # its 1x1 shortcut applied before norm2, the tiles wait with 32 + 32 channels, not 64 + 32.
    vae = tiny_bfl_vae(channels=[32, 64, 64, 64])
    latents = structured_latents(20)[:, :, :8, :20]  # 2 tiles
    with torch.no_grad():
        untiled = vae.decode(latents)
    parked = _Parked(monkeypatch)
    out = tiled_decode(vae, latents, tile_size=96, overlap=32, park="device", log=lambda _: None)
    assert (out - untiled).abs().max() < MAX_ABS_BOUND
    plan = plan_park(vae, latents, tile_size=96, overlap=32, park="device")
    assert max(parked.round_bytes) == plan.park_bytes
    decoded_pixels = plan.park_bytes // (64 * 4)
    assert max(parked.round_bytes) < decoded_pixels * (64 + 32) * 4


@pytest.mark.parametrize("park", ["device", "host"])
def test_parked_tiles_keep_the_decode_dtype(park, bfl_vae, latents, monkeypatch):
    vae = copy.deepcopy(bfl_vae).to(torch.bfloat16)
    parked = _Parked(monkeypatch)
    out = tiled_decode(vae, latents[:, :, :8, :20].to(torch.bfloat16), tile_size=96, overlap=32, park=park)
    assert out.dtype == torch.bfloat16
    assert len(parked.round_bytes) == 17 and parked.dtypes == {torch.bfloat16}
