"""The FLUX.1 snapshot: the cases whose outputs were frozen from main at commit bea57c5 (before the family core).

`python -m tests.core.flux1_snapshot` rewrites `flux1_snapshot.json` from the code as it is now; it was run
once on bea57c5, and `test_flux1_snapshot.py` checks that every later version gives the same bytes.
Each case stores the SHA-256 of the embedder's output (every byte, so "equal" means bit for bit) and a
few values (to say how far off a changed output is).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import torch

SNAPSHOT = Path(__file__).with_name("flux1_snapshot.json")
TEXT_TOKENS = 3
# (width, height): square, both non-square orientations, 4K, above 4096 px, below the base size.
SIZES = ((1024, 1024), (2048, 1024), (1024, 2048), (3840, 2160), (4608, 1024), (768, 512))
SIGMAS = (1.0, 0.61, 0.25, 0.0)
METHODS = ("base", "ntk", "yarn", "vision_yarn")
# (λs, λt, start σ): the defaults, the `auto` preset at 4K, a late start for the amplitude / τ clamp.
PARAMETERS = ((2.0, 2.0, 1.0), (7.5, 2.0, 1.0), (3.0, 0.5, 0.5))


def flux_ids(width: int, height: int) -> torch.Tensor:
    """[1, N, 3] float32: text (0, 0, 0), then (0, row, column) row-major."""
    rows, cols = torch.meshgrid(torch.arange(height // 16), torch.arange(width // 16), indexing="ij")
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return torch.cat([torch.zeros(TEXT_TOKENS, 3, dtype=torch.long), image]).float()[None]


# `dype plan` arguments whose printed table is frozen too.
PLAN_COMMANDS = (
    ("--size", "3840x2160", "--steps", "12"),
    ("--size", "2048x1024", "--steps", "6", "--method", "yarn", "--preset", "manual", "--scale", "3"),
    ("--size", "4096x4096", "--steps", "8", "--method", "ntk", "--preset", "4k", "--shift", "stock"),
    ("--size", "1024x3072", "--steps", "4", "--variant", "schnell", "--preset", "area"),
    ("--size", "4096x4096", "--steps", "5", "--preset", "off"),
)


def plan_text(argv: tuple[str, ...]) -> str:
    """What `dype plan ARGV` prints."""
    import contextlib
    import io

    from dype.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", *argv]) == 0
    return out.getvalue()


def cases() -> list[dict]:
    """Every (layout, method, dynamic, λs/λt/start, size, σ) combination; static cases use one σ."""
    out = []
    for layout, method, dynamic, parameters, size in itertools.product(
        ("bfl", "diffusers"), METHODS, (True, False), PARAMETERS, SIZES
    ):
        if method == "base" and (not dynamic or parameters != PARAMETERS[0]):
            continue  # base ignores all of them
        for sigma in SIGMAS if dynamic else (0.61,):
            out.append(
                dict(layout=layout, method=method, dynamic=dynamic, scale=parameters[0], exponent=parameters[1],
                     start_sigma=parameters[2], width=size[0], height=size[1], sigma=sigma)
            )  # fmt: skip
    return out


def case_key(case: dict) -> str:
    return (
        f"{case['layout']}-{case['method']}-{'dyn' if case['dynamic'] else 'static'}-"
        f"{case['scale']:g}-{case['exponent']:g}-{case['start_sigma']:g}-{case['width']}x{case['height']}-"
        f"s{case['sigma']:g}"
    )


def digest(output: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[str, list[float]]:
    """SHA-256 over the output's bytes, and 8 sample values (first and last token, a few slots)."""
    tensors = output if isinstance(output, tuple) else (output,)
    sha = hashlib.sha256()
    samples: list[float] = []
    for tensor in tensors:
        flat = tensor.contiguous().reshape(-1)
        sha.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        sha.update(flat.numpy().tobytes())
        samples += [float(flat[i]) for i in (0, 37, flat.numel() // 2, flat.numel() - 1)]
    return sha.hexdigest(), samples


def compute(case: dict) -> tuple[str, list[float]]:
    """The digest of one case's embedder output, computed by the code as it is now."""
    from dype import DyPEConfig, DyPEEmbedND, DyPEPosEmbed

    config = DyPEConfig(
        enable_dype=case["dynamic"],
        method=case["method"],
        dype_scale=case["scale"],
        dype_exponent=case["exponent"],
        dype_start_sigma=case["start_sigma"],
    )
    ids = flux_ids(case["width"], case["height"])
    if case["layout"] == "bfl":
        embedder = DyPEEmbedND(128, 10_000, [16, 56, 56], config)
    else:
        embedder, ids = DyPEPosEmbed(10_000, [16, 56, 56], config), ids[0]
    embedder.set_step_state(case["sigma"], width=case["width"], height=case["height"])
    return digest(embedder(ids))


def write() -> None:
    entries = {}
    for case in cases():
        sha, samples = compute(case)
        entries[case_key(case)] = {"sha256": sha, "samples": samples}
    for argv in PLAN_COMMANDS:
        entries["plan: " + " ".join(argv)] = {"text": plan_text(argv)}
    SNAPSHOT.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(entries)} cases to {SNAPSHOT}")


if __name__ == "__main__":
    write()
