"""dype — Dynamic Position Extrapolation (DyPE, arXiv 2510.20766) for RoPE image models.

Rescales a model's RoPE per axis and per denoising step so pre-trained FLUX.1, FLUX.2, Z-Image and
Chroma models generate images far beyond their training size. A model family is data
(`dype.families`), the math lives in `dype.math`, `DyPEEmbedder` (and its host-shaped drop-ins) embeds
positions, `DyPEExtension` patches a model for one generation through its host adapter (`dype.hosts`).

The names below are loaded on first use (PEP 562), so `import dype` — and `dype --version` — does not
import torch; `from dype import DyPEConfig` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "DYPE_METHODS": "dype.config",
    "DyPEConfig": "dype.config",
    "DyPEEmbedder": "dype.embed",
    "DyPEEmbedND": "dype.embed",
    "DyPEPosEmbed": "dype.embed",
    "DyPERopeEmbedder": "dype.embed",
    "DyPEExtension": "dype.extension",
    "ModelPatch": "dype.extension",
    "active_patch": "dype.extension",
    "FAMILIES": "dype.families",
    "RopeFamily": "dype.families",
    "get_family": "dype.families",
    "DYPE_METHOD_REGISTRY": "dype.math",
    "dype_frequencies": "dype.math",
    "embed_ids": "dype.math",
    "DYPE_PRESETS": "dype.presets",
    "DyPEPreset": "dype.presets",
    "resolve_dype_config": "dype.presets",
}
# Submodules an eager `import dype` used to load, so `import dype; dype.math.embed_ids` keeps working.
_SUBMODULES = frozenset({"config", "embed", "extension", "families", "hosts", "math", "presets", "validation"})

__all__ = [
    "DYPE_METHODS",
    "DYPE_METHOD_REGISTRY",
    "DYPE_PRESETS",
    "FAMILIES",
    "DyPEConfig",
    "DyPEEmbedND",
    "DyPEEmbedder",
    "DyPEExtension",
    "DyPEPosEmbed",
    "DyPEPreset",
    "DyPERopeEmbedder",
    "ModelPatch",
    "RopeFamily",
    "__version__",
    "active_patch",
    "dype_frequencies",
    "embed_ids",
    "get_family",
    "resolve_dype_config",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` loads these on demand
    from dype.config import DYPE_METHODS, DyPEConfig
    from dype.embed import DyPEEmbedder, DyPEEmbedND, DyPEPosEmbed, DyPERopeEmbedder
    from dype.extension import DyPEExtension, ModelPatch, active_patch
    from dype.families import FAMILIES, RopeFamily, get_family
    from dype.math import DYPE_METHOD_REGISTRY, dype_frequencies, embed_ids
    from dype.presets import DYPE_PRESETS, DyPEPreset, resolve_dype_config


def __getattr__(name: str) -> Any:
    """Load a public name (or one of the submodules listed above) the first time it is asked for."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
