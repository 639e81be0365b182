"""Fixtures for the tiled-decode tests: a tiny random-weight FLUX VAE, in both layouts InvokeAI loads.

Real parts: InvokeAI's BFL ``AutoEncoder`` (FLUX's architecture: 4 levels, scale 8, 16 latent channels,
mid-block attention) at 32/64 channels, and diffusers' ``AutoencoderKL`` holding the same weights,
converted with diffusers' own LDM converter. GroupNorm affines are randomised so that a wrong
normalisation cannot hide behind weight 1 / bias 0.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from invokeai.backend.flux.modules.autoencoder import AutoEncoder, AutoEncoderParams

SCALE_FACTOR = 0.3611  # FLUX's AutoEncoderParams
SHIFT_FACTOR = 0.1159
CHANNELS = [32, 32, 64, 64]

# Bound for a tiny-VAE fp32 decode in tiles of at most 128 px overlapping by 32 px (output std ~0.4, range
# ~[-2, 2]): equal to the untiled decode up to float rounding. Measured at 256x256 in 3x3 tiles: max 4.5e-6,
# mean 2.9e-7. (Tile-local GroupNorm, as diffusers' tiled_decode: max 2.5, mean 0.21.)
MAX_ABS_BOUND = 1e-4
MEAN_ABS_BOUND = 1e-5


def tiny_bfl_vae(seed: int = 0, channels: list[int] = CHANNELS) -> AutoEncoder:
    torch.manual_seed(seed)
    params = AutoEncoderParams(
        resolution=64,
        in_channels=3,
        ch=channels[0],
        out_ch=3,
        ch_mult=[c // channels[0] for c in channels],
        num_res_blocks=1,
        z_channels=16,
        scale_factor=SCALE_FACTOR,
        shift_factor=SHIFT_FACTOR,
    )
    vae = AutoEncoder(params).eval()
    for module in vae.modules():
        if isinstance(module, torch.nn.GroupNorm):
            torch.nn.init.normal_(module.weight, 1.0, 0.2)
            torch.nn.init.normal_(module.bias, 0.0, 0.2)
    return vae


def diffusers_copy(vae: AutoEncoder) -> AutoencoderKL:
    """The same weights in diffusers' layout (what InvokeAI loads for a diffusers-format FLUX VAE)."""
    config = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * len(CHANNELS),
        "up_block_types": ["UpDecoderBlock2D"] * len(CHANNELS),
        "block_out_channels": CHANNELS,
        "layers_per_block": 1,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "scaling_factor": SCALE_FACTOR,
        "shift_factor": SHIFT_FACTOR,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    }
    model = AutoencoderKL(**config).eval()
    state = convert_ldm_vae_checkpoint(vae.state_dict(), config)
    model.load_state_dict(state, strict=True)
    return model


def structured_latents(size: int, seed: int = 1) -> torch.Tensor:
    """(1, 16, size, size): a strong low-frequency field plus noise, so regions differ in statistics
    (a tile-local GroupNorm then visibly shifts colours; a random field alone would hide it)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.nn.functional.interpolate(
        torch.randn(1, 16, 3, 3, generator=gen) * 3, size=(size, size), mode="bicubic"
    )
    return low + 0.5 * torch.randn(1, 16, size, size, generator=gen)


@pytest.fixture(scope="session")
def bfl_vae() -> AutoEncoder:
    return tiny_bfl_vae()


@pytest.fixture(scope="session")
def diffusers_vae(bfl_vae: AutoEncoder) -> AutoencoderKL:
    return diffusers_copy(bfl_vae)


@pytest.fixture(scope="session")
def latents() -> torch.Tensor:
    return structured_latents(32)  # 256 x 256 pixels


@pytest.fixture(scope="session")
def untiled(bfl_vae: AutoEncoder, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return bfl_vae.decode(latents)
