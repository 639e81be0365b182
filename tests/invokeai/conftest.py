"""Fixtures for the InvokeAI node tests: tiny random-weight FLUX models and a mock InvocationContext.

Real parts: invokeai 6.14.2's `Flux`, ControlNet, VAE, FLUX Denoise invocation and sampling loop, all on
CPU. Mocked: only the service context (model manager, tensor/conditioning/image stores, logger), as
upstream's own tests do. Models are module-scoped: building them is cheap, running them is what costs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest
import torch
from invokeai.app.invocations.fields import FluxConditioningField
from invokeai.app.invocations.flux_denoise import FluxDenoiseInvocation as CoreFluxDenoise
from invokeai.app.invocations.model import ModelIdentifierField, TransformerField
from invokeai.backend.flux.model import Flux
from invokeai.backend.model_manager.taxonomy import (
    BaseModelType,
    FluxVariantType,
    ModelFormat,
    ModelType,
)
from invokeai.backend.stable_diffusion.diffusion.conditioning_data import (
    ConditioningFieldData,
    FLUXConditioningInfo,
)

# Importing the pack registers our "flux_denoise" (process-wide, as InvokeAI would on startup).
import dype.invokeai  # noqa: F401
from dype.invokeai.flux_denoise import FluxDenoiseInvocation as DyPEFluxDenoise
from tests.core.helpers import tiny_flux_params

TXT_LEN = 8  # T5 tokens in the fake conditioning


tiny_params = tiny_flux_params  # re-exported for the test modules


def make_flux(guidance_embed: bool = True, seed: int = 0, in_channels: int = 64) -> Flux:
    torch.manual_seed(seed)
    params = tiny_params(guidance_embed)
    params.in_channels = in_channels
    return Flux(params).to(torch.bfloat16).eval()


@pytest.fixture(scope="session")
def dev_model() -> Flux:
    return make_flux(guidance_embed=True)


@pytest.fixture(scope="session")
def schnell_model() -> Flux:
    return make_flux(guidance_embed=False, seed=1)


@pytest.fixture(scope="session")
def core_class() -> type:
    return CoreFluxDenoise


@pytest.fixture(scope="session")
def dype_class() -> type:
    return DyPEFluxDenoise


class FakeLoadedModel:
    """What `context.models.load(...)` returns: `.model`, a context manager, `model_on_device()`."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> Any:
        return self.model

    def __exit__(self, *exc: object) -> bool:
        return False

    @contextmanager
    def model_on_device(self, working_mem_bytes: int | None = None) -> Iterator[tuple[None, Any]]:
        yield (None, self.model)

    def model_in_ram(self) -> Any:
        return self.model


@dataclass
class FakeServices:
    """Backing stores for the mock context; tests put tensors, images and models in by name."""

    models: dict[str, Any]
    variant: FluxVariantType = FluxVariantType.Dev
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    conditionings: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)
    saved: list[torch.Tensor] = field(default_factory=list)

    def context(self) -> MagicMock:
        ctx = MagicMock()
        ctx.models.get_config.return_value = SimpleNamespace(
            base=BaseModelType.Flux, type=ModelType.Main, variant=self.variant, format=ModelFormat.Checkpoint
        )
        ctx.models.load.side_effect = lambda ident, *a, **k: FakeLoadedModel(self.models[ident.key])
        ctx.tensors.load.side_effect = lambda name: self.tensors[name]

        def save(tensor: torch.Tensor) -> str:
            self.saved.append(tensor)
            return f"saved_{len(self.saved) - 1}"

        ctx.tensors.save.side_effect = save

        def load_conditioning(name: str, *a: Any, **k: Any) -> ConditioningFieldData:
            clip, t5 = self.conditionings[name]
            # FLUXConditioningInfo.to() casts in place: hand out fresh objects.
            return ConditioningFieldData(conditionings=[FLUXConditioningInfo(clip.clone(), t5.clone())])

        ctx.conditioning.load.side_effect = load_conditioning
        ctx.images.get_pil.side_effect = lambda name, mode=None: (
            self.images[name] if mode is None else self.images[name].convert(mode)
        )
        return ctx


def text_conditioning(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 32, generator=generator), torch.randn(1, TXT_LEN, 64, generator=generator)


def model_id(key: str, model_type: ModelType = ModelType.Main) -> ModelIdentifierField:
    return ModelIdentifierField(key=key, hash=f"blake3:{key}", name=key, base=BaseModelType.Flux, type=model_type)


def node(cls: type, **overrides: Any) -> Any:
    """A FLUX Denoise node of class `cls` with small defaults (1024², 2 steps, dev)."""
    fields: dict[str, Any] = dict(
        id="flux_denoise_test",
        transformer=TransformerField(transformer=model_id("flux"), loras=[]),
        positive_text_conditioning=FluxConditioningField(conditioning_name="pos"),
        width=1024,
        height=1024,
        num_steps=2,
        guidance=4.0,
        seed=0,
    )
    fields.update(overrides)
    return cls(**fields)


@pytest.fixture
def services(dev_model: Flux) -> FakeServices:
    svc = FakeServices(models={"flux": dev_model})
    svc.conditionings["pos"] = text_conditioning(1)
    svc.conditionings["neg"] = text_conditioning(2)
    return svc


def run(invocation: Any, svc: FakeServices, ctx: MagicMock | None = None) -> tuple[torch.Tensor, MagicMock]:
    """`invocation.invoke(context)` → (the latents it saved, the context, for its logger)."""
    ctx = svc.context() if ctx is None else ctx
    torch.manual_seed(0)  # LCM's step draws fresh noise from the global generator
    before = len(svc.saved)
    output = invocation.invoke(ctx)
    assert len(svc.saved) == before + 1
    latents = svc.saved[-1]
    assert output.latents.latents_name == f"saved_{len(svc.saved) - 1}"
    return latents, ctx


@dataclass
class CallRecord:
    """One transformer (or ControlNet) call: the σ it received, and the σ/type of its embedder then."""

    model_sigma: float
    embedder_sigma: float | None
    embedder: str
    embedder_module: str
    ids_dtype: torch.dtype


@contextmanager
def record_calls(model: torch.nn.Module) -> Iterator[list[CallRecord]]:
    """Record every forward call of `model` (a post-hook, so it sees the embedder's state for that call)."""
    calls: list[CallRecord] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        timesteps = kwargs["timesteps"]
        embedder = module.pe_embedder
        calls.append(
            CallRecord(
                model_sigma=float(timesteps.flatten()[0].float()),
                embedder_sigma=getattr(embedder, "sigma", None),
                embedder=type(embedder).__name__,
                embedder_module=type(embedder).__module__,
                ids_dtype=kwargs["img_ids"].dtype,
            )
        )

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def assert_unpatched(model: torch.nn.Module) -> None:
    """The model carries its own EmbedND again and no hooks of ours."""
    assert type(model.pe_embedder).__name__ == "EmbedND"
    assert len(model._forward_pre_hooks) == 0


@pytest.fixture(scope="session")
def clone_model() -> Callable[[torch.nn.Module], torch.nn.Module]:
    return copy.deepcopy
