"""`dype generate`: render an image from a local diffusers-format FLUX checkpoint with DyPE.

The heavy work lives in `dype.diffusers.generate`; this module only parses arguments and imports
torch/diffusers inside `run`, so `dype --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dype.cli.plan import add_dype_arguments, parse_size
from dype.presets import resolve_dype_config
from dype.schedule import SHIFT_MODES

OFFLOAD_MODES = ("none", "model", "sequential")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")

EPILOG = """examples:
  dype generate --model ./FLUX.1-dev --prompt "a lighthouse at dusk" --size 3840x2160
  dype generate --model black-forest-labs/FLUX.1-dev --prompt "..." --size 4096x4096 --offload model
  dype generate --model ./FLUX.1-dev --prompt "..." --size 2048x2048 --preset 4k --compare --out cmp.png

--model is a diffusers-format folder (model_index.json, transformer/, vae/, ...) or a repo id already in
the local Hugging Face cache (nothing is downloaded). FLUX dev vs schnell is read from the checkpoint."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="render an image from a local FLUX checkpoint (diffusers) with DyPE",
        description="Text-to-image with FLUX dev or schnell through diffusers, with DyPE for sizes beyond "
        "1024². Writes a PNG whose text chunks hold every generation parameter and prints the time per phase.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="diffusers-format FLUX folder, or a cached repo id")
    parser.add_argument("--prompt", required=True, help="the text prompt")
    parser.add_argument("--size", required=True, help="image WIDTHxHEIGHT in pixels, multiples of 16 (3840x2160)")
    add_dype_arguments(parser)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: dev 28, schnell 4)")
    parser.add_argument(
        "--guidance", type=float, default=None, help="distilled guidance (default: dev 3.5; schnell ignores it)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path("out.png"), help="output PNG (default out.png)")
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
        help="official: μ = 1.15 while DyPE is on (DyPE's recipe); stock: diffusers' resolution-dependent μ",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="default: bfloat16 on cuda, else float32")
    parser.add_argument(
        "--max-sequence-length", type=int, default=None, help="T5 prompt tokens (default: dev 512, schnell 256)"
    )
    parser.set_defaults(func=run)


def _fail(message: str) -> SystemExit:
    return SystemExit(f"dype generate: error: {message}")


def format_timings(timings: dict[str, float]) -> str:
    phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items())
    return f"timings: {phases} (total {sum(timings.values()):.2f} s)"


def run(args: argparse.Namespace) -> int:
    # Cheap checks first: a typo in --size should not cost a torch/diffusers import.
    try:
        width, height = parse_size(args.size)
        resolve_dype_config(
            args.preset,
            width=width,
            height=height,
            dype_scale=args.scale,
            dype_exponent=args.exponent,
            method=args.method,
        )
    except ValueError as error:
        raise _fail(str(error)) from error

    from dype.diffusers.generate import GenerateError, GenerateRequest, generate

    try:
        request = GenerateRequest(
            model=args.model,
            prompt=args.prompt,
            width=width,
            height=height,
            preset=args.preset,
            method=args.method,
            dype_scale=args.scale,
            dype_exponent=args.exponent,
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
    except ValueError as error:
        raise _fail(str(error)) from error
    try:
        result = generate(request)
    except GenerateError as error:
        raise _fail(str(error)) from error
    print(f"wrote {result.path}")
    print(format_timings(result.timings))
    return 0
