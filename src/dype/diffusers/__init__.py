"""DyPE for diffusers' FLUX pipelines (diffusers 0.40, the version invokeai 6.14.2 pins).

    from dype.diffusers import apply_dype

    with apply_dype(pipe, "4k", width=3840, height=2160):
        image = pipe(prompt, width=3840, height=2160).images[0]

Importing this package imports diffusers; `dype` itself does not.
"""

from dype.diffusers.patch import (
    SUPPORTED_PIPELINES,
    DyPEPatch,
    apply_dype,
    checked_image_grid,
    float32_image_ids,
    flux_models,
    pinned_mu,
)

__all__ = [
    "SUPPORTED_PIPELINES",
    "DyPEPatch",
    "apply_dype",
    "checked_image_grid",
    "float32_image_ids",
    "flux_models",
    "pinned_mu",
]
