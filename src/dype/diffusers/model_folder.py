"""A diffusers-format model folder: where it is, what it is, and whether its configs are readable.

`resolve_model_path` finds the folder (a path, or a repo id looked up offline in the Hugging Face cache),
`read_model_kind` says what kind of checkpoint it is (FLUX.1 dev / schnell, FLUX.2 Klein / dev, Chroma,
Z-Image; a `ModelKind` with its family and usual defaults), `check_config_files` reads every JSON config
so that a file that is not UTF-8 JSON is named before diffusers or a tokenizer trips over it. Each raises
`GenerateError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dype.generate_request import GenerateError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelKind:
    """What a checkpoint is, read from its configs, and the usual settings for it.

    Attributes:
        pipeline: the diffusers pipeline class that loads it (model_index.json's `_class_name`).
        family: its RoPE family (`dype.families`).
        name: what users call it ("dev", "schnell", "klein", "klein-base", "flux2-dev", "chroma", "z-image").
        dynamic_shift: the scheduler shifts sigmas by resolution (the μ DyPE pins).
        steps, guidance, max_sequence_length: the defaults for that kind (the model cards' usual values;
            for Z-Image, Turbo's 8 steps without CFG when the scheduler is static as Turbo ships it).
    """

    pipeline: str
    family: str
    name: str
    dynamic_shift: bool
    steps: int
    guidance: float
    max_sequence_length: int


# The text-to-image pipelines `dype generate` runs: class name → (family, transformer class).
GENERATE_PIPELINES: dict[str, tuple[str, str]] = {
    "FluxPipeline": ("flux1", "FluxTransformer2DModel"),
    "Flux2KleinPipeline": ("flux2", "Flux2Transformer2DModel"),
    "Flux2Pipeline": ("flux2", "Flux2Transformer2DModel"),
    "ChromaPipeline": ("chroma", "ChromaTransformer2DModel"),
    "ZImagePipeline": ("z_image", "ZImageTransformer2DModel"),
}


def resolve_model_path(model: str) -> Path:
    """A diffusers-format folder, or a repo id (owner/name) looked up offline in the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise GenerateError(
                f"--model {model}: not a folder. dype generate needs a diffusers-format model folder "
                "(model_index.json, transformer/, vae/, ...), not a single-file checkpoint"
            )
        return path
    if _REPO_ID.match(model):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(model, local_files_only=True))
        except Exception as error:  # the hub raises several types for "not cached"; the cause is the same
            raise GenerateError(
                f"--model {model}: no such folder, and no snapshot of the repo {model!r} in the local Hugging "
                f"Face cache (dype generate works offline; download it first, e.g. `hf download {model}`)"
            ) from error
    raise GenerateError(f"--model {model}: no such folder")


def read_json(path: Path) -> Any:
    """A UTF-8 JSON file; GenerateError naming the file when it is not UTF-8, not JSON or not readable."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise GenerateError(
            f"{path}: not UTF-8 ({error.reason} at byte {error.start}); model configs are UTF-8 JSON"
        ) from error
    except ValueError as error:
        raise GenerateError(f"{path}: not valid JSON ({error})") from error
    except OSError as error:
        raise GenerateError(f"{path}: unreadable ({error.strerror or error})") from error


def _read_config(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        raise GenerateError(f"{folder}: not a diffusers-format model folder (no {name})")
    data = read_json(path)
    if not isinstance(data, dict):
        raise GenerateError(f"{path}: {name} is not a JSON object")
    return data


def read_model_kind(path: Path) -> ModelKind:
    """Check that `path` holds a supported text-to-image pipeline and say which kind of checkpoint it is."""
    index = _read_config(path, "model_index.json")
    pipeline = index.get("_class_name")
    if pipeline not in GENERATE_PIPELINES:
        raise GenerateError(
            f"{path}: model_index.json names the pipeline {pipeline!r}; dype generate runs "
            f"{', '.join(GENERATE_PIPELINES)}"
        )
    family, transformer_class = GENERATE_PIPELINES[pipeline]
    if list(index.get("transformer") or [])[-1:] != [transformer_class]:
        raise GenerateError(
            f"{path}: not a {pipeline} checkpoint (model_index.json names transformer "
            f"{index.get('transformer')!r}, expected {transformer_class})"
        )
    transformer = _read_config(path, "transformer/config.json")
    scheduler = _read_config(path, "scheduler/scheduler_config.json")
    dynamic = bool(scheduler.get("use_dynamic_shifting", False))
    if pipeline == "FluxPipeline":
        if transformer.get("guidance_embeds", False):
            return ModelKind(pipeline, family, "dev", dynamic, 28, 3.5, 512)
        return ModelKind(pipeline, family, "schnell", dynamic, 4, 0.0, 256)
    if pipeline == "Flux2KleinPipeline":
        if index.get("is_distilled", False):
            return ModelKind(pipeline, family, "klein", dynamic, 4, 1.0, 512)
        return ModelKind(pipeline, family, "klein-base", dynamic, 50, 4.0, 512)
    if pipeline == "Flux2Pipeline":
        return ModelKind(pipeline, family, "flux2-dev", dynamic, 50, 4.0, 512)
    if pipeline == "ChromaPipeline":
        return ModelKind(pipeline, family, "chroma", dynamic, 35, 5.0, 512)
    turbo = not dynamic and scheduler.get("shift") == 3.0  # as Z-Image Turbo ships (reported, unverified)
    return ModelKind(pipeline, family, "z-image", dynamic, 8 if turbo else 50, 0.0 if turbo else 5.0, 512)


def check_config_files(path: Path) -> None:
    """Read every JSON file of the pipeline folder and its component folders, so a file that is not UTF-8
    JSON is named here rather than surfacing as a nameless decode error from inside diffusers or a tokenizer."""
    for config in sorted([*path.glob("*.json"), *path.glob("*/*.json")]):
        read_json(config)
