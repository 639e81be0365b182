"""The `z_image_denoise` override: InvokeAI's Denoise - Z-Image (Turbo, Base) with DyPE and a 4K-safe schedule.

InvokeAI 6.14.2's node has no DyPE, and its schedule breaks at high resolution on its own: shift = e^μ
with μ linear in the token count, uncapped, so at 4096² all 8 Turbo sigmas are ≈ 1 and the image forms
in one jump. This subclass keeps the node's type name, title, tags, category, classification and every
field, adds the DyPE fields, and runs InvokeAI's `_run_diffusion` unchanged under a per-thread state:

* the module global `patch_transformer_for_regional_prompting` of `invokeai.app.invocations.z_image_denoise`
  (entered once per run with `transformer=`, after the LoRA patches) is wrapped: with our state set and
  DyPE on, entering it also swaps `transformer.rope_embedder` (a plain object) for dype's and hooks
  `transformer.t_embedder`, which every path calls — plain, regional, and the ControlNet path that
  bypasses `transformer(...)` — to read σ = 1 − x / t_scale; leaving it restores both;
* `_calculate_shift` (the stock shift when the node's `shift` field is empty) returns the 1024² shift
  e^1.15 while DyPE is on with `dype_shift="official"` and the built-in Euler scheduler runs. A user's
  `shift` always wins; Heun and LCM keep their own linear schedules.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal

import torch
from invokeai.app.invocations.baseinvocation import Classification, InvocationRegistry, invocation
from invokeai.app.invocations.z_image_denoise import ZImageDenoiseInvocation as CoreZImageDenoiseInvocation
from invokeai.app.services.shared.invocation_context import InvocationContext

from dype.config import DyPEConfig, DyPEMethod
from dype.extension import DyPEExtension
from dype.families import Z_IMAGE
from dype.invokeai import dype_fields
from dype.invokeai.dispatch import DyPERun, NodeState, WrapperTable, add_wrapper_table, install_wrappers, mark_wrapper
from dype.pack_settings import default_preset
from dype.presets import DyPEPreset, resolve_dype_config

INVOCATION_TYPE = "z_image_denoise"
INVOCATION_VERSION = "1.7.0"  # core 6.14.2 is 1.6.0; new optional fields = minor bump
Z_IMAGE_DENOISE_MODULE = "invokeai.app.invocations.z_image_denoise"

DyPEShift = Literal["official", "stock"]


# This node's run state: its `_run_diffusion` sets it, its wrapper reads it.
_STATE: NodeState[DyPERun] = NodeState("dype_invokeai_z_image_state")
active_state = _STATE.active


def _wrap_regional_patch(original: Callable[..., AbstractContextManager[Any]]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @contextmanager
    def with_dype(state: DyPERun, transformer: torch.nn.Module, args: tuple, kwargs: dict) -> Iterator[Any]:
        extension = DyPEExtension(state.config, width=state.width, height=state.height)
        with original(*args, **kwargs) as patched, extension.patched(transformer, host="diffusers_z_image"):
            yield patched

    @functools.wraps(original)
    def patch_transformer_for_regional_prompting(*args: Any, **kwargs: Any) -> AbstractContextManager[Any]:
        state = _STATE.get()
        if state is None or state.config is None:
            return original(*args, **kwargs)
        transformer = signature.bind(*args, **kwargs).arguments["transformer"]
        return with_dype(state, transformer, args, kwargs)

    return mark_wrapper(patch_transformer_for_regional_prompting)


WRAPPERS: WrapperTable = {Z_IMAGE_DENOISE_MODULE: {"patch_transformer_for_regional_prompting": _wrap_regional_patch}}

add_wrapper_table(WRAPPERS)


def install() -> None:
    """Install the wrapper (idempotent; inert without our state)."""
    install_wrappers(WRAPPERS)


# The shift while DyPE is on: the 1024² value of the stock rule (shift = e^μ, μ = the family's dype_mu).
DYPE_SHIFT = math.exp(Z_IMAGE.dype_mu)


@invocation(
    INVOCATION_TYPE,
    title="Denoise - Z-Image",
    tags=["image", "z-image"],
    category="latents",
    version=INVOCATION_VERSION,
    classification=Classification.Prototype,
)
class ZImageDenoiseInvocation(CoreZImageDenoiseInvocation):
    """Run the denoising process with a Z-Image model. DyPE (high resolution) by the dype package."""

    dype_preset: DyPEPreset = dype_fields.preset_field(Z_IMAGE, default_preset())
    dype_scale: float | None = dype_fields.scale_field()
    dype_exponent: float | None = dype_fields.exponent_field()
    dype_method: DyPEMethod = dype_fields.method_field()
    dype_base_resolution: int = dype_fields.base_resolution_field(
        Z_IMAGE, "Raise it only if the model makes clean images above 1024 px without DyPE."
    )
    dype_isotropic: bool = dype_fields.isotropic_field(
        Z_IMAGE,
        "On (default) for Z-Image: half of its position frequencies are interpolated, so unequal per-axis "
        "scales stretch the picture (ComfyUI-DyPE found the same).",
    )
    dype_shift: DyPEShift = dype_fields.shift_field(
        "Noise schedule while DyPE is on and the Shift field is empty. 'official' uses the 1024 px shift "
        f"({DYPE_SHIFT:.3f}) at every size; 'stock' keeps InvokeAI's resolution shift, which at 4096² keeps all "
        "8 Turbo steps at pure noise. A value in Shift always wins; heun and lcm keep their own schedules."
    )

    def resolve_dype_config(self) -> DyPEConfig | None:
        """Our DyPE config for this node's fields (None = DyPE off); ValueError on bad input."""
        return resolve_dype_config(
            self.dype_preset,
            width=self.width,
            height=self.height,
            dype_scale=self.dype_scale,
            dype_exponent=self.dype_exponent,
            method=self.dype_method,
            base_resolution=self.dype_base_resolution,
            isotropic=self.dype_isotropic,
            family=Z_IMAGE,
        )

    def pins_shift(self) -> bool:
        """Whether `_calculate_shift` gives the 1024² shift: DyPE on, official, built-in Euler, no user shift."""
        state = _STATE.get()
        dype_on = state is not None and state.config is not None
        return dype_on and self.dype_shift == "official" and self.scheduler == "euler" and self.shift is None

    def _calculate_shift(self, image_seq_len: int, *args: Any, **kwargs: Any) -> float:
        if self.pins_shift():
            return DYPE_SHIFT
        return super()._calculate_shift(image_seq_len, *args, **kwargs)

    def _run_diffusion(self, context: InvocationContext) -> torch.Tensor:
        install()
        config = self.resolve_dype_config()
        with active_state(DyPERun(config, self.width, self.height)):
            if config is not None:
                self._log_enabled(context.logger, config)
            return super()._run_diffusion(context)

    def _log_enabled(self, logger: logging.Logger | Any, config: DyPEConfig) -> None:
        if self.scheduler != "euler":  # heun and lcm run at shift 1 whatever the Shift field says
            shift = f"shift n/a ({self.scheduler} uses its own linear schedule)"
        elif self.shift is not None:
            shift = f"shift={self.shift:g} (the node's Shift field)"
        elif self.pins_shift():
            shift = f"shift={DYPE_SHIFT:.3f} (1024² schedule)"
        else:
            tokens = (self.width // Z_IMAGE.pixels_per_token) * (self.height // Z_IMAGE.pixels_per_token)
            shift = f"shift={super()._calculate_shift(tokens):.3f} (stock)"
        logger.info(
            f"DyPE enabled: {self.width}×{self.height}, {config.method}, λs={config.dype_scale:.2f}, "
            f"λt={config.dype_exponent:.2f}, base {config.base_resolution_for(Z_IMAGE)} px"
            f"{', isotropic' if config.isotropic_for(Z_IMAGE) else ''}, {shift}"
        )


def ensure_registered() -> None:
    """Make "z_image_denoise" resolve to our class again if something registered another one since."""
    if InvocationRegistry.get_invocation_for_type(INVOCATION_TYPE) is not ZImageDenoiseInvocation:
        InvocationRegistry.register_invocation(ZImageDenoiseInvocation)
