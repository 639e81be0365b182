"""dype — Dynamic Position Extrapolation (DyPE, arXiv 2510.20766) for FLUX.

Rescales FLUX's RoPE per axis and per denoising step so pre-trained FLUX models generate images far
beyond their 1024² training size. The math lives in `dype.math`; `DyPEEmbedND` / `DyPEPosEmbed` are
drop-in embedders; `DyPEExtension` patches a model for one generation.
"""

from dype.config import DYPE_METHODS, DyPEConfig
from dype.embed import DyPEEmbedND, DyPEPosEmbed
from dype.extension import DyPEExtension
from dype.math import DYPE_METHOD_FUNCTIONS, dype_frequencies, embed_ids, rope_dype
from dype.presets import DYPE_PRESETS, DyPEPreset, get_dype_config_for_resolution, resolve_dype_config

__version__ = "0.1.0"

__all__ = [
    "DYPE_METHODS",
    "DYPE_METHOD_FUNCTIONS",
    "DYPE_PRESETS",
    "DyPEConfig",
    "DyPEEmbedND",
    "DyPEExtension",
    "DyPEPosEmbed",
    "DyPEPreset",
    "__version__",
    "dype_frequencies",
    "embed_ids",
    "get_dype_config_for_resolution",
    "resolve_dype_config",
    "rope_dype",
]
