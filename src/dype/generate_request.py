"""What one `dype generate` run asks for, validated without importing torch or diffusers.

`GenerateRequest` checks every field on construction (a ValueError naming the field and what is allowed),
output path included, so the command line refuses a bad value before any model is loaded and the engine
(`dype.diffusers.generate`) only ever sees clean, plain-Python values (numpy scalars are accepted and
converted, so they also serialise into the PNG metadata).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dype.config import DYPE_METHODS, DyPEConfig
from dype.families import check_image_side
from dype.presets import DYPE_PRESETS, resolve_dype_config
from dype.schedule import SHIFT_MODES
from dype.validation import check_bool, check_choice, check_integer, check_output_file, check_range

OFFLOAD_MODES: tuple[str, ...] = ("none", "model", "sequential")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
GUIDANCE_RANGE = (0.0, 100.0)
MAX_SEQUENCE_LENGTH_RANGE = (1, 512)  # T5 prompt tokens the FLUX pipelines accept
SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes [0, 2**64)
OUTPUT_SUFFIXES: tuple[str, ...] = (".png",)  # the parameters live in PNG text chunks: PNG only


class GenerateError(Exception):
    """A run failed for a reason the user can fix other than a bad argument (model folder, out of memory).

    The command line prints it and exits 1; a bad argument is a ValueError (exit 2).
    """


@dataclass(frozen=True)
class GenerateRequest:
    """Everything one `dype generate` run needs; validated on construction (ValueError naming the field).

    `steps`, `guidance` and `max_sequence_length` left at None take the checkpoint kind's defaults
    (`dype.diffusers.model_folder.read_model_kind`: FLUX.1 dev 28, 3.5, 512; schnell 4, 0, 256; Klein 4,
    1; FLUX.2 dev 50, 4; Chroma 35, 5; Z-Image Turbo 8, 0). `base_resolution` / `isotropic` None take the
    family's. `out` must end in .png and be writable (checked now, nothing is written); its missing parent
    folders are created when the image is saved. `compare` needs a preset that turns DyPE on at this size.
    """

    model: str
    prompt: str
    width: int
    height: int
    preset: str = "auto"
    method: str = "vision_yarn"
    dype_scale: float | None = None
    dype_exponent: float | None = None
    base_resolution: int | None = None
    isotropic: bool | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    shift: str = "official"
    offload: str = "none"
    device: str = "auto"
    dtype: str = "auto"
    max_sequence_length: int | None = None
    compare: bool = False
    out: Path = Path("out.png")

    def __post_init__(self) -> None:
        if not isinstance(self.model, str | os.PathLike) or not str(self.model).strip():
            raise ValueError(f"model must be a diffusers-format folder or a repo id, got {self.model!r}")
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {self.prompt!r} ({type(self.prompt).__name__})")
        check_choice("preset", self.preset, DYPE_PRESETS)
        check_choice("method", self.method, DYPE_METHODS)
        check_choice("shift", self.shift, SHIFT_MODES)
        check_choice("offload", self.offload, OFFLOAD_MODES)
        check_choice("device", self.device, DEVICES)
        check_choice("dtype", self.dtype, DTYPE_NAMES)
        clean = {
            "model": str(self.model),
            "width": check_image_side("width", self.width),
            "height": check_image_side("height", self.height),
            "steps": None if self.steps is None else check_integer("steps", self.steps, minimum=1),
            "guidance": None if self.guidance is None else check_range("guidance", self.guidance, *GUIDANCE_RANGE),
            "seed": _check_seed(self.seed),
            "max_sequence_length": _check_max_sequence_length(self.max_sequence_length),
            "compare": check_bool("compare", self.compare),
            "isotropic": None if self.isotropic is None else check_bool("isotropic", self.isotropic),
        }
        for name, value in clean.items():
            object.__setattr__(self, name, value)
        config = self.dype_config()  # validates dype_scale / dype_exponent with the preset rules
        for name, value in (("dype_scale", self.dype_scale), ("dype_exponent", self.dype_exponent)):
            object.__setattr__(self, name, None if value is None else float(value))
        if self.compare and config is None:
            raise ValueError(
                f"--compare needs DyPE on, but preset {self.preset!r} is off at {self.width}x{self.height} "
                "(auto and area switch on above 1536 px); use --preset 4k or manual"
            )
        object.__setattr__(self, "out", check_output_file("out", self.out, OUTPUT_SUFFIXES))

    def dype_config(self, family: str = "flux1") -> DyPEConfig | None:
        """The DyPE configuration the preset and overrides resolve to for `family` (None = DyPE off).

        Checked for FLUX.1 on construction (the model's family is known once its folder is read; every
        family's base resolution is 1024 or more, so what is off for FLUX.1 here is off for all of them).
        """
        return resolve_dype_config(
            self.preset,
            width=self.width,
            height=self.height,
            dype_scale=self.dype_scale,
            dype_exponent=self.dype_exponent,
            method=self.method,
            base_resolution=self.base_resolution,
            isotropic=self.isotropic,
            family=family,
        )


def _check_seed(value: object) -> int:
    seed = check_integer("seed", value, minimum=0)
    if seed >= SEED_LIMIT:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return seed


def _check_max_sequence_length(value: object) -> int | None:
    if value is None:
        return None
    low, high = MAX_SEQUENCE_LENGTH_RANGE
    length = check_integer("max_sequence_length", value)
    if not low <= length <= high:
        raise ValueError(f"max_sequence_length must be in [{low}, {high}], got {length}")
    return length
