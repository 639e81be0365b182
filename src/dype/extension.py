"""Patching a model with DyPE: swap its position embedder, feed it σ, always restore.

`DyPEExtension(config, width=, height=).patched(model)` returns a `ModelPatch`; entering it (a `with`
block, or `.apply()`) replaces the embedder the model's host adapter names (`dype.hosts`) and registers a
forward pre-hook on the submodule carrying the time input; leaving the block (or `.remove()`) puts the
original object back and removes the hooks, also after an exception. An applied patch is held by a
registry keyed by the model, so it stays applied until it is removed, whoever keeps the `ModelPatch`
object — dropping the object never undoes it silently (`active_patch(model)` finds it again).
"""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import Any

from torch import nn

from dype.config import DyPEConfig
from dype.embed import DyPEEmbedder, DyPERopeEmbedder
from dype.families import PIXEL_MULTIPLE
from dype.hosts import HostAdapter, argument_position, get_host
from dype.validation import check_multiple

Embedder = DyPEEmbedder | DyPERopeEmbedder

# model → its applied patch. Weak on the model (a deleted model takes its patch along), strong on the patch.
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, ModelPatch] = weakref.WeakKeyDictionary()


def active_patch(model: nn.Module) -> ModelPatch | None:
    """The DyPE patch currently applied to `model`, if any."""
    return _ACTIVE.get(model)


class ModelPatch:
    """DyPE applied to one model until `remove()`: the embedder swap and the σ (and guard) hooks.

    Attributes:
        model, host: the patched model and its host adapter.
        embedder: the DyPE embedder in place while applied (None before and after).
        original: the model's own embedder, put back by `remove()`.
    """

    def __init__(self, extension: DyPEExtension, model: nn.Module, host: HostAdapter) -> None:
        self.extension = extension
        self.model = model
        self.host = host
        self.embedder: Embedder | None = None
        self.original: Any = None
        self._handles: list[Any] = []

    @property
    def applied(self) -> bool:
        return self.embedder is not None

    def apply(self) -> Embedder:
        """Swap the embedder in and register the hooks; returns the DyPE embedder."""
        model, host, extension = self.model, self.host, self.extension
        if self.applied:
            raise ValueError("this DyPE patch is already applied")
        if active_patch(model) is not None:
            raise ValueError(f"{type(model).__name__} already has an active DyPE patch; remove it first")
        original = getattr(model, host.embedder_attr, None)
        if original is None:
            raise ValueError(f"{type(model).__name__} has no {host.embedder_attr!r} to patch")
        if isinstance(original, DyPEEmbedder | DyPERopeEmbedder):
            raise ValueError(
                f"{type(model).__name__}.{host.embedder_attr} is already a DyPE embedder; restore it first"
            )
        time_module = model.get_submodule(host.time_module) if host.time_module else model
        position = argument_position(time_module.forward, host.time_arg, type(time_module).__name__)
        embedder = host.build_embedder(original, extension.config, width=extension.width, height=extension.height)

        def feed_sigma(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if host.time_arg in kwargs:
                value = kwargs[host.time_arg]
            elif position is not None and position < len(args):
                value = args[position]
            else:
                raise ValueError(f"{type(module).__name__} was called without {host.time_arg!r}; DyPE needs σ")
            embedder.set_step_state(host.sigma_from_time_input(value, model))

        try:
            setattr(model, host.embedder_attr, embedder)
            self.embedder, self.original = embedder, original
            _ACTIVE[model] = self
            self._handles.append(time_module.register_forward_pre_hook(feed_sigma, with_kwargs=True))
            if host.guard is not None:
                guard, dependent = host.guard, extension.config.sigma_dependent

                def check_call(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                    guard(module, args, kwargs, dependent)

                self._handles.append(model.register_forward_pre_hook(check_call, with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return embedder

    def remove(self) -> None:
        """Put the original embedder back and drop the hooks; safe to call again."""
        try:
            for handle in self._handles:
                handle.remove()
        finally:
            self._handles = []
            if self.applied:
                setattr(self.model, self.host.embedder_attr, self.original)
                if _ACTIVE.get(self.model) is self:
                    del _ACTIVE[self.model]
            self.embedder = self.original = None

    def __enter__(self) -> Embedder:
        return self.apply()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "applied" if self.applied else "not applied"
        return f"ModelPatch({type(self.model).__name__}, host={self.host.name}, {state})"


class DyPEExtension:
    """DyPE for one generation: a config and the target image size.

    Args:
        config: the DyPE configuration.
        width, height: the image being generated, in pixels (positive multiples of 16).

    `with ext.patched(model): ...` — the embedder is replaced, every forward call hands its σ to it, and
    the original object is back when the block exits, also on an exception.
    """

    def __init__(self, config: DyPEConfig, *, width: int, height: int) -> None:
        if not isinstance(config, DyPEConfig):
            raise ValueError(f"config must be a DyPEConfig, got {type(config).__name__}")
        self.config = config
        self.width = check_multiple("width", width, PIXEL_MULTIPLE)
        self.height = check_multiple("height", height, PIXEL_MULTIPLE)

    def patched(self, model: nn.Module, host: str | HostAdapter | None = None) -> ModelPatch:
        """A patch of `model` for this generation (applied on `with` or `.apply()`).

        Args:
            model: a supported model (`dype.hosts.HOSTS`): InvokeAI's `Flux` and FLUX ControlNets, diffusers'
                FLUX, FLUX.2, Chroma and Z-Image transformers and ControlNets.
            host: a host adapter or its name; found from the model's class when None.
        """
        return ModelPatch(self, model, get_host(host, model))
