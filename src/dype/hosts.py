"""Host adapters: where each model class keeps its RoPE embedder and its time input, as data.

A host is one model class (or a few sharing a layout): InvokeAI's BFL `Flux` and its ControlNets,
diffusers' `FluxTransformer2DModel`, `Flux2Transformer2DModel`, `ChromaTransformer2DModel` and
`ZImageTransformer2DModel`. It names the family, the attribute holding the embedder, the layout that
embedder produces, the submodule and argument that carry the step's time (a forward pre-hook reads it
there), and an optional guard that refuses calls DyPE cannot make correct. Matching is by class name
(anywhere in the MRO), so this module imports neither diffusers nor InvokeAI.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from dype.config import DyPEConfig
from dype.embed import DyPEEmbedder, DyPEEmbedND, DyPEPosEmbed, DyPERopeEmbedder, check_sigma
from dype.families import CHROMA, FLUX1, FLUX2, Z_IMAGE, Layout, RopeFamily
from dype.validation import check_number


def class_names(obj: object) -> set[str]:
    """The names of every class in `obj`'s MRO (hosts match by name, so neither diffusers nor InvokeAI is imported)."""
    return {cls.__name__ for cls in type(obj).__mro__}


CallGuard = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], bool], None]
"""guard(model, args, kwargs, sigma_dependent) raises ValueError for a call DyPE cannot serve."""


def refuse_kv_cache(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], sigma_dependent: bool) -> None:
    """FLUX.2 Klein's KV cache stores reference keys after RoPE on the first step: with σ-dependent
    frequencies those keys keep step-1 rotations while queries move on, so relative positions break."""
    if sigma_dependent and kwargs.get("kv_cache_mode") is not None:
        raise ValueError(
            f"{type(model).__name__} was called with kv_cache_mode={kwargs['kv_cache_mode']!r}: cached reference "
            "keys keep the first step's RoPE while dynamic DyPE changes it every step. Use Flux2KleinPipeline "
            "(no KV cache), or a static DyPE method (enable_dype=False, or method 'base')"
        )


def refuse_omni(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], sigma_dependent: bool) -> None:
    """Z-Image's omni mode embeds two times per forward (t, then 1.0): one σ per call cannot describe it
    (static frequencies do not depend on σ and are served)."""
    x = kwargs["x"] if "x" in kwargs else (args[0] if args else None)
    if sigma_dependent and isinstance(x, (list, tuple)) and x and isinstance(x[0], (list, tuple)):
        raise ValueError(
            f"{type(model).__name__} was called in omni mode (nested x, as ZImageOmniPipeline does): it embeds two "
            "time steps per call, so dynamic DyPE cannot follow σ. Use ZImagePipeline, a static method, or DyPE off"
        )


@dataclass(frozen=True)
class HostAdapter:
    """Where one model class keeps what DyPE patches.

    Args:
        name: registry key.
        family: the RoPE family of the class's embedder.
        model_classes: class names that use this host (matched anywhere in the model's MRO).
        embedder_attr: the attribute holding the embedder (replaced while patched).
        layout: what that embedder returns (bfl, diffusers, complex).
        time_module: dotted path of the submodule whose forward receives the time input ("" = the model).
        time_arg: that forward's argument name for it (read by keyword or position).
        guard: refuses calls DyPE cannot make correct (KV cache, omni mode), or None.
    """

    name: str
    family: RopeFamily
    model_classes: tuple[str, ...]
    embedder_attr: str
    layout: Layout
    time_module: str = ""
    time_arg: str = "timestep"
    guard: CallGuard | None = None

    def matches(self, model: object) -> bool:
        return bool(class_names(model) & set(self.model_classes))

    def build_embedder(
        self, original: object, config: DyPEConfig, *, width: int, height: int
    ) -> DyPEEmbedder | DyPERopeEmbedder:
        """The DyPE replacement for `original`, with its constructor attributes and this host's layout."""
        kwargs = dict(family=self.family, width=width, height=height)
        if self.layout == "bfl":
            return DyPEEmbedND.from_embednd(original, config, **kwargs)
        if self.layout == "diffusers":
            return DyPEPosEmbed.from_pos_embed(original, config, **kwargs)
        return DyPERopeEmbedder(original, config, **kwargs)

    def sigma_from_time_input(self, value: object, model: nn.Module) -> float:
        """σ of a call from what `time_module` received (`RopeFamily.time_input`)."""
        if self.family.time_input == "sigma":
            return check_sigma(value)
        # Z-Image: x = (1 − σ)·t_scale, one value per batch, recovered in float64.
        t_scale = check_number(f"{type(model).__name__}.t_scale", getattr(model, "t_scale", None))
        scaled = value.detach().double() / t_scale if isinstance(value, Tensor) else check_number("t", value) / t_scale
        try:
            t = check_sigma(scaled)
        except ValueError as error:
            raise ValueError(
                f"the time input of {type(model).__name__} must be t·t_scale with t in [0, 1]: {error}"
            ) from None
        return min(max(1.0 - t, 0.0), 1.0)


HOSTS: dict[str, HostAdapter] = {
    host.name: host
    for host in (
        HostAdapter(
            "invokeai_flux",
            FLUX1,
            ("Flux", "XLabsControlNetFlux", "InstantXControlNetFlux"),
            "pe_embedder",
            "bfl",
            time_arg="timesteps",
        ),
        HostAdapter(
            "diffusers_flux", FLUX1, ("FluxTransformer2DModel", "FluxControlNetModel"), "pos_embed", "diffusers"
        ),
        HostAdapter(
            "diffusers_flux2", FLUX2, ("Flux2Transformer2DModel",), "pos_embed", "diffusers", guard=refuse_kv_cache
        ),
        HostAdapter("diffusers_chroma", CHROMA, ("ChromaTransformer2DModel",), "pos_embed", "diffusers"),
        HostAdapter(
            "diffusers_z_image",
            Z_IMAGE,
            ("ZImageTransformer2DModel", "ZImageControlNetModel"),
            "rope_embedder",
            "complex",
            time_module="t_embedder",
            time_arg="t",
            guard=refuse_omni,
        ),
    )
}


def find_host(model: object) -> HostAdapter:
    """The host adapter for `model`'s class; ValueError naming the supported classes otherwise."""
    for host in HOSTS.values():
        if host.matches(model):
            return host
    supported = ", ".join(name for host in HOSTS.values() for name in host.model_classes)
    raise ValueError(f"no DyPE host adapter for {type(model).__name__}; supported model classes: {supported}")


def get_host(host: str | HostAdapter | None, model: object) -> HostAdapter:
    """`host` itself, the registered host of that name, or (None) the one matching `model`."""
    if host is None:
        return find_host(model)
    if isinstance(host, HostAdapter):
        return host
    if host not in HOSTS:
        raise ValueError(f"host must be one of {', '.join(HOSTS)}; got {host!r}")
    return HOSTS[host]


def argument_position(function: Callable[..., Any], name: str, owner: str) -> int | None:
    """Index of `name` among `function`'s positional parameters (None if keyword-only)."""
    parameters = inspect.signature(function).parameters
    if name not in parameters:
        raise ValueError(f"{owner}.forward has no argument {name!r} (it has: {', '.join(parameters)})")
    positional = [
        p for p, spec in parameters.items() if spec.kind in (spec.POSITIONAL_ONLY, spec.POSITIONAL_OR_KEYWORD)
    ]
    return positional.index(name) if name in positional else None
