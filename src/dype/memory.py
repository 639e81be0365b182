"""Working-memory estimates for a FLUX run at a given size, and a log line before one starts.

Estimates, not measurements; each formula says where its constant comes from.

* Untiled VAE decode: InvokeAI's own ``estimate_vae_working_memory_flux`` (invokeai 6.14.2,
  ``invokeai/backend/util/vae_working_memory.py``): ``H * W * element_size * 2200`` bytes, the decode
  constant calibrated on CUDA (allocated + reserved, InvokeAI #8414). 4096² in bf16: 73.8 GB.
* Tiled decode (``dype.tiled_vae``): one tile through the same constant plus InvokeAI's 25% for
  overlap and blending (its SD/Qwen/Wan tiled estimates do the same), plus the whole-image head at
  latent resolution (``(H/8) * (W/8) * 512 channels * element_size * 8``: about eight 512-channel
  tensors are live in the mid block's attention), plus the output image (``H * W * 3 * element_size``).
  The tiles waiting between GroupNorms live on the park device (host RAM when decoding on a GPU):
  ``estimate_park_memory``, a 256- and a 128-channel full-resolution tensor at the worst GroupNorm,
  times the area the overlaps add (``plan_axis``).
* Denoise: ``(H/16) * (W/16)`` image tokens plus the T5 tokens (512 for dev). Activations of a
  single-stream block ~ ``tokens * 3072 * element_size * 20`` (its fused linear alone is 7 hidden
  widths wide; 20 covers q/k/v, the MLP and the residual stream). The attention score matrix
  ``24 heads * tokens² * element_size`` exists only where SDPA has no fused kernel (MPS, some ROCm);
  CUDA's flash/memory-efficient kernels never build it. The RoPE table ``pe`` is
  ``tokens * 64 * 2 * 2 * 4`` bytes (float32), DyPE or not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from dype.tiled_vae import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, MIN_TILE_SIZE, plan_axis

TILED_NODE_TITLE = "Latents to Image - FLUX (tiled)"
TILED_NODE_TYPE = "flux_vae_decode_tiled"

VAE_DECODE_BYTES_PER_PIXEL_BYTE = 2200  # InvokeAI's estimate_vae_working_memory_flux, decode
TILED_OVERHEAD = 1.25  # InvokeAI's tiled estimates: +25% for overlap and blending
VAE_SCALE = 8  # pixels per latent cell
VAE_MID_CHANNELS = 512
VAE_MID_LIVE_TENSORS = 8
PARK_CHANNELS = 256 + 128  # worst GroupNorm: first level-0 ResnetBlock (256-channel input, 128-channel h)
FLUX_PATCH = 16  # pixels per image token (8x VAE, 2x2 patchify)
FLUX_HIDDEN = 3072
FLUX_HEADS = 24
FLUX_LIVE_HIDDEN_WIDTHS = 20
FLUX_PE_BYTES_PER_TOKEN = 64 * 2 * 2 * 4
T5_TOKENS_DEV = 512
GIB = 2**30


class _Logger(Protocol):
    def info(self, msg: str, /) -> object: ...
    def warning(self, msg: str, /) -> object: ...


def _check_size(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive int (pixels), got {value!r}")
    return value


def _check_element_size(element_size: object) -> int:
    if element_size not in (1, 2, 4):
        raise ValueError(f"element_size must be 1, 2 or 4 (bytes per value), got {element_size!r}")
    return int(element_size)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DenoiseMemory:
    """Expected working memory of one FLUX transformer call (batch 1), in bytes."""

    image_tokens: int
    text_tokens: int
    activation_bytes: int
    attention_scores_bytes: int  # only where SDPA materialises the score matrix
    pe_bytes: int


def estimate_denoise_memory(
    width: int, height: int, *, text_tokens: int = T5_TOKENS_DEV, element_size: int = 2
) -> DenoiseMemory:
    """Tokens and working memory of a FLUX denoise step at width x height pixels (formulas: module doc)."""
    width, height = _check_size("width", width), _check_size("height", height)
    element_size = _check_element_size(element_size)
    if isinstance(text_tokens, bool) or not isinstance(text_tokens, int) or text_tokens < 0:
        raise ValueError(f"text_tokens must be an int >= 0, got {text_tokens!r}")
    image_tokens = -(-height // FLUX_PATCH) * -(-width // FLUX_PATCH)
    tokens = image_tokens + text_tokens
    return DenoiseMemory(
        image_tokens=image_tokens,
        text_tokens=text_tokens,
        activation_bytes=tokens * FLUX_HIDDEN * element_size * FLUX_LIVE_HIDDEN_WIDTHS,
        attention_scores_bytes=FLUX_HEADS * tokens * tokens * element_size,
        pe_bytes=tokens * FLUX_PE_BYTES_PER_TOKEN,
    )


def estimate_decode_memory(
    width: int,
    height: int,
    tiled: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    *,
    overlap: int = DEFAULT_OVERLAP,
    element_size: int = 2,
) -> int:
    """Device working memory of a FLUX VAE decode at width x height pixels, in bytes (module doc).

    ``tiled=False`` is InvokeAI's own figure for its "Latents to Image - FLUX" node.
    """
    width, height = _check_size("width", width), _check_size("height", height)
    element_size = _check_element_size(element_size)
    if not tiled:
        return int(width * height * element_size * VAE_DECODE_BYTES_PER_PIXEL_BYTE)
    _check_tile(tile_size, overlap)
    tile_area = min(tile_size, height) * min(tile_size, width)
    tile_bytes = tile_area * element_size * VAE_DECODE_BYTES_PER_PIXEL_BYTE * TILED_OVERHEAD
    head_bytes = (height // VAE_SCALE) * (width // VAE_SCALE) * VAE_MID_CHANNELS * element_size
    output = height * width * 3 * element_size
    return int(tile_bytes + head_bytes * VAE_MID_LIVE_TENSORS + output)


def estimate_park_memory(
    width: int,
    height: int,
    tile_size: int = DEFAULT_TILE_SIZE,
    *,
    overlap: int = DEFAULT_OVERLAP,
    element_size: int = 2,
) -> int:
    """Bytes a tiled decode parks on the park device (host RAM on a GPU) at its worst GroupNorm."""
    width, height = _check_size("width", width), _check_size("height", height)
    element_size = _check_element_size(element_size)
    _check_tile(tile_size, overlap)
    if max(width, height) <= tile_size:
        return 0  # one tile: nothing waits
    return int(width * height * PARK_CHANNELS * element_size * _duplication(width, height, tile_size, overlap))


def _duplication(width: int, height: int, tile_size: int, overlap: int) -> float:
    """Decoded area over image area for the tile layout dype.tiled_vae uses (overlaps counted twice)."""
    factor = 1.0
    for length in (height // VAE_SCALE, width // VAE_SCALE):
        tiles = plan_axis(max(length, 1), tile_size // VAE_SCALE, overlap // VAE_SCALE)
        factor *= sum(t.end - t.start for t in tiles) / max(length, 1)
    return factor


def _check_tile(tile_size: int, overlap: int) -> None:
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < MIN_TILE_SIZE:
        raise ValueError(f"tile_size must be an int >= {MIN_TILE_SIZE} pixels, got {tile_size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= tile_size // 2:
        raise ValueError(f"overlap must be an int in [0, tile_size / 2 = {tile_size // 2}], got {overlap!r}")


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's mem_get_info; the available RAM for CPU and MPS (unified);
    None where unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type in ("cpu", "mps"):
        return available_ram()
    return None


def available_ram() -> int | None:
    """Available host RAM in bytes: psutil if installed, else /proc/meminfo's MemAvailable, else None."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class MemoryPlan:
    """What a FLUX run at width x height is expected to need, next to what the device has free."""

    width: int
    height: int
    device: str
    denoise: DenoiseMemory
    decode_untiled_bytes: int
    decode_tiled_bytes: int
    decode_park_bytes: int  # host RAM the tiled decode parks tiles in (when decoding on a GPU)
    tile_size: int
    free_bytes: int | None

    @property
    def decode_fits(self) -> bool | None:
        """Whether the untiled decode fits the free memory; None where the free memory is unknown."""
        return None if self.free_bytes is None else self.decode_untiled_bytes <= self.free_bytes


def _gb(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def log_memory_plan(
    logger: _Logger | logging.Logger,
    *,
    width: int,
    height: int,
    device: torch.device,
    tile_size: int = DEFAULT_TILE_SIZE,
    element_size: int = 2,
) -> MemoryPlan:
    """Log the expected working memory of the denoise and of an untiled decode; warn when the decode
    will not fit the device's free memory, naming the tiled decode node. Returns the numbers."""
    denoise = estimate_denoise_memory(width, height, element_size=element_size)
    plan = MemoryPlan(
        width=width,
        height=height,
        device=str(device),
        denoise=denoise,
        decode_untiled_bytes=estimate_decode_memory(width, height, element_size=element_size),
        decode_tiled_bytes=estimate_decode_memory(
            width, height, tiled=True, tile_size=tile_size, element_size=element_size
        ),
        decode_park_bytes=estimate_park_memory(width, height, tile_size, element_size=element_size),
        tile_size=tile_size,
        free_bytes=free_memory(device),
    )
    free = "unknown" if plan.free_bytes is None else _gb(plan.free_bytes)
    logger.info(
        f"DyPE {width}x{height}: {denoise.image_tokens} image + {denoise.text_tokens} text tokens; "
        f"denoise activations ~{_gb(denoise.activation_bytes)} per step "
        f"(attention scores {_gb(denoise.attention_scores_bytes)} only without a fused SDPA kernel); "
        f"untiled VAE decode ~{_gb(plan.decode_untiled_bytes)}; free on {device}: {free}"
    )
    if plan.decode_fits is False:
        logger.warning(
            f"Decoding {width}x{height} in one piece needs ~{_gb(plan.decode_untiled_bytes)} of working memory, "
            f'more than the {free} free on {device}: decode with the "{TILED_NODE_TITLE}" node '
            f"({TILED_NODE_TYPE}, tile_size={tile_size}: ~{_gb(plan.decode_tiled_bytes)} on the device and "
            f"~{_gb(plan.decode_park_bytes)} of RAM for the waiting tiles) instead of "
            f'"Latents to Image - FLUX".'
        )
    return plan
