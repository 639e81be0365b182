"""Render an image from a local diffusers-format FLUX checkpoint with DyPE (the engine of `dype generate`).

Phases, each timed: load (pipeline from a folder or, offline, from the Hugging Face cache), encode
(the prompt, once even with `compare`), denoise and decode (per panel), save (a PNG whose text chunks
hold every generation parameter). `compare` renders the same seed with DyPE off and on and saves one
labelled side-by-side image.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from dype.config import DYPE_METHODS, DyPEConfig
from dype.diffusers.patch import apply_dype
from dype.families import check_image_side
from dype.presets import DYPE_PRESETS, resolve_dype_config
from dype.schedule import SHIFT_MODES
from dype.tiled_vae import tiled_decode
from dype.validation import check_choice

OFFLOAD_MODES: tuple[str, ...] = ("none", "model", "sequential")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
# Above this longer side the VAE decodes in tiles (FLUX's training size; an untiled 4K decode needs tens of GB).
VAE_TILING_ABOVE = 1024


def vae_decode_mode(width: int, height: int, offload: str) -> str:
    """How the image is decoded: "untiled"; "dype tiled" (image-wide GroupNorm statistics, the untiled image up
    to rounding); or "diffusers tiled" with --offload, whose accelerate hooks wrap `vae.decode` as a whole."""
    if max(width, height) <= VAE_TILING_ABOVE:
        return "untiled"
    return "dype tiled" if offload == "none" else "diffusers tiled"


def decode_packed_latents(pipe: Any, packed: torch.Tensor, width: int, height: int) -> Image.Image:
    """FLUX pipeline latents [1, N, 64] → the PIL image, decoded with `dype.tiled_vae.tiled_decode`.

    The unpack / scale / shift / postprocess steps are the pipeline's own (`FluxPipeline.__call__`), with the
    VAE call replaced by the tiled decode.
    """
    vae = pipe.vae
    latents = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
    with tqdm_progress(desc="decode (tiled)") as progress, torch.no_grad():
        image = tiled_decode(vae, latents.to(vae.dtype), progress=progress)
    return pipe.image_processor.postprocess(image, output_type="pil")[0]


@contextmanager
def tqdm_progress(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` callback drawing a tqdm bar."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, leave=True)
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OUT_OF_MEMORY: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


class GenerateError(Exception):
    """A problem the user can fix (bad model folder, out of memory, ...); the CLI prints it and exits 1."""


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


@dataclass(frozen=True)
class GenerateRequest:
    """Everything one `dype generate` run needs; validated on construction (ValueError naming the field).

    `steps`, `guidance` and `max_sequence_length` left at None take the variant's defaults (dev: 28,
    3.5, 512; schnell: 4, 0, 256).
    """

    model: str
    prompt: str
    width: int
    height: int
    preset: str = "auto"
    method: str = "vision_yarn"
    dype_scale: float | None = None
    dype_exponent: float | None = None
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
        check_choice("preset", self.preset, DYPE_PRESETS)
        check_choice("method", self.method, DYPE_METHODS)
        check_choice("shift", self.shift, SHIFT_MODES)
        check_choice("offload", self.offload, OFFLOAD_MODES)
        check_choice("device", self.device, DEVICES)
        check_choice("dtype", self.dtype, tuple(DTYPES))
        check_image_side("width", self.width)
        check_image_side("height", self.height)
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.max_sequence_length is not None and not 1 <= self.max_sequence_length <= 512:
            raise ValueError(f"max_sequence_length must be in [1, 512], got {self.max_sequence_length!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        object.__setattr__(self, "out", Path(self.out))

    def dype_config(self) -> DyPEConfig | None:
        """The DyPE configuration the preset and overrides resolve to (None = DyPE off)."""
        return resolve_dype_config(
            self.preset,
            width=self.width,
            height=self.height,
            dype_scale=self.dype_scale,
            dype_exponent=self.dype_exponent,
            method=self.method,
        )


@dataclass
class GenerateResult:
    """What a run produced: the PNG path, its metadata and seconds per phase."""

    path: Path
    parameters: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


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


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise GenerateError(f"{path.parent}: not a diffusers-format FLUX folder (no {what})") from error
    except (OSError, ValueError) as error:
        raise GenerateError(f"{path}: unreadable {what}: {error}") from error
    if not isinstance(data, dict):
        raise GenerateError(f"{path}: {what} is not a JSON object")
    return data


def read_variant(path: Path) -> FluxVariant:
    """Check that `path` holds a diffusers FLUX text-to-image pipeline and say whether it is dev or schnell."""
    index = _read_json(path / "model_index.json", "model_index.json")
    if list(index.get("transformer") or [])[-1:] != ["FluxTransformer2DModel"]:
        raise GenerateError(
            f"{path}: not a FLUX pipeline (model_index.json names transformer {index.get('transformer')!r}, "
            "expected FluxTransformer2DModel)"
        )
    transformer = _read_json(path / "transformer" / "config.json", "transformer/config.json")
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    if transformer.get("guidance_embeds", False):
        return FluxVariant("dev", bool(scheduler.get("use_dynamic_shifting", False)), 28, 3.5, 512)
    return FluxVariant("schnell", bool(scheduler.get("use_dynamic_shifting", False)), 4, 0.0, 256)


def pick_device(device: str, offload: str) -> torch.device:
    """ "auto" → cuda, else mps, else cpu; offloading needs an accelerator to offload from."""
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device == "cpu" and offload != "none":
        raise GenerateError(f"--offload {offload} needs a GPU (it moves models between CPU and GPU); device is cpu")
    return torch.device(device)


def load_pipeline(path: Path, device: torch.device, dtype: torch.dtype, offload: str) -> Any:
    """FluxPipeline from a local folder (never the network), placed or offloaded."""
    from diffusers import FluxPipeline

    try:
        pipe = FluxPipeline.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise GenerateError(f"{path}: could not load a FLUX pipeline: {error}") from error
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def pipeline_mu(pipe: Any, width: int, height: int) -> float | None:
    """The μ the FLUX pipelines compute from their scheduler config now (None: no dynamic shift)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = pipe.scheduler.config
    if not config.get("use_dynamic_shifting", False):
        return None
    return calculate_shift(
        (height // 16) * (width // 16),
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )


def describe_dype(config: DyPEConfig | None) -> str:
    """A short ASCII label (the default PIL font has no Greek letters)."""
    if config is None:
        return "DyPE off"
    return f"DyPE on ({config.method}, scale {config.dype_scale:g}, exponent {config.dype_exponent:g})"


def dype_parameters(config: DyPEConfig | None, family: str = "flux1", prefix: str = "dype") -> dict[str, Any]:
    """The config as PNG metadata, with the family defaults it resolves to (base resolution, isotropic)."""
    if config is None:
        return {f"{prefix}": "off"}
    fields = asdict(config) | {
        "base_resolution": config.base_resolution_for(family),
        "isotropic": config.isotropic_for(family),
    }
    return {f"{prefix}": "on", **{f"{prefix}_{key.removeprefix('dype_')}": v for key, v in fields.items()}}


def _label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1, or built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def side_by_side(images: list[Image.Image], labels: list[str], gap: int = 8) -> Image.Image:
    """Panels left to right on a white canvas, each under a band with its label.

    Returns:
        RGB image of size (Σ widths + gap·(n−1), band + max height); panel i starts at
        x = Σ_{j<i} (width_j + gap), y = band.
    """
    if len(images) != len(labels) or not images:
        raise ValueError(f"images and labels must be non-empty and of equal length, got {len(images)}, {len(labels)}")
    height = max(image.height for image in images)
    font = _label_font(max(12, height // 32))
    band = max(24, height // 16)
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, band + height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for image, label in zip(images, labels, strict=True):
        canvas.paste(image.convert("RGB"), (x, band))
        draw.text((x + image.width // 2, band // 2), label, fill="black", font=font, anchor="mm")
        x += image.width + gap
    return canvas


def png_info(parameters: dict[str, Any]) -> PngInfo:
    """One text chunk per parameter, plus `parameters` with all of them as JSON."""
    info = PngInfo()
    for key, value in parameters.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    info.add_text("parameters", json.dumps(parameters, ensure_ascii=False))
    return info


@contextmanager
def out_of_memory_hint(request: GenerateRequest, device: torch.device) -> Iterator[None]:
    """Turn an out-of-memory error into a GenerateError that says what to try next."""
    try:
        yield
    except _OUT_OF_MEMORY as error:
        hints = {
            "none": "--offload model (one model at a time on the GPU) or --offload sequential",
            "model": "--offload sequential (layer by layer, slowest)",
            "sequential": "",
        }[request.offload]
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GenerateError(
            f"out of memory at {request.width}x{request.height} on {device} (offload {request.offload}): try "
            f"{hints + ', or ' if hints else ''}a smaller --size. ({first_line})"
        ) from error


class _Clock:
    """Seconds per named phase, in the order they ran."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def phase(self, name: str, start: float, end: float | None = None) -> None:
        self.timings[name] = (time.perf_counter() if end is None else end) - start


def _render(
    pipe: Any,
    request: GenerateRequest,
    variant: FluxVariant,
    config: DyPEConfig | None,
    embeds: tuple[torch.Tensor, torch.Tensor],
    clock: _Clock,
    tag: str,
) -> tuple[Image.Image, float | None]:
    """One panel: denoise with DyPE `config` (None = off), then decode. Returns the image and the μ used."""
    last_step_end: list[float] = []

    def on_step_end(_pipe: Any, _step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        last_step_end[:] = [time.perf_counter()]
        return tensors

    prompt_embeds, pooled_prompt_embeds = embeds
    pipe.set_progress_bar_config(desc=f"denoise, {describe_dype(config)}", leave=True)
    dype_tiles = vae_decode_mode(request.width, request.height, request.offload) == "dype tiled"
    start = time.perf_counter()
    with apply_dype(pipe, config, width=request.width, height=request.height, shift=request.shift):
        mu = pipeline_mu(pipe, request.width, request.height)
        image = pipe(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps or variant.steps,
            guidance_scale=variant.guidance if request.guidance is None else request.guidance,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            callback_on_step_end=on_step_end,
            output_type="latent" if dype_tiles else "pil",
        ).images
    image = decode_packed_latents(pipe, image, request.width, request.height) if dype_tiles else image[0]
    end = time.perf_counter()
    denoised = last_step_end[0] if last_step_end else end
    clock.phase(f"denoise{tag}", start, denoised)
    clock.phase(f"decode{tag}", denoised, end)
    return image, mu


def generate(request: GenerateRequest, log: Callable[[str], None] = print) -> GenerateResult:
    """Run one `dype generate`: load, encode, render (twice with `compare`), save. Raises GenerateError."""
    clock = _Clock()
    config = request.dype_config()
    if request.compare and config is None:
        raise GenerateError(
            f"--compare needs DyPE on, but preset {request.preset!r} is off at {request.width}x{request.height} "
            "(auto and area switch on above 1536 px); use --preset 4k or manual"
        )
    path = resolve_model_path(request.model)
    variant = read_variant(path)
    device = pick_device(request.device, request.offload)
    dtype = DTYPES[request.dtype] or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    max_sequence_length = request.max_sequence_length or variant.max_sequence_length

    panels = [(None, "DyPE off"), (config, describe_dype(config))] if request.compare else [(config, "")]
    images: list[Image.Image] = []
    mus: list[float | None] = []
    vae_decode = vae_decode_mode(request.width, request.height, request.offload)
    vae_tiling = vae_decode != "untiled"
    with out_of_memory_hint(request, device):
        start = time.perf_counter()
        pipe = load_pipeline(path, device, dtype, request.offload)
        if vae_decode == "diffusers tiled":
            pipe.vae.enable_tiling()
        clock.phase("load", start)
        log(f"loaded FLUX {variant.name} from {path} ({dtype}, {device}, offload {request.offload})")

        start = time.perf_counter()
        with torch.no_grad():
            prompt_embeds, pooled_prompt_embeds, _ = pipe.encode_prompt(
                prompt=request.prompt,
                prompt_2=None,
                device=pipe._execution_device,
                max_sequence_length=max_sequence_length,
            )
        clock.phase("encode", start)
        for panel_config, _label in panels:
            tag = "" if len(panels) == 1 else (" (off)" if panel_config is None else " (on)")
            embeds = (prompt_embeds, pooled_prompt_embeds)
            image, mu = _render(pipe, request, variant, panel_config, embeds, clock, tag)
            images.append(image)
            mus.append(mu)

    parameters: dict[str, Any] = {
        "software": _software(),
        "model": request.model,
        "variant": variant.name,
        "prompt": request.prompt,
        "width": request.width,
        "height": request.height,
        "seed": request.seed,
        "steps": request.steps or variant.steps,
        "guidance": variant.guidance if request.guidance is None else request.guidance,
        "max_sequence_length": max_sequence_length,
        "scheduler": type(pipe.scheduler).__name__,
        "preset": request.preset,
        "method": request.method,
        "requested_scale": request.dype_scale,
        "requested_exponent": request.dype_exponent,
        "shift": request.shift,
        **dype_parameters(config),
        "mu": mus[-1],
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "offload": request.offload,
        "vae_tiling": vae_tiling,
        "vae_decode": vae_decode,
        "compare": request.compare,
    }
    if request.compare:
        parameters["panels"] = "left: DyPE off, right: DyPE on"
        parameters["mu_off"] = mus[0]
        output = side_by_side(images, [label for _, label in panels])
    else:
        output = images[0]

    start = time.perf_counter()
    try:
        request.out.parent.mkdir(parents=True, exist_ok=True)
        output.save(request.out, format="PNG", pnginfo=png_info(parameters))
    except OSError as error:
        raise GenerateError(f"could not write {request.out}: {error}") from error
    clock.phase("save", start)
    return GenerateResult(request.out, parameters, clock.timings)


def _software() -> str:
    import diffusers

    from dype import __version__

    return f"dype {__version__} generate (diffusers {diffusers.__version__})"
