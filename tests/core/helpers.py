"""Plain FLUX RoPE written out in the tests (the thing DyPE must equal at or below the base size)."""

from __future__ import annotations

import torch

FLUX_AXES_DIM = [16, 56, 56]
THETA = 10_000


def plain_rope(pos: torch.Tensor, dim: int, theta: float = THETA) -> torch.Tensor:
    """FLUX `rope` in float64 rounded to float32: [..., N] → [..., N, dim/2, 2, 2]."""
    omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = pos.to(torch.float64)[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*angles.shape, 2, 2).float()


def plain_embed(ids: torch.Tensor, axes_dim=FLUX_AXES_DIM) -> torch.Tensor:
    """[B, N, 3] ids → plain FLUX pe [B, 1, N, Σd/2, 2, 2]."""
    return torch.cat([plain_rope(ids[..., i], d) for i, d in enumerate(axes_dim)], dim=-3).unsqueeze(1)


def flux_ids(height: int, width: int, text_tokens: int = 512, batch: int = 1, dtype=torch.float32) -> torch.Tensor:
    """FLUX ids for an H×W px image: text (0,0,0) first, then (0, row, column) row-major; [B, N, 3]."""
    rows, cols = torch.meshgrid(torch.arange(height // 16), torch.arange(width // 16), indexing="ij")
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    ids = torch.cat([torch.zeros(text_tokens, 3, dtype=torch.long), image]).to(dtype)
    return ids.expand(batch, -1, -1).clone()


def tiny_flux_params(guidance_embed: bool = True):
    """INVOKEAI_NOTES.md's tiny FLUX (`FluxParams`): ~1 M parameters, real architecture, axes_dim 8/28/28.

    `guidance_embed=False` is schnell.
    """
    from invokeai.backend.flux.model import FluxParams

    return FluxParams(
        in_channels=64,
        vec_in_dim=32,
        context_in_dim=64,
        hidden_size=128,
        mlp_ratio=4.0,
        num_heads=2,
        depth=1,
        depth_single_blocks=1,
        axes_dim=[8, 28, 28],
        theta=10000,
        qkv_bias=True,
        guidance_embed=guidance_embed,
        out_channels=64,
    )
