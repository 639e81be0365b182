"""InvokeAI 6.14.2's built-in DyPE vs dype's, measured through the same FLUX Denoise node.

Both nodes run `invoke()` on identical inputs (same noise seed, conditioning, size, 30 steps, preset
`4k`, default `euler` scheduler) with a mock InvocationContext and a tiny random-weight FLUX whose head
has FLUX's real axes (16/56/56). The transformer is a probe: each call computes `pe` with whatever
embedder is installed on the model at that moment (InvokeAI's or ours), from the ids the sampling loop
passes, records what it needs, and returns a zero velocity. The transformer blocks are skipped because
none of the measured quantities depend on them, and 4096² through real blocks would take hours on CPU.

Measured per size: transformer calls, the σ each call receives (how many steps are below σ = 0.5, μ),
the ids dtype and whether every row/column position is exact, and ω/ω_base (angle of position 1,
recovered from `pe` with atan2) plus the cos/sin amplitude per axis at the first and last call.

Run: .venv/bin/python bench/invokeai_vs_upstream.py   (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from unittest.mock import MagicMock

import torch

from dype._torchvision_compat import import_torchvision

SIZES = [(2048, 2048), (3840, 2160), (4096, 4096)]  # width × height
STEPS = 30
PRESET = "4k"
AXES = [16, 56, 56]
THETA = 10000
SLOTS = {"index": [7], "rows": [0, 14, 27], "cols": [0, 14, 27]}  # j per axis reported in ω/ω_base


@dataclass
class Call:
    sigma: float
    ids_dtype: torch.dtype
    exact: bool
    ratios: dict[str, list[float]]  # axis → ω/ω_base at SLOTS[axis]
    amplitude: dict[str, float]  # axis → cos/sin amplitude (mscale) at its first reported slot


@dataclass
class Run:
    calls: list[Call] = field(default_factory=list)


def probe_flux_class():
    from invokeai.backend.flux.model import Flux

    class ProbeFlux(Flux):
        """A FLUX whose forward only computes `pe` and measures it (see the module docstring)."""

        run: Run

        def forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None, **kwargs):
            height, width = self.expected_grid
            rows, cols = img_ids[0, :, 1], img_ids[0, :, 2]
            expected_rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
            expected_cols = torch.arange(width, dtype=torch.float64).repeat(height)
            exact = torch.equal(rows.double(), expected_rows) and torch.equal(cols.double(), expected_cols)
            self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))  # the real per-call embedding work
            unit = torch.ones(1, 1, 3, dtype=img_ids.dtype)  # position 1 on every axis
            pe = self.pe_embedder(unit)[0, 0, 0].double()  # [64, 2, 2]
            ratios, amplitude, start = {}, {}, 0
            for axis, dim in zip(SLOTS, AXES, strict=True):
                block = pe[start // 2 : (start + dim) // 2]
                omega = torch.atan2(block[:, 1, 0], block[:, 0, 0])
                base = THETA ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
                ratios[axis] = [float(omega[j] / base[j]) for j in SLOTS[axis]]
                amplitude[axis] = float(torch.hypot(block[SLOTS[axis][0], 0, 0], block[SLOTS[axis][0], 1, 0]))
                start += dim
            sigma = float(timesteps.flatten()[0].float())
            self.run.calls.append(Call(sigma, img_ids.dtype, exact, ratios, amplitude))
            return torch.zeros_like(img)

    return ProbeFlux


def make_context(model) -> MagicMock:
    from invokeai.backend.model_manager.taxonomy import BaseModelType, FluxVariantType, ModelFormat, ModelType
    from invokeai.backend.stable_diffusion.diffusion.conditioning_data import (
        ConditioningFieldData,
        FLUXConditioningInfo,
    )

    @contextmanager
    def on_device(*args, **kwargs):
        yield (None, model)

    generator = torch.Generator().manual_seed(1)
    clip, t5 = torch.randn(1, 32, generator=generator), torch.randn(1, 8, 64, generator=generator)
    ctx = MagicMock()
    ctx.models.get_config.return_value = SimpleNamespace(
        base=BaseModelType.Flux, type=ModelType.Main, variant=FluxVariantType.Dev, format=ModelFormat.Checkpoint
    )
    ctx.models.load.return_value = SimpleNamespace(model=model, model_on_device=on_device)
    ctx.conditioning.load.side_effect = lambda name: ConditioningFieldData(
        conditionings=[FLUXConditioningInfo(clip.clone(), t5.clone())]
    )
    ctx.tensors.save.return_value = "latents"
    return ctx


def measure(node_class, width: int, height: int) -> Run:
    from invokeai.app.invocations.fields import FluxConditioningField
    from invokeai.app.invocations.model import ModelIdentifierField, TransformerField
    from invokeai.backend.flux.model import FluxParams
    from invokeai.backend.model_manager.taxonomy import BaseModelType, ModelType

    params = FluxParams(
        in_channels=64,
        vec_in_dim=32,
        context_in_dim=64,
        hidden_size=256,
        mlp_ratio=2.0,
        num_heads=2,
        depth=1,
        depth_single_blocks=1,
        axes_dim=AXES,
        theta=THETA,
        qkv_bias=True,
        guidance_embed=True,
        out_channels=64,
    )
    torch.manual_seed(0)
    model = probe_flux_class()(params).to(torch.bfloat16).eval()
    model.run, model.expected_grid = Run(), (height // 16, width // 16)
    invocation = node_class(
        id="bench",
        transformer=TransformerField(
            transformer=ModelIdentifierField(
                key="f", hash="h", name="f", base=BaseModelType.Flux, type=ModelType.Main
            ),
            loras=[],
        ),
        positive_text_conditioning=FluxConditioningField(conditioning_name="pos"),
        width=width,
        height=height,
        num_steps=STEPS,
        seed=0,
        dype_preset=PRESET,
    )
    invocation.invoke(make_context(model))
    return model.run


def _mu(name: str, width: int, height: int) -> float:
    """The μ each node's schedule uses (the σ the model receives, in bf16, is too coarse to invert at 4K)."""
    from dype.schedule import schedule_mu

    return schedule_mu("flux1", width=width, height=height, dype_active=name == "dype")


def _fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def report(results: dict[tuple[int, int], dict[str, Run]]) -> str:
    lines = [
        "| size | node | calls | μ | steps with σ < 0.5 | first σ | ids | positions exact | "
        "ω/ω_base first call: index j=7; rows j=0/14/27; cols j=0/14/27 | same, last call | "
        "amplitude rows/cols (first→last) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (width, height), runs in results.items():
        for name, run in runs.items():
            sigmas = [c.sigma for c in run.calls]
            exact = "yes" if all(c.exact for c in run.calls) else "no"
            first, last = run.calls[0], run.calls[-1]
            lines.append(
                f"| {width}×{height} | {name} | {len(sigmas)} | {_mu(name, width, height):.2f} | "
                f"{sum(s < 0.5 for s in sigmas)} of {STEPS} | {_fmt(sigmas[:3])} | "
                f"{str(first.ids_dtype).removeprefix('torch.')} | {exact} | "
                f"{_fmt(first.ratios['index'])}; {_fmt(first.ratios['rows'])}; {_fmt(first.ratios['cols'])} | "
                f"{_fmt(last.ratios['index'])}; {_fmt(last.ratios['rows'])}; {_fmt(last.ratios['cols'])} | "
                f"{first.amplitude['rows']:.3f}/{first.amplitude['cols']:.3f} → "
                f"{last.amplitude['rows']:.3f}/{last.amplitude['cols']:.3f} |"
            )
    return "\n".join(lines)


def main() -> int:
    import_torchvision()
    from invokeai.app.invocations.flux_denoise import FluxDenoiseInvocation as InvokeAINode

    from dype.invokeai.flux_denoise import FluxDenoiseInvocation as DyPENode

    results: dict[tuple[int, int], dict[str, Run]] = {}
    for width, height in SIZES:
        results[(width, height)] = {
            "InvokeAI built-in": measure(InvokeAINode, width, height),
            "dype": measure(DyPENode, width, height),
        }
        print(f"measured {width}×{height}", file=sys.stderr)
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
