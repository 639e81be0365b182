"""`dype plan`: what DyPE will do for an image size, per sampling step, as a table and a picture."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from dype.cli import CommandError
from dype.config import DYPE_METHODS
from dype.extras import require_modules
from dype.families import FAMILIES, FAMILY_NAMES, check_image_side
from dype.presets import DYPE_PRESET_DESCRIPTIONS, DYPE_PRESETS, resolve_dype_config
from dype.schedule import SHIFT_MODES
from dype.validation import check_output_file

_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: str, family: str = "flux1") -> tuple[int, int]:
    """'3840x2160' → (width, height); both positive multiples of the family's token side."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"--size must look like WIDTHxHEIGHT in pixels (e.g. 3840x2160), got {text!r}")
    width, height = int(match[1]), int(match[2])
    return check_image_side("--size width", width, family), check_image_side("--size height", height, family)


def add_dype_arguments(parser: argparse.ArgumentParser, default_preset: str = "auto") -> None:
    """The DyPE options shared by `plan` and `generate`."""
    presets = "; ".join(f"{name}: {text}" for name, text in DYPE_PRESET_DESCRIPTIONS.items())
    parser.add_argument(
        "--preset",
        choices=DYPE_PRESETS,
        default=default_preset,
        help=f"DyPE preset (default {default_preset}). {presets}",
    )
    parser.add_argument(
        "--method", choices=DYPE_METHODS, default="vision_yarn", help="extrapolation method (default vision_yarn)"
    )
    parser.add_argument("--scale", type=float, default=None, help="λs in [0, 8], read by --preset manual only")
    parser.add_argument("--exponent", type=float, default=None, help="λt in [0, 1000], read by --preset manual only")
    parser.add_argument(
        "--base-resolution",
        type=int,
        default=None,
        help="the model's training size B in pixels (default: the family's, e.g. 1024 for FLUX.1, 2048 for FLUX.2)",
    )
    parser.add_argument(
        "--isotropic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scale both axes by the larger scale (default: the family's; on for Z-Image)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="show what DyPE does for an image size, step by step (no model needed)",
        description="Print, per sampling step, σ, κ, each spatial axis's scale, how many frequency slots stay at "
        "plain RoPE / are blended / are interpolated, and the amplitude; optionally plot it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--size", required=True, help="target image WIDTHxHEIGHT in pixels, e.g. 3840x2160")
    parser.add_argument(
        "--family",
        choices=FAMILY_NAMES,
        default="flux1",
        help="model family: "
        + "; ".join(f"{name}: {family.title} ({family.variants})" for name, family in FAMILIES.items()),
    )
    add_dype_arguments(parser)
    parser.add_argument("--steps", type=int, default=28, help="number of sampling steps")
    parser.add_argument(
        "--shift",
        choices=SHIFT_MODES,
        default="official",
        help="official: the family's DyPE μ while DyPE is on (1.15; FLUX.2 2.02); stock: the host's own μ",
    )
    parser.add_argument(
        "--variant", choices=("dev", "schnell"), default="dev", help="FLUX variant (schnell: no shift)"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="also write a PNG of the plan to this file; the name must end in .png, missing folders are created",
    )
    parser.set_defaults(func=run)


def _format_config(config) -> str:
    if config is None:
        return "DyPE off (plain RoPE)"
    return (
        f"{config.method}, λs={config.dype_scale:g}, λt={config.dype_exponent:g}, "
        f"start σ={config.dype_start_sigma:g}, {'dynamic' if config.enable_dype else 'static'}"
    )


def format_plan(plan, preset: str, shift: str) -> str:
    """The plan as a fixed-width text table."""
    mu = "no shift (schnell)" if plan.mu is None else f"μ={plan.mu:.3f} ({shift})"
    rows_scale, cols_scale = plan.axis_scales
    family = plan.family
    slots = family.axes_dim[family.row_axis] // 2
    title = "" if family.name == "flux1" else f"{family.title}, "
    lines = [
        f"DyPE plan for {title}{plan.width}×{plan.height} (W×H): preset {preset} → {_format_config(plan.config)}",
        f"schedule: {len(plan.steps)} steps, {mu}; axis scales: rows {rows_scale:.3g}, columns {cols_scale:.3g}",
        f"slots per axis ({slots}): base = plain RoPE, blend = NTK or mixed, interp = ω_base / scale",
        f"{'step':>4} {'σ':>7} {'κ':>7} | {'rows base/blend/interp':>22} {'amp':>6} | {'cols base/blend/interp':>22} "
        f"{'amp':>6}",
    ]
    for step in plan.steps:
        kappa = "-" if step.kappa is None else f"{step.kappa:.3f}"
        cells = [f"{f'{a.at_base}/{a.blended}/{a.interpolated}':>22} {a.amplitude:6.3f}" for a in step.axes]
        lines.append(f"{step.index + 1:>4} {step.sigma:7.4f} {kappa:>7} | {cells[0]} | {cells[1]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the plan; with --plot also draw it. Every argument is checked before anything is computed."""
    width, height = parse_size(args.size, args.family)
    if args.variant == "schnell" and args.family != "flux1":
        raise ValueError(f"--variant schnell is a FLUX.1 variant; --family {args.family} has no schnell")
    config = resolve_dype_config(
        args.preset,
        width=width,
        height=height,
        dype_scale=args.scale,
        dype_exponent=args.exponent,
        method=args.method,
        base_resolution=args.base_resolution,
        isotropic=args.isotropic,
        family=args.family,
    )
    plot = None
    if args.plot is not None:
        plot = check_output_file("plot", args.plot)
        require_modules(["matplotlib"], extra="cli", purpose="dype plan --plot")

    from dype.plan import make_plan

    plan = make_plan(
        config,
        args.family,
        width=width,
        height=height,
        num_steps=args.steps,
        shift=args.shift,
        shifted=args.variant == "dev",
    )
    print(format_plan(plan, args.preset, args.shift))
    if plot is not None:
        from dype.plot import plot_plan

        try:
            written = plot_plan(plan, plot, title=f"preset {args.preset} → {_format_config(config)}")
        except OSError as error:
            raise CommandError(f"could not write {plot}: {error.strerror or error}") from error
        print(f"wrote {written}")
    return 0
