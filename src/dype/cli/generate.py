"""`dype generate`: render an image from a local diffusers-format FLUX checkpoint with DyPE.

The application part: arguments, the checks that come before any model is touched, progress bars,
compositing, the PNG and the timings. The rendering itself is the library's (`dype.diffusers.generate`),
imported inside `run` with torch and diffusers, so `dype --help` stays instant.

Order of checks, cheapest first, all before the model loads: every argument (`GenerateRequest`: values,
ranges, the --out path), the optional dependencies (diffusers extra, a torchvision that imports next to
this torch), the device, then the model folder and its configs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dype.cli import CommandError
from dype.cli.plan import add_dype_arguments, parse_size
from dype.extras import require_modules
from dype.generate_request import DEVICES, DTYPE_NAMES, OFFLOAD_MODES, GenerateError, GenerateRequest
from dype.schedule import SHIFT_MODES

EPILOG = """examples:
  dype generate --model ./FLUX.1-dev --prompt "a lighthouse at dusk" --size 3840x2160
  dype generate --model black-forest-labs/FLUX.1-dev --prompt "..." --size 4096x4096 --offload model
  dype generate --model ./FLUX.1-dev --prompt "..." --size 2048x2048 --preset 4k --compare --out cmp.png
  dype generate --model ./FLUX.2-klein-4B --prompt "..." --size 4096x4096
  dype generate --model ./Z-Image-Turbo --prompt "..." --size 3840x2160

--model is a diffusers-format folder (model_index.json, transformer/, vae/, ...) or a repo id already in
the local Hugging Face cache (nothing is downloaded). What it is (FluxPipeline dev or schnell,
Flux2KleinPipeline distilled or base, Flux2Pipeline, ChromaPipeline, ZImagePipeline) is read from the
checkpoint and sets the family's base resolution and the defaults of --steps and --guidance.
--out is PNG only (the parameters live in its text chunks): the name must end in .png; missing folders
are created. Every argument, --out included, is checked before the model is loaded."""

GENERATE_MODULES = ("diffusers", "transformers", "PIL", "tqdm")  # what the `diffusers` extra installs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="render an image from a local FLUX.1 / FLUX.2 / Chroma / Z-Image checkpoint (diffusers) with DyPE",
        description="Text-to-image through diffusers with DyPE for sizes beyond the model's base resolution. "
        "Writes a PNG whose text chunks hold every generation parameter and prints the time per phase.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="diffusers-format model folder, or a cached repo id")
    parser.add_argument("--prompt", required=True, help="the text prompt")
    parser.add_argument("--size", required=True, help="image WIDTHxHEIGHT in pixels, multiples of 16 (3840x2160)")
    add_dype_arguments(parser)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps (default per checkpoint: FLUX.1 dev 28, schnell 4; Klein 4, Klein base 50; FLUX.2 dev "
        "50; Chroma 35; Z-Image Turbo 8)",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance in [0, 100]: FLUX.1 / FLUX.2 dev distilled guidance, CFG scale for the others (default "
        "per checkpoint: FLUX.1 dev 3.5; Klein 1 (no CFG); FLUX.2 dev 4; Chroma 5; Z-Image Turbo 0)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed in [0, 2**64) (default 0)")
    parser.add_argument("--out", type=Path, default=Path("out.png"), help="output file, a .png name (default out.png)")
    parser.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        default="none",
        help="none: everything on the GPU; model: one model at a time on the GPU; sequential: layer by layer "
        "(slowest, least memory). Default none",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="render the same seed with DyPE off and on; write one labelled side-by-side image",
    )
    parser.add_argument(
        "--shift",
        choices=SHIFT_MODES,
        default="official",
        help="official: the family's DyPE μ while DyPE is on (1.15; FLUX.2 2.02); stock: the pipeline's own μ",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="auto", help="default: bfloat16 on cuda, else float32")
    parser.add_argument(
        "--max-sequence-length",
        type=int,
        default=None,
        help="prompt tokens (default: FLUX.1 dev 512, schnell 256; the others 512)",
    )
    parser.set_defaults(func=run)


def request_from_args(args: argparse.Namespace) -> GenerateRequest:
    """The validated request; ValueError (exit 2) for any bad argument, --out included."""
    width, height = parse_size(args.size)
    return GenerateRequest(
        model=args.model,
        prompt=args.prompt,
        width=width,
        height=height,
        preset=args.preset,
        method=args.method,
        dype_scale=args.scale,
        dype_exponent=args.exponent,
        base_resolution=args.base_resolution,
        isotropic=args.isotropic,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        shift=args.shift,
        offload=args.offload,
        device=args.device,
        dtype=args.dtype,
        max_sequence_length=args.max_sequence_length,
        compare=args.compare,
        out=args.out,
    )


def prepare_diffusers() -> None:
    """Make `import diffusers` work in this environment, or raise one line that names the cause and the fix.

    The diffusers extra must be installed (MissingExtraError). A torchvision built for another torch (as
    InvokeAI's pins pull in next to a CPU torch) stops every diffusers/transformers import with "operator
    torchvision::nms does not exist"; FLUX never uses those detection ops, so `dype._torchvision_compat`
    registers their schemas and the import goes through. Any other torchvision failure is a CommandError.
    """
    require_modules(GENERATE_MODULES, extra="diffusers", purpose="dype generate")
    import torch

    from dype._torchvision_compat import import_torchvision

    try:
        import_torchvision()
    except (RuntimeError, ImportError, OSError) as error:
        raise CommandError(
            f"torchvision cannot be imported next to torch {torch.__version__} ({error}); install the "
            "torchvision build made for this torch, or uninstall torchvision (dype generate does not need it)"
        ) from error


def run(args: argparse.Namespace) -> int:
    """Check, render, compose, write; print the path and the seconds per phase."""
    request = request_from_args(args)
    prepare_diffusers()

    from dype.cli._render_output import format_timings, side_by_side, tqdm_progress, write_png
    from dype.diffusers.generate import generate

    try:
        result = generate(request, log=print, progress=tqdm_progress)
    except GenerateError as error:
        raise CommandError(str(error)) from error
    start = time.perf_counter()
    image = side_by_side(result.images, result.labels) if request.compare else result.images[0]
    try:
        written = write_png(image, request.out, result.parameters)
    except OSError as error:
        raise CommandError(f"could not write {request.out}: {error.strerror or error}") from error
    timings = {**result.timings, "save": time.perf_counter() - start}
    print(f"wrote {written}")
    print(format_timings(timings))
    return 0
