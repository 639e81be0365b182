"""The `flux2_denoise` override: InvokeAI's FLUX2 Denoise (FLUX.2 Klein 4B/9B, dev) with DyPE.

InvokeAI 6.14.2's node has no DyPE. This subclass keeps its type name, title, tags, category,
classification and every field, adds the DyPE fields, and runs InvokeAI's `_run_diffusion` unchanged
under a per-thread state that one wrapper reads: the module global `denoise` of
`invokeai.app.invocations.flux2_denoise`, called once per run with `model=transformer` (after the LoRA
patches). With our state set and DyPE on, the wrapper swaps the transformer's `pos_embed` for dype's
embedder and feeds it each call's σ through a pre-hook (`dype.hosts`, host `diffusers_flux2`), and
restores both in `finally`; with no state, or DyPE off, it calls the original unchanged.

FLUX.2's schedule in InvokeAI is already resolution independent (μ = 2.02 at every size, Heun shift 3),
so there is nothing to pin. The Linear UI sends no DyPE field to this node: the preset default is what
its users get (`auto`, see `dype.pack_settings`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
from invokeai.app.invocations.baseinvocation import Classification, InvocationRegistry, invocation
from invokeai.app.invocations.flux2_denoise import Flux2DenoiseInvocation as CoreFlux2DenoiseInvocation
from invokeai.app.services.shared.invocation_context import InvocationContext

from dype.config import DyPEConfig, DyPEMethod
from dype.extension import DyPEExtension
from dype.families import FLUX2
from dype.invokeai import dype_fields
from dype.invokeai.dispatch import DyPERun, NodeState, WrapperTable, add_wrapper_table, install_wrappers, mark_wrapper
from dype.pack_settings import default_preset
from dype.presets import DyPEPreset, resolve_dype_config

INVOCATION_TYPE = "flux2_denoise"
INVOCATION_VERSION = "1.7.0"  # core 6.14.2 is 1.6.0; new optional fields = minor bump
FLUX2_DENOISE_MODULE = "invokeai.app.invocations.flux2_denoise"


# This node's run state: its `_run_diffusion` sets it, its wrapper reads it.
_STATE: NodeState[DyPERun] = NodeState("dype_invokeai_flux2_state")
active_state = _STATE.active


def _wrap_denoise(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def denoise(*args: Any, **kwargs: Any) -> torch.Tensor:
        state = _STATE.get()
        if state is None or state.config is None:
            return original(*args, **kwargs)
        model = signature.bind(*args, **kwargs).arguments["model"]
        extension = DyPEExtension(state.config, width=state.width, height=state.height)
        with extension.patched(model, host="diffusers_flux2"):
            return original(*args, **kwargs)

    return mark_wrapper(denoise)


WRAPPERS: WrapperTable = {FLUX2_DENOISE_MODULE: {"denoise": _wrap_denoise}}

add_wrapper_table(WRAPPERS)


def install() -> None:
    """Install the `denoise` wrapper (idempotent; inert without our state)."""
    install_wrappers(WRAPPERS)


@invocation(
    INVOCATION_TYPE,
    title="FLUX2 Denoise",
    tags=["image", "flux", "flux2", "klein", "denoise"],
    category="latents",
    version=INVOCATION_VERSION,
    classification=Classification.Prototype,
)
class Flux2DenoiseInvocation(CoreFlux2DenoiseInvocation):
    """Run denoising process with a FLUX.2 Klein transformer model. DyPE (high resolution) by the dype package."""

    dype_preset: DyPEPreset = dype_fields.preset_field(FLUX2, default_preset())
    dype_scale: float | None = dype_fields.scale_field()
    dype_exponent: float | None = dype_fields.exponent_field()
    dype_method: DyPEMethod = dype_fields.method_field()
    dype_base_resolution: int = dype_fields.base_resolution_field(
        FLUX2,
        "If images above 1024 px already repeat or stretch, try 1024; if 2048 px looks right without DyPE, "
        "keep 2048 (auto then starts above 3072 px).",
    )
    dype_isotropic: bool = dype_fields.isotropic_field(
        FLUX2, "Off (default): each axis by its own scale, as for FLUX.1."
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
            family=FLUX2,
        )

    def _run_diffusion(self, context: InvocationContext) -> torch.Tensor:
        install()
        config = self.resolve_dype_config()
        if config is not None:
            _log_enabled(context.logger, config, self.width, self.height)
        with active_state(DyPERun(config, self.width, self.height)):
            return super()._run_diffusion(context)


def _log_enabled(logger: logging.Logger | Any, config: DyPEConfig, width: int, height: int) -> None:
    logger.info(
        f"DyPE enabled: {width}×{height}, {config.method}, λs={config.dype_scale:.2f}, λt={config.dype_exponent:.2f}, "
        f"base {config.base_resolution_for(FLUX2)} px{', isotropic' if config.isotropic_for(FLUX2) else ''}, "
        "schedule: InvokeAI's own (resolution independent for FLUX.2)"
    )


def ensure_registered() -> None:
    """Make "flux2_denoise" resolve to our class again if something registered another one since."""
    if InvocationRegistry.get_invocation_for_type(INVOCATION_TYPE) is not Flux2DenoiseInvocation:
        InvocationRegistry.register_invocation(Flux2DenoiseInvocation)
