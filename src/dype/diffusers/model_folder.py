"""A diffusers-format FLUX model folder: where it is, what it is, and whether its configs are readable.

`resolve_model_path` finds the folder (a path, or a repo id looked up offline in the Hugging Face cache),
`read_variant` says what kind of checkpoint it is (one small function returning a `FluxVariant`: the place
to teach other pipeline kinds), `check_config_files` reads every JSON config so that a file that is not
UTF-8 JSON is named before diffusers or a tokenizer trips over it. Each raises `GenerateError`.
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
class FluxVariant:
    """What a checkpoint is, read from its configs: FLUX dev (guidance-distilled) or schnell (timestep-distilled).

    Attributes:
        name: "dev" when the transformer embeds guidance, else "schnell".
        dynamic_shift: the scheduler shifts sigmas by resolution (dev) — the μ DyPE pins.
        steps, guidance, max_sequence_length: the usual defaults for that variant.
    """

    name: str
    dynamic_shift: bool
    steps: int
    guidance: float
    max_sequence_length: int


def resolve_model_path(model: str) -> Path:
    """A diffusers-format folder, or a repo id (owner/name) looked up offline in the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise GenerateError(
                f"--model {model}: not a folder. dype generate needs a diffusers-format FLUX folder "
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
        raise GenerateError(f"{folder}: not a diffusers-format FLUX folder (no {name})")
    data = read_json(path)
    if not isinstance(data, dict):
        raise GenerateError(f"{path}: {name} is not a JSON object")
    return data


def read_variant(path: Path) -> FluxVariant:
    """Check that `path` holds a diffusers FLUX text-to-image pipeline and say whether it is dev or schnell."""
    index = _read_config(path, "model_index.json")
    if list(index.get("transformer") or [])[-1:] != ["FluxTransformer2DModel"]:
        raise GenerateError(
            f"{path}: not a FLUX pipeline (model_index.json names transformer {index.get('transformer')!r}, "
            "expected FluxTransformer2DModel)"
        )
    transformer = _read_config(path, "transformer/config.json")
    scheduler = _read_config(path, "scheduler/scheduler_config.json")
    dynamic_shift = bool(scheduler.get("use_dynamic_shifting", False))
    if transformer.get("guidance_embeds", False):
        return FluxVariant("dev", dynamic_shift, 28, 3.5, 512)
    return FluxVariant("schnell", dynamic_shift, 4, 0.0, 256)


def check_config_files(path: Path) -> None:
    """Read every JSON file of the pipeline folder and its component folders, so a file that is not UTF-8
    JSON is named here rather than surfacing as a nameless decode error from inside diffusers or a tokenizer."""
    for config in sorted([*path.glob("*.json"), *path.glob("*/*.json")]):
        read_json(config)
