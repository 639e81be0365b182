"""RoPE families: everything DyPE needs to know about a model, as data (docs/families.md has the sources).

A family says how a model lays out its rotary position encoding — θ, the per-axis rotary dimensions, which
axes are the image's rows and columns (every other axis stays plain RoPE), how many pixels one token
covers, the training size DyPE extrapolates from, how the host rounds its angles (so that DyPE off or at
the base size is bit-identical to the host), how σ is read from the model's time input, and which
schedule μ runs while DyPE is active. Integrations look families up here; no other module spells one of
these constants.

Values marked `assumed` in `FamilyFact` have no primary source (docs/families.md says what is known):
they are defaults of fields that users and nodes can override, never constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from dype.validation import check_choice, check_multiple

Layout = Literal["bfl", "diffusers", "complex"]
"""Output layouts: `bfl` pe [B, 1, N, Σd/2, 2, 2] (InvokeAI, BFL reference); `diffusers` (cos, sin), each
[N, Σd] float32 with every slot in two adjacent columns; `complex` complex64 [N, Σd/2] (Z-Image)."""
LAYOUTS: tuple[str, ...] = get_args(Layout)

Rounding = Literal["float64_angle", "float32_angle"]
"""How the host rounds: `float64_angle` computes angles, cos and sin in float64 and rounds cos/sin to
float32 (FLUX); `float32_angle` rounds the float64 angle to float32 and takes `torch.polar` (Z-Image)."""
ROUNDINGS: tuple[str, ...] = get_args(Rounding)

TimeInput = Literal["sigma", "one_minus_sigma_scaled"]
"""What the hooked module receives as time: `sigma` is σ itself (FLUX's `timesteps`/`timestep`);
`one_minus_sigma_scaled` is x = (1 − σ)·t_scale (Z-Image's `t_embedder` input; σ = 1 − x / t_scale)."""
TIME_INPUTS: tuple[str, ...] = get_args(TimeInput)


@dataclass(frozen=True)
class StockMu:
    """The host's own schedule μ for an image of N tokens (what runs when DyPE is off).

    μ = base_shift + (max_shift − base_shift)/(max_seq_len − base_seq_len)·(N − base_seq_len), uncapped;
    or, with `constant` set, that value at every size.
    """

    base_seq_len: int = 256
    base_shift: float = 0.5
    max_seq_len: int = 4096
    max_shift: float = 1.15
    constant: float | None = None

    def mu(self, image_tokens: int) -> float:
        if self.constant is not None:
            return self.constant
        slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return self.base_shift + slope * (image_tokens - self.base_seq_len)


@dataclass(frozen=True)
class RopeFamily:
    """One RoPE image family (docs/families.md).

    Args:
        name: registry key (`flux1`, `flux2`, `z_image`, `chroma`).
        title: the model family as users know it ("FLUX.2").
        variants: the checkpoints it covers ("Klein 4B/9B, dev").
        theta: RoPE base θ.
        axes_dim: rotary dimension of every id axis, in id order (FLUX.1: index, rows, columns).
        row_axis, column_axis: the id axes holding the image row and column; all others are plain RoPE.
        pixels_per_token: image pixels per token side (VAE factor × patch size).
        base_resolution: default B, the size in pixels below which nothing is extrapolated.
        base_resolution_source: where B comes from, or "assumed" when no primary source gives it.
        isotropic: default of `DyPEConfig.isotropic` (both spatial scales = the larger one).
        layouts: the output layouts this family's hosts consume; the first is the default.
        rounding: the host's angle rounding (`ROUNDINGS`).
        time_input: what the σ hook receives (`TIME_INPUTS`).
        dype_mu: the schedule μ while DyPE is active (the 1024² value for FLUX.1, Z-Image, Chroma;
            InvokeAI's fixed value for FLUX.2).
        stock_mu: the host's own μ rule.
    """

    name: str
    title: str
    variants: str
    theta: float
    axes_dim: tuple[int, ...]
    row_axis: int
    column_axis: int
    pixels_per_token: int
    base_resolution: int
    base_resolution_source: str
    isotropic: bool
    layouts: tuple[Layout, ...]
    rounding: Rounding
    time_input: TimeInput
    dype_mu: float
    stock_mu: StockMu = field(default_factory=StockMu)

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes_dim", tuple(int(d) for d in self.axes_dim))
        if not self.axes_dim or any(d <= 0 or d % 2 for d in self.axes_dim):
            raise ValueError(f"axes_dim must be positive even numbers, got {list(self.axes_dim)}")
        axes = range(len(self.axes_dim))
        if self.row_axis not in axes or self.column_axis not in axes or self.row_axis == self.column_axis:
            raise ValueError(
                f"row_axis and column_axis must be two different axes of {len(self.axes_dim)}, "
                f"got {self.row_axis} and {self.column_axis}"
            )
        for axis in self.spatial_axes:  # NTK scales θ by s^(d/(d−2)): a spatial axis needs d ≥ 4
            if self.axes_dim[axis] < 4:
                raise ValueError(
                    f"axes_dim[{axis}] (a spatial axis) must be at least 4, got {self.axes_dim[axis]} "
                    f"in {list(self.axes_dim)}"
                )
        check_multiple("pixels_per_token", self.pixels_per_token, 1, "pixels")
        check_multiple("base_resolution", self.base_resolution, self.pixels_per_token)
        if not self.layouts:
            raise ValueError("layouts must name at least one layout")
        for layout in self.layouts:
            check_choice("layout", layout, LAYOUTS)
        check_choice("rounding", self.rounding, ROUNDINGS)
        check_choice("time_input", self.time_input, TIME_INPUTS)
        if not self.theta > 1.0:
            raise ValueError(f"theta must be > 1, got {self.theta!r}")

    @property
    def spatial_axes(self) -> tuple[int, int]:
        """(row axis, column axis)."""
        return self.row_axis, self.column_axis

    @property
    def plain_axes(self) -> tuple[int, ...]:
        """The axes that always get plain RoPE with amplitude 1 (index, text and reference axes)."""
        return tuple(a for a in range(len(self.axes_dim)) if a not in self.spatial_axes)

    @property
    def head_dim(self) -> int:
        return sum(self.axes_dim)

    def with_axes(self, theta: float, axes_dim: tuple[int, ...] | list[int]) -> RopeFamily:
        """This family with a host module's own θ and axes (a drop-in copies its host's constructor)."""
        if len(axes_dim) != len(self.axes_dim):
            raise ValueError(
                f"axes_dim must have {len(self.axes_dim)} axes for {self.title} (rows: axis {self.row_axis}, "
                f"columns: axis {self.column_axis}), got {list(axes_dim)}"
            )
        return replace(self, theta=float(theta), axes_dim=tuple(int(d) for d in axes_dim))


FLUX1 = RopeFamily(
    name="flux1",
    title="FLUX.1",
    variants="dev, schnell, Kontext",
    theta=10_000.0,
    axes_dim=(16, 56, 56),
    row_axis=1,
    column_axis=2,
    pixels_per_token=16,
    base_resolution=1024,
    base_resolution_source="BFL: FLUX.1 is trained at about 1024²; the official DyPE code uses 1024",
    isotropic=False,
    layouts=("bfl", "diffusers"),
    rounding="float64_angle",
    time_input="sigma",
    dype_mu=1.15,
)

FLUX2 = RopeFamily(
    name="flux2",
    title="FLUX.2",
    variants="Klein 4B/9B, dev",
    theta=2_000.0,
    axes_dim=(32, 32, 32, 32),
    row_axis=1,
    column_axis=2,
    pixels_per_token=16,
    base_resolution=2048,
    base_resolution_source="assumed: not published (BFL states 'up to 4MP' output)",
    isotropic=False,
    layouts=("diffusers",),
    rounding="float64_angle",
    time_input="sigma",
    dype_mu=2.02,
    stock_mu=StockMu(constant=2.02),  # InvokeAI's `compute_empirical_mu`: 2.02 at every size
)

Z_IMAGE = RopeFamily(
    name="z_image",
    title="Z-Image",
    variants="Turbo, Base",
    theta=256.0,
    axes_dim=(32, 48, 48),
    row_axis=1,
    column_axis=2,
    pixels_per_token=16,
    base_resolution=1024,
    base_resolution_source="assumed: diffusers' default size and ComfyUI-DyPE; no primary source",
    isotropic=True,
    layouts=("complex",),
    rounding="float32_angle",
    time_input="one_minus_sigma_scaled",
    dype_mu=1.15,
)

CHROMA = RopeFamily(
    name="chroma",
    title="Chroma",
    variants="Chroma1-HD and its finetunes",
    theta=10_000.0,
    axes_dim=(16, 56, 56),
    row_axis=1,
    column_axis=2,
    pixels_per_token=16,
    base_resolution=1024,
    base_resolution_source="assumed: the model card gives no training size (768 reported to work)",
    isotropic=False,
    layouts=("diffusers",),
    rounding="float64_angle",
    time_input="sigma",
    dype_mu=1.15,
)

FAMILIES: dict[str, RopeFamily] = {family.name: family for family in (FLUX1, FLUX2, Z_IMAGE, CHROMA)}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)

# Every registered family's token side divides this: a size valid for it is valid for all of them.
PIXEL_MULTIPLE = math.lcm(*(family.pixels_per_token for family in FAMILIES.values()))


def get_family(family: str | RopeFamily) -> RopeFamily:
    """A `RopeFamily` given itself or its registry name; ValueError naming the families otherwise."""
    if isinstance(family, RopeFamily):
        return family
    return FAMILIES[check_choice("family", family, FAMILY_NAMES)]


def check_image_side(field_name: str, value: object, family: str | RopeFamily = FLUX1) -> int:
    """An image side in pixels: a positive multiple of the family's pixels per token."""
    return check_multiple(field_name, value, get_family(family).pixels_per_token)
