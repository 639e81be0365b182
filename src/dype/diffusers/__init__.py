"""DyPE for diffusers pipelines: FLUX.1, FLUX.2 (Klein, dev), Chroma, Z-Image (diffusers 0.40, as invokeai 6.14.2).

    from dype.diffusers import apply_dype

    with apply_dype(pipe, "4k", width=3840, height=2160):
        image = pipe(prompt, width=3840, height=2160).images[0]

Importing this package imports diffusers; `dype` itself does not.
"""

from dype.diffusers.patch import (
    PIPELINE_KINDS,
    SUPPORTED_PIPELINES,
    DyPEPatch,
    PipelineKind,
    active_dype,
    apply_dype,
    float32_image_ids,
    patched_models,
    pinned_mu,
    pipeline_kind,
)

__all__ = [
    "PIPELINE_KINDS",
    "SUPPORTED_PIPELINES",
    "DyPEPatch",
    "PipelineKind",
    "active_dype",
    "apply_dype",
    "float32_image_ids",
    "patched_models",
    "pinned_mu",
    "pipeline_kind",
]
