"""Drop-in DyPE position embedders for FLUX: BFL/InvokeAI `EmbedND` and diffusers `FluxPosEmbed` layouts.

Both hold no parameters and no buffers (a patched model's `state_dict` is unchanged) and compute the
same numbers as `dype.math.embed_ids`. Speed comes from the grid, not from approximations: a FLUX
image has only h distinct rows and w distinct columns, so cos and sin are evaluated once per distinct
position and gathered per token. The gather indices depend only on the ids (cached per grid), the
small tables on σ (recomputed per new σ), and a repeated σ (Heun) returns the cached result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dype.config import DyPEConfig, check_image_size
from dype.math import AxisFrequencies, bfl_rotation, diffusers_rotation, dype_frequencies, rotation_cos_sin

# Largest integer each low-precision float type holds exactly; past it neighbouring positions collide.
_EXACT_INTEGER_LIMIT = {torch.bfloat16: 256, torch.float16: 2048}


def check_sigma(sigma: float | Tensor) -> float:
    """Return σ as a float after checking it: finite, in [0, 1], one value (a batch shares its σ).

    Args:
        sigma: a number, or a tensor whose elements are all the same value (e.g. FLUX's `timesteps` [B]).
    """
    if isinstance(sigma, Tensor):
        if sigma.numel() == 0:
            raise ValueError("sigma must hold one value, got an empty tensor")
        flat = sigma.detach().reshape(-1)
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            raise ValueError(f"sigma must hold one value (a batch shares its sigma), got {flat.tolist()}")
        value = float(flat[0])
    elif isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        value = float(sigma)
    else:
        raise ValueError(f"sigma must be a number or a one-value tensor, got {sigma!r}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"sigma must be a finite number in [0, 1], got {value!r}")
    return value


def _gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """Row `index[m]` of a per-position table for every token m, on the index's device ([P, ...] → [M, ...])."""
    return torch.index_select(table.to(index.device), 0, index)


@dataclass
class _GridIndex:
    """What depends only on the ids: per axis the distinct positions (CPU float64) and the gather index."""

    ids: Tensor
    positions: list[Tensor]
    inverse: list[Tensor]


@dataclass
class _CachedOutput:
    key: tuple[float, int, int]
    grid: _GridIndex
    output: Tensor | tuple[Tensor, Tensor]


class _DyPEEmbedder(nn.Module):
    """Shared state and caching of the two layouts; subclasses say how a per-axis table is laid out."""

    def __init__(self, theta: float, axes_dim: list[int], dype_config: DyPEConfig) -> None:
        super().__init__()
        if not isinstance(dype_config, DyPEConfig):
            raise ValueError(f"dype_config must be a DyPEConfig, got {type(dype_config).__name__}")
        if len(axes_dim) != 3 or any(int(d) <= 0 or int(d) % 2 for d in axes_dim):
            raise ValueError(f"axes_dim must be three positive even numbers (index, rows, columns), got {axes_dim}")
        self.theta = theta
        self.axes_dim = axes_dim
        self.dype_config = dype_config
        self.sigma = 1.0
        self.height = self.width = dype_config.base_resolution
        self._grid: _GridIndex | None = None
        self._cached: _CachedOutput | None = None

    def set_step_state(self, sigma: float | Tensor, height: int, width: int) -> None:
        """Set the σ of the coming call and the target image size in pixels (positive multiples of 16)."""
        self.sigma = check_sigma(sigma)
        self.height = check_image_size("height", height)
        self.width = check_image_size("width", width)

    def frequencies(self) -> list[AxisFrequencies]:
        """Per-axis frequencies and amplitudes for the current step state."""
        return dype_frequencies(self.dype_config, self.axes_dim, self.theta, self.height, self.width, self.sigma)

    def _grid_index(self, ids: Tensor) -> _GridIndex:
        """[M, 3] ids → the distinct positions per axis and the gather index; cached for equal ids."""
        grid = self._grid
        same_layout = grid is not None and (grid.ids.shape, grid.ids.dtype, grid.ids.device) == (
            ids.shape,
            ids.dtype,
            ids.device,
        )
        if same_layout and torch.equal(grid.ids, ids):
            return grid
        limit = _EXACT_INTEGER_LIMIT.get(ids.dtype)
        positions, inverse = [], []
        for axis in range(ids.shape[-1]):
            unique, index = torch.unique(ids[:, axis], return_inverse=True)
            if limit is not None and unique.numel() and float(unique.abs().max()) > limit:
                raise ValueError(
                    f"ids are {ids.dtype} with positions up to {float(unique.abs().max()):g}; {ids.dtype} "
                    f"holds integers exactly only up to {limit}. Pass float32 ids (positions must be exact)."
                )
            positions.append(unique.to("cpu", torch.float64))
            inverse.append(index)
        self._grid = _GridIndex(ids.clone(), positions, inverse)
        return self._grid

    def _embed(self, ids: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """[M, 3] ids → the layout's embedding of all M tokens (cached for a repeated step state)."""
        if ids.dtype == torch.bool or ids.dtype.is_complex:
            raise ValueError(f"ids must hold real positions (a float or integer dtype), got {ids.dtype}")
        grid = self._grid_index(ids)
        key = (self.sigma, self.height, self.width)
        if self._cached is not None and self._cached.key == key and self._cached.grid is grid:
            return self._cached.output
        tables = [
            self._axis_table(*rotation_cos_sin(positions, axis))
            for positions, axis in zip(grid.positions, self.frequencies(), strict=True)
        ]
        output = self._gather(tables, grid.inverse)
        self._cached = _CachedOutput(key, grid, output)
        return output

    def _axis_table(self, cos: Tensor, sin: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _gather(self, tables: list, inverse: list[Tensor]) -> Tensor | tuple[Tensor, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        config = self.dype_config
        return (
            f"theta={self.theta}, axes_dim={list(self.axes_dim)}, method={config.method}, "
            f"dynamic={config.enable_dype}, scale={config.dype_scale:g}, exponent={config.dype_exponent:g}"
        )


class DyPEEmbedND(_DyPEEmbedder):
    """DyPE drop-in for FLUX's `EmbedND` (BFL reference, InvokeAI, ComfyUI).

    Args:
        dim: attention head dimension (FLUX: 128), kept as `EmbedND` has it.
        theta: RoPE base (FLUX: 10000).
        axes_dim: rotary dimensions of (index, rows, columns) (FLUX: `[16, 56, 56]`).
        dype_config: how positions are extrapolated.

    `forward(ids [B, N, 3]) -> pe [B, 1, N, Σaxes_dim/2, 2, 2]` float32 whatever the ids' dtype. Call
    `set_step_state(sigma, height, width)` before each step; until then it is plain RoPE at the base size.
    """

    def __init__(self, dim: int, theta: float, axes_dim: list[int], dype_config: DyPEConfig) -> None:
        super().__init__(theta, axes_dim, dype_config)
        if sum(axes_dim) != dim:
            raise ValueError(f"axes_dim {list(axes_dim)} must add up to dim={dim}")
        self.dim = dim

    @classmethod
    def from_embednd(cls, embednd: nn.Module, dype_config: DyPEConfig) -> DyPEEmbedND:
        """Build from an existing `EmbedND`, copying its `dim`, `theta` and `axes_dim`."""
        return cls(embednd.dim, embednd.theta, list(embednd.axes_dim), dype_config)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.ndim != 3 or ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"ids must have shape (B, N, {len(self.axes_dim)}), got {tuple(ids.shape)}")
        batch, tokens, _ = ids.shape
        pe = self._embed(ids.reshape(batch * tokens, -1))
        return pe.reshape(batch, tokens, -1, 2, 2).unsqueeze(1)

    def _axis_table(self, cos: Tensor, sin: Tensor) -> Tensor:
        return bfl_rotation(cos, sin)

    def _gather(self, tables: list[Tensor], inverse: list[Tensor]) -> Tensor:
        return torch.cat([_gather_rows(table, index) for table, index in zip(tables, inverse, strict=True)], dim=-3)


class DyPEPosEmbed(_DyPEEmbedder):
    """DyPE drop-in for diffusers' `FluxPosEmbed` (same constructor attributes `theta`, `axes_dim`).

    `forward(ids [N, 3]) -> (cos, sin)`, each [N, Σaxes_dim] float32, every frequency in two adjacent
    columns. 3-D ids [1, N, 3] are accepted as diffusers does (the first batch row is used).
    """

    def __init__(self, theta: float, axes_dim: list[int], dype_config: DyPEConfig) -> None:
        super().__init__(theta, list(axes_dim), dype_config)

    @classmethod
    def from_pos_embed(cls, pos_embed: nn.Module, dype_config: DyPEConfig) -> DyPEPosEmbed:
        """Build from an existing `FluxPosEmbed`, copying its `theta` and `axes_dim`."""
        return cls(pos_embed.theta, list(pos_embed.axes_dim), dype_config)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        if ids.ndim == 3:
            ids = ids[0]
        if ids.ndim != 2 or ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"ids must have shape (N, {len(self.axes_dim)}), got {tuple(ids.shape)}")
        return self._embed(ids)

    def _axis_table(self, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        return diffusers_rotation(cos, sin)

    def _gather(self, tables: list[tuple[Tensor, Tensor]], inverse: list[Tensor]) -> tuple[Tensor, Tensor]:
        cos = torch.cat([_gather_rows(c, index) for (c, _), index in zip(tables, inverse, strict=True)], dim=-1)
        sin = torch.cat([_gather_rows(s, index) for (_, s), index in zip(tables, inverse, strict=True)], dim=-1)
        return cos, sin
