"""dype.memory: estimates consistent with InvokeAI's, and the pre-run log line."""

from __future__ import annotations

import sys

import pytest
import torch
from invokeai.backend.util.vae_working_memory import estimate_vae_working_memory_flux

import dype.memory as memory
from dype.memory import (
    TILED_NODE_TITLE,
    available_ram,
    estimate_decode_memory,
    estimate_denoise_memory,
    estimate_park_memory,
    log_memory_plan,
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
    assert estimate_park_memory(4096, 4096) > 4096 * 4096 * 384 * 2  # at least one copy of the worst tensors


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
