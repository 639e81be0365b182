"""DyPE inside InvokeAI's FLUX Denoise (`invokeai==6.14.2`), as a node pack.

Importing this package registers our `flux_denoise` (a subclass of InvokeAI's `FluxDenoiseInvocation`,
same type name) and the tiled FLUX VAE decode node, and installs the dispatch wrappers FLUX Denoise
runs through. `register()` does the latter two again and is idempotent: InvokeAI re-executes a
pack's `__init__.py` on "reload custom nodes".
Install the loader pack with `dype invokeai install --root PATH`.
"""

from dype.invokeai import dispatch, flux2_denoise, flux_denoise, tiled_decode, z_image_denoise
from dype.invokeai.flux2_denoise import Flux2DenoiseInvocation
from dype.invokeai.flux_denoise import FluxDenoiseInvocation
from dype.invokeai.z_image_denoise import ZImageDenoiseInvocation


def register() -> None:
    """Install the dispatch wrappers and make "flux_denoise" resolve to our node. Safe to call again."""
    dispatch.install()
    flux2_denoise.install()
    z_image_denoise.install()
    flux_denoise.ensure_registered()
    flux2_denoise.ensure_registered()
    z_image_denoise.ensure_registered()
    tiled_decode.ensure_registered()


register()

__all__ = ["Flux2DenoiseInvocation", "FluxDenoiseInvocation", "ZImageDenoiseInvocation", "register"]
