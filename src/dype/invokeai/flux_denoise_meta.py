"""The `flux_denoise_meta` override: InvokeAI's "FLUX Denoise + Metadata", running dype's DyPE.

InvokeAI 6.14.2's `FluxDenoiseLatentsMetaInvocation` is a subclass of its `FluxDenoiseInvocation` plus a
`metadata` input; its `invoke()` calls the core denoise and records width, height, steps, guidance,
seed, model, LoRAs and CFG settings. Ours inherits from our FLUX Denoise *and* from that class, so
that Python's method order gives: InvokeAI's metadata `invoke()` → InvokeAI's `invoke()` → our
`_run_diffusion` (dype's DyPE under a `DenoiseState`) → InvokeAI's `_run_diffusion`. No InvokeAI code is
copied. Same type name and title, every field of both parents, a minor version bump, and the five
`dype_*` fields recorded in the output metadata (the Linear UI records `dype_preset`, `dype_scale` and
`dype_exponent` under the same keys).
"""

# No `from __future__ import annotations` here: InvokeAI reads invoke()'s return annotation as a class.
from typing import Any

from invokeai.app.invocations.baseinvocation import invocation
from invokeai.app.invocations.fields import MetadataField
from invokeai.app.invocations.metadata_linked import FluxDenoiseLatentsMetaInvocation as CoreFluxDenoiseMeta
from invokeai.app.invocations.metadata_linked import LatentsMetaOutput
from invokeai.app.services.shared.invocation_context import InvocationContext

from dype.invokeai.flux_denoise import FluxDenoiseInvocation

INVOCATION_TYPE = "flux_denoise_meta"
INVOCATION_VERSION = "1.1.0"  # core 6.14.2 is 1.0.1; new optional fields = minor bump

# The metadata keys this node adds, each the name of the field it records.
DYPE_METADATA_FIELDS = ("dype_preset", "dype_scale", "dype_exponent", "dype_method", "dype_shift")


@invocation(
    INVOCATION_TYPE,
    title=CoreFluxDenoiseMeta.UIConfig.title,
    tags=CoreFluxDenoiseMeta.UIConfig.tags,
    category=CoreFluxDenoiseMeta.UIConfig.category,
    version=INVOCATION_VERSION,
)
class FluxDenoiseLatentsMetaInvocation(FluxDenoiseInvocation, CoreFluxDenoiseMeta):
    """Run denoising process with a FLUX transformer model + metadata. DyPE (high resolution) by the dype package."""

    # The class keeps the core name: InvokeAI's OpenAPI schema names each node's component after its class.

    def invoke(self, context: InvocationContext) -> LatentsMetaOutput:
        output = super().invoke(context)
        metadata: dict[str, Any] = dict(output.metadata.root) if output.metadata is not None else {}
        metadata.update(self.dype_metadata())
        output.metadata = MetadataField.model_validate(metadata)
        return output

    def dype_metadata(self) -> dict[str, Any]:
        """The dype fields as metadata; an empty scale or exponent (the preset decides) is left out."""
        values = {name: getattr(self, name) for name in DYPE_METADATA_FIELDS}
        return {name: value for name, value in values.items() if value is not None}
