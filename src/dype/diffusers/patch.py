"""DyPE for diffusers' FLUX pipelines: patch the embedders, pin μ, restore everything.

`apply_dype(pipe, "4k", width=3840, height=2160)` patches at once and returns a `DyPEPatch`; use it as
a context manager or call `.remove()`. What it changes, all undone on exit (also after an exception):

* `pipe.transformer.pos_embed` — and `pos_embed` of every FLUX ControlNet the pipeline holds — becomes a
  `DyPEPosEmbed` (same attribute name and no parameters, so layerwise casting still skips it);
  a forward pre-hook hands it each call's `timestep` (the pipelines pass σ = timestep / 1000).
* The scheduler's `base_shift` and `max_shift` are both set to μ = 1.15 (DYPE_SPEC.md §6): every FLUX
  pipeline computes μ = calculate_shift(image_seq_len, ..., base_shift, max_shift) from its scheduler's
  config, which then gives 1.15 at every size. Schedulers without dynamic shifting (schnell) are left
  alone.
* `pipe._prepare_latent_image_ids` is shadowed on the instance so the image ids stay float32: the
  pipelines cast them to the model dtype, and bf16 cannot hold positions above 256 (4096 px).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import TracebackType
from typing import Any

import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.models.controlnets.controlnet_flux import FluxControlNetModel
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from torch import Tensor, nn

from dype.config import DyPEConfig
from dype.embed import DyPEPosEmbed
from dype.extension import DyPEExtension
from dype.families import FLUX1, check_image_side
from dype.presets import resolve_dype_config
from dype.schedule import SHIFT_MODES
from dype.validation import check_choice

# The pipelines diffusers 0.40 provides that this module is tested with; any pipeline whose
# `transformer` is a FluxTransformer2DModel and whose loop passes `timestep=timestep / 1000` works.
SUPPORTED_PIPELINES: tuple[str, ...] = (
    "FluxPipeline",
    "FluxImg2ImgPipeline",
    "FluxInpaintPipeline",
    "FluxControlNetPipeline",
    "FluxKontextPipeline",
)

_PINNED_SHIFT_KEYS = ("base_shift", "max_shift")


def flux_models(pipe: Any) -> dict[str, nn.Module]:
    """The modules of `pipe` that own a FLUX `pos_embed`: the transformer and every FLUX ControlNet.

    Returns:
        name → module, e.g. {"transformer": ..., "controlnet": ...} or "controlnet.nets.1" for one net of
        a `FluxMultiControlNetModel`.
    """
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, FluxTransformer2DModel):
        raise ValueError(
            f"pipe must be a FLUX pipeline whose transformer is a FluxTransformer2DModel "
            f"(one of {', '.join(SUPPORTED_PIPELINES)}); got {type(pipe).__name__} with transformer "
            f"{type(transformer).__name__}"
        )
    models: dict[str, nn.Module] = {"transformer": transformer}
    controlnet = getattr(pipe, "controlnet", None)
    if isinstance(controlnet, FluxControlNetModel):
        models["controlnet"] = controlnet
    elif controlnet is not None:
        # FluxMultiControlNetModel keeps its FluxControlNetModels in `nets`.
        for index, net in enumerate(getattr(controlnet, "nets", [])):
            if isinstance(net, FluxControlNetModel):
                models[f"controlnet.nets.{index}"] = net
    return models


@contextmanager
def pinned_mu(scheduler: Any, mu: float = FLUX1.dype_mu) -> Iterator[float | None]:
    """Make a FLUX pipeline's schedule use μ = `mu` at every size, through the scheduler's own config.

    The pipelines compute μ = calculate_shift(seq_len, base_seq_len, max_seq_len, base_shift, max_shift)
    from `scheduler.config`; with base_shift = max_shift = μ the line is flat. Yields `mu`, or None
    (nothing changed) for a scheduler without dynamic shifting (FLUX schnell). The original values
    come back on exit; keys the config did not have are removed again.
    """
    config = getattr(scheduler, "config", None)
    if config is None or not config.get("use_dynamic_shifting", False):
        yield None
        return
    original = {key: config[key] for key in _PINNED_SHIFT_KEYS if key in config}
    scheduler.register_to_config(**dict.fromkeys(_PINNED_SHIFT_KEYS, float(mu)))
    try:
        yield float(mu)
    finally:
        # register_to_config can add and overwrite keys but not delete them; rebuild the frozen dict.
        restored = {key: value for key, value in scheduler.config.items() if key not in _PINNED_SHIFT_KEYS}
        restored.update(original)
        scheduler._internal_dict = FrozenDict(restored)


@contextmanager
def float32_image_ids(pipe: Any) -> Iterator[None]:
    """Keep the pipeline's image position ids in float32 (exact integer positions at any size).

    Every FLUX pipeline builds ids with `self._prepare_latent_image_ids(batch, h, w, device, dtype)`, a
    staticmethod, and casts them to the model dtype; an instance attribute shadows it for this pipe only.
    """
    had_own = "_prepare_latent_image_ids" in vars(pipe)
    own = vars(pipe).get("_prepare_latent_image_ids")
    prepare = pipe._prepare_latent_image_ids

    def prepare_float32(batch_size: int, height: int, width: int, device: Any, dtype: torch.dtype) -> Tensor:
        return prepare(batch_size, height, width, device, torch.float32)

    pipe._prepare_latent_image_ids = prepare_float32
    try:
        yield
    finally:
        if had_own:
            pipe._prepare_latent_image_ids = own
        else:
            del pipe._prepare_latent_image_ids


@contextmanager
def checked_image_grid(model: nn.Module, height: int, width: int) -> Iterator[None]:
    """Fail loudly when the pipeline generates another size than DyPE was set up for.

    A forward pre-hook reads the target image's token grid from `img_ids` (rows with index axis 0; FLUX
    Kontext reference tokens have 1) once per distinct ids shape and compares it with H/16 × W/16.
    """
    expected = (height // 16, width // 16)
    checked: set[tuple[int, ...]] = set()

    def check(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("img_ids")
        if not isinstance(ids, Tensor) or tuple(ids.shape) in checked:
            return
        ids = ids[0] if ids.ndim == 3 else ids
        target = ids[ids[:, 0] == 0]
        if target.numel():
            grid = (int(target[:, 1].max()) + 1, int(target[:, 2].max()) + 1)
            if grid != expected:
                raise ValueError(
                    f"apply_dype was set up for width={width}, height={height} ({expected[1]}×{expected[0]} "
                    f"tokens) but {type(module).__name__} is generating {grid[1] * 16}×{grid[0] * 16} px; "
                    f"pass the pipeline's width and height to apply_dype"
                )
        checked.add(tuple(ids.shape))

    handle = model.register_forward_pre_hook(check, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class DyPEPatch:
    """DyPE applied to one FLUX pipeline; undo it with `remove()` or by leaving the `with` block.

    Attributes:
        config: the DyPE configuration in use, or None when the preset resolved to "off" (then nothing
            was changed and the pipeline's output is bit-identical to an unpatched one).
        width, height: the target image size in pixels.
        mu: the pinned schedule μ, or None when the schedule was left alone (DyPE off, `shift="stock"`,
            or a scheduler without dynamic shifting such as FLUX schnell's).
        embedders: name of the patched module ("transformer", "controlnet", ...) → its `DyPEPosEmbed`.
    """

    def __init__(self, pipe: Any, config: DyPEConfig | None, width: int, height: int, shift: str = "official") -> None:
        self.pipe = pipe
        self.config = config
        self.width = check_image_side("width", width)
        self.height = check_image_side("height", height)
        self.shift = check_choice("shift", shift, SHIFT_MODES)
        models = flux_models(pipe)  # validates the pipeline even when DyPE is off
        self.mu: float | None = None
        self.embedders: dict[str, DyPEPosEmbed] = {}
        self._stack = ExitStack()
        if config is None:
            return
        try:
            for name, model in models.items():
                patched = DyPEExtension(config, width=width, height=height).patched(model)
                self.embedders[name] = self._stack.enter_context(patched)
                self._stack.enter_context(checked_image_grid(model, height, width))
            self._stack.enter_context(float32_image_ids(pipe))
            if shift == "official":
                self.mu = self._stack.enter_context(pinned_mu(pipe.scheduler))
        except BaseException:
            self._stack.close()
            raise

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

    def __enter__(self) -> DyPEPatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "off" if self.config is None else ("active" if self.active else "removed")
        return f"DyPEPatch({state}, {self.width}x{self.height}, config={self.config}, mu={self.mu})"


def apply_dype(
    pipe: Any,
    dype: str | DyPEConfig | None = "auto",
    *,
    width: int,
    height: int,
    dype_scale: float | None = None,
    dype_exponent: float | None = None,
    method: str = "vision_yarn",
    shift: str = "official",
) -> DyPEPatch:
    """Apply DyPE to a diffusers FLUX pipeline for a `width`×`height` generation.

    Args:
        pipe: a FluxPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline, FluxControlNetPipeline or
            FluxKontextPipeline (any pipeline with a `FluxTransformer2DModel` transformer).
        dype: a preset name (off, manual, auto, area, 4k — DYPE_SPEC.md §7), a `DyPEConfig`, or None (off).
        width, height: the size the pipeline will generate, in pixels (positive multiples of 16). Pass
            the same values to the pipeline call; a mismatch raises ValueError during the call.
        dype_scale, dype_exponent, method: preset overrides (only with a preset name).
        shift: "official" pins μ = 1.15 while DyPE is active (DYPE_SPEC.md §6); "stock" keeps
            diffusers' resolution-dependent μ.

    Returns:
        A `DyPEPatch`, already applied. `with apply_dype(pipe, "4k", width=3840, height=2160): pipe(...)`
        or `patch = apply_dype(...); ...; patch.remove()`.
    """
    if isinstance(dype, DyPEConfig):
        if dype_scale is not None or dype_exponent is not None or method != "vision_yarn":
            raise ValueError("dype_scale, dype_exponent and method apply to a preset name, not to a DyPEConfig")
        config: DyPEConfig | None = dype
    elif dype is None:
        config = None
    elif isinstance(dype, str):
        config = resolve_dype_config(
            dype, width=width, height=height, dype_scale=dype_scale, dype_exponent=dype_exponent, method=method
        )
    else:
        raise ValueError(f"dype must be a preset name, a DyPEConfig or None; got {type(dype).__name__}")
    return DyPEPatch(pipe, config, width, height, shift)
