"""dype.memory: estimates consistent with InvokeAI's and the park decision; dype.invokeai.memory_plan: the
pre-run log line."""

from __future__ import annotations

import inspect
import sys

import pytest
import torch
from invokeai.backend.util.vae_working_memory import estimate_vae_working_memory_flux

import dype.memory as memory
from dype.invokeai.memory_plan import TILED_NODE_TITLE, TILED_NODE_TYPE, log_memory_plan
from dype.memory import (
    GIB,
    available_ram,
    choose_park_place,
    estimate_decode_memory,
    estimate_denoise_memory,
    estimate_park_memory,
    free_memory,
)

GB = 10**9


class _Log:
    def __init__(self) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def info(self, msg: str) -> None:
        self.infos.append(msg)

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)


@pytest.mark.parametrize(("size", "dtype"), [(1024, torch.bfloat16), (4096, torch.bfloat16), (2048, torch.float32)])
def test_untiled_decode_is_invokeais_own_estimate(size, dtype, bfl_vae):
    vae = torch.nn.Conv2d(1, 1, 1).to(dtype)  # only next(vae.parameters()).element_size() is read
    latents = torch.zeros(1, 16, size // 8, size // 8)
    theirs = estimate_vae_working_memory_flux(operation="decode", image_tensor=latents, vae=vae)
    ours = estimate_decode_memory(size, size, element_size=torch.finfo(dtype).bits // 8)
    assert ours == theirs


def test_4k_untiled_is_74_gb_and_tiled_fits_24_gb():
    assert 73 * GB < estimate_decode_memory(4096, 4096) < 75 * GB
    tiled = estimate_decode_memory(4096, 4096, tiled=True, tile_size=1024)
    assert tiled < 12 * GB
    assert estimate_decode_memory(4096, 4096, tiled=True, tile_size=512) < tiled
    # Below one tile, tiling only adds the head and the accumulators.
    assert estimate_decode_memory(1024, 1024, tiled=True) > estimate_decode_memory(1024, 1024)


def test_park_memory_grows_with_area_and_is_zero_for_one_tile():
    assert estimate_park_memory(1024, 1024) == 0
    assert estimate_park_memory(2048, 2048) < estimate_park_memory(4096, 4096)
    # 256 full-resolution channels (the shortcut applied before norm2), plus the overlaps' few percent.
    assert 4096 * 4096 * 256 * 2 < estimate_park_memory(4096, 4096) < 4096 * 4096 * 256 * 2 * 1.15
    assert 9.0 * GIB < estimate_park_memory(4096, 4096) < 9.2 * GIB


@pytest.mark.parametrize(
    ("free", "park", "working", "place"),
    [
        (None, 10 * GIB, 0, "host"),  # free memory unknown: the safe place
        (24 * GIB, 9 * GIB, GIB, "device"),  # a 24 GB card with the transformer offloaded
        (12 * GIB, 9 * GIB, GIB, "host"),  # 9.8 GiB usable < 10 GiB
        (0, 0, GIB, "device"),  # one tile: nothing waits
        (int((11 * GIB) / 0.9), 10 * GIB - 16, 0, "device"),  # usable 10 GiB: fits, 16 bytes to spare
        (int((11 * GIB) / 0.9), 10 * GIB + 16, 0, "host"),
        (140 * GIB, 10 * GIB, 2 * GIB, "device"),  # an H200
    ],
)
def test_choose_park_place_for_an_injected_free_figure(free, park, working, place):
    assert choose_park_place(free, park, working) == place


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((GIB, -1, 0), "park_bytes"),
        ((GIB, 1.5, 0), "park_bytes"),
        ((GIB, 1, None), "working_bytes"),
        (("1", 1, 0), "free_bytes"),
    ],
)
def test_choose_park_place_rejects_bad_input(args, field):
    with pytest.raises(ValueError, match=field):
        choose_park_place(*args)


def test_core_memory_names_no_invokeai_node():
    # InvokeAI's node names and advice live in dype.invokeai.memory_plan (issue #8).
    source = inspect.getsource(memory)
    assert "Latents to Image" not in source and TILED_NODE_TYPE not in source
    assert not hasattr(memory, "log_memory_plan")


def test_denoise_tokens_and_pe():
    plan = estimate_denoise_memory(4096, 4096)
    assert plan.image_tokens == 65536 and plan.text_tokens == 512
    assert plan.pe_bytes == pytest.approx(64.5 * 2**20)  # INVOKEAI_NOTES.md: 64.5 MiB in float32
    small = estimate_denoise_memory(1024, 1024)
    assert small.image_tokens == 4096
    # Activations grow with the tokens, scores with their square.
    assert plan.activation_bytes / small.activation_bytes == pytest.approx(66048 / 4608)
    assert plan.attention_scores_bytes / small.attention_scores_bytes == pytest.approx((66048 / 4608) ** 2)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: estimate_decode_memory(0, 1024), "width"),
        (lambda: estimate_decode_memory(1024, "1024"), "height"),
        (lambda: estimate_decode_memory(1024, 1024, element_size=3), "element_size"),
        (lambda: estimate_decode_memory(1024, 1024, tiled=True, tile_size=16), "tile_size"),
        (lambda: estimate_park_memory(2048, 2048, 512, overlap=512), "overlap"),
        (lambda: estimate_denoise_memory(1024, True), "height"),
        (lambda: estimate_denoise_memory(1024, 1024, text_tokens=-1), "text_tokens"),
    ],
)
def test_bad_input_raises(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_log_warns_and_names_the_tiled_node_when_the_decode_does_not_fit(monkeypatch):
    monkeypatch.setattr(memory, "available_ram", lambda: 16 * GB)
    log = _Log()
    plan = log_memory_plan(log, width=4096, height=4096, device=torch.device("cpu"))
    assert plan.decode_fits is False and plan.free_bytes == 16 * GB
    assert "65536 image" in log.infos[0] and "untiled VAE decode" in log.infos[0]
    assert len(log.warnings) == 1 and TILED_NODE_TITLE in log.warnings[0]
    # 9.1 GiB of waiting tiles do not fit next to the tiled decode in 16 GB: they go to RAM.
    assert plan.decode_park_place == "host" and "waiting tiles in RAM" in log.warnings[0]


def test_log_is_quiet_when_it_fits(monkeypatch):
    monkeypatch.setattr(memory, "available_ram", lambda: 100 * GB)
    log = _Log()
    plan = log_memory_plan(log, width=2048, height=2048, device=torch.device("cpu"))
    assert plan.decode_fits is True and log.warnings == [] and len(log.infos) == 1


def test_cuda_uses_mem_get_info(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * GB, 24 * GB))
    log = _Log()
    plan = log_memory_plan(log, width=4096, height=4096, device=torch.device("cuda", 0))
    assert plan.free_bytes == 20 * GB and "cuda:0" in log.warnings[0]
    # 9.1 GiB of waiting tiles + 7.5 GiB for the tiled decode > 20 GB less the margin: RAM.
    assert plan.decode_park_place == "host" and "waiting tiles in RAM" in log.warnings[0]


def test_on_a_big_card_the_waiting_tiles_stay_on_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (60 * GB, 80 * GB))
    log = _Log()
    plan = log_memory_plan(log, width=4096, height=4096, device=torch.device("cuda", 0))
    assert plan.decode_fits is False  # 68.8 GiB untiled
    assert plan.decode_park_place == "device" and "waiting tiles on the device" in log.warnings[0]


def test_cuda_free_memory_counts_what_the_allocator_holds_unused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * GB, 24 * GB))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * GB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * GB)
    assert free_memory(torch.device("cuda", 0)) == 22 * GB


def test_unknown_device_never_warns():
    log = _Log()
    plan = log_memory_plan(log, width=4096, height=4096, device=torch.device("meta"))
    assert plan.decode_fits is None and log.warnings == [] and "unknown" in log.infos[0]


def test_available_ram_without_psutil_reads_proc_meminfo(monkeypatch):
    with_psutil = available_ram()
    monkeypatch.setitem(sys.modules, "psutil", None)  # makes `import psutil` raise ImportError
    without = available_ram()
    assert with_psutil is not None and without is not None
    assert abs(without - with_psutil) < 2 * GB
