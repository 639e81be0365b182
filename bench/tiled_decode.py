"""Bench: dype's tiled FLUX decode vs the untiled decode and diffusers' own tiled_decode, on CPU.

The real FLUX VAE architecture (InvokeAI's BFL ``AutoEncoder`` with FLUX's ``AutoEncoderParams``) with
random weights (seed 0); diffusers' ``AutoencoderKL`` gets the same weights through diffusers' own LDM
converter. The latent is a strong low-frequency field plus noise (seed 1), so image regions differ in
their statistics, as real images do. Every decode runs in its own subprocess, which reports its wall
time and its peak RSS (``ru_maxrss``) before and after the decode.

    .venv/bin/python bench/tiled_decode.py            # the whole plan (~30 min on 2 cores)
    .venv/bin/python bench/tiled_decode.py --quick    # only the 1024² error comparison

Results: bench/results/tiled_decode.json (rewritten after every run) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: kB


def worker(mode: str, size: int, dtype_name: str, tile: int, overlap: int, out: str | None) -> dict:
    import_torchvision()
    import numpy as np
    import torch
    from invokeai.backend.flux.modules.autoencoder import AutoEncoder
    from invokeai.backend.flux.util import get_flux_ae_params

    from dype.tiled_vae import tiled_decode

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    params = get_flux_ae_params()
    torch.manual_seed(SEED_WEIGHTS)
    ae = AutoEncoder(params).eval()
    gen = torch.Generator().manual_seed(SEED_LATENTS)
    n = size // 8
    low = torch.nn.functional.interpolate(torch.randn(1, 16, 4, 4, generator=gen) * 3, size=(n, n), mode="bicubic")
    z = low + 0.5 * torch.randn(1, 16, n, n, generator=gen)

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


def _run(entry: tuple, out_dir: Path) -> dict:
    mode, size, dtype, tile, overlap, save = entry
    out = out_dir / f"{mode}_{size}_{dtype}.npy" if save else None
    cmd = [sys.executable, __file__, "--worker", mode, str(size), dtype, str(tile), str(overlap)]
    if out:
        cmd.append(str(out))
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {
            "mode": mode,
            "size": size,
            "dtype": dtype,
            "tile": tile,
            "overlap": overlap,
            "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] if proc.stderr else ''}",
        }
    return json.loads(lines[-1])


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the 1024² error comparison")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs from the last results file")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, size, dtype, tile, overlap, *out = args.worker
        print(json.dumps(worker(mode, int(size), dtype, int(tile), int(overlap), out[0] if out else None)))
        return 0

    sys.path.insert(0, str(HERE.parent / "src"))
    RESULTS.mkdir(exist_ok=True)
    out_dir = Path(tempfile.gettempdir()) / "dype-bench-tiled-decode"  # 12 MB per image: not in the repo
    out_dir.mkdir(exist_ok=True)
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
