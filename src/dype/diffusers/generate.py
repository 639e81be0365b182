"""Render images from a local diffusers checkpoint with DyPE: the library part of `dype generate`.

`generate(request)` checks the device, finds and checks the model folder (every JSON config must be
UTF-8 JSON; FLUX.1 dev / schnell, FLUX.2 Klein / dev, Chroma and Z-Image are recognised), loads the
pipeline, encodes the prompt (once for FLUX.1; the other pipelines encode inside their call) and renders
one panel (two with `compare`: DyPE off, then on, same seed), each phase timed. It returns the images and
the generation parameters (the PNG metadata) and writes nothing: composing and saving are the application's
(`dype.cli.generate`). Progress goes to an optional `progress(desc)` factory of `(done, total)`
callbacks, messages to an optional `log`.

The model folder (where it is, what kind of checkpoint, readable configs) is `dype.diffusers.model_folder`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dype.config import DyPEConfig
from dype.diffusers.model_folder import ModelKind, check_config_files, read_model_kind, resolve_model_path
from dype.diffusers.patch import apply_dype
from dype.families import FLUX1, check_image_side
from dype.generate_request import DEVICES, DTYPE_NAMES, OFFLOAD_MODES, GenerateError, GenerateRequest
from dype.tiled_vae import tiled_decode
from dype.validation import check_choice

__all__ = [
    "DEVICES",
    "DTYPES",
    "OFFLOAD_MODES",
    "GenerateError",
    "GenerateRequest",
    "GenerateResult",
    "ModelKind",
    "decode_packed_latents",
    "generate",
    "pick_device",
    "read_model_kind",
    "resolve_model_path",
    "vae_decode_mode",
]

# "auto" → None (decided per device by `torch_dtype`); the names are those of `dype.generate_request`.
DTYPES: dict[str, torch.dtype | None] = {
    name: None if name == "auto" else getattr(torch, name) for name in DTYPE_NAMES
}
# Above this longer side the VAE decodes in tiles (FLUX's training size; an untiled 4K decode needs tens of GB).
VAE_TILING_ABOVE = 1024
PIXELS_PER_TOKEN = FLUX1.pixels_per_token  # FLUX.1: VAE factor 8 × 2×2 patches

ProgressCallback = Callable[[int, int], None]
"""`progress(done, total)`, called as work advances."""
ProgressBars = Callable[[str], AbstractContextManager[ProgressCallback]]
"""`bars(description)` opens one progress display and yields its callback (e.g. a tqdm bar)."""

_OUT_OF_MEMORY: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


@dataclass
class GenerateResult:
    """What a run produced, nothing written yet.

    Attributes:
        images: one per panel (DyPE off, then on, with `compare`).
        labels: a short ASCII caption per panel.
        parameters: every generation parameter, JSON-ready (the PNG metadata).
        timings: seconds per phase, in the order they ran (load, encode, denoise, decode ...).
    """

    images: list[Image.Image]
    labels: list[str]
    parameters: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def vae_decode_mode(width: int, height: int, offload: str, family: str = "flux1") -> str:
    """How the image is decoded: "untiled"; "dype tiled" (FLUX.1: image-wide GroupNorm statistics, the untiled
    image up to rounding); or "diffusers tiled" — with --offload (accelerate's hooks wrap `vae.decode` as a
    whole) and for the other families, whose pipelines decode with their own latent layouts."""
    if max(width, height) <= VAE_TILING_ABOVE:
        return "untiled"
    return "dype tiled" if offload == "none" and family == "flux1" else "diffusers tiled"


def decode_packed_latents(
    pipe: Any, packed: torch.Tensor, width: int, height: int, progress: ProgressCallback | None = None
) -> Image.Image:
    """FLUX pipeline latents [B, N, C] → the first PIL image, decoded with `dype.tiled_vae.tiled_decode`.

    The unpack / scale / shift / postprocess steps are the pipeline's own (`FluxPipeline.__call__`), with the
    VAE call replaced by the tiled decode. Raises ValueError for a size that is not a whole number of tokens
    or latents that do not hold that image (an empty latent included).
    """
    check_image_side("width", width)
    check_image_side("height", height)
    tokens = (width // PIXELS_PER_TOKEN) * (height // PIXELS_PER_TOKEN)
    if packed.dim() != 3 or packed.shape[0] < 1 or packed.shape[1] != tokens:
        held = f"{packed.shape[1]} tokens" if packed.dim() == 3 else f"the shape {tuple(packed.shape)}"
        raise ValueError(f"latents hold {held}; a {width}x{height} image has {tokens} (packed [B, N, C])")
    vae = pipe.vae
    latents = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
    with torch.no_grad():
        image = tiled_decode(vae, latents.to(vae.dtype), progress=progress)
    return pipe.image_processor.postprocess(image, output_type="pil")[0]


def available_devices() -> list[str]:
    """The devices this torch can run on here, best first (cuda, mps, cpu)."""
    devices = ["cuda"] if torch.cuda.is_available() else []
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return [*devices, "cpu"]


def _unavailable_reason(device: str) -> str:
    if device == "cuda":
        if torch.version.cuda is None:
            return f"this torch ({torch.__version__}) is built without CUDA"
        return "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)"
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_built():
        return f"this torch ({torch.__version__}) is built without MPS (Apple silicon only)"
    return "MPS is not available on this machine"


def pick_device(device: str, offload: str) -> torch.device:
    """ "auto" → cuda, else mps, else cpu. ValueError for a device this machine lacks, and for offloading
    without an accelerator to offload from."""
    check_choice("device", device, DEVICES)
    check_choice("offload", offload, OFFLOAD_MODES)
    available = available_devices()
    if device == "auto":
        device = available[0]
    elif device not in available:
        raise ValueError(
            f"device {device} is not available: {_unavailable_reason(device)}; available here: "
            f"{', '.join(available)} (or auto)"
        )
    if device == "cpu" and offload != "none":
        raise ValueError(f"--offload {offload} needs a GPU (it moves models between CPU and GPU); device is cpu")
    return torch.device(device)


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype for `name`; "auto" is bfloat16 on cuda, float32 elsewhere."""
    check_choice("dtype", name, DTYPE_NAMES)
    return DTYPES[name] or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def load_pipeline(path: Path, kind: ModelKind, device: torch.device, dtype: torch.dtype, offload: str) -> Any:
    """The kind's pipeline from a local folder (never the network), placed or offloaded."""
    import diffusers

    try:
        pipe = getattr(diffusers, kind.pipeline).from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise GenerateError(f"{path}: could not load a {kind.pipeline}: {error}") from error
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def pipeline_mu(pipe: Any, width: int, height: int) -> float | None:
    """The μ the FLUX.1 pipelines compute from their scheduler config now (None: no dynamic shift)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = pipe.scheduler.config
    if not config.get("use_dynamic_shifting", False):
        return None
    return calculate_shift(
        (height // PIXELS_PER_TOKEN) * (width // PIXELS_PER_TOKEN),
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


def _no_bars(_desc: str) -> AbstractContextManager[ProgressCallback]:
    return nullcontext(lambda _done, _total: None)


def _render(
    pipe: Any,
    request: GenerateRequest,
    kind: ModelKind,
    config: DyPEConfig | None,
    embeds: dict[str, Any],
    clock: _Clock,
    tag: str,
    bars: ProgressBars,
) -> tuple[Image.Image, float | None]:
    """One panel: denoise with DyPE `config` (None = off), then decode. Returns the image and the μ used.

    FLUX.1 gets the prompt embeddings encoded once (`embeds`); the other pipelines get the prompt and
    encode it in their call. FLUX.1 above 1024 px decodes with dype's tiled decode.
    """
    steps = request.steps or kind.steps
    last_step_end: list[float] = []
    dype_tiles = vae_decode_mode(request.width, request.height, request.offload, kind.family) == "dype tiled"
    pipe.set_progress_bar_config(disable=True)  # progress goes through `bars`
    start = time.perf_counter()
    with bars(f"denoise, {describe_dype(config)}") as progress:
        progress(0, steps)

        def on_step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            last_step_end[:] = [time.perf_counter()]
            progress(step + 1, steps)
            return tensors

        patch = apply_dype(
            pipe,
            config,
            width=request.width,
            height=request.height,
            shift=request.shift,
        )
        with patch:
            mu = pipeline_mu(pipe, request.width, request.height) if kind.family == "flux1" else patch.mu
            image = pipe(
                **embeds,
                width=request.width,
                height=request.height,
                num_inference_steps=steps,
                guidance_scale=kind.guidance if request.guidance is None else request.guidance,
                generator=torch.Generator("cpu").manual_seed(request.seed),
                callback_on_step_end=on_step_end,
                output_type="latent" if dype_tiles else "pil",
            ).images
    if dype_tiles:
        with bars("decode (tiled)") as progress:
            image = decode_packed_latents(pipe, image, request.width, request.height, progress=progress)
    else:
        image = image[0]
    end = time.perf_counter()
    denoised = last_step_end[0] if last_step_end else end
    clock.phase(f"denoise{tag}", start, denoised)
    clock.phase(f"decode{tag}", denoised, end)
    return image, mu


def generation_parameters(
    request: GenerateRequest,
    kind: ModelKind,
    config: DyPEConfig | None,
    pipe: Any,
    device: torch.device,
    dtype: torch.dtype,
    mus: list[float | None],
) -> dict[str, Any]:
    """Every parameter of a finished run, JSON-ready: what the PNG metadata holds."""
    vae_decode = vae_decode_mode(request.width, request.height, request.offload, kind.family)
    parameters: dict[str, Any] = {
        "software": _software(),
        "model": request.model,
        "pipeline": kind.pipeline,
        "family": kind.family,
        "variant": kind.name,
        "prompt": request.prompt,
        "width": request.width,
        "height": request.height,
        "seed": request.seed,
        "steps": request.steps or kind.steps,
        "guidance": kind.guidance if request.guidance is None else request.guidance,
        "max_sequence_length": request.max_sequence_length or kind.max_sequence_length,
        "scheduler": type(pipe.scheduler).__name__,
        "preset": request.preset,
        "method": request.method,
        "requested_scale": request.dype_scale,
        "requested_exponent": request.dype_exponent,
        "shift": request.shift,
        **dype_parameters(config, kind.family),
        "mu": mus[-1],
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "offload": request.offload,
        "vae_tiling": vae_decode != "untiled",
        "vae_decode": vae_decode,
        "compare": request.compare,
    }
    if request.compare:
        parameters["panels"] = "left: DyPE off, right: DyPE on"
        parameters["mu_off"] = mus[0]
    return parameters


def generate(
    request: GenerateRequest, log: Callable[[str], None] | None = None, progress: ProgressBars | None = None
) -> GenerateResult:
    """Run one request: device, model folder, load, encode, render (twice with `compare`); writes nothing.

    Raises ValueError for a device this machine lacks, GenerateError for an unusable model folder or an
    out-of-memory error. Everything that can be checked is checked before the model is loaded.
    """
    log = log or (lambda _message: None)
    bars = progress or _no_bars
    clock = _Clock()
    device = pick_device(request.device, request.offload)
    dtype = torch_dtype(request.dtype, device)
    path = resolve_model_path(request.model)
    kind = read_model_kind(path)
    check_config_files(path)
    config = request.dype_config(kind.family)  # the family's base resolution and isotropy
    if request.compare and config is None:
        raise ValueError(
            f"--compare needs DyPE on, but preset {request.preset!r} is off at {request.width}x{request.height} "
            f"for {kind.pipeline} (auto and area switch on above 1.5 × its base resolution); use --preset 4k"
        )

    panels = [(None, "DyPE off"), (config, describe_dype(config))] if request.compare else [(config, "")]
    images: list[Image.Image] = []
    mus: list[float | None] = []
    max_sequence_length = request.max_sequence_length or kind.max_sequence_length
    with out_of_memory_hint(request, device):
        start = time.perf_counter()
        pipe = load_pipeline(path, kind, device, dtype, request.offload)
        if vae_decode_mode(request.width, request.height, request.offload, kind.family) == "diffusers tiled":
            pipe.vae.enable_tiling()
        clock.phase("load", start)
        log(f"loaded {kind.pipeline} ({kind.name}) from {path} ({dtype}, {device}, offload {request.offload})")

        start = time.perf_counter()
        if kind.family == "flux1":  # encode once for both panels
            with torch.no_grad():
                prompt_embeds, pooled_prompt_embeds, _ = pipe.encode_prompt(
                    prompt=request.prompt,
                    prompt_2=None,
                    device=pipe._execution_device,
                    max_sequence_length=max_sequence_length,
                )
            embeds: dict[str, Any] = {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled_prompt_embeds}
            clock.phase("encode", start)
        else:
            embeds = {"prompt": request.prompt, "max_sequence_length": max_sequence_length}
        for panel_config, _label in panels:
            tag = "" if len(panels) == 1 else (" (off)" if panel_config is None else " (on)")
            image, mu = _render(pipe, request, kind, panel_config, embeds, clock, tag, bars)
            images.append(image)
            mus.append(mu)

    parameters = generation_parameters(request, kind, config, pipe, device, dtype, mus)
    return GenerateResult(images, [label for _, label in panels], parameters, clock.timings)


def _software() -> str:
    import diffusers

    from dype import __version__

    return f"dype {__version__} generate (diffusers {diffusers.__version__})"
