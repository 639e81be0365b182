"""Embedder speed, side by side in one run: plain FLUX RoPE vs our DyPEEmbedND vs InvokeAI's DyPEEmbedND.

One embedder call at 2048², 3840×2160 and 4096² (512 text tokens + image tokens), float32 ids, CPU
(or --device cuda). Prints medians and ratios to plain RoPE; `--markdown PATH` also writes the table.

    python bench/embedder.py [--repeats 15] [--device cpu] [--markdown docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dype import DyPEConfig, DyPEEmbedND

SIZES = [(2048, 2048), (3840, 2160), (4096, 4096)]
AXES_DIM, THETA = [16, 56, 56], 10_000


def flux_ids(width: int, height: int, device: str) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(height // 16), torch.arange(width // 16), indexing="ij")
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return torch.cat([torch.zeros(512, 3, dtype=torch.long), image]).float()[None].to(device)


def median_ms(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def plain_embedder():
    try:
        from invokeai.backend.flux.modules.layers import EmbedND

        return EmbedND(dim=128, theta=THETA, axes_dim=AXES_DIM), "InvokeAI EmbedND (float64 math)"
    except ImportError:  # without invokeai: dype's own plain RoPE (method base, the same float64 math)
        return DyPEEmbedND(128, THETA, AXES_DIM, DyPEConfig(method="base")), "plain RoPE (dype method base)"


def invokeai_dype() -> torch.nn.Module | None:
    """InvokeAI 6.14's own DyPE embedder at its defaults, when invokeai is installed."""
    try:
        from invokeai.backend.flux.dype.base import DyPEConfig as InvokeConfig
        from invokeai.backend.flux.dype.embed import DyPEEmbedND as InvokeEmbed
    except ImportError:
        return None
    return InvokeEmbed(dim=128, theta=THETA, axes_dim=AXES_DIM, dype_config=InvokeConfig())


def bench_size(width: int, height: int, plain: torch.nn.Module, repeats: int, device: str) -> dict:
    """Median milliseconds of each variant for one image size (every "new σ" call gets a fresh σ)."""
    ids = flux_ids(width, height, device)
    fresh_sigmas = iter([1.0 - i / (4 * repeats + 8) for i in range(4 * repeats + 8)])
    result = {"size": f"{width}×{height}", "tokens": ids.shape[1]}
    result["plain"] = median_ms(lambda: plain(ids), repeats, device)

    def cold() -> None:
        embedder = DyPEEmbedND(128, THETA, AXES_DIM, DyPEConfig())
        embedder.set_step_state(next(fresh_sigmas), width=width, height=height)
        embedder(ids)

    def new_sigma(embedder: torch.nn.Module) -> None:
        embedder.set_step_state(next(fresh_sigmas), width=width, height=height)
        embedder(ids)

    result["ours_cold"] = median_ms(cold, repeats, device)
    ours = DyPEEmbedND(128, THETA, AXES_DIM, DyPEConfig())
    new_sigma(ours)  # warm the grid cache
    result["ours_new_sigma"] = median_ms(lambda: new_sigma(ours), repeats, device)
    result["ours_repeat_sigma"] = median_ms(lambda: ours(ids), repeats, device)
    theirs = invokeai_dype()
    if theirs is not None:
        result["invokeai_new_sigma"] = median_ms(lambda: new_sigma(theirs), repeats, device)
    return result


def run(repeats: int, device: str) -> list[dict]:
    plain, plain_name = plain_embedder()
    rows = [bench_size(width, height, plain, repeats, device) for width, height in SIZES]
    print(
        f"plain = {plain_name}; {repeats} repeats, medians, device {device}, torch threads {torch.get_num_threads()}"
    )
    return rows


COLUMNS = [
    ("plain", "plain RoPE"),
    ("ours_cold", "dype cold"),
    ("ours_new_sigma", "dype new σ"),
    ("ours_repeat_sigma", "dype repeated σ"),
    ("invokeai_new_sigma", "InvokeAI DyPE new σ"),
]


def table(rows: list[dict]) -> str:
    header = (
        "| size | tokens | "
        + " | ".join(name for _, name in COLUMNS)
        + " | dype new σ / plain | dype new σ / InvokeAI |"
    )
    lines = [header, "|" + "---|" * (len(COLUMNS) + 4)]
    for row in rows:
        cells = [f"{row[key]:.2f} ms" if key in row else "n/a" for key, _ in COLUMNS]
        vs_plain = row["ours_new_sigma"] / row["plain"]
        vs_invoke = (
            f"{row['ours_new_sigma'] / row['invokeai_new_sigma']:.3f}×" if "invokeai_new_sigma" in row else "n/a"
        )
        lines.append(
            f"| {row['size']} | {row['tokens']} | " + " | ".join(cells) + f" | {vs_plain:.3f}× | {vs_invoke} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    text = table(run(args.repeats, args.device))
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
