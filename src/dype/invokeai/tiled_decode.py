"""The "Latents to Image - FLUX (tiled)" node: InvokeAI's FLUX decode, tile by tile, for 4K on your GPU.

InvokeAI's "Latents to Image - FLUX" decodes in one piece: ~74 GB of working memory at 4096² by its
own estimate. This node has the same inputs plus ``tile_size`` and ``overlap`` and decodes with
``dype.tiled_vae.tiled_decode`` (image-wide GroupNorm statistics, so no tile-to-tile colour shifts).
It accepts both VAE kinds InvokeAI loads for FLUX: BFL ``AutoEncoder`` and diffusers ``AutoencoderKL``.
The waiting tiles stay on the GPU when they fit in its free memory (``park="auto"``), else go to RAM; the
choice is written to InvokeAI's log.
Importing this module registers the node type ``flux_vae_decode_tiled``.
"""

# No `from __future__ import annotations` here: InvokeAI reads invoke()'s return annotation as a class.
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from einops import rearrange
from invokeai.app.invocations.baseinvocation import InvocationRegistry, invocation
from invokeai.app.invocations.fields import InputField
from invokeai.app.invocations.flux_vae_decode import FluxVaeDecodeInvocation
from invokeai.app.invocations.primitives import ImageOutput
from invokeai.app.services.shared.invocation_context import InvocationContext
from invokeai.backend.flux.modules.autoencoder import AutoEncoder
from invokeai.backend.model_manager.load.load_base import LoadedModel
from invokeai.backend.util.devices import TorchDevice
from PIL import Image

from dype.invokeai.memory_plan import TILED_NODE_TITLE, TILED_NODE_TYPE
from dype.memory import estimate_decode_memory
from dype.tiled_vae import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE_SIZE,
    MIN_TILE_SIZE,
    LogCallback,
    ProgressCallback,
    TiledDecodeConfig,
    tiled_decode,
)

INVOCATION_VERSION = "1.0.0"


@invocation(
    TILED_NODE_TYPE,
    title=TILED_NODE_TITLE,
    tags=["latents", "image", "vae", "l2i", "flux", "tiled", "dype"],
    category="latents",
    version=INVOCATION_VERSION,
)
class FluxVaeDecodeTiledInvocation(FluxVaeDecodeInvocation):
    """Generates an image from latents, tile by tile (for 2K-4K+ images that do not fit in one piece)."""

    tile_size: int = InputField(
        default=DEFAULT_TILE_SIZE,
        ge=MIN_TILE_SIZE,
        multiple_of=8,
        description=(
            "Tile side in pixels. 1024 needs ~6 GB of VRAM (bf16) and suits a 24 GB card; use 512 on 8-12 GB. "
            "Larger tiles are faster; the image does not depend on it."
        ),
    )
    overlap: int = InputField(
        default=DEFAULT_OVERLAP,
        ge=0,
        multiple_of=8,
        description=(
            "Minimum pixels shared by neighbouring tiles (at most tile_size / 2). 32 or more gives the same "
            "image as a decode in one piece; less leaves seams."
        ),
    )

    def _vae_decode(  # type: ignore[override]
        self,
        vae_info: LoadedModel,
        latents: torch.Tensor,
        progress: ProgressCallback | None = None,
        log: LogCallback | None = None,
    ) -> Image.Image:
        config = TiledDecodeConfig(tile_size=self.tile_size, overlap=self.overlap)
        if not isinstance(vae_info.model, (AutoEncoder, AutoencoderKL)):
            raise ValueError(
                f"vae must be a FLUX VAE (BFL AutoEncoder or diffusers AutoencoderKL), got {type(vae_info.model)}"
            )
        element_size = next(iter(vae_info.model.parameters())).element_size()
        working_memory = estimate_decode_memory(
            latents.shape[-1] * 8,
            latents.shape[-2] * 8,
            tiled=True,
            tile_size=config.tile_size,
            overlap=config.overlap,
            element_size=element_size,
        )
        with vae_info.model_on_device(working_mem_bytes=working_memory) as (_, vae):
            vae_dtype = next(iter(vae.parameters())).dtype
            # As the core node: the cache's compute device, not where the weights happen to sit (#9373).
            latents = latents.to(device=vae_info.compute_device, dtype=vae_dtype)
            if isinstance(vae, AutoencoderKL):
                # The core node's FLUX scaling for diffusers VAEs (shift_factor is optional on AutoencoderKL).
                latents = latents / vae.config.scaling_factor
                shift_factor = getattr(vae.config, "shift_factor", None)
                if shift_factor is not None:
                    latents = latents + shift_factor
            img = tiled_decode(
                vae,
                latents,
                tile_size=config.tile_size,
                overlap=config.overlap,
                park="auto",  # on the GPU if the waiting tiles fit in what the model cache left free
                progress=progress,
                log=log,
            )

        img = img.clamp(-1, 1)
        img = rearrange(img[0], "c h w -> h w c")
        return Image.fromarray((127.5 * (img + 1.0)).byte().cpu().numpy())

    @torch.no_grad()
    def invoke(self, context: InvocationContext) -> ImageOutput:
        latents = context.tensors.load(self.latents.latents_name)
        vae_info = context.models.load(self.vae.vae)
        context.util.signal_progress("Running VAE (tiled)")

        def progress(done: int, total: int) -> None:
            context.util.signal_progress("Running VAE (tiled)", done / total)

        image = self._vae_decode(vae_info=vae_info, latents=latents, progress=progress, log=context.logger.info)
        TorchDevice.empty_cache()
        image_dto = context.images.save(image=image)
        return ImageOutput.build(image_dto)


def ensure_registered() -> None:
    """Register the node again if InvokeAI's registry lost it: a custom-node reload re-runs the pack's
    ``__init__.py`` but not this (cached) module's ``@invocation``."""
    if InvocationRegistry.get_invocation_for_type(TILED_NODE_TYPE) is not FluxVaeDecodeTiledInvocation:
        InvocationRegistry.register_invocation(FluxVaeDecodeTiledInvocation)
