"""DyPE for diffusers pipelines of every family: FLUX.1, FLUX.2 (Klein, dev), Chroma and Z-Image.

`apply_dype(pipe, "4k", width=3840, height=2160)` patches at once and returns a `DyPEPatch`; use it as a
context manager or call `.remove()`. What it changes, all undone on exit (also after an exception):

* the transformer's embedder — and that of every ControlNet the pipeline holds — becomes dype's (same
  attribute, no parameters, so layerwise casting and `state_dict` are unchanged), fed each call's σ by a
  forward pre-hook (`dype.hosts`: the `timestep` argument, or Z-Image's `t_embedder` input);
* the schedule uses the family's DyPE μ (`dype.families`: 1.15 for FLUX.1, Chroma and Z-Image, 2.02 for
  FLUX.2), through the scheduler itself: FLUX.1, Chroma and Z-Image compute μ from the scheduler's
  `base_shift`/`max_shift`, which are both set to it; FLUX.2 computes an uncapped empirical μ that
  ignores them, so its scheduler is switched to the equal static shift e^μ. A scheduler without dynamic
  shifting (FLUX schnell, a static Z-Image scheduler) is left alone;
* FLUX.1 and Chroma pipelines cast their image ids to the model dtype: `_prepare_latent_image_ids` is
  shadowed on the instance so they stay float32 (bf16 cannot hold positions above 256).

Decided behaviours (docs/diffusers.md): the patch stays applied until `remove()` or the end of the `with`
block, also when nobody keeps the returned object (a registry keyed by the pipeline holds it); a second
`apply_dype` on the same pipeline, or on another pipeline sharing its transformer, is refused with an
error while the first is active (remove it first); a pipeline sharing a patched transformer runs DyPE
too; a scheduler replaced inside the block (`X.from_config(pipe.scheduler.config)`) keeps the pinned μ
there and gets its own values back on exit, and one built from another config is reported by a warning.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import torch
from diffusers.configuration_utils import FrozenDict
from torch import Tensor, nn

from dype.config import DyPEConfig
from dype.extension import DyPEExtension, active_patch
from dype.families import CHROMA, FLUX1, FLUX2, Z_IMAGE, RopeFamily, check_image_side
from dype.hosts import class_names
from dype.presets import resolve_dype_config
from dype.schedule import SHIFT_MODES
from dype.validation import check_choice

logger = logging.getLogger(__name__)

GridReader = Literal["img_ids", "latent_list"]


@dataclass(frozen=True)
class PipelineKind:
    """What differs between the diffusers pipelines of one family.

    Args:
        name: "flux", "flux2", "chroma", "z_image".
        family: the RoPE family of its transformer.
        transformer_classes: class names of `pipe.transformer`.
        pipelines: the pipeline classes tested with this module.
        schedule_pin: "config_mu" (μ from the scheduler's base/max shift) or "static_shift" (FLUX.2).
        float32_ids: the id builder that casts to the model dtype, shadowed to keep float32 (None: int ids).
        controlnet_classes: ControlNet classes on `pipe.controlnet` whose embedder is patched too.
        grid: where a call's image grid is read for the size check: `img_ids` rows whose index axis is 0,
            or the patch-2 latent list `x` (Z-Image builds its ids inside the model).
        refused: pipeline class → why DyPE cannot serve it (the σ-dependent methods only, see `apply_dype`).
    """

    name: str
    family: RopeFamily
    transformer_classes: tuple[str, ...]
    pipelines: tuple[str, ...]
    schedule_pin: Literal["config_mu", "static_shift"]
    float32_ids: str | None
    controlnet_classes: tuple[str, ...]
    grid: GridReader
    refused: tuple[tuple[str, str], ...] = ()


FLUX_PIPELINES = (
    "FluxPipeline",
    "FluxImg2ImgPipeline",
    "FluxInpaintPipeline",
    "FluxControlNetPipeline",
    "FluxKontextPipeline",
)
PIPELINE_KINDS: tuple[PipelineKind, ...] = (
    PipelineKind(
        "flux",
        FLUX1,
        ("FluxTransformer2DModel",),
        FLUX_PIPELINES,
        "config_mu",
        "_prepare_latent_image_ids",
        ("FluxControlNetModel",),
        "img_ids",
    ),
    PipelineKind(
        "flux2",
        FLUX2,
        ("Flux2Transformer2DModel",),
        ("Flux2Pipeline", "Flux2KleinPipeline", "Flux2KleinInpaintPipeline"),
        "static_shift",
        None,
        (),
        "img_ids",
        refused=(
            (
                "Flux2KleinKVPipeline",
                "it caches the reference keys after RoPE on the first step, so with dynamic DyPE they keep "
                "step-1 rotations while the queries move on. Use Flux2KleinPipeline, or a static method "
                "(enable_dype=False, or method 'base')",
            ),
        ),
    ),
    PipelineKind(
        "chroma",
        CHROMA,
        ("ChromaTransformer2DModel",),
        ("ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline"),
        "config_mu",
        "_prepare_latent_image_ids",
        (),
        "img_ids",
    ),
    PipelineKind(
        "z_image",
        Z_IMAGE,
        ("ZImageTransformer2DModel",),
        ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline", "ZImageControlNetPipeline"),
        "config_mu",
        None,
        ("ZImageControlNetModel",),
        "latent_list",
        refused=(
            (
                "ZImageOmniPipeline",
                "omni mode embeds two time steps per transformer call, so DyPE cannot follow σ. Use ZImagePipeline",
            ),
        ),
    ),
)
SUPPORTED_PIPELINES: tuple[str, ...] = tuple(name for kind in PIPELINE_KINDS for name in kind.pipelines)
_PINNED_SHIFT_KEYS = ("base_shift", "max_shift")


def pipeline_kind(pipe: Any) -> PipelineKind:
    """The kind of `pipe`, from its transformer's class; ValueError naming the supported pipelines."""
    transformer = getattr(pipe, "transformer", None)
    names = class_names(transformer)
    for kind in PIPELINE_KINDS:
        if names & set(kind.transformer_classes):
            return kind
    raise ValueError(
        f"pipe must be a diffusers pipeline of a supported family (one of {', '.join(SUPPORTED_PIPELINES)}); got "
        f"{type(pipe).__name__} with transformer {type(transformer).__name__}"
    )


def patched_models(pipe: Any, kind: PipelineKind) -> dict[str, nn.Module]:
    """The modules of `pipe` that own an embedder: the transformer and every ControlNet of the family.

    Returns:
        name → module, e.g. {"transformer": ..., "controlnet": ...}, "controlnet.nets.1" for one net of a
        multi-ControlNet.
    """
    models: dict[str, nn.Module] = {"transformer": pipe.transformer}
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is None:
        return models
    wanted = set(kind.controlnet_classes)
    if class_names(controlnet) & wanted:
        models["controlnet"] = controlnet
    for index, net in enumerate(getattr(controlnet, "nets", [])):  # FluxMultiControlNetModel
        if class_names(net) & wanted:
            models[f"controlnet.nets.{index}"] = net
    return models


def _restore_config(scheduler: Any, original: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Put `original` back for `keys` (removing keys it did not have); other keys stay as they are."""
    # register_to_config can add and overwrite keys but not delete them; rebuild the frozen dict.
    restored = {key: value for key, value in scheduler.config.items() if key not in keys}
    restored.update(original)
    scheduler._internal_dict = FrozenDict(restored)


class ScheduleGuard:
    """The pinned schedule of one generation: applied to `pipe.scheduler`, restored on `restore()`.

    Also restores a scheduler that replaced it inside the block and still carries the pinned values
    (`from_config` copies them), and tells whether `pipe.scheduler` is still pinned.
    """

    def __init__(self, pipe: Any, kind: PipelineKind, mu: float) -> None:
        self.pipe = pipe
        self.kind = kind
        self.mu = mu
        self.scheduler = pipe.scheduler
        self.warned = False
        config = self.scheduler.config
        if kind.schedule_pin == "config_mu":
            self.pinned = dict.fromkeys(_PINNED_SHIFT_KEYS, float(mu))
        else:  # FLUX.2: its empirical μ ignores base/max shift; a static shift e^μ gives the same curve
            self.pinned = {"use_dynamic_shifting": False, "shift": math.exp(mu)}
        self.original = {key: config[key] for key in self.pinned if key in config}
        self.original_shift = getattr(self.scheduler, "_shift", None)
        self._pin(self.scheduler)

    def _pin(self, scheduler: Any) -> None:
        scheduler.register_to_config(**self.pinned)
        if self.kind.schedule_pin == "static_shift":
            scheduler.set_shift(self.pinned["shift"])

    def is_pinned(self, scheduler: Any) -> bool:
        config = getattr(scheduler, "config", {})
        return all(config.get(key) == value for key, value in self.pinned.items())

    def restore(self) -> None:
        schedulers = [self.scheduler]
        current = getattr(self.pipe, "scheduler", None)
        if current is not None and current is not self.scheduler and self.is_pinned(current):
            schedulers.append(current)
        for scheduler in schedulers:
            _restore_config(scheduler, self.original, tuple(self.pinned))
            if self.kind.schedule_pin == "static_shift" and self.original_shift is not None:
                scheduler.set_shift(self.original_shift)


def uses_dynamic_shift(scheduler: Any) -> bool:
    config = getattr(scheduler, "config", None)
    return config is not None and bool(config.get("use_dynamic_shifting", False))


@contextmanager
def pinned_mu(pipe: Any, kind: PipelineKind, mu: float) -> Iterator[ScheduleGuard | None]:
    """Make `pipe`'s schedule use μ at every size (yields None and changes nothing for a static scheduler)."""
    if not uses_dynamic_shift(pipe.scheduler):
        yield None
        return
    guard = ScheduleGuard(pipe, kind, mu)
    try:
        yield guard
    finally:
        guard.restore()


@contextmanager
def float32_image_ids(pipe: Any, builder: str) -> Iterator[None]:
    """Keep the pipeline's image position ids float32 (exact integer positions at any size).

    FLUX.1 and Chroma pipelines build ids with `self.<builder>(..., device, dtype)` (a staticmethod whose
    arity differs: ChromaImg2ImgPipeline's has no batch size) and cast them to the model dtype; an instance
    attribute shadows it for this pipe only, replacing the last (dtype) argument.
    """
    had_own = builder in vars(pipe)
    own = vars(pipe).get(builder)
    prepare = getattr(pipe, builder)

    def prepare_float32(*args: Any, **kwargs: Any) -> Tensor:
        if "dtype" in kwargs:
            kwargs["dtype"] = torch.float32
        elif args:
            args = (*args[:-1], torch.float32)
        return prepare(*args, **kwargs)

    setattr(pipe, builder, prepare_float32)
    try:
        yield
    finally:
        if had_own:
            setattr(pipe, builder, own)
        else:
            delattr(pipe, builder)


def image_grid(kind: PipelineKind, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """(rows, columns) of the generated image's token grid in one transformer call, None if not readable."""
    if kind.grid == "img_ids":
        ids = kwargs.get("img_ids")
        if not isinstance(ids, Tensor) or ids.numel() == 0:
            return None
        ids = ids.reshape(-1, ids.shape[-1])
        target = ids[ids[:, 0] == 0]  # reference tokens (Kontext, FLUX.2 references) have another index
        if target.numel() == 0:
            return None
        rows, columns = kind.family.spatial_axes
        return int(target[:, rows].max()) + 1, int(target[:, columns].max()) + 1
    latents = kwargs["x"] if "x" in kwargs else (args[0] if args else None)
    if not isinstance(latents, (list, tuple)) or not latents or not isinstance(latents[0], Tensor):
        return None
    height, width = latents[0].shape[-2:]
    return int(height) // 2, int(width) // 2  # Z-Image: patch 2 on the latent grid


class DyPEPatch:
    """DyPE applied to one pipeline; undo it with `remove()` or by leaving the `with` block.

    Attributes:
        kind: the pipeline's family and its differences (`PipelineKind`).
        config: the DyPE configuration in use, or None when the preset resolved to "off" (then nothing
            was changed and the pipeline's output is bit-identical to an unpatched one).
        width, height: the target image size in pixels.
        mu: the pinned schedule μ, or None when the schedule was left alone (DyPE off, `shift="stock"`,
            or a scheduler without dynamic shifting such as FLUX schnell's).
        embedders: name of the patched module ("transformer", "controlnet", ...) → its DyPE embedder.
    """

    def __init__(self, pipe: Any, config: DyPEConfig | None, width: int, height: int, shift: str = "official") -> None:
        self.pipe = pipe
        self.kind = pipeline_kind(pipe)
        self.config = config
        self.width = check_image_side("width", width, self.kind.family)
        self.height = check_image_side("height", height, self.kind.family)
        self.shift = check_choice("shift", shift, SHIFT_MODES)
        self.mu: float | None = None
        self.embedders: dict[str, Any] = {}
        self._stack = ExitStack()
        self._schedule: ScheduleGuard | None = None
        self._check_can_apply()
        if config is None:
            return
        try:
            extension = DyPEExtension(config, width=width, height=height)
            for name, model in patched_models(pipe, self.kind).items():
                self.embedders[name] = self._stack.enter_context(extension.patched(model))
                handle = model.register_forward_pre_hook(self._check_call, with_kwargs=True)
                self._stack.callback(handle.remove)
            if self.kind.float32_ids is not None:
                self._stack.enter_context(float32_image_ids(pipe, self.kind.float32_ids))
            if shift == "official":
                self._schedule = self._stack.enter_context(pinned_mu(pipe, self.kind, self.kind.family.dype_mu))
                self.mu = None if self._schedule is None else self._schedule.mu
            _ACTIVE[pipe] = self
        except BaseException:
            self._stack.close()
            raise

    def _check_can_apply(self) -> None:
        active = _ACTIVE.get(self.pipe)
        if active is not None:
            raise ValueError(
                f"{type(self.pipe).__name__} already has an active apply_dype ({active!r}); remove it (leave its "
                "with block or call .remove()) before applying DyPE again, also to turn it off"
            )
        for name, model in patched_models(self.pipe, self.kind).items():
            owner = active_patch(model)
            if owner is not None:
                raise ValueError(
                    f"pipe.{name} ({type(model).__name__}) already has an active DyPE patch, from another pipeline "
                    "sharing it; remove that patch first"
                )
        reasons = dict(self.kind.refused)
        name = type(self.pipe).__name__
        dependent = self.config is not None and self.config.sigma_dependent
        if name in reasons and dependent:
            raise ValueError(f"apply_dype cannot serve {name} with a dynamic method: {reasons[name]}")

    def _check_call(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Every call: the size generated is the one DyPE was set up for; the schedule is still pinned."""
        grid = image_grid(self.kind, args, kwargs)
        per_token = self.kind.family.pixels_per_token
        expected = (self.height // per_token, self.width // per_token)
        if grid is not None and grid != expected:
            raise ValueError(
                f"DyPE was set up for width={self.width}, height={self.height} ({expected[1]}×{expected[0]} "
                f"tokens) but {type(module).__name__} is generating {grid[1] * per_token}×{grid[0] * per_token} "
                f"px; pass the pipeline's width and height to apply_dype (a pipeline sharing this "
                f"{type(module).__name__} runs DyPE too while {type(self.pipe).__name__}'s patch is active)"
            )
        schedule = self._schedule
        if schedule is not None and not schedule.warned and not schedule.is_pinned(self.pipe.scheduler):
            schedule.warned = True
            logger.warning(
                f"pipe.scheduler was replaced after apply_dype by one without the pinned μ={schedule.mu:g}: this "
                "generation runs the stock schedule. Replace the scheduler before apply_dype (or build it with "
                "from_config(pipe.scheduler.config) inside the block)"
            )

    @property
    def active(self) -> bool:
        """True while DyPE is applied (False when off, and after `remove()`)."""
        return bool(self.embedders)

    def remove(self) -> None:
        """Restore the pipeline exactly as it was; safe to call more than once."""
        try:
            self._stack.close()
        finally:
            self.embedders = {}
            self.mu = None
            self._schedule = None
            if _ACTIVE.get(self.pipe) is self:
                del _ACTIVE[self.pipe]

    def __enter__(self) -> DyPEPatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "off" if self.config is None else ("active" if self.active else "removed")
        return f"DyPEPatch({state}, {self.kind.name}, {self.width}x{self.height}, config={self.config}, mu={self.mu})"


# pipe → its applied patch: keeps the patch alive (and the pipeline patched) until it is removed.
_ACTIVE: weakref.WeakKeyDictionary[Any, DyPEPatch] = weakref.WeakKeyDictionary()


def active_dype(pipe: Any) -> DyPEPatch | None:
    """The `apply_dype` patch currently applied to `pipe`, if any."""
    return _ACTIVE.get(pipe)


def apply_dype(
    pipe: Any,
    dype: str | DyPEConfig | None = "auto",
    *,
    width: int,
    height: int,
    dype_scale: float | None = None,
    dype_exponent: float | None = None,
    method: str = "vision_yarn",
    base_resolution: int | None = None,
    isotropic: bool | None = None,
    shift: str = "official",
) -> DyPEPatch:
    """Apply DyPE to a diffusers pipeline for a `width`×`height` generation.

    Args:
        pipe: a pipeline of `SUPPORTED_PIPELINES` (FLUX.1, FLUX.2 / Klein, Chroma, Z-Image); the family is
            read from its transformer.
        dype: a preset name (off, manual, auto, area, 4k — docs/math.md §7), a `DyPEConfig`, or None (off).
        width, height: the size the pipeline will generate, in pixels. Pass the same values to the
            pipeline call; a mismatch raises ValueError during the call.
        dype_scale, dype_exponent: read by preset `manual` only.
        method, base_resolution, isotropic: with a preset name; None takes the family's default (B: 1024,
            FLUX.2 2048; isotropic on for Z-Image).
        shift: "official" pins the family's DyPE μ while DyPE is active; "stock" keeps diffusers' μ.

    Returns:
        A `DyPEPatch`, already applied. `with apply_dype(pipe, "4k", width=3840, height=2160): pipe(...)`
        or `patch = apply_dype(...); ...; patch.remove()`.
    """
    family = pipeline_kind(pipe).family
    if isinstance(dype, DyPEConfig):
        overrides = (dype_scale, dype_exponent, base_resolution, isotropic)
        if any(value is not None for value in overrides) or method != "vision_yarn":
            raise ValueError(
                "dype_scale, dype_exponent, method, base_resolution and isotropic apply to a preset name, "
                "not to a DyPEConfig"
            )
        config: DyPEConfig | None = dype
    elif dype is None:
        config = None
    elif isinstance(dype, str):
        config = resolve_dype_config(
            dype,
            width=width,
            height=height,
            dype_scale=dype_scale,
            dype_exponent=dype_exponent,
            method=method,
            base_resolution=base_resolution,
            isotropic=isotropic,
            family=family,
        )
    else:
        raise ValueError(f"dype must be a preset name, a DyPEConfig or None; got {type(dype).__name__}")
    return DyPEPatch(pipe, config, width, height, shift)
