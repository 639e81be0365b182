"""DyPE inside InvokeAI's FLUX.1, FLUX.2 and Z-Image denoise nodes (`invokeai` 6.14), as a node pack.

`PACK_NODES` is the one list of the pack's invocation classes; each entry knows the core class it
replaces (derived from the class itself: the nearest InvokeAI base class of the same type). Node
counting in the Nodes tab, the core classes coming back on uninstall, and re-registration on reload all
work from this list, so adding a node is one line here.

Importing this package registers the nodes (as ``node_pack="dype"``) and installs the dispatch wrappers
the denoise nodes run through. A node pack's `__init__.py` then calls `register(pack=<its folder name>,
folder=<its folder>)`: the nodes report that pack, and a second copy of the pack is refused. InvokeAI
re-executes a pack's `__init__.py` on reload; `register()` is idempotent and thread-safe.
Loaders: `dype invokeai install --root PATH` (pip users) or the repository's own `__init__.py` (Nodes tab ▸
Install from a git URL).
"""

from pathlib import Path

from dype.invokeai import flux2_denoise, flux_denoise, flux_denoise_meta, tiled_decode, z_image_denoise
from dype.invokeai.flux2_denoise import Flux2DenoiseInvocation
from dype.invokeai.flux_denoise import FluxDenoiseInvocation
from dype.invokeai.registration import PackConflictError, PackNode, register_pack
from dype.invokeai.z_image_denoise import ZImageDenoiseInvocation

PACK_NODES: tuple[PackNode, ...] = tuple(
    PackNode.of(node)
    for node in (
        flux_denoise.FluxDenoiseInvocation,
        flux_denoise_meta.FluxDenoiseLatentsMetaInvocation,
        flux2_denoise.Flux2DenoiseInvocation,
        z_image_denoise.ZImageDenoiseInvocation,
        tiled_decode.FluxVaeDecodeTiledInvocation,
    )
)


def register(pack: str | None = None, folder: Path | str | None = None) -> str:
    """Install the dispatch wrappers and make every `PACK_NODES` type resolve to our class. Safe to call again.

    Args:
        pack: the loading pack's folder name in InvokeAI's nodes folder (what the Nodes tab lists).
        folder: that folder.

    Returns:
        The pack name the nodes report (`node_pack`).

    Raises:
        PackConflictError: another copy of the pack, still installed, already registered the nodes.
    """
    return register_pack(PACK_NODES, pack=pack, folder=folder)


register()

__all__ = [
    "PACK_NODES",
    "Flux2DenoiseInvocation",
    "FluxDenoiseInvocation",
    "PackConflictError",
    "PackNode",
    "ZImageDenoiseInvocation",
    "register",
]
