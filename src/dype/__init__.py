"""dype — Dynamic Position Extrapolation (DyPE, arXiv 2510.20766) for RoPE image models.

Rescales a model's RoPE per axis and per denoising step so pre-trained FLUX.1, FLUX.2, Z-Image and
Chroma models generate images far beyond their training size. A model family is data
(`dype.families`), the math lives in `dype.math`, `DyPEEmbedder` (and its host-shaped drop-ins) embeds
positions, `DyPEExtension` patches a model for one generation through its host adapter (`dype.hosts`).
"""

from dype.config import DYPE_METHODS, DyPEConfig
from dype.embed import DyPEEmbedder, DyPEEmbedND, DyPEPosEmbed, DyPERopeEmbedder
from dype.extension import DyPEExtension, ModelPatch, active_patch
from dype.families import FAMILIES, RopeFamily, get_family
from dype.math import DYPE_METHOD_REGISTRY, dype_frequencies, embed_ids
from dype.presets import DYPE_PRESETS, DyPEPreset, resolve_dype_config

__version__ = "0.2.0"

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
