"""Per-invocation dispatch into InvokeAI's FLUX Denoise, without copying its code.

`FluxDenoiseInvocation._run_diffusion` (invokeai 6.14.2) looks up `get_schedule`,
`get_dype_config_from_preset`, `generate_img_ids` and `denoise` in the globals of
`invokeai.app.invocations.flux_denoise` at call time, and `KontextExtension` looks up
`generate_img_ids_with_offset` in its own module. We replace each of those globals, once, by a thin
wrapper that reads a `ContextVar`:

* no state set (InvokeAI's own class, any other caller, any other thread): the original function,
  called unchanged;
* a `DenoiseState` set by our node around `super()._run_diffusion(...)`: InvokeAI's built-in DyPE is
  switched off, the schedule takes DyPE's μ, ids are float32, the transformer (and every ControlNet)
  runs with our embedder patched in, and the default Euler scheduler makes exactly N model calls.

A `ContextVar` is per thread (a new thread starts with no value), so two generations on two threads
each see their own state; nothing global is swapped per call.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dype import DyPEConfig, DyPEExtension
from dype.families import FLUX1
from dype.schedule import schedule_mu, shifted_sigmas

DyPEShift = Literal["official", "stock"]

# Attribute set on every wrapper; a second `install()` (e.g. InvokeAI re-running the pack's
# `__init__.py` on "reload custom nodes") sees it and leaves the global alone.
DISPATCH_MARK = "__dype_dispatch__"

FLUX_DENOISE_MODULE = "invokeai.app.invocations.flux_denoise"
KONTEXT_MODULE = "invokeai.backend.flux.extensions.kontext_extension"


@dataclass(frozen=True)
class DenoiseState:
    """What one FLUX Denoise invocation asks of the dispatch wrappers.

    Args:
        config: our DyPE config, or `None` for DyPE off (then only the Euler N+1 fix applies).
        width, height: target image size in pixels (the node's `width`/`height`).
        shift: `official` pins μ = 1.15 while DyPE is active; `stock` keeps InvokeAI's schedule.
        scheduler: the node's scheduler name (only used for the log line).
        logger: where the "DyPE enabled" line goes (`context.logger`).
    """

    config: DyPEConfig | None
    width: int
    height: int
    shift: DyPEShift = "official"
    scheduler: str = "euler"
    logger: logging.Logger | Any = None

    @property
    def dype_active(self) -> bool:
        return self.config is not None


StateT = TypeVar("StateT")


class NodeState(Generic[StateT]):
    """One node's run state, per thread: our node sets it around `super()._run_diffusion()`, that node's
    wrappers read it (unset: InvokeAI's own class, any other caller, any other thread)."""

    def __init__(self, name: str) -> None:
        self._var: ContextVar[StateT | None] = ContextVar(name, default=None)

    def get(self) -> StateT | None:
        return self._var.get()

    @contextmanager
    def active(self, state: StateT) -> Iterator[StateT]:
        """Set `state` for the calls made inside the block (this thread/context only); reset in `finally`."""
        token = self._var.set(state)
        try:
            yield state
        finally:
            self._var.reset(token)


@dataclass(frozen=True)
class DyPERun:
    """What one FLUX2 Denoise / Denoise - Z-Image run asks of its wrapper: our config (None = off), the size."""

    config: DyPEConfig | None
    width: int
    height: int


_STATE: NodeState[DenoiseState] = NodeState("dype_invokeai_denoise_state")
current_state = _STATE.get
active_state = _STATE.active


# --- the Euler N+1 fix -----------------------------------------------------------------------------


class FinalZeroEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' FlowMatch Euler that does not add a second terminal zero.

    InvokeAI passes its whole schedule, final 0 included, as `sigmas`; diffusers appends its own 0, so
    N steps cost N+1 transformer calls, the last at σ = 0 (a step of size 0: no effect). Dropping the
    caller's final 0 before diffusers appends its own leaves every other sigma and timestep unchanged,
    element for element, so the output is the same with one transformer pass less.
    """

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ) -> None:
        if (
            sigmas is not None
            and num_inference_steps is None
            and timesteps is None
            and len(sigmas) > 1
            and float(sigmas[-1]) == 0.0
        ):
            sigmas = list(sigmas)[:-1]
        super().set_timesteps(
            num_inference_steps=num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps
        )


def without_extra_euler_step(scheduler: object) -> object:
    """Return a `FinalZeroEulerScheduler` with the same config for diffusers' plain FlowMatch Euler.

    Any other scheduler (Heun, LCM, subclasses, None = InvokeAI's built-in Euler) is returned as is.
    """
    if type(scheduler) is not FlowMatchEulerDiscreteScheduler:
        return scheduler
    return FinalZeroEulerScheduler.from_config(scheduler.config)


# --- the wrappers ----------------------------------------------------------------------------------


def mark_wrapper(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """Tag `wrapper` so a second install leaves it alone."""
    setattr(wrapper, DISPATCH_MARK, True)
    return wrapper


def _wrap_get_dype_config_from_preset(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_dype_config_from_preset(*args: Any, **kwargs: Any) -> Any:
        if _STATE.get() is None:
            return original(*args, **kwargs)
        # Our node runs its own DyPE (see `denoise` below); InvokeAI's must stay off.
        return None

    return mark_wrapper(get_dype_config_from_preset)


def schedule_mu_label(state: DenoiseState, shift: bool) -> str:
    """How μ is chosen for this run, as shown in the log line."""
    if state.scheduler in ("heun", "lcm"):
        return f"μ n/a ({state.scheduler} uses its own linear schedule)"
    if not shift:
        return "μ none (schnell: no shift)"
    mu = schedule_mu(FLUX1, width=state.width, height=state.height, dype_active=state.dype_active, shift=state.shift)
    return f"μ={mu:.2f} ({'pinned' if state.dype_active and state.shift == 'official' else 'stock'})"


def _log_enabled(state: DenoiseState, shift: bool) -> None:
    config = state.config
    if config is None or state.logger is None:
        return
    state.logger.info(
        f"DyPE enabled: {state.width}×{state.height}, {config.method}, λs={config.dype_scale:.2f}, "
        f"λt={config.dype_exponent:.2f}, {schedule_mu_label(state, shift)}"
    )


def _wrap_get_schedule(original: Callable[..., list[float]]) -> Callable[..., list[float]]:
    @functools.wraps(original)
    def get_schedule(
        num_steps: int,
        image_seq_len: int,
        base_shift: float = FLUX1.stock_mu.base_shift,  # InvokeAI's get_schedule defaults: FLUX.1's stock line
        max_shift: float = FLUX1.stock_mu.max_shift,
        shift: bool = True,
    ) -> list[float]:
        state = _STATE.get()
        if state is not None:
            _log_enabled(state, shift)
        if state is None or not state.dype_active or not shift or state.shift == "stock":
            return original(
                num_steps=num_steps,
                image_seq_len=image_seq_len,
                base_shift=base_shift,
                max_shift=max_shift,
                shift=shift,
            )
        # docs/math.md §6: the official recipe pins μ at the 1024² value while DyPE is active.
        return shifted_sigmas(FLUX1, num_steps, width=state.width, height=state.height, dype_active=True)

    return mark_wrapper(get_schedule)


def _wrap_ids(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap an ids builder taking a `dtype=` keyword so that DyPE runs get float32 ids.

    bf16 holds integers exactly only up to 256 (4096 px); float32 (or float16 on mps, exact to 2048
    tokens = 32768 px, which the originals use internally there) keeps every position exact.
    """

    @functools.wraps(original)
    def ids(*args: Any, **kwargs: Any) -> torch.Tensor:
        state = _STATE.get()
        if state is not None and state.dype_active:
            bound = inspect.signature(original).bind(*args, **kwargs)
            bound.arguments["dtype"] = torch.float32
            return original(*bound.args, **bound.kwargs)
        return original(*args, **kwargs)

    return mark_wrapper(ids)


def _models_to_patch(model: torch.nn.Module, controlnet_extensions: list[Any] | None) -> list[torch.nn.Module]:
    """The transformer and each distinct ControlNet model with its own `pe_embedder` (XLabs, InstantX).

    The ControlNets run before the transformer in every step, so each gets its own embedder and its own
    pre-hook reading the `timesteps` it is called with (both forwards name the sigma `timesteps`).
    """
    models = [model]
    for extension in controlnet_extensions or []:
        controlnet = getattr(extension, "_model", None)
        is_new = all(controlnet is not seen for seen in models)
        if isinstance(controlnet, torch.nn.Module) and hasattr(controlnet, "pe_embedder") and is_new:
            models.append(controlnet)
    return models


def _wrap_denoise(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def denoise(*args: Any, **kwargs: Any) -> torch.Tensor:
        state = _STATE.get()
        if state is None:
            return original(*args, **kwargs)
        arguments = signature.bind(*args, **kwargs).arguments
        arguments["scheduler"] = without_extra_euler_step(arguments.get("scheduler"))
        if state.config is None:
            return original(**arguments)

        # InvokeAI's built-in DyPE is disabled by `get_dype_config_from_preset`; make sure of it.
        arguments["dype_extension"] = None
        for name in ("img_ids", "img_cond_seq_ids"):
            ids = arguments.get(name)
            if isinstance(ids, torch.Tensor) and ids.dtype != torch.float32:
                arguments[name] = ids.float()
        extension = DyPEExtension(state.config, width=state.width, height=state.height)
        with ExitStack() as stack:
            for patched_model in _models_to_patch(arguments["model"], arguments.get("controlnet_extensions")):
                stack.enter_context(extension.patched(patched_model))
            return original(**arguments)

    return mark_wrapper(denoise)


_WRAPPERS: dict[str, dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = {  # FLUX.1 Denoise
    FLUX_DENOISE_MODULE: {
        "get_dype_config_from_preset": _wrap_get_dype_config_from_preset,
        "get_schedule": _wrap_get_schedule,
        "generate_img_ids": _wrap_ids,
        "denoise": _wrap_denoise,
    },
    KONTEXT_MODULE: {"generate_img_ids_with_offset": _wrap_ids},
}


WrapperTable = dict[str, dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]]


def wrappers_installed(table: WrapperTable) -> bool:
    """Whether every wrapper of `table` (module → global name → wrap) is in place."""
    import importlib

    for module_name, wrappers in table.items():
        module = importlib.import_module(module_name)
        if not all(getattr(getattr(module, name), DISPATCH_MARK, False) for name in wrappers):
            return False
    return True


def install_wrappers(table: WrapperTable) -> None:
    """Put the wrappers of `table` into InvokeAI's module globals. Idempotent: a wrapped global stays as is.

    Process-wide but inert: with no state set each wrapper calls the original unchanged.
    """
    import importlib

    for module_name, wrappers in table.items():
        module = importlib.import_module(module_name)
        for name, wrap in wrappers.items():
            current = getattr(module, name)
            if not getattr(current, DISPATCH_MARK, False):
                setattr(module, name, wrap(current))


# Every node module's table (FLUX.1 here; FLUX.2 and Z-Image add theirs on import): what `install` puts in
# place and what a fresh import of the package takes over (`dype.invokeai.registration`).
WRAPPER_TABLES: list[WrapperTable] = [_WRAPPERS]


def add_wrapper_table(table: WrapperTable) -> None:
    """Make `install` / `is_installed` cover `table` too (once)."""
    if all(existing is not table for existing in WRAPPER_TABLES):
        WRAPPER_TABLES.append(table)


def is_installed() -> bool:
    """Whether every dispatch wrapper of every node is in place."""
    return all(wrappers_installed(table) for table in WRAPPER_TABLES)


def install() -> None:
    """Install every node's dispatch wrappers (idempotent)."""
    for table in WRAPPER_TABLES:
        install_wrappers(table)
