"""Tiled FLUX VAE decode with image-wide GroupNorm statistics.

A 4096² FLUX decode in one piece needs ~74 GB of working memory (InvokeAI's own estimate,
``2200 * H * W * element_size``), so it fails on the GPUs people own. Decoding tile by tile bounds the
memory by one tile, but the usual tiled decode (diffusers' ``AutoencoderKL.tiled_decode``) runs every
GroupNorm on one tile's statistics only: a tile of sky and a tile of forest get normalised differently,
which shows up as tile-sized colour shifts, and the mid-block attention only sees its own tile.

This decode splits the decoder in two:

* **head** (``conv_in`` and the mid block with its attention), run once on the whole latent grid. It lives
  at latent resolution (1/8 of the image side, 512 channels), so it is small (~2 GB in bf16 at 4096²),
  and its attention is exactly the untiled one.
* **tail** (the up blocks, ``norm_out``, ``conv_out``), where the memory goes, run tile by tile in
  lock-step: every tile runs up to the next GroupNorm, contributes the count, mean and sum of squared
  deviations of its activations over the part of the image it *owns* (the owned parts partition the
  image, so overlaps are not counted twice), and is parked (moved to ``park_device``: the CPU by
  default, which on a GPU decode is host RAM). Once all tiles are there, the per-tile numbers are
  merged with Chan's parallel-variance formula into the image-wide mean and variance per (sample,
  group), every tile's overlap cells are refreshed from the tile that owns them (a halo exchange), and
  each tile is brought back, normalised with the image-wide statistics and run to the next GroupNorm.
  Each pixel of the output comes from the tile that owns it.

Why that is exact: the tile convolutions zero-pad at tile borders, which corrupts one pixel per 3x3
convolution inward; between two GroupNorms there are at most two (conv2 and, at the end of a level, the
upsample's conv: 3 pixels at the finer resolution), and the exchange puts the owner's correct values
back before the corruption reaches the owned cells, provided each side of an overlap is at least 2
latent cells:
``overlap >= 32`` pixels. So every GroupNorm sees the untiled statistics and every output pixel equals
the untiled one up to float rounding (measured: docs/memory.md), with no colour shift and no seam.

Memory: the device holds the head output plus one tile at a time; ``park_device`` holds every tile's
live activations at one GroupNorm (at most a 256- and a 128-channel full-resolution tensor: ~13 GB in
bf16 at 4096², see ``dype.memory.estimate_park_memory``). Time: each tile is computed once, but the
tiles overlap (a few percent at the default overlap) and travel to the park device and back at every
GroupNorm (25 of them in the FLUX VAE).

Works on InvokeAI's BFL ``AutoEncoder`` (``invokeai.backend.flux.modules.autoencoder``) and on diffusers'
``AutoencoderKL`` (duck-typed on their decoder attributes, so neither package is imported here). For both
it is a drop-in for the model's own decode: BFL latents are un-scaled inside (``z / scale + shift``, as
``AutoEncoder.decode`` does), diffusers latents go through ``post_quant_conv`` when the model has one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: called after each lock-step round over all tiles (one per GroupNorm, plus
the final one); ``total`` is the number of rounds."""

DEFAULT_TILE_SIZE = 1024
"""Pixels. One 1024² tile of the FLUX VAE needs ~4.6 GB in bf16 (InvokeAI's constant), ~5.8 GB with
overlap, which leaves room on a 24 GB card for the head and the model cache."""

DEFAULT_OVERLAP = 64
"""Pixels (8 latent cells): twice what the halo exchange needs to be exact (32)."""

MIN_TILE_SIZE = 64


@dataclass(frozen=True)
class TiledDecodeConfig:
    """Tiling parameters, in pixels.

    Args:
        tile_size: side of a square tile in pixels; a multiple of 8 (the FLUX VAE's scale) and >= 64.
        overlap: minimum pixels shared by neighbouring tiles (their halo); a multiple of 8 in
            [0, tile_size / 2]. 32 or more makes the decode equal to the untiled one; 0 leaves seams.
    """

    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        _check_int("tile_size", self.tile_size)
        _check_int("overlap", self.overlap)
        if self.tile_size < MIN_TILE_SIZE or self.tile_size % 8 != 0:
            raise ValueError(
                f"tile_size must be a multiple of 8 and at least {MIN_TILE_SIZE} pixels, got {self.tile_size}"
            )
        if self.overlap < 0 or self.overlap % 8 != 0 or self.overlap > self.tile_size // 2:
            raise ValueError(
                f"overlap must be a multiple of 8 in [0, tile_size / 2 = {self.tile_size // 2}] pixels, "
                f"got {self.overlap}"
            )


def _check_int(field: str, value: object) -> None:
    # bool is an int subclass; True as a tile size is a caller bug, not 1 pixel.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an int, got {type(value).__name__} {value!r}")


# ----------------------------------------------------------------------------------------------------
# Lock-step protocol. A tile's tail is a generator over the tile's _Slots: at every GroupNorm it yields
# the norm and the name of the slot holding its input, and holds no tensor of its own across the yield
# (a local would pin the tile on the device while it is parked). The driver reads the statistics, parks
# the slots, and later puts them back with the image-wide statistics.


@dataclass
class _Slots:
    """The tensors of one tile that live across a GroupNorm, and the statistics to resume with."""

    x: Tensor | None = None  # main stream / residual, (B, C, h, w)
    h: Tensor | None = None  # the ResnetBlock's inner branch while it waits for norm2
    mean: Tensor | None = None  # (B, G) float32, image-wide, of the GroupNorm just passed
    var: Tensor | None = None

    def tensors(self) -> list[str]:
        return [name for name in ("x", "h") if getattr(self, name) is not None]


@dataclass(frozen=True)
class _Sync:
    norm: nn.GroupNorm
    slot: str  # "x" or "h": the GroupNorm's input


_Tail = Generator[_Sync, None, None]


def _normed(slots: _Slots, slot: str, norm: nn.GroupNorm) -> Tensor:
    tensor = getattr(slots, slot)
    assert (
        tensor is not None and slots.mean is not None and slots.var is not None
    )  # the driver resumes a tile only with both set
    return _apply_group_norm(tensor, norm, slots.mean, slots.var)


def _apply_group_norm(x: Tensor, norm: nn.GroupNorm, mean: Tensor, var: Tensor) -> Tensor:
    """GroupNorm of x (B, C, H, W) with given per-(B, G) statistics, as one fused multiply-add."""
    batch, channels = x.shape[:2]
    per_group = channels // norm.num_groups
    inv_std = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)  # (B, C)
    scale = inv_std
    shift = -mean.repeat_interleave(per_group, dim=1) * inv_std
    if norm.weight is not None:
        # .to(): InvokeAI's partial loading can leave the weights on the CPU while x is on the GPU.
        weight = norm.weight.to(device=x.device, dtype=torch.float32)
        bias = norm.bias.to(device=x.device, dtype=torch.float32)
        scale = scale * weight
        shift = shift * weight + bias
    shape = (batch, channels) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))


def _resnet(block: nn.Module, slots: _Slots) -> _Tail:
    """BFL ``ResnetBlock`` / diffusers ``ResnetBlock2D`` (no time embedding) on ``slots.x``."""
    act = getattr(block, "nonlinearity", F.silu)
    shortcut = getattr(block, "nin_shortcut", None)  # BFL: only when the channels change
    if shortcut is None:
        shortcut = getattr(block, "conv_shortcut", None)  # diffusers: None when they do not
    yield _Sync(block.norm1, "x")
    slots.h = block.conv1(act(_normed(slots, "x", block.norm1)))
    yield _Sync(block.norm2, "h")
    h = block.conv2(act(_normed(slots, "h", block.norm2)))  # diffusers' dropout is the identity in eval
    slots.h = None
    x = slots.x if shortcut is None else shortcut(slots.x)
    slots.x = (x + h) / getattr(block, "output_scale_factor", 1.0)


# ----------------------------------------------------------------------------------------------------
# Host adapters: split each decoder into a global head and a tiled tail.


@dataclass(frozen=True)
class _DecoderStages:
    head: Callable[[Tensor], Tensor]  # latents (B, z, h, w) -> features (B, C, h, w)
    tail: Callable[[_Slots], _Tail]  # slots.x: features (B, C, h, w) -> image (B, 3, h*f, w*f)
    num_norms: int  # GroupNorms in the tail = lock-step rounds before the last
    scale: int  # f: pixels per latent cell


def _bfl_stages(vae: nn.Module) -> _DecoderStages:
    dec = vae.decoder
    if any(len(up.attn) > 0 for up in dec.up):
        raise ValueError("vae: decoders with attention in the up blocks are not supported (FLUX has none)")

    def head(z: Tensor) -> Tensor:
        z = z / vae.scale_factor + vae.shift_factor
        h = dec.conv_in(z)
        h = dec.mid.block_1(h)
        h = dec.mid.attn_1(h)
        return dec.mid.block_2(h)

    def tail(slots: _Slots) -> _Tail:
        # Same order as invokeai.backend.flux.modules.autoencoder.Decoder.forward after the mid block.
        for i_level in reversed(range(dec.num_resolutions)):
            for block in dec.up[i_level].block:
                yield from _resnet(block, slots)
            if i_level != 0:
                slots.x = dec.up[i_level].upsample(slots.x)
        yield _Sync(dec.norm_out, "x")
        slots.x = dec.conv_out(F.silu(_normed(slots, "x", dec.norm_out)))

    return _DecoderStages(head, tail, _count_norms(dec.up, dec.norm_out), 2 ** (dec.num_resolutions - 1))


def _diffusers_stages(vae: nn.Module) -> _DecoderStages:
    dec = vae.decoder
    post_quant_conv = getattr(vae, "post_quant_conv", None)
    if any(getattr(up, "attentions", None) for up in dec.up_blocks):
        raise ValueError("vae: decoders with attention in the up blocks are not supported (FLUX has none)")

    def head(z: Tensor) -> Tensor:
        if post_quant_conv is not None:
            z = post_quant_conv(z)
        return dec.mid_block(dec.conv_in(z), None)

    def tail(slots: _Slots) -> _Tail:
        # Same order as diffusers.models.autoencoders.vae.Decoder.forward after the mid block.
        for up_block in dec.up_blocks:
            for resnet in up_block.resnets:
                yield from _resnet(resnet, slots)
            for upsampler in up_block.upsamplers or ():
                slots.x = upsampler(slots.x)
        yield _Sync(dec.conv_norm_out, "x")
        slots.x = dec.conv_out(dec.conv_act(_normed(slots, "x", dec.conv_norm_out)))

    return _DecoderStages(head, tail, _count_norms(dec.up_blocks, dec.conv_norm_out), 2 ** (len(dec.up_blocks) - 1))


def _count_norms(*roots: nn.Module) -> int:
    return sum(isinstance(m, nn.GroupNorm) for root in roots for m in root.modules())


def _stages_for(vae: nn.Module) -> _DecoderStages:
    dec = getattr(vae, "decoder", None)
    if dec is not None and hasattr(dec, "mid") and hasattr(dec, "up") and hasattr(vae, "scale_factor"):
        return _bfl_stages(vae)
    if dec is not None and hasattr(dec, "mid_block") and hasattr(dec, "up_blocks"):
        return _diffusers_stages(vae)
    raise ValueError(
        f"vae must be a BFL AutoEncoder (invokeai.backend.flux.modules.autoencoder) or a diffusers "
        f"AutoencoderKL, got {type(vae).__name__}"
    )


# ----------------------------------------------------------------------------------------------------
# Tile layout.


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis, in latent cells: it covers [start, end) and owns [own_start, own_end)."""

    start: int
    end: int
    own_start: int
    own_end: int


def plan_axis(length: int, tile: int, overlap: int) -> list[AxisTile]:
    """Split one latent axis into at most ``tile`` cells per tile, overlapping by at least ``overlap``.

    Uses the fewest tiles, all of one size (as small as that count allows, so the overlaps are not
    wider than needed), spread evenly from 0 to ``length``. The owned ranges partition [0, length) at
    the middle of each overlap.
    """
    if length <= tile:
        return [AxisTile(0, length, 0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)  # <= tile
    # Floor division keeps every gap <= size - overlap, hence every overlap >= the requested one.
    starts = [i * (length - size) // (count - 1) for i in range(count)]
    bounds = [0] + [(starts[i + 1] + starts[i] + size) // 2 for i in range(count - 1)] + [length]
    return [AxisTile(s, s + size, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


# ----------------------------------------------------------------------------------------------------
# Image-wide statistics.


def _stats(own: Tensor, groups: int) -> tuple[float, Tensor, Tensor]:
    grouped = own.reshape(own.shape[0], groups, -1)
    count = float(grouped.shape[-1])
    # A float32 copy of a whole tile would double its memory; a few groups at a time bound the copy.
    means, m2s = [], []
    for chunk in grouped.split(max(1, groups // 8), dim=1):
        xf = chunk.float()
        mean = xf.mean(dim=-1)
        means.append(mean)
        m2s.append((xf - mean[..., None]).square().sum(dim=-1))
    return count, torch.cat(means, dim=1), torch.cat(m2s, dim=1)


def _merge(a: tuple[float, Tensor, Tensor] | None, b: tuple[float, Tensor, Tensor]) -> tuple[float, Tensor, Tensor]:
    """Chan et al.'s pairwise merge of (count, mean, M2): stable in float32, so no float64 (MPS has none)."""
    if a is None:
        return b
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta.square() * (n_a * n_b / n)


# ----------------------------------------------------------------------------------------------------
# Public entry point.


def latent_scale(vae: nn.Module) -> int:
    """Pixels per latent cell of a supported VAE (8 for FLUX)."""
    return _stages_for(vae).scale


@dataclass
class _TileRun:
    rows: AxisTile
    cols: AxisTile
    slots: _Slots
    gen: _Tail | None = None


@torch.no_grad()
def tiled_decode(
    vae: nn.Module,
    latents: Tensor,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    park_device: torch.device | str | None = None,
    progress: ProgressCallback | None = None,
) -> Tensor:
    """Decode ``latents`` tile by tile with image-wide GroupNorm statistics.

    A drop-in for ``AutoEncoder.decode(latents)`` (BFL) or ``AutoencoderKL.decode(latents).sample``
    (diffusers); computes on ``latents.device`` in ``latents.dtype``.

    Args:
        vae: a BFL ``AutoEncoder`` or a diffusers ``AutoencoderKL``.
        latents: (B, z_channels, H/f, W/f), f = 8 for FLUX.
        tile_size: tile side in pixels (see ``TiledDecodeConfig``).
        overlap: minimum pixels shared by neighbouring tiles (>= 32 for an exact decode).
        park_device: where tiles wait while the others catch up; default: the CPU, which on a CPU
            decode means they stay where they are.
        progress: optional ``progress(done, total)`` called after each lock-step round.

    Returns:
        The image (B, out_channels, H, W) in ``latents.dtype``, unclamped (like the models' decode).
    """
    config = TiledDecodeConfig(tile_size=tile_size, overlap=overlap)
    if latents.dim() != 4:
        raise ValueError(f"latents must be (B, C, H, W), got shape {tuple(latents.shape)}")
    stages = _stages_for(vae)
    f = stages.scale
    if config.tile_size % f != 0 or config.overlap % f != 0:
        raise ValueError(
            f"tile_size and overlap must be multiples of the VAE scale {f}, got {config.tile_size}, {config.overlap}"
        )
    park = torch.device("cpu") if park_device is None else torch.device(park_device)
    device = latents.device
    rows = plan_axis(latents.shape[-2], config.tile_size // f, config.overlap // f)
    cols = plan_axis(latents.shape[-1], config.tile_size // f, config.overlap // f)
    total = stages.num_norms + 1

    features = stages.head(latents)  # (B, C, H/f, W/f); exact: the attention sees the whole image
    runs = [_TileRun(r, c, _Slots(x=features[:, :, r.start : r.end, c.start : c.end])) for r in rows for c in cols]
    del features  # the tiles' slices keep it alive until each is parked
    size = (latents.shape[-2] * f, latents.shape[-1] * f)
    image = torch.zeros(0)
    for done in range(1, total + 1):
        merged: tuple[float, Tensor, Tensor] | None = None
        for run in list(runs):
            # One tile on the device at a time: unpark right before it runs, park right after.
            _move(run.slots, device)
            if run.gen is None:
                run.gen = stages.tail(run.slots)
            sync = next(run.gen, None)
            if sync is None:
                image = _paste(image, run, f, size)
                runs.remove(run)
                continue
            norm_input = getattr(run.slots, sync.slot)
            merged = _merge(merged, _stats(_owned(norm_input, run), sync.norm.num_groups))
            del norm_input
            _move(run.slots, park)
        if merged is not None:
            count, mean, m2 = merged
            for run in runs:
                run.slots.mean, run.slots.var = mean, m2 / count
            _exchange_halos(runs)
        if progress is not None:
            progress(done, total)
    if runs:
        raise RuntimeError(f"{len(runs)} tiles did not finish in {total} rounds")
    return image


def _move(slots: _Slots, device: torch.device) -> None:
    """Move a tile's live tensors (not the small statistics) to ``device``; no copy when already there."""
    for name in slots.tensors():
        setattr(slots, name, _to(getattr(slots, name), device))


def _to(tensor: Tensor, device: torch.device) -> Tensor:
    return tensor.to(device)


def _owned(x: Tensor, run: _TileRun) -> Tensor:
    """The part of a tile activation x (B, C, h, w) inside the tile's owned window (a view)."""
    r, c = run.rows, run.cols
    sy, sx = x.shape[-2] // (r.end - r.start), x.shape[-1] // (c.end - c.start)  # pixels per latent cell here
    return x[
        :,
        :,
        (r.own_start - r.start) * sy : (r.own_end - r.start) * sy,
        (c.own_start - c.start) * sx : (c.own_end - c.start) * sx,
    ]


def _window(run: _TileRun, rows: tuple[int, int], cols: tuple[int, int], scale: int) -> tuple[slice, slice]:
    """Latent-cell ranges (absolute) as pixel slices into the tile's tensors at ``scale`` px per cell."""
    r0, c0 = run.rows.start, run.cols.start
    return (
        slice((rows[0] - r0) * scale, (rows[1] - r0) * scale),
        slice((cols[0] - c0) * scale, (cols[1] - c0) * scale),
    )


def _exchange_halos(runs: list[_TileRun]) -> None:
    """Overwrite every parked tile's overlap cells with the values of the tile that owns them.

    A tile's values go wrong near its borders (the convolutions zero-pad there), by one pixel per
    convolution; its owned cells are overlap/2 cells away from them and stay right. Refreshing the
    overlaps at every GroupNorm (every one or two convolutions) keeps every tile equal to the untiled
    activations, so the decode is exact once the overlap covers the reach (32 px; see module doc).
    """
    for a in runs:
        for b in runs:
            rows = (max(a.rows.start, b.rows.own_start), min(a.rows.end, b.rows.own_end))
            cols = (max(a.cols.start, b.cols.own_start), min(a.cols.end, b.cols.own_end))
            if a is b or rows[0] >= rows[1] or cols[0] >= cols[1]:
                continue
            for name in a.slots.tensors():
                into, source = getattr(a.slots, name), getattr(b.slots, name)
                scale = into.shape[-2] // (a.rows.end - a.rows.start)
                into[(..., *_window(a, rows, cols, scale))] = source[(..., *_window(b, rows, cols, scale))]


def _paste(image: Tensor, run: _TileRun, f: int, size: tuple[int, int]) -> Tensor:
    """Copy the owned part of a decoded tile (B, C, th, tw) into the image (B, C, H, W)."""
    tile = run.slots.x
    assert tile is not None  # the tail leaves its output there
    if image.numel() == 0:
        image = tile.new_empty((tile.shape[0], tile.shape[1], *size))
    r, c = run.rows, run.cols
    owned = ((r.own_start, r.own_end), (c.own_start, c.own_end))
    image[:, :, r.own_start * f : r.own_end * f, c.own_start * f : c.own_end * f] = tile[
        (..., *_window(run, *owned, f))
    ]
    return image
