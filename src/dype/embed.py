"""The DyPE position embedder: one class for every family and layout, and the hosts' drop-in shapes.

`DyPEEmbedder(family, config, width=, height=, layout=)` holds no parameters and no buffers (a patched
model's `state_dict` is unchanged) and computes the same numbers as `dype.math.embed_ids`. Speed comes
from the grid, not from approximations: an image has only h distinct rows and w distinct columns, so
cos and sin are evaluated once per distinct position and gathered per token. What depends only on the
ids (the distinct positions and the gather index) is cached per id set — FLUX.2 and Z-Image embed 2–4
id sets per step (image, text, negative prompt, control) — and each id set keeps its last output, so a
repeated σ (Heun's second evaluation, the CFG pass) returns it.

`DyPEEmbedND` (BFL `EmbedND`), `DyPEPosEmbed` (diffusers `FluxPosEmbed` / `Flux2PosEmbed`) and
`DyPERopeEmbedder` (Z-Image's plain-object `RopeEmbedder`) are that embedder in each host's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dype.config import DyPEConfig
from dype.families import FLUX1, Layout, RopeFamily, check_image_side, get_family
from dype.math import OUTPUT_LAYOUTS, ROUNDING_FUNCTIONS, AxisFrequencies, dype_frequencies
from dype.validation import check_choice, check_number

# Low-precision float types hold every integer below this exactly; from it on, neighbours collide
# (bf16: 257 rounds to 256). Ids in these types must stay below it.
EXACT_INTEGER_LIMIT = {torch.bfloat16: 256, torch.float16: 2048}
GRID_CACHE_ENTRIES = 8


def check_sigma(sigma: object) -> float:
    """Return σ as a float after checking it: finite, in [0, 1], one value (a batch shares its σ).

    Args:
        sigma: a real number (any numeric type), or a tensor whose elements are all the same value
            (e.g. FLUX's `timesteps` [B]).
    """
    if isinstance(sigma, Tensor):
        if sigma.numel() == 0:
            raise ValueError("sigma must hold one value, got an empty tensor")
        flat = sigma.detach().reshape(-1)
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            raise ValueError(f"sigma must hold one value (a batch shares its sigma), got {flat.tolist()}")
        sigma = float(flat[0])
    try:
        value = check_number("sigma", sigma)
    except ValueError as error:
        raise ValueError(f"sigma must be a finite number in [0, 1] or a one-value tensor, got {sigma!r}") from error
    if not 0.0 <= value <= 1.0:  # (check_number already refused a non-finite value)
        raise ValueError(f"sigma must be a finite number in [0, 1], got {value!r}")
    return value


def check_ids(ids: object, axes: int) -> Tensor:
    """Ids [M, axes] of real positions, non-empty; bf16/fp16 positions below their exact-integer limit."""
    if not isinstance(ids, Tensor):
        raise ValueError(f"ids must be a tensor, got {type(ids).__name__}")
    if ids.ndim != 2 or ids.shape[-1] != axes:
        raise ValueError(f"ids must have shape (N, {axes}), got {tuple(ids.shape)}")
    if ids.shape[0] == 0:
        raise ValueError(f"ids must hold at least one token, got shape {tuple(ids.shape)}")
    if ids.dtype == torch.bool or ids.dtype.is_complex:
        raise ValueError(f"ids must hold real positions (a float or integer dtype), got {ids.dtype}")
    limit = EXACT_INTEGER_LIMIT.get(ids.dtype)
    if limit is not None:
        largest = float(ids.detach().abs().max())
        if largest >= limit:
            raise ValueError(
                f"ids are {ids.dtype} with positions up to {largest:g}; {ids.dtype} holds integers exactly "
                f"only below {limit} (larger neighbours collide). Pass float32 or integer ids."
            )
    return ids


@dataclass
class _IdSet:
    """What depends only on one id set: per axis the distinct positions (CPU float64) and the gather index,
    and the last output computed for it with the step state it was computed for."""

    ids: Tensor
    positions: list[Tensor]
    inverse: list[Tensor]
    output_key: tuple[float, int, int] | None = None
    output: Tensor | tuple[Tensor, ...] | None = field(default=None, repr=False)


class DyPEEmbedder(nn.Module):
    """DyPE position embedding for one family, in one output layout.

    Args:
        family: the RoPE family (a `RopeFamily` or its name); θ and axes may be the host module's own
            (`RopeFamily.with_axes`).
        config: how positions are extrapolated.
        width, height: the target image in pixels (multiples of the family's token side); the base
            resolution until `set_step_state` says otherwise.
        layout: one of the family's layouts (default its first).

    `embed(ids [M, A]) -> ` bfl [M, Σd/2, 2, 2] | diffusers (cos, sin) each [M, Σd] | complex [M, Σd/2];
    the host-shaped subclasses wrap it. Until `set_step_state` is called σ = 1.
    """

    def __init__(
        self,
        family: str | RopeFamily,
        config: DyPEConfig,
        *,
        width: int | None = None,
        height: int | None = None,
        layout: Layout | None = None,
    ) -> None:
        super().__init__()
        family = get_family(family)
        if not isinstance(config, DyPEConfig):
            raise ValueError(f"config must be a DyPEConfig, got {type(config).__name__}")
        self.family = family
        self.dype_config = config
        self.layout = family.layouts[0] if layout is None else check_choice("layout", layout, family.layouts)
        self.theta = family.theta
        self.axes_dim = list(family.axes_dim)
        base = config.base_resolution_for(family)
        self.sigma = 1.0
        self.width = base if width is None else check_image_side("width", width, family)
        self.height = base if height is None else check_image_side("height", height, family)
        self._id_sets: list[_IdSet] = []

    def set_step_state(self, sigma: float | Tensor, *, width: int | None = None, height: int | None = None) -> None:
        """Set the σ of the coming call and, optionally, a new target size in pixels."""
        self.sigma = check_sigma(sigma)
        if width is not None:
            self.width = check_image_side("width", width, self.family)
        if height is not None:
            self.height = check_image_side("height", height, self.family)

    def frequencies(self) -> list[AxisFrequencies]:
        """Per-axis frequencies and amplitudes for the current step state."""
        return dype_frequencies(self.dype_config, self.family, width=self.width, height=self.height, sigma=self.sigma)

    def _id_set(self, ids: Tensor) -> _IdSet:
        """The cached id set equal to `ids` (moved to the front), or a new one (the oldest is dropped)."""
        for index, entry in enumerate(self._id_sets):
            cached = entry.ids
            if (cached.shape, cached.dtype, cached.device) == (ids.shape, ids.dtype, ids.device) and torch.equal(
                cached, ids
            ):
                self._id_sets.insert(0, self._id_sets.pop(index))
                return entry
        positions, inverse = [], []
        for axis in range(ids.shape[-1]):
            unique, index = torch.unique(ids[:, axis], return_inverse=True)
            positions.append(unique.to("cpu", torch.float64))
            inverse.append(index)
        entry = _IdSet(ids.clone(), positions, inverse)
        self._id_sets = [entry, *self._id_sets[: GRID_CACHE_ENTRIES - 1]]
        return entry

    def embed(self, ids: Tensor) -> Tensor | tuple[Tensor, ...]:
        """[M, A] ids → this layout's embedding of the M tokens (cached for a repeated step state)."""
        entry = self._id_set(check_ids(ids, len(self.family.axes_dim)))
        key = (self.sigma, self.height, self.width)
        if entry.output_key == key:
            return entry.output
        rounding, layout = ROUNDING_FUNCTIONS[self.family.rounding], OUTPUT_LAYOUTS[self.layout]
        parts = []
        for positions, index, axis in zip(entry.positions, entry.inverse, self.frequencies(), strict=True):
            table = layout.table(*rounding(positions, axis))
            parts.append(tuple(torch.index_select(t.to(index.device), 0, index) for t in table))
        entry.output, entry.output_key = layout.join(parts), key
        return entry.output

    def forward(self, ids: Tensor) -> Tensor | tuple[Tensor, ...]:
        return self.embed(ids)

    def extra_repr(self) -> str:
        config = self.dype_config
        return (
            f"family={self.family.name}, theta={self.family.theta:g}, axes_dim={list(self.family.axes_dim)}, "
            f"layout={self.layout}, method={config.method}, dynamic={config.enable_dype}, "
            f"scale={config.dype_scale:g}, exponent={config.dype_exponent:g}"
        )


class DyPEEmbedND(DyPEEmbedder):
    """DyPE drop-in for FLUX's `EmbedND` (BFL reference, InvokeAI, ComfyUI): same `dim`, `theta`, `axes_dim`.

    Args:
        dim: attention head dimension (FLUX: 128), kept as `EmbedND` has it; must equal Σ axes_dim.
        theta, axes_dim: the host's RoPE base and rotary dimensions (index, rows, columns).
        dype_config: how positions are extrapolated.
        family: the family whose spatial axes and rules apply (FLUX.1 by default).

    `forward(ids [B, N, A]) -> pe [B, 1, N, Σaxes_dim/2, 2, 2]` float32 whatever the ids' dtype.
    """

    def __init__(
        self,
        dim: int,
        theta: float,
        axes_dim: list[int],
        dype_config: DyPEConfig,
        *,
        family: str | RopeFamily = FLUX1,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        if sum(axes_dim) != dim:
            raise ValueError(f"axes_dim {list(axes_dim)} must add up to dim={dim}")
        super().__init__(
            get_family(family).with_axes(theta, axes_dim), dype_config, width=width, height=height, layout="bfl"
        )
        self.dim = dim
        self.theta = theta
        self.axes_dim = list(axes_dim)

    @classmethod
    def from_embednd(cls, embednd: nn.Module, dype_config: DyPEConfig, **kwargs: object) -> DyPEEmbedND:
        """Build from an existing `EmbedND`, copying its `dim`, `theta` and `axes_dim`."""
        return cls(embednd.dim, embednd.theta, list(embednd.axes_dim), dype_config, **kwargs)

    def forward(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor) or ids.ndim != 3 or ids.shape[-1] != len(self.axes_dim):
            shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"ids must have shape (B, N, {len(self.axes_dim)}), got {shape}")
        batch, tokens, _ = ids.shape
        pe = self.embed(ids.reshape(batch * tokens, ids.shape[-1]))
        return pe.reshape(batch, tokens, -1, 2, 2).unsqueeze(1)


class DyPEPosEmbed(DyPEEmbedder):
    """DyPE drop-in for diffusers' `FluxPosEmbed` and `Flux2PosEmbed` (same attributes `theta`, `axes_dim`).

    `forward(ids [N, A]) -> (cos, sin)`, each [N, Σaxes_dim] float32, every slot in two adjacent columns.
    3-D ids [1, N, A] are accepted as diffusers does (the first batch row is used).
    """

    def __init__(
        self,
        theta: float,
        axes_dim: list[int],
        dype_config: DyPEConfig,
        *,
        family: str | RopeFamily = FLUX1,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        super().__init__(
            get_family(family).with_axes(theta, axes_dim), dype_config, width=width, height=height, layout="diffusers"
        )
        self.theta = theta
        self.axes_dim = list(axes_dim)

    @classmethod
    def from_pos_embed(cls, pos_embed: nn.Module, dype_config: DyPEConfig, **kwargs: object) -> DyPEPosEmbed:
        """Build from an existing `FluxPosEmbed` / `Flux2PosEmbed`, copying its `theta` and `axes_dim`."""
        return cls(pos_embed.theta, list(pos_embed.axes_dim), dype_config, **kwargs)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(ids, Tensor) and ids.ndim == 3:
            ids = ids[0]
        return self.embed(ids)


class DyPERopeEmbedder:
    """DyPE drop-in for Z-Image's `RopeEmbedder`: a plain callable, not an `nn.Module` (the host keeps its
    embedder as a plain attribute; a module there would be registered as a child and the original could
    not be put back). Same attributes `theta`, `axes_dims`, `axes_lens`.

    `__call__(ids [N, A]) -> complex64 [N, Σaxes_dims/2]` on the ids' device.
    """

    def __init__(self, rope_embedder: object, dype_config: DyPEConfig, *, family: str | RopeFamily, **kwargs) -> None:
        self.theta = rope_embedder.theta
        self.axes_dims = list(rope_embedder.axes_dims)
        self.axes_lens = list(getattr(rope_embedder, "axes_lens", ()))
        self.embedder = DyPEEmbedder(
            get_family(family).with_axes(self.theta, self.axes_dims), dype_config, layout="complex", **kwargs
        )

    def set_step_state(self, sigma: float | Tensor, *, width: int | None = None, height: int | None = None) -> None:
        self.embedder.set_step_state(sigma, width=width, height=height)

    @property
    def sigma(self) -> float:
        return self.embedder.sigma

    def __call__(self, ids: Tensor) -> Tensor:
        return self.embedder.embed(ids)

    def __repr__(self) -> str:
        return f"DyPERopeEmbedder({self.embedder.extra_repr()})"
