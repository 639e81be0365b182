"""Shared pieces of the FLUX.2 and Z-Image node tests: tiny random-weight models (real diffusers classes,
real RoPE dimensions), a mock InvocationContext backed by dicts, and call recording.

Real parts: InvokeAI 6.14.2's FLUX2 Denoise and Denoise - Z-Image invocations and their sampling code,
diffusers' `Flux2Transformer2DModel`, `ZImageTransformer2DModel`, `AutoencoderKLFlux2`, `AutoencoderKL`,
InvokeAI's `ZImageControlAdapter`, all on CPU. Mocked: only InvokeAI's service context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import torch
from invokeai.backend.model_manager.taxonomy import BaseModelType, ModelFormat, ModelType
from invokeai.backend.stable_diffusion.diffusion.conditioning_data import ConditioningFieldData

from .conftest import FakeLoadedModel

TEXT_WIDTH = 32  # conditioning width of the tiny models (joint_attention_dim / cap_feat_dim)


def tiny_flux2_transformer(seed: int = 0) -> torch.nn.Module:
    """FAMILIES.md §7: one head of 128, real FLUX.2 RoPE (θ 2000, axes 32×4), one block of each kind."""
    from diffusers.models.transformers.transformer_flux2 import Flux2Transformer2DModel

    torch.manual_seed(seed)
    model = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=128,
        num_attention_heads=1, joint_attention_dim=TEXT_WIDTH, timestep_guidance_channels=32, mlp_ratio=1.0,
        axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False,
    )  # fmt: skip
    return model.to(torch.bfloat16).eval()


def tiny_flux2_vae(seed: int = 0) -> torch.nn.Module:
    """A 4-level `AutoencoderKLFlux2` (factor 8, 32 latent channels, its BatchNorm): encodes references."""
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    return AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4).eval()


def tiny_z_image_transformer(seed: int = 0) -> torch.nn.Module:
    """FAMILIES.md §7: dim 128, one head, real Z-Image RoPE (θ 256, axes 32/48/48), InvokeAI's axes_lens."""
    from diffusers.models.transformers.transformer_z_image import ZImageTransformer2DModel

    torch.manual_seed(seed)
    model = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=128, n_layers=1, n_refiner_layers=1,
        n_heads=1, n_kv_heads=1, cap_feat_dim=TEXT_WIDTH, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[32, 48, 48], axes_lens=[1024, 512, 512],
    )  # fmt: skip
    return model.to(torch.bfloat16).eval()


@dataclass
class FamilyServices:
    """Backing stores for the mock context; tests put models, tensors, images and conditionings in by name."""

    base: BaseModelType
    models: dict[str, Any]
    make_conditioning: Callable[[torch.Tensor], Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    conditionings: dict[str, torch.Tensor] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)
    saved: list[torch.Tensor] = field(default_factory=list)

    def context(self) -> MagicMock:
        ctx = MagicMock()
        ctx.models.get_config.side_effect = lambda ident, *a, **k: SimpleNamespace(
            base=self.base, type=ModelType.Main, format=ModelFormat.Diffusers, variant=None
        )
        ctx.models.load.side_effect = lambda ident, *a, **k: FakeLoadedModel(self.models[ident.key])
        ctx.tensors.load.side_effect = lambda name: self.tensors[name]

        def save(tensor: torch.Tensor) -> str:
            self.saved.append(tensor)
            return f"saved_{len(self.saved) - 1}"

        ctx.tensors.save.side_effect = save
        ctx.conditioning.load.side_effect = lambda name, *a, **k: ConditioningFieldData(
            conditionings=[self.make_conditioning(self.conditionings[name].clone())]
        )
        ctx.images.get_pil.side_effect = lambda name, mode=None: (
            self.images[name] if mode is None else self.images[name].convert(mode)
        )
        return ctx


def text_embeddings(seed: int, tokens: int = 8) -> torch.Tensor:
    return torch.randn(1, tokens, TEXT_WIDTH, generator=torch.Generator().manual_seed(seed))


def run_node(
    invocation: Any, services: FamilyServices, ctx: MagicMock | None = None
) -> tuple[torch.Tensor, MagicMock]:
    """`invocation.invoke(context)` → (the latents it saved, the context, for its logger)."""
    ctx = services.context() if ctx is None else ctx
    torch.manual_seed(0)  # LCM draws fresh noise from the global generator
    invocation.invoke(ctx)
    return services.saved[-1], ctx


@dataclass
class EmbedderCall:
    """One embedder call: the id set, what it returned, the embedder's σ then (None for a stock one), its class."""

    ids: torch.Tensor
    output: Any
    sigma: float | None
    embedder: str


@contextmanager
def record_embedder_calls(cls: type, method: str) -> Iterator[list[EmbedderCall]]:
    """Record every call of `cls.<method>` (an embedder's forward / __call__ / embed) on any instance."""
    calls: list[EmbedderCall] = []
    original = getattr(cls, method)

    def recording(self: Any, ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        output = original(self, ids, *args, **kwargs)
        calls.append(EmbedderCall(ids.clone(), output, getattr(self, "sigma", None), type(self).__name__))
        return output

    setattr(cls, method, recording)
    try:
        yield calls
    finally:
        setattr(cls, method, original)
