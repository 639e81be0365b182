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
  image, so overlaps are not counted twice), and waits (is *parked*: on the device when its free
  memory allows, else in host RAM; see ``plan_park``). Once all tiles are there, the per-tile numbers are
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

Memory: the device holds the head output plus one tile's working memory; the park place holds every
tile's live activations at one GroupNorm. A ResnetBlock that changes the channel count applies its
1x1 shortcut as soon as ``h`` exists, so its wider input is not kept alongside ``h``: at most 256
full-resolution channels wait (~9 GiB in bf16 at 4096², ``dype.memory.estimate_park_memory``), against
the 384 (the input and ``h``) of keeping the input. Parked tiles keep the decode's dtype. Time: each
tile is computed once, but the tiles overlap (a few percent at the default overlap), and tiles parked
in host RAM travel there and back at every GroupNorm (25 of them in the FLUX VAE); tiles parked on the
device do not move.

Works on InvokeAI's BFL ``AutoEncoder`` (``invokeai.backend.flux.modules.autoencoder``) and on diffusers'
``AutoencoderKL`` (duck-typed on their decoder attributes, so neither package is imported here). For both
it is a drop-in for the model's own decode: BFL latents are un-scaled inside (``z / scale + shift``, as
``AutoEncoder.decode`` does), diffusers latents go through ``post_quant_conv`` when the model has one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: called after each lock-step round over all tiles (one per GroupNorm, plus
the final one); ``total`` is the number of rounds."""

LogCallback = Callable[[str], object]
"""``log(message)``: receives the one line saying where the waiting tiles are parked, and why."""

ParkChoice = Literal["auto", "device", "host"]
PARK_CHOICES: tuple[str, ...] = ("auto", "device", "host")
"""``"auto"``: on the device when the waiting tiles fit in its free memory (``dype.memory.choose_park_place``),
else in host RAM; ``"device"`` / ``"host"``: always there."""

HOST = torch.device("cpu")

DEFAULT_TILE_SIZE = 1024
"""Pixels. One 1024² tile of the FLUX VAE needs ~4.6 GB in bf16 (InvokeAI's constant), ~5.8 GB with
overlap, which leaves room on a 24 GB card for the head and the model cache."""

DEFAULT_OVERLAP = 64
"""Pixels (8 latent cells): twice what the halo exchange needs to be exact (32)."""

MIN_TILE_SIZE = 64

TILE_WORKING_MULTIPLE = 3
"""A tile's step holds its input, the normalised copy and the convolution's output: about three times
what the tile parks. Used only to judge whether parking on the device leaves room for that step."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TiledDecodeConfig:
    """Tiling parameters, in pixels.

    Args:
        tile_size: side of a square tile in pixels; a multiple of 8 (the FLUX VAE's scale) and >= 64.
        overlap: minimum pixels shared by neighbouring tiles (their halo); a multiple of 8 in
            [0, tile_size / 2]. 32 or more makes the decode equal to the untiled one; 0 leaves seams.
        park: where tiles wait between GroupNorms: "auto" (the device if they fit in its free memory,
            else host RAM), "device" or "host". Never changes the image.
    """

    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    park: ParkChoice = "auto"

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
        if self.park not in PARK_CHOICES:
            raise ValueError(f"park must be one of {', '.join(map(repr, PARK_CHOICES))}, got {self.park!r}")


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


def _activate_(act: Callable[[Tensor], Tensor] | nn.Module, x: Tensor) -> Tensor:
    """act(x), in place for SiLU (x is a fresh normalised copy): one tile-sized buffer less per step."""
    if act is F.silu or isinstance(act, nn.SiLU):
        return F.silu(x, inplace=True)
    return act(x)


def _resnet(block: nn.Module, slots: _Slots) -> _Tail:
    """BFL ``ResnetBlock`` / diffusers ``ResnetBlock2D`` (no time embedding) on ``slots.x``."""
    act = getattr(block, "nonlinearity", F.silu)
    shortcut = getattr(block, "nin_shortcut", None)  # BFL: only when the channels change
    if shortcut is None:
        shortcut = getattr(block, "conv_shortcut", None)  # diffusers: None when they do not
    yield _Sync(block.norm1, "x")
    slots.h = block.conv1(_activate_(act, _normed(slots, "x", block.norm1)))
    if shortcut is not None:
        # The shortcut is a 1x1 convolution (pointwise, so the halo stays right): applied now rather than
        # after conv2, the block's wider input is dropped before all tiles wait for norm2 (256 + 128 ->
        # 128 + 128 channels in FLUX's first full-resolution block). Same op on the same input.
        slots.x = shortcut(slots.x)
    yield _Sync(block.norm2, "h")
    h = block.conv2(_activate_(act, _normed(slots, "h", block.norm2)))  # diffusers' dropout: identity in eval
    slots.h = None
    h += slots.x  # in place into conv2's fresh output: x + h without a third tile-sized tensor
    factor = getattr(block, "output_scale_factor", 1.0)
    slots.x = h if factor == 1.0 else h.div_(factor)


def _resnet_park_channels(block: nn.Module) -> int:
    """Channels a ResnetBlock's tile parks at its worst GroupNorm: its input at norm1, or h and the
    (shortcut) residual at norm2."""
    return max(block.conv1.in_channels, 2 * block.conv1.out_channels)


def _park_channels(levels: Iterable[tuple[int, Iterable[nn.Module]]]) -> float:
    """Parked channels per output pixel at the worst GroupNorm, over (level, ResnetBlocks) pairs; level k
    runs at 1/2^k of the output side, so its channels count 1/4^k per output pixel."""
    return max(_resnet_park_channels(block) / 4**level for level, blocks in levels for block in blocks)


# ----------------------------------------------------------------------------------------------------
# Host adapters: split each decoder into a global head and a tiled tail.


@dataclass(frozen=True)
class _DecoderStages:
    head: Callable[[Tensor], Tensor]  # latents (B, z, h, w) -> features (B, C, h, w)
    tail: Callable[[_Slots], _Tail]  # slots.x: features (B, C, h, w) -> image (B, 3, h*f, w*f)
    num_norms: int  # GroupNorms in the tail = lock-step rounds before the last
    scale: int  # f: pixels per latent cell
    park_channels: float  # parked channels per output pixel at the worst GroupNorm (_park_channels)


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
        slots.x = dec.conv_out(_activate_(F.silu, _normed(slots, "x", dec.norm_out)))

    return _DecoderStages(
        head,
        tail,
        _count_norms(dec.up, dec.norm_out),
        2 ** (dec.num_resolutions - 1),
        _park_channels((level, up.block) for level, up in enumerate(dec.up)),
    )


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
        slots.x = dec.conv_out(_activate_(dec.conv_act, _normed(slots, "x", dec.conv_norm_out)))

    levels = len(dec.up_blocks)
    return _DecoderStages(
        head,
        tail,
        _count_norms(dec.up_blocks, dec.conv_norm_out),
        2 ** (levels - 1),
        # diffusers runs the coarsest level first: up_blocks[j] is at level levels - 1 - j.
        _park_channels((levels - 1 - j, up.resnets) for j, up in enumerate(dec.up_blocks)),
    )


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
# Where the waiting tiles go.


@dataclass(frozen=True)
class ParkPlan:
    """Where a tiled decode parks its waiting tiles, and the numbers behind the choice.

    ``place`` is "device" (the tiles stay where they are computed; no copies) or "host" (host RAM, copied
    there and back at every GroupNorm). ``park_bytes``: the waiting tiles at the worst GroupNorm, in the
    decode's dtype; ``working_bytes``: one tile's step; ``free_bytes``: what the device had free when
    the plan was made (None: unknown, or not looked up because the choice was forced).
    """

    place: Literal["device", "host"]
    choice: ParkChoice
    device: str
    tiles: int
    park_bytes: int
    working_bytes: int
    free_bytes: int | None

    def describe(self) -> str:
        where = f"on {self.device}" if self.place == "device" else "in host RAM"
        if self.tiles == 1:
            return "dype tiled decode: 1 tile, nothing waits"
        why = "forced" if self.choice != "auto" else f"auto: {_gib(self.free_bytes)} free on {self.device}"
        return (
            f"dype tiled decode: {self.tiles} tiles park ~{_gib(self.park_bytes)} {where} ({why}; "
            f"one tile's step ~{_gib(self.working_bytes)})"
        )


def _gib(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def plan_park(
    vae: nn.Module,
    latents: Tensor,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    park: ParkChoice = "auto",
    free_bytes: int | None = None,
) -> ParkPlan:
    """Decide where ``tiled_decode(vae, latents, ...)`` parks its waiting tiles.

    Args:
        vae, latents, tile_size, overlap: as for ``tiled_decode``; latents (B, z, H/f, W/f) give the
            size, the dtype (the parked tiles keep it) and the device.
        park: "auto", "device" or "host" (see ``TiledDecodeConfig``).
        free_bytes: the device's free memory for "auto"; default: looked up now
            (``dype.memory.free_memory``).
    """
    # dype.memory builds its estimates on this module's tile layout, so it is imported here, not at the top.
    from dype import memory

    config = TiledDecodeConfig(tile_size=tile_size, overlap=overlap, park=park)
    stages = _stages_for(vae)
    f = stages.scale
    rows = plan_axis(latents.shape[-2], config.tile_size // f, config.overlap // f)
    cols = plan_axis(latents.shape[-1], config.tile_size // f, config.overlap // f)
    # Bytes per output pixel of one sample at the worst GroupNorm, in the decode's dtype.
    per_pixel = latents.shape[0] * stages.park_channels * latents.element_size()
    tiles = len(rows) * len(cols)
    # Every tile waits, overlaps counted in each (the same sum as dype.memory.estimate_park_memory).
    decoded_pixels = sum(r.end - r.start for r in rows) * sum(c.end - c.start for c in cols) * f * f
    park_bytes = 0 if tiles == 1 else int(decoded_pixels * per_pixel)
    tile_pixels = (rows[0].end - rows[0].start) * (cols[0].end - cols[0].start) * f * f
    working_bytes = int(tile_pixels * per_pixel * TILE_WORKING_MULTIPLE)
    if config.park == "auto":
        free = memory.free_memory(latents.device) if free_bytes is None else free_bytes
        place = memory.choose_park_place(free, park_bytes, working_bytes)
    else:
        free, place = free_bytes, config.park
    return ParkPlan(place, config.park, str(latents.device), tiles, park_bytes, working_bytes, free)


# ----------------------------------------------------------------------------------------------------
# Image-wide statistics.


def _stats(own: Tensor, groups: int) -> tuple[float, Tensor, Tensor]:
    """count, mean and M2 per (B, G) of a tile's owned window ``own`` (B, C, h, w), a strided view."""
    batch, channels = own.shape[:2]
    per_group = channels // groups
    count = float(per_group * own.shape[-2] * own.shape[-1])
    # A float32 copy of a whole tile would double its memory; a few groups at a time bound the copy, and
    # taking channels from the view copies only those (a reshape of the view would copy all of it).
    means, m2s = [], []
    step = max(1, groups // 8) * per_group
    for start in range(0, channels, step):
        xf = own[:, start : start + step].float().reshape(batch, -1, per_group * own.shape[-2] * own.shape[-1])
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
    park: ParkChoice = "auto",
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
) -> Tensor:
    """Decode ``latents`` tile by tile with image-wide GroupNorm statistics.

    A drop-in for ``AutoEncoder.decode(latents)`` (BFL) or ``AutoencoderKL.decode(latents).sample``
    (diffusers); computes on ``latents.device`` in ``latents.dtype``.

    Args:
        vae: a BFL ``AutoEncoder`` or a diffusers ``AutoencoderKL``.
        latents: (B, z_channels, H/f, W/f), f = 8 for FLUX.
        tile_size: tile side in pixels (see ``TiledDecodeConfig``).
        overlap: minimum pixels shared by neighbouring tiles (>= 32 for an exact decode).
        park: where tiles wait while the others catch up: "auto" (the device when they fit in its free
            memory, measured after the head; else host RAM), "device" or "host". On a CPU both are the
            same RAM.
        progress: optional ``progress(done, total)`` called after each lock-step round.
        log: receives the line saying where the tiles are parked and why (``ParkPlan.describe``);
            default: this module's ``logging`` logger at INFO.

    Returns:
        The image (B, out_channels, H, W) in ``latents.dtype``, unclamped (like the models' decode).
    """
    config = TiledDecodeConfig(tile_size=tile_size, overlap=overlap, park=park)
    if latents.dim() != 4 or 0 in latents.shape:
        raise ValueError(f"latents must be a non-empty (B, C, H, W) tensor, got shape {tuple(latents.shape)}")
    stages = _stages_for(vae)
    f = stages.scale
    if config.tile_size % f != 0 or config.overlap % f != 0:
        raise ValueError(
            f"tile_size and overlap must be multiples of the VAE scale {f}, got {config.tile_size}, {config.overlap}"
        )
    device = latents.device
    rows = plan_axis(latents.shape[-2], config.tile_size // f, config.overlap // f)
    cols = plan_axis(latents.shape[-1], config.tile_size // f, config.overlap // f)
    total = stages.num_norms + 1

    features = stages.head(latents)  # (B, C, H/f, W/f); exact: the attention sees the whole image
    # Planned after the head, so "auto" sees the memory the head's temporaries gave back.
    plan = plan_park(vae, latents, tile_size=config.tile_size, overlap=config.overlap, park=config.park)
    (log or logger.info)(plan.describe())
    park_device = HOST if plan.place == "host" else None  # None: tiles stay where they are computed
    runs = [_TileRun(r, c, _Slots(x=features[:, :, r.start : r.end, c.start : c.end])) for r in rows for c in cols]
    del features  # the tiles' slices keep it alive until each is parked
    size = (latents.shape[-2] * f, latents.shape[-1] * f)
    image = torch.zeros(0)
    for done in range(1, total + 1):
        merged: tuple[float, Tensor, Tensor] | None = None
        for run in list(runs):
            # One tile on the device at a time: unpark right before it runs, park right after.
            if park_device is not None:
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
            if park_device is not None:
                _move(run.slots, park_device)
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
