"""`FLUX Denoise + Metadata` (`flux_denoise_meta`): InvokeAI's node with dype's DyPE, metadata with our fields.

Real parts: InvokeAI 6.14.2's `FluxDenoiseLatentsMetaInvocation` (core) and ours, its `invoke()` and
sampling loop on the tiny FLUX of `conftest.py`; mocked: the service context only.
"""

from __future__ import annotations

import torch
from invokeai.app.invocations.baseinvocation import InvocationRegistry
from invokeai.app.invocations.fields import MetadataField
from invokeai.app.invocations.metadata_linked import FluxDenoiseLatentsMetaInvocation as CoreMeta

from dype.invokeai.flux_denoise_meta import DYPE_METADATA_FIELDS, FluxDenoiseLatentsMetaInvocation

from .conftest import assert_unpatched, node, record_calls

SIZE = 256


def run_meta(invocation, svc, ctx=None):
    """`invoke()` → (latents, metadata dict, transformer calls)."""
    ctx = svc.context() if ctx is None else ctx
    torch.manual_seed(0)
    with record_calls(svc.models["flux"]) as calls:
        output = invocation.invoke(ctx)
    return svc.saved[-1], output.metadata.root, calls


def test_registered_with_every_core_field():
    assert InvocationRegistry.get_invocation_for_type("flux_denoise_meta") is FluxDenoiseLatentsMetaInvocation
    assert issubclass(FluxDenoiseLatentsMetaInvocation, CoreMeta)
    assert FluxDenoiseLatentsMetaInvocation.UIConfig.title == "FLUX Denoise + Metadata" == CoreMeta.UIConfig.title
    assert (CoreMeta.UIConfig.version, FluxDenoiseLatentsMetaInvocation.UIConfig.version) == ("1.0.1", "1.1.0")
    assert set(CoreMeta.model_fields) < set(FluxDenoiseLatentsMetaInvocation.model_fields)
    assert set(FluxDenoiseLatentsMetaInvocation.model_fields) - set(CoreMeta.model_fields) == {
        "dype_method",
        "dype_shift",
    }


def test_off_is_bit_identical_to_invokeai_and_records_the_dype_fields(services):
    metadata = MetadataField.model_validate({"positive_prompt": "a cat"})
    fields = dict(width=SIZE, height=SIZE, num_steps=2, metadata=metadata)
    core_latents, core_md, core_calls = run_meta(node(CoreMeta, **fields), services)
    ours_latents, ours_md, ours_calls = run_meta(node(FluxDenoiseLatentsMetaInvocation, **fields), services)

    assert torch.equal(ours_latents, core_latents)
    assert len(core_calls) == 3 and len(ours_calls) == 2  # the Euler N+1 fix, same output
    assert {c.embedder for c in ours_calls} == {"EmbedND"}
    assert {k: v for k, v in ours_md.items() if k not in DYPE_METADATA_FIELDS} == core_md
    assert core_md["positive_prompt"] == "a cat" and core_md["width"] == SIZE and core_md["steps"] == 2
    assert {k: ours_md[k] for k in DYPE_METADATA_FIELDS if k in ours_md} == {
        "dype_preset": "off",
        "dype_method": "vision_yarn",
        "dype_shift": "official",
    }


def test_dype_on_runs_dypes_embedder_and_records_it(services, dev_model):
    invocation = node(
        FluxDenoiseLatentsMetaInvocation,
        width=SIZE,
        height=SIZE,
        num_steps=2,
        dype_preset="manual",
        dype_scale=2.0,
        dype_exponent=2.0,
        dype_method="yarn",
        dype_shift="stock",
    )
    ctx = services.context()
    _, metadata, calls = run_meta(invocation, services, ctx)
    assert {(c.embedder_module, c.ids_dtype) for c in calls} == {("dype.embed", torch.float32)}
    assert len(calls) == 2
    assert {k: metadata[k] for k in DYPE_METADATA_FIELDS} == {
        "dype_preset": "manual",
        "dype_scale": 2.0,
        "dype_exponent": 2.0,
        "dype_method": "yarn",
        "dype_shift": "stock",
    }
    logged = " ".join(str(call.args[0]) for call in ctx.logger.info.call_args_list)
    assert "DyPE enabled: 256×256, yarn" in logged
    assert_unpatched(dev_model)
