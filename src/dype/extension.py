"""Patching a FLUX model with DyPE: swap its position embedder, feed it σ, always restore."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from dype.config import DyPEConfig, check_image_size
from dype.embed import DyPEEmbedND, DyPEPosEmbed, _DyPEEmbedder

# The attribute a host keeps its embedder under says which layout it consumes.
_EMBEDDER_BUILDERS: dict[str, Callable[[nn.Module, DyPEConfig], _DyPEEmbedder]] = {
    "pe_embedder": DyPEEmbedND.from_embednd,  # BFL flux, InvokeAI, ComfyUI: pe [B, 1, N, 64, 2, 2]
    "pos_embed": DyPEPosEmbed.from_pos_embed,  # diffusers: (cos, sin) [N, 128]
}


def timestep_position(model: nn.Module, timestep_arg: str) -> int | None:
    """Index of `timestep_arg` among `model.forward`'s positional parameters (None if keyword-only)."""
    parameters = inspect.signature(model.forward).parameters
    if timestep_arg not in parameters:
        raise ValueError(
            f"timestep_arg {timestep_arg!r} is not an argument of {type(model).__name__}.forward "
            f"(it has: {', '.join(parameters)})"
        )
    positional = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return positional.index(timestep_arg) if timestep_arg in positional else None


class DyPEExtension:
    """DyPE for one generation: a config and the target image size.

    Args:
        config: the DyPE configuration.
        target_height, target_width: the image being generated, in pixels (positive multiples of 16).

    Use `with ext.patched(model): ...` — the model's embedder is replaced, every forward call hands its
    σ to the embedder through a pre-hook, and the original module is back when the block exits, also
    on an exception. `patch_model` / `update_step_state` / `restore_model` are the same steps by hand,
    for a sampling loop that drives them itself (InvokeAI's `denoise`).
    """

    def __init__(self, config: DyPEConfig, target_height: int, target_width: int) -> None:
        if not isinstance(config, DyPEConfig):
            raise ValueError(f"config must be a DyPEConfig, got {type(config).__name__}")
        self.config = config
        self.target_height = check_image_size("target_height", target_height)
        self.target_width = check_image_size("target_width", target_width)

    def patch_model(self, model: nn.Module, attr: str = "pe_embedder") -> tuple[_DyPEEmbedder, nn.Module]:
        """Replace `model.<attr>` with a DyPE embedder; returns `(embedder, original)`."""
        if attr not in _EMBEDDER_BUILDERS:
            raise ValueError(f"attr must be one of {', '.join(_EMBEDDER_BUILDERS)}; got {attr!r}")
        original = getattr(model, attr, None)
        if original is None:
            raise ValueError(f"{type(model).__name__} has no {attr!r} to patch")
        if isinstance(original, _DyPEEmbedder):
            raise ValueError(f"{type(model).__name__}.{attr} is already a DyPE embedder; restore it first")
        embedder = _EMBEDDER_BUILDERS[attr](original, self.config)
        embedder.set_step_state(1.0, self.target_height, self.target_width)
        setattr(model, attr, embedder)
        return embedder, original

    def update_step_state(self, embedder: _DyPEEmbedder, sigma: float | Tensor) -> None:
        """Give the embedder the σ of the coming transformer call."""
        embedder.set_step_state(sigma, self.target_height, self.target_width)

    @staticmethod
    def restore_model(model: nn.Module, original: nn.Module, attr: str = "pe_embedder") -> None:
        """Put the original embedder back."""
        setattr(model, attr, original)

    @contextmanager
    def patched(
        self, model: nn.Module, attr: str = "pe_embedder", timestep_arg: str = "timesteps"
    ) -> Iterator[_DyPEEmbedder]:
        """Patch `model` for the duration of the block; yields the embedder.

        Args:
            model: a module with a BFL `pe_embedder` (attr "pe_embedder") or a diffusers `pos_embed`.
            attr: which attribute holds the embedder (it also selects the layout).
            timestep_arg: the name of `model.forward`'s σ argument ("timesteps" in BFL/InvokeAI
                FLUX, "timestep" in diffusers, which passes timestep / 1000).
        """
        position = timestep_position(model, timestep_arg)

        def feed_sigma(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if timestep_arg in kwargs:
                sigma = kwargs[timestep_arg]
            elif position is not None and position < len(args):
                sigma = args[position]
            else:
                raise ValueError(f"{type(module).__name__} was called without {timestep_arg!r}; DyPE needs σ")
            self.update_step_state(embedder, sigma)

        embedder, original = self.patch_model(model, attr)
        try:
            handle = model.register_forward_pre_hook(feed_sigma, with_kwargs=True)
            try:
                yield embedder
            finally:
                handle.remove()
        finally:
            self.restore_model(model, original, attr)
