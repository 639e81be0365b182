"""Working-memory estimates for a FLUX run at a given size, and where a tiled decode parks its tiles.

Estimates, not measurements; each formula says where its constant comes from. Numbers only: the
InvokeAI log line built from them (naming InvokeAI's nodes) is ``dype.invokeai.memory_plan``.

* Untiled VAE decode: InvokeAI's own ``estimate_vae_working_memory_flux`` (invokeai 6.14.2,
  ``invokeai/backend/util/vae_working_memory.py``): ``H * W * element_size * 2200`` bytes, the decode
  constant calibrated on CUDA (allocated + reserved, InvokeAI #8414). 4096² in bf16: 73.8 GB.
* Tiled decode (``dype.tiled_vae``): one tile through the same constant plus InvokeAI's 25% for
  overlap and blending (its SD/Qwen/Wan tiled estimates do the same), plus the whole-image head at
  latent resolution (``(H/8) * (W/8) * 512 channels * element_size * 8``: about eight 512-channel
  tensors are live in the mid block's attention), plus the output image (``H * W * 3 * element_size``).
  The tiles waiting between GroupNorms are parked on the device when they fit in its free memory, else
  in host RAM (``choose_park_place``): ``estimate_park_memory``, 256 full-resolution channels at the
  worst GroupNorm, times the area the overlaps add (``plan_axis``).
* Denoise: ``(H/16) * (W/16)`` image tokens plus the T5 tokens (512 for dev). Activations of a
  single-stream block ~ ``tokens * 3072 * element_size * 20`` (its fused linear alone is 7 hidden
  widths wide; 20 covers q/k/v, the MLP and the residual stream). The attention score matrix
  ``24 heads * tokens² * element_size`` exists only where SDPA has no fused kernel (MPS, some ROCm);
  CUDA's flash/memory-efficient kernels never build it. The RoPE table ``pe`` is
  ``tokens * 64 * 2 * 2 * 4`` bytes (float32), DyPE or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from dype.families import FLUX1
from dype.tiled_vae import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, MIN_TILE_SIZE, plan_axis

VAE_DECODE_BYTES_PER_PIXEL_BYTE = 2200  # InvokeAI's estimate_vae_working_memory_flux, decode
TILED_OVERHEAD = 1.25  # InvokeAI's tiled estimates: +25% for overlap and blending
VAE_SCALE = 8  # pixels per latent cell
VAE_MID_CHANNELS = 512
VAE_MID_LIVE_TENSORS = 8
# Worst GroupNorm of FLUX's decoder for dype.tiled_vae: full-resolution blocks park 256 channels (the first
# one's 256-channel input at norm1; h and the 1x1 shortcut, 128 + 128, at norm2).
PARK_CHANNELS = 256
FLUX_PATCH = FLUX1.pixels_per_token  # pixels per image token (8x VAE, 2x2 patchify)
FLUX_HIDDEN = 3072
FLUX_HEADS = 24
FLUX_LIVE_HIDDEN_WIDTHS = 20
FLUX_PE_BYTES_PER_TOKEN = 64 * 2 * 2 * 4
T5_TOKENS_DEV = 512
GIB = 2**30
# Kept free when parking on the device: CUDA/cuDNN workspaces, allocator fragmentation, the output image.
PARK_MARGIN_BYTES = GIB
PARK_MARGIN_FRACTION = 0.1

ParkPlace = Literal["device", "host"]


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

    ``tiled=False`` is InvokeAI's own figure for its untiled FLUX decode (``estimate_vae_working_memory_flux``).
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
    """Bytes a tiled decode of one FLUX image parks (on the device or in host RAM) at its worst GroupNorm."""
    width, height = _check_size("width", width), _check_size("height", height)
    element_size = _check_element_size(element_size)
    _check_tile(tile_size, overlap)
    if max(width, height) <= tile_size:
        return 0  # one tile: nothing waits
    return int(width * height * PARK_CHANNELS * element_size * _duplication(width, height, tile_size, overlap))


def choose_park_place(free_bytes: int | None, park_bytes: int, working_bytes: int = 0) -> ParkPlace:
    """Where a tiled decode's waiting tiles go: "device" when they and one tile's step fit in the device's
    free memory less a margin (1 GiB plus 10 % of the free memory), else "host" (host RAM), also when
    the free memory is unknown.

    Args:
        free_bytes: free memory of the decoding device now (``free_memory``), or None if unknown.
        park_bytes: the waiting tiles at the worst GroupNorm (``estimate_park_memory`` or
            ``dype.tiled_vae.plan_park``).
        working_bytes: device memory one tile's step needs on top (wherever the tiles wait).
    """
    for field, value in (("park_bytes", park_bytes), ("working_bytes", working_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{field} must be an int >= 0 (bytes), got {value!r}")
    if free_bytes is not None and (isinstance(free_bytes, bool) or not isinstance(free_bytes, int)):
        raise ValueError(f"free_bytes must be an int (bytes) or None (unknown), got {free_bytes!r}")
    if park_bytes == 0:
        return "device"  # one tile: nothing waits, nothing to copy
    if free_bytes is None:
        return "host"
    usable = free_bytes * (1 - PARK_MARGIN_FRACTION) - PARK_MARGIN_BYTES
    return "device" if park_bytes + working_bytes <= usable else "host"


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
    """Free bytes on ``device``: CUDA's mem_get_info plus what PyTorch's allocator holds unused; the
    available RAM for CPU and MPS (unified); None where unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if torch.cuda.is_initialized():
            # Blocks PyTorch's caching allocator holds but no tensor uses are free to this process too.
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
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
    decode_park_bytes: int  # the tiled decode's waiting tiles (on the device if they fit, else host RAM)
    tile_size: int
    free_bytes: int | None

    @property
    def decode_fits(self) -> bool | None:
        """Whether the untiled decode fits the free memory; None where the free memory is unknown."""
        return None if self.free_bytes is None else self.decode_untiled_bytes <= self.free_bytes

    @property
    def decode_park_place(self) -> ParkPlace:
        """Where a tiled decode with this much free memory would park its tiles (``choose_park_place``;
        the decode itself decides again, after its head, with the memory free then)."""
        return choose_park_place(self.free_bytes, self.decode_park_bytes, self.decode_tiled_bytes)


def format_gib(n: int | None) -> str:
    """Bytes as "12.3 GiB"; "unknown" for None."""
    return "unknown" if n is None else f"{n / GIB:.1f} GiB"


def plan_memory(
    *,
    width: int,
    height: int,
    device: torch.device,
    tile_size: int = DEFAULT_TILE_SIZE,
    element_size: int = 2,
) -> MemoryPlan:
    """The expected working memory of the denoise and of the decodes at width x height, next to the
    device's free memory now (formulas: module doc)."""
    return MemoryPlan(
        width=width,
        height=height,
        device=str(device),
        denoise=estimate_denoise_memory(width, height, element_size=element_size),
        decode_untiled_bytes=estimate_decode_memory(width, height, element_size=element_size),
        decode_tiled_bytes=estimate_decode_memory(
            width, height, tiled=True, tile_size=tile_size, element_size=element_size
        ),
        decode_park_bytes=estimate_park_memory(width, height, tile_size, element_size=element_size),
        tile_size=tile_size,
        free_bytes=free_memory(device),
    )
