"""The memory plan dype's FLUX Denoise logs before a large DyPE run, in InvokeAI's words.

The numbers are ``dype.memory``'s; this module names InvokeAI's nodes and says what to do in them.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch

from dype.memory import MemoryPlan, format_gib, plan_memory
from dype.tiled_vae import DEFAULT_TILE_SIZE

TILED_NODE_TITLE = "Latents to Image - FLUX (tiled)"
TILED_NODE_TYPE = "flux_vae_decode_tiled"
UNTILED_NODE_TITLE = "Latents to Image - FLUX"


class _Logger(Protocol):
    def info(self, msg: str, /) -> object: ...
    def warning(self, msg: str, /) -> object: ...


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
    plan = plan_memory(width=width, height=height, device=device, tile_size=tile_size, element_size=element_size)
    denoise = plan.denoise
    free = format_gib(plan.free_bytes)
    logger.info(
        f"DyPE {width}x{height}: {denoise.image_tokens} image + {denoise.text_tokens} text tokens; "
        f"denoise activations ~{format_gib(denoise.activation_bytes)} per step "
        f"(attention scores {format_gib(denoise.attention_scores_bytes)} only without a fused SDPA kernel); "
        f"untiled VAE decode ~{format_gib(plan.decode_untiled_bytes)}; free on {device}: {free}"
    )
    if plan.decode_fits is False:
        park_where = "on the device" if plan.decode_park_place == "device" else "in RAM"
        logger.warning(
            f"Decoding {width}x{height} in one piece needs ~{format_gib(plan.decode_untiled_bytes)} of working "
            f'memory, more than the {free} free on {device}: decode with the "{TILED_NODE_TITLE}" node '
            f"({TILED_NODE_TYPE}, tile_size={tile_size}: ~{format_gib(plan.decode_tiled_bytes)} on the device, "
            f"and ~{format_gib(plan.decode_park_bytes)} of waiting tiles {park_where}) instead of "
            f'"{UNTILED_NODE_TITLE}".'
        )
    return plan
