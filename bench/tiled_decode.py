"""Bench: dype's tiled FLUX decode vs the untiled decode and diffusers' own tiled_decode, on CPU.

The real FLUX VAE architecture (InvokeAI's BFL ``AutoEncoder`` with FLUX's ``AutoEncoderParams``) with
random weights (seed 0); diffusers' ``AutoencoderKL`` gets the same weights through diffusers' own LDM
converter. The latent is a strong low-frequency field plus noise (seed 1), so image regions differ in
their statistics, as real images do. Every decode runs in its own subprocess, which reports its wall
time and its peak RSS (``ru_maxrss``) before and after the decode.

    .venv/bin/python bench/tiled_decode.py            # the whole FLUX plan (~30 min on 2 cores)
    .venv/bin/python bench/tiled_decode.py --quick    # only the 1024² error comparison
    .venv/bin/python bench/tiled_decode.py --rss      # peak RSS, untiled vs tiled, small FLUX-like VAE, 2048²

``--rss`` uses the FLUX topology at a quarter of its width ("small": 32/64/128/128 channels, 2
ResnetBlocks per level, mid-block attention) so that a 2048² decode takes about a minute on 2 cores.
Each worker first decodes a 128² latent the same way, so that the one-time lazy set-up of the CPU
kernels is not counted as the decode's memory, then reads its RSS and decodes; the increment is
``peak - before``. Prints the tiled / untiled ratio of those increments and the errors against the
untiled decode.

Results: bench/results/tiled_decode.json (or tiled_decode_rss.json for --rss; rewritten after every
run) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dype._torchvision_compat import import_torchvision

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SEED_WEIGHTS = 0
SEED_LATENTS = 1
GIB = 2**30

# (mode, size px, dtype, tile, overlap, save output for the error comparison)
ERROR_PLAN = [
    ("untiled", 1024, "fp32", 0, 0, True),
    ("dype", 1024, "fp32", 512, 128, True),
    ("diffusers", 1024, "fp32", 512, 128, True),
]
SCALE_PLAN = [
    ("untiled", 1024, "bf16", 0, 0, False),
    ("dype", 2048, "bf16", 1024, 64, False),
    ("untiled", 2048, "bf16", 0, 0, False),
    ("dype", 4096, "bf16", 1024, 64, False),
]
FALLBACK = {("dype", 4096): ("dype", 3072, "bf16", 1024, 64, False)}  # when 4096² does not fit in RAM
RSS_SIZE = 2048
RSS_DTYPES = ("fp32", "bf16")
RSS_VAE_WIDTH = 32  # "small": FLUX's channel multipliers on 32 instead of 128
RSS_TARGET = 0.75  # issue #11: tiled increment below 75 % of the untiled one


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: kB


def _latents(size: int):
    import torch

    gen = torch.Generator().manual_seed(SEED_LATENTS)
    n = size // 8
    low = torch.nn.functional.interpolate(torch.randn(1, 16, 4, 4, generator=gen) * 3, size=(n, n), mode="bicubic")
    return low + 0.5 * torch.randn(1, 16, n, n, generator=gen)


def _flux_ae(width: int | None = None):
    """InvokeAI's BFL AutoEncoder with FLUX's params (optionally another base width), random weights."""
    import dataclasses

    import torch
    from invokeai.backend.flux.modules.autoencoder import AutoEncoder
    from invokeai.backend.flux.util import get_flux_ae_params

    params = get_flux_ae_params()
    if width is not None:
        params = dataclasses.replace(params, ch=width)
    torch.manual_seed(SEED_WEIGHTS)
    return AutoEncoder(params).eval(), params


def worker(mode: str, size: int, dtype_name: str, tile: int, overlap: int, out: str | None) -> dict:
    import_torchvision()
    import numpy as np
    import torch

    from dype.tiled_vae import tiled_decode

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    ae, params = _flux_ae()
    z = _latents(size)

    with torch.no_grad():
        if mode == "diffusers":
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
            from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

            config = {
                "in_channels": 3,
                "out_channels": 3,
                "down_block_types": ["DownEncoderBlock2D"] * 4,
                "up_block_types": ["UpDecoderBlock2D"] * 4,
                "block_out_channels": [params.ch * m for m in params.ch_mult],
                "layers_per_block": params.num_res_blocks,
                "latent_channels": params.z_channels,
                "norm_num_groups": 32,
                "sample_size": 1024,
                "scaling_factor": params.scale_factor,
                "shift_factor": params.shift_factor,
                "use_quant_conv": False,
                "use_post_quant_conv": False,
            }
            model = AutoencoderKL(**config).eval()
            model.load_state_dict(convert_ldm_vae_checkpoint(ae.state_dict(), config), strict=True)
            del ae
            model = model.to(dtype)
            model.enable_tiling()
            model.tile_sample_min_size = tile
            model.tile_latent_min_size = tile // 8
            model.tile_overlap_factor = overlap / tile
            zd = (z / params.scale_factor + params.shift_factor).to(dtype)
            rss_before = _rss_gib()
            start = time.perf_counter()
            image = model.tiled_decode(zd).sample
        else:
            ae.encoder = None  # decode only: keep the RSS about the decoder
            ae = ae.to(dtype)
            zl = z.to(dtype)
            rss_before = _rss_gib()
            start = time.perf_counter()
            image = ae.decode(zl) if mode == "untiled" else tiled_decode(ae, zl, tile_size=tile, overlap=overlap)
        wall = time.perf_counter() - start
    result = {
        "mode": mode,
        "size": size,
        "dtype": dtype_name,
        "tile": tile,
        "overlap": overlap,
        "wall_s": round(wall, 1),
        "rss_before_gib": round(rss_before, 2),
        "peak_rss_gib": round(_rss_gib(), 2),
        "torch_threads": torch.get_num_threads(),
    }
    if out:
        np.save(out, image.float().numpy())
    return result


def rss_worker(mode: str, size: int, dtype_name: str, park: str, out: str) -> dict:
    """One decode of the small FLUX-like VAE for --rss; mode "untiled" or "dype" (tile 1024, overlap 64)."""
    import_torchvision()
    import numpy as np
    import torch

    from dype.tiled_vae import tiled_decode

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    ae, _ = _flux_ae(RSS_VAE_WIDTH)
    ae.encoder = None
    ae = ae.to(dtype)
    z = _latents(size).to(dtype)

    def decode(latents):
        if mode == "untiled":
            return ae.decode(latents)
        return tiled_decode(ae, latents, tile_size=1024, overlap=64, park=park, log=lambda _: None)

    with torch.no_grad():
        decode(_latents(128).to(dtype))  # warm-up: the kernels' lazy set-up is not the decode's memory
        rss_before = _rss_gib()
        start = time.perf_counter()
        image = decode(z)
        wall = time.perf_counter() - start
    peak = _rss_gib()
    np.save(out, image.float().numpy())
    return {
        "mode": mode,
        "park": park if mode == "dype" else None,
        "size": size,
        "dtype": dtype_name,
        "wall_s": round(wall, 1),
        "rss_before_gib": round(rss_before, 3),
        "peak_rss_gib": round(peak, 3),
        "increment_gib": round(peak - rss_before, 3),
        "torch_threads": torch.get_num_threads(),
    }


def _subprocess(args: list[str]) -> tuple[dict | None, str]:
    cmd = [sys.executable, __file__, *args]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return None, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] if proc.stderr else ''}"
    return json.loads(lines[-1]), ""


def _run(entry: tuple, out_dir: Path) -> dict:
    mode, size, dtype, tile, overlap, save = entry
    out = out_dir / f"{mode}_{size}_{dtype}.npy" if save else None
    result, error = _subprocess(
        ["--worker", mode, str(size), dtype, str(tile), str(overlap), *([str(out)] if out else [])]
    )
    if result is None:
        return {"mode": mode, "size": size, "dtype": dtype, "tile": tile, "overlap": overlap, "error": error}
    return result


def _errors(out_dir: Path) -> dict:
    import numpy as np

    ref = np.load(out_dir / "untiled_1024_fp32.npy")
    errors = {"output_std": float(ref.std())}
    for mode in ("dype", "diffusers"):
        diff = np.abs(np.load(out_dir / f"{mode}_1024_fp32.npy") - ref)
        # Colour error: the per-channel mean over 64x64-pixel blocks, i.e. what a tile-sized shift moves.
        blocks = diff.reshape(1, 3, 16, 64, 16, 64).mean(axis=(3, 5))
        errors[mode] = {
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
            "max_abs_0_255": float(diff.max() * 127.5),
            "mean_abs_0_255": float(diff.mean() * 127.5),
            "worst_64px_block_mean_abs": float(blocks.max()),
        }
    return errors


def _park_fits(entry: tuple) -> tuple[bool, str]:
    from dype.memory import available_ram, estimate_park_memory

    mode, size, dtype, tile, overlap, _ = entry
    if mode != "dype":
        return True, ""
    # On a CPU decode the parked tiles are the live ones: they must fit in RAM next to ~2 GiB of process.
    need = estimate_park_memory(size, size, tile, overlap=overlap, element_size=2 if dtype == "bf16" else 4)
    free = available_ram() or 0
    if need + 2 * GIB > free:
        return False, f"parked activations ~{need / GIB:.1f} GiB + 2 GiB > {free / GIB:.1f} GiB available RAM"
    return True, ""


def machine() -> str:
    return f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def run_rss(path: Path, out_dir: Path) -> dict:
    """Untiled vs tiled (parked on the device, which on a CPU is the same RAM) side by side, per dtype."""
    import numpy as np

    report: dict = {"machine": machine(), "vae": f"FLUX topology, base width {RSS_VAE_WIDTH}", "runs": []}
    for dtype in RSS_DTYPES:
        pair = {}
        for mode in ("untiled", "dype"):
            out = out_dir / f"rss_{mode}_{dtype}.npy"
            result, error = _subprocess(["--rss-worker", mode, str(RSS_SIZE), dtype, "device", str(out)])
            result = result or {"mode": mode, "dtype": dtype, "error": error}
            report["runs"].append(result)
            pair[mode] = result
            print(json.dumps(result), flush=True)
        if all("increment_gib" in r for r in pair.values()):
            diff = np.abs(np.load(out_dir / f"rss_dype_{dtype}.npy") - np.load(out_dir / f"rss_untiled_{dtype}.npy"))
            ratio = pair["dype"]["increment_gib"] / pair["untiled"]["increment_gib"]
            report[f"ratio_{dtype}"] = {
                "tiled_over_untiled_increment": round(ratio, 3),
                "target": RSS_TARGET,
                "max_abs_error": float(diff.max()),
                "mean_abs_error": float(diff.mean()),
                "wall_ratio": round(pair["dype"]["wall_s"] / pair["untiled"]["wall_s"], 2),
            }
        path.write_text(json.dumps(report, indent=2) + "\n")
    files = {(m, d): out_dir / f"rss_{m}_{d}.npy" for m in ("untiled", "dype") for d in RSS_DTYPES}
    if all(f.exists() for f in files.values()):
        # The scale of bf16 rounding: how far each bf16 decode is from the float32 untiled one.
        exact = np.load(files[("untiled", "fp32")])
        report["bf16_vs_fp32_untiled"] = {
            mode: {"max_abs": float(d.max()), "mean_abs": float(d.mean())}
            for mode in ("untiled", "dype")
            for d in [np.abs(np.load(files[(mode, "bf16")]) - exact)]
        }
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['machine']}, {report['vae']}, {RSS_SIZE}², tile 1024, overlap 64")
    print("| dtype | untiled increment | tiled increment | ratio | max abs error | mean abs error | wall ratio |")
    print("|---|---|---|---|---|---|---|")
    for dtype in RSS_DTYPES:
        r = report.get(f"ratio_{dtype}")
        if r is None:
            print(f"| {dtype} | failed | | | | | |")
            continue
        untiled, tiled = (
            next(x for x in report["runs"] if x["mode"] == m and x["dtype"] == dtype) for m in ("untiled", "dype")
        )
        verdict = "OK" if r["tiled_over_untiled_increment"] < RSS_TARGET else "MISSED"
        print(
            f"| {dtype} | {untiled['increment_gib']:.2f} GiB | {tiled['increment_gib']:.2f} GiB | "
            f"{r['tiled_over_untiled_increment']:.0%} ({verdict} < {RSS_TARGET:.0%}) | {r['max_abs_error']:.1e} | "
            f"{r['mean_abs_error']:.1e} | {r['wall_ratio']:.2f}× |"
        )
    for mode, d in report.get("bf16_vs_fp32_untiled", {}).items():
        print(f"bf16 {mode} vs fp32 untiled: max abs {d['max_abs']:.1e}, mean abs {d['mean_abs']:.1e}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the 1024² error comparison")
    parser.add_argument("--rss", action="store_true", help="peak RSS of untiled vs tiled, small FLUX-like VAE")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs from the last results file")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--rss-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, size, dtype, tile, overlap, *out = args.worker
        print(json.dumps(worker(mode, int(size), dtype, int(tile), int(overlap), out[0] if out else None)))
        return 0
    if args.rss_worker:
        mode, size, dtype, park, out = args.rss_worker
        print(json.dumps(rss_worker(mode, int(size), dtype, park, out)))
        return 0

    sys.path.insert(0, str(HERE.parent / "src"))
    RESULTS.mkdir(exist_ok=True)
    out_dir = Path(tempfile.gettempdir()) / "dype-bench-tiled-decode"  # 12-50 MB per image: not in the repo
    out_dir.mkdir(exist_ok=True)
    if args.rss:
        run_rss(RESULTS / "tiled_decode_rss.json", out_dir)
        return 0
    report: dict = {"runs": [], "cpu": os.cpu_count()}
    path = RESULTS / "tiled_decode.json"
    previous = json.loads(path.read_text())["runs"] if args.resume and path.exists() else []
    plan = ERROR_PLAN + ([] if args.quick else SCALE_PLAN)
    while plan:
        entry = plan.pop(0)
        mode, size, dtype, tile, overlap, save = entry
        key = {"mode": mode, "size": size, "dtype": dtype, "tile": tile, "overlap": overlap}
        reusable = [r for r in previous if all(r.get(k) == v for k, v in key.items()) and "wall_s" in r]
        fits, why = _park_fits(entry)
        if reusable and (not save or (out_dir / f"{mode}_{size}_{dtype}.npy").exists()):
            result = reusable[-1]  # --resume after an interrupted run
        elif fits:
            result = _run(entry, out_dir)
        else:
            result = {**key, "skipped": why}
        if "wall_s" not in result and (mode, size) in FALLBACK:
            plan.insert(0, FALLBACK[(mode, size)])
        report["runs"].append(result)
        if entry == ERROR_PLAN[-1]:
            report["errors_1024"] = _errors(out_dir)
        path.write_text(json.dumps(report, indent=2))
        print(json.dumps(result), flush=True)
    print(json.dumps(report.get("errors_1024"), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
