"""The prepared device check for 4K: what DyPE costs next to a FLUX step, and the tiled decode on a GPU.

    python bench/device_check.py              # CUDA, bf16, random weights, no downloads; budget 270 s
    python bench/device_check.py --cpu        # the same code at tiny sizes, in seconds (a test runs it)
    python bench/device_check.py --out PATH   # where the JSON goes (default bench/results/device_check.json)

Three sections, each at 2048², 3840×2160 and 4096² on the GPU (128², 224×128 and 256², float32, one
thread, with ``--cpu``),
measured side by side in one run and labelled with the machine:

1. **embedder**: one call of ``dype.DyPEEmbedND`` at a new σ and at a repeated σ (Heun's second
   evaluation), next to plain RoPE (InvokeAI's ``EmbedND``; dype's method "base" without invokeai), on
   float32 ids with the 512 T5 tokens.
2. **blocks**: one FLUX double-stream and one single-stream block (InvokeAI's ``DoubleStreamBlock`` /
   ``SingleStreamBlock``: hidden 3072, 24 heads, MLP ratio 4, qkv bias, random bf16 weights), fed with
   InvokeAI's own ``pe`` (its ids are in the model's dtype: bf16), plain float32 ``pe`` and DyPE's
   float32 ``pe``. A
   full step is 19 double + 38 single blocks; DyPE's share of it is the embedder's new-σ time over
   that step (target <= 0.5 %).
3. **vae**: the FLUX VAE decoder (InvokeAI's ``AutoEncoder`` with FLUX's params, random weights)
   decoding in one piece and with ``dype.tiled_vae.tiled_decode`` at tile 1024 and 512, with the waiting
   tiles forced onto the device and into host RAM: wall time, ``torch.cuda.max_memory_allocated`` and
   the error against the untiled decode. Targets: 4096² at tile 1024 within 8 GiB of VRAM (host RAM
   parking); parked on the device, wall <= 1.5 × untiled.

Each figure is one run after a warm-up (blocks and embedder: the median of ``--repeats``). A case that
fails (out of memory, say an untiled 4096² decode on a 24 GB card) is recorded with its error and the
next one runs; cases that would end past the whole-run time budget (``--budget-s``, default 270 s) are
skipped and say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "device_check.json"
GIB = 2**30
THETA = 10_000
DOUBLE_BLOCKS, SINGLE_BLOCKS = 19, 38  # FLUX.1 dev / schnell
SEED = 0

TARGET_DYPE_SHARE = 0.005
TARGET_TILED_VRAM_GIB = 8.0
TARGET_DEVICE_PARK_WALL_RATIO = 1.5


@dataclass(frozen=True)
class Setup:
    """What one run measures. ``vae_width``: base channel count of the VAE (FLUX: 128)."""

    device: str
    dtype: str
    sizes: tuple[tuple[int, int], ...]  # (width, height) in pixels, multiples of 16
    text_tokens: int
    hidden: int
    heads: int
    axes_dim: tuple[int, int, int]
    vae_width: int
    vae_ch_mult: tuple[int, ...]
    vae_res_blocks: int
    tiles: tuple[int, ...]
    overlap: int
    repeats: int
    budget_s: float


GPU_SETUP = Setup(
    device="cuda",
    dtype="bf16",
    sizes=((2048, 2048), (3840, 2160), (4096, 4096)),
    text_tokens=512,
    hidden=3072,
    heads=24,
    axes_dim=(16, 56, 56),
    vae_width=128,
    vae_ch_mult=(1, 2, 4, 4),
    vae_res_blocks=2,
    tiles=(1024, 512),
    overlap=64,
    repeats=5,
    budget_s=270.0,
)
# The same code at sizes a 2-core CPU runs in seconds: a 128-wide, 2-head block (head dim 64), the FLUX
# VAE's four levels at 32/32/64/64 channels with one ResnetBlock each (the test suite's tiny VAE), tiles
# scaled like the images. float32: the CPU's bf16 convolutions are slow paths that would only measure
# themselves. One torch thread: at these sizes a second one only adds synchronisation (on a shared machine,
# a wait of ~10 ms per convolution).
CPU_SETUP = replace(
    GPU_SETUP,
    device="cpu",
    dtype="fp32",
    sizes=((128, 128), (224, 128), (256, 256)),
    text_tokens=16,
    hidden=128,
    heads=2,
    axes_dim=(8, 28, 28),
    vae_width=32,
    vae_ch_mult=(1, 1, 2, 2),
    vae_res_blocks=1,
    tiles=(128, 96),
    overlap=32,
    repeats=2,
    budget_s=120.0,
)


# ----------------------------------------------------------------------------------------------------
# Timing and memory on either device.


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], repeats: int, device: Any) -> float:
    """Median wall milliseconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@dataclass
class Measured:
    wall_s: float
    peak_gib: float | None  # torch.cuda.max_memory_allocated during the call (None on CPU)
    peak_increment_gib: float | None  # the same less what was allocated before the call
    result: Any = field(repr=False)


def measure(fn: Callable[[], Any], device: Any) -> Measured:
    """Wall time and CUDA peak allocation of one ``fn()`` call."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    wall = time.perf_counter() - start
    if not cuda:
        return Measured(wall, None, None, result)
    peak = torch.cuda.max_memory_allocated(device)
    return Measured(wall, peak / GIB, (peak - before) / GIB, result)


def _free(device: Any) -> None:
    """Between CUDA cases: collect cycles and return cached blocks, so that each peak is the case's own.
    (On a CPU nothing is measured per case, and a collection of the whole heap costs ~0.5 s.)"""
    import torch

    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _describe_error(error: BaseException) -> str:
    """A case's failure in one line: "out of memory: ..." for CUDA OOM, else the exception's type and message."""
    import torch

    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in first_line.lower():
        return f"out of memory: {first_line}"
    return f"{type(error).__name__}: {first_line}"


class Budget:
    """The whole run's time budget: a case is skipped when its predicted end is past it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def skip_reason(self, predicted_s: float = 0.0) -> str | None:
        if self.elapsed() + predicted_s > self.seconds:
            return f"time budget: {self.elapsed():.0f} s spent + ~{predicted_s:.0f} s predicted > {self.seconds:.0f} s"
        return None


# ----------------------------------------------------------------------------------------------------
# The parts. The embedder API is used only in these helpers (sizes are keyword arguments there).


def flux_ids(width: int, height: int, text_tokens: int, device: Any, dtype: Any) -> Any:
    """(1, text + (H/16)(W/16), 3) FLUX position ids: zeros for the text, (0, row, column) per image token."""
    import torch

    rows, cols = torch.meshgrid(torch.arange(height // 16), torch.arange(width // 16), indexing="ij")
    image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    ids = torch.cat([torch.zeros(text_tokens, 3, dtype=torch.long), image])
    return ids.to(device=device, dtype=dtype)[None]


def plain_embedder(axes_dim: tuple[int, ...]) -> tuple[Any, str]:
    """Plain FLUX RoPE: InvokeAI's EmbedND, or dype's method "base" (the same float64 math) without invokeai."""
    from dype import DyPEConfig, DyPEEmbedND

    try:
        from invokeai.backend.flux.modules.layers import EmbedND
    except ImportError:
        return DyPEEmbedND(sum(axes_dim), THETA, list(axes_dim), DyPEConfig(method="base")), "dype method base"
    return EmbedND(dim=sum(axes_dim), theta=THETA, axes_dim=list(axes_dim)), "InvokeAI EmbedND"


def dype_embedder(axes_dim: tuple[int, ...]) -> Any:
    from dype import DyPEConfig, DyPEEmbedND

    return DyPEEmbedND(sum(axes_dim), THETA, list(axes_dim), DyPEConfig())


def set_dype_step(embedder: Any, sigma: float, width: int, height: int) -> None:
    embedder.set_step_state(sigma, height=height, width=width)


def flux_blocks(setup: Setup, device: Any, dtype: Any) -> tuple[Any, Any]:
    """One DoubleStreamBlock and one SingleStreamBlock with FLUX's layer shapes, random weights."""
    import torch
    from invokeai.backend.flux.modules.layers import DoubleStreamBlock, SingleStreamBlock

    torch.manual_seed(SEED)
    with torch.device(device):  # initialised where they run: no 1 GB detour through host RAM
        double = DoubleStreamBlock(setup.hidden, setup.heads, mlp_ratio=4.0, qkv_bias=True)
        single = SingleStreamBlock(setup.hidden, setup.heads, mlp_ratio=4.0)
    return double.to(dtype).eval(), single.to(dtype).eval()


def flux_vae(setup: Setup, device: Any, dtype: Any) -> Any:
    """InvokeAI's BFL AutoEncoder with FLUX's params (FLUX: base width 128, channel multipliers 1/2/4/4,
    2 ResnetBlocks per level), decoder only."""
    import dataclasses

    import torch
    from invokeai.backend.flux.modules.autoencoder import AutoEncoder
    from invokeai.backend.flux.util import get_flux_ae_params

    torch.manual_seed(SEED)
    with torch.device(device):
        params = dataclasses.replace(
            get_flux_ae_params(),
            ch=setup.vae_width,
            ch_mult=list(setup.vae_ch_mult),
            num_res_blocks=setup.vae_res_blocks,
        )
        vae = AutoEncoder(params)
    vae.encoder = None  # decode only
    return vae.to(dtype).eval()


def structured_latents(width: int, height: int, device: Any, dtype: Any, batch: int = 1) -> Any:
    """(B, 16, H/8, W/8): a low-frequency field plus noise, so image regions differ in their statistics."""
    import torch

    gen = torch.Generator().manual_seed(SEED + 1)
    size = (height // 8, width // 8)
    low = torch.nn.functional.interpolate(torch.randn(batch, 16, 4, 4, generator=gen) * 3, size=size, mode="bicubic")
    return (low + 0.5 * torch.randn(batch, 16, *size, generator=gen)).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# Sections.


def check_embedder(setup: Setup, device: Any, budget: Budget) -> list[dict]:
    import torch

    plain, plain_name = plain_embedder(setup.axes_dim)
    rows = []
    for width, height in setup.sizes:
        row: dict = {"size": f"{width}x{height}", "plain": plain_name}
        if (why := budget.skip_reason()) is not None:
            rows.append({**row, "skipped": why})
            continue
        ids = flux_ids(width, height, setup.text_tokens, device, torch.float32)
        row["tokens"] = ids.shape[1]
        with torch.no_grad():
            row.update(_time_embedders(plain, dype_embedder(setup.axes_dim), ids, width, height, setup.repeats))
        rows.append(row)
    return rows


def _time_embedders(plain: Any, ours: Any, ids: Any, width: int, height: int, repeats: int) -> dict:
    sigmas = iter([1.0 - i / (4 * repeats + 8) for i in range(4 * repeats + 8)])  # every call a σ not seen

    def new_sigma() -> Any:
        set_dype_step(ours, next(sigmas), width, height)
        return ours(ids)

    return {
        "plain_ms": median_ms(lambda: plain(ids), repeats, ids.device),
        "dype_new_sigma_ms": median_ms(new_sigma, repeats, ids.device),
        "dype_repeated_sigma_ms": median_ms(lambda: ours(ids), repeats, ids.device),
    }


def check_blocks(setup: Setup, device: Any, dtype: Any, budget: Budget, embedder_rows: list[dict]) -> list[dict]:
    """Block times with each ``pe``; DyPE's share of a 57-block step."""
    double, single = flux_blocks(setup, device, dtype)
    plain, _ = plain_embedder(setup.axes_dim)
    rows = []
    for (width, height), embed_row in zip(setup.sizes, embedder_rows, strict=True):
        row: dict = {"size": f"{width}x{height}"}
        if (why := budget.skip_reason()) is not None or "skipped" in embed_row:
            rows.append({**row, "skipped": why or embed_row["skipped"]})
            continue
        try:
            row.update(_time_blocks(setup, device, dtype, double, single, plain, width, height))
        except Exception as error:  # one failed case (out of memory, a kernel's size limit) must not end the run
            row["error"] = _describe_error(error)
        _free(device)  # after the except clause: its traceback no longer pins the tensors
        if "step_ms" in row:
            row["dype_share_of_step"] = embed_row["dype_new_sigma_ms"] / (
                row["step_ms"] + embed_row["dype_new_sigma_ms"]
            )
        rows.append(row)
    del double, single
    _free(device)
    return rows


def _time_blocks(
    setup: Setup, device: Any, dtype: Any, double: Any, single: Any, plain: Any, width: int, height: int
) -> dict:
    import torch

    ours = dype_embedder(setup.axes_dim)
    set_dype_step(ours, 0.5, width, height)
    with torch.no_grad():
        pes = {
            # InvokeAI's FLUX Denoise builds its ids in the model's dtype (bf16), so its pe and apply_rope are
            # bf16; dype's pe is float32.
            "invokeai_pe": plain(flux_ids(width, height, setup.text_tokens, device, dtype)),
            "plain_fp32_pe": plain(flux_ids(width, height, setup.text_tokens, device, torch.float32)),
            "dype_pe": ours(flux_ids(width, height, setup.text_tokens, device, torch.float32)),
        }
    image_tokens = (height // 16) * (width // 16)
    gen = torch.Generator(device=device).manual_seed(SEED)
    img = torch.randn(1, image_tokens, setup.hidden, device=device, dtype=dtype, generator=gen)
    txt = torch.randn(1, setup.text_tokens, setup.hidden, device=device, dtype=dtype, generator=gen)
    vec = torch.randn(1, setup.hidden, device=device, dtype=dtype, generator=gen)
    both = torch.cat((txt, img), dim=1)
    row: dict = {"pe_dtype": {name: str(pe.dtype).removeprefix("torch.") for name, pe in pes.items()}}
    with torch.no_grad():
        for name, pe in pes.items():
            row[f"double_ms_{name}"] = median_ms(partial(double, img, txt, vec, pe), setup.repeats, device)
            row[f"single_ms_{name}"] = median_ms(partial(single, both, vec, pe), setup.repeats, device)
    row["step_ms"] = DOUBLE_BLOCKS * row["double_ms_dype_pe"] + SINGLE_BLOCKS * row["single_ms_dype_pe"]
    plain_step = DOUBLE_BLOCKS * row["double_ms_invokeai_pe"] + SINGLE_BLOCKS * row["single_ms_invokeai_pe"]
    # What dype's float32 pe does to the blocks themselves (apply_rope in float32), against InvokeAI's.
    row["blocks_with_dype_pe_over_invokeai_pe"] = row["step_ms"] / plain_step
    return row


def check_vae(setup: Setup, device: Any, dtype: Any, budget: Budget) -> list[dict]:
    """Untiled vs tiled decodes (each tile size, both park places) at every size."""
    import torch

    from dype.tiled_vae import plan_park, tiled_decode

    vae = flux_vae(setup, device, dtype)
    # Warm-up: kernels, cuDNN handles and the allocator's first blocks are not the decodes' cost.
    with torch.no_grad():
        warm = structured_latents(256, 256, device, dtype)
        vae.decode(warm)
        tiled_decode(vae, warm, tile_size=128, overlap=32, park="host", log=lambda _: None)
    _free(device)

    cases = [("untiled", 0, "-")] + [("tiled", tile, park) for tile in setup.tiles for park in ("device", "host")]
    walls: dict[tuple, tuple[int, float]] = {}  # (mode, tile, park) -> (pixels, wall) of the last size run
    rows = []
    for width, height in setup.sizes:
        latents = structured_latents(width, height, device, dtype)
        reference = None
        for mode, tile, park in cases:
            row: dict = {"size": f"{width}x{height}", "mode": mode, "tile": tile or None, "park": park}
            if mode == "tiled":
                # What park="auto" would choose with the memory free now (the decode decides after its head).
                row["auto_would_park"] = plan_park(vae, latents, tile_size=tile, overlap=setup.overlap).place
            last = walls.get((mode, tile, park))
            predicted = 0.0 if last is None else last[1] * width * height / last[0] * 1.2
            if (why := budget.skip_reason(predicted)) is not None:
                rows.append({**row, "skipped": why})
                continue
            decode = partial(_decode, vae, latents, mode, tile, setup.overlap, park)
            try:
                measured = measure(decode, device)
            except Exception as error:  # one failed case (out of memory, a kernel's size limit) must not end the run
                row["error"] = _describe_error(error)
            if "error" in row:
                _free(device)  # after the except clause: its traceback no longer pins the tensors
                rows.append(row)
                continue
            image, measured.result = measured.result.float().cpu(), None
            row.update(
                wall_s=round(measured.wall_s, 3),
                peak_gib=_round(measured.peak_gib),
                peak_increment_gib=_round(measured.peak_increment_gib),
            )
            walls[(mode, tile, park)] = (width * height, measured.wall_s)
            if mode == "untiled":
                reference = image
            elif reference is not None:
                diff = (image - reference).abs()
                row.update(max_abs_error=float(diff.max()), mean_abs_error=float(diff.mean()))
            del image
            _free(device)
            rows.append(row)
        del latents, reference
        _free(device)
    return rows


def _decode(vae: Any, latents: Any, mode: str, tile: int, overlap: int, park: str) -> Any:
    import torch

    from dype.tiled_vae import tiled_decode

    with torch.no_grad():
        if mode == "untiled":
            return vae.decode(latents)
        return tiled_decode(vae, latents, tile_size=tile, overlap=overlap, park=park, log=lambda _: None)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# ----------------------------------------------------------------------------------------------------
# Verdicts and report.


def targets(report: dict) -> list[dict]:
    """The issue's targets, each with the figure it was judged on (None when the case did not run)."""
    checks = []
    shares = [r["dype_share_of_step"] for r in report["blocks"] if "dype_share_of_step" in r]
    checks.append(
        {
            "target": f"DyPE's share of a 57-block step <= {TARGET_DYPE_SHARE:.1%} at every size",
            "value": max(shares) if shares else None,
            "met": bool(shares) and max(shares) <= TARGET_DYPE_SHARE,
        }
    )
    largest = "x".join(map(str, report["setup"]["sizes"][-1]))
    tile = report["setup"]["tiles"][0]
    vae = {(r["size"], r["mode"], r["tile"], r["park"]): r for r in report["vae"]}
    host = vae.get((largest, "tiled", tile, "host"), {})
    checks.append(
        {
            "target": f"{largest} tiled, tile {tile}, parked in host RAM: VRAM <= {TARGET_TILED_VRAM_GIB:g} GiB",
            "value": host.get("peak_gib"),
            "met": host.get("peak_gib") is not None and host["peak_gib"] <= TARGET_TILED_VRAM_GIB,
        }
    )
    for width, height in report["setup"]["sizes"]:
        size = f"{width}x{height}"
        untiled = vae.get((size, "untiled", None, "-"), {}).get("wall_s")
        device = vae.get((size, "tiled", tile, "device"), {}).get("wall_s")
        ratio = None if untiled is None or device is None else device / untiled
        checks.append(
            {
                "target": f"{size} tiled, tile {tile}, parked on the device: wall <= "
                f"{TARGET_DEVICE_PARK_WALL_RATIO:g}x untiled",
                "value": ratio,
                "met": ratio is not None and ratio <= TARGET_DEVICE_PARK_WALL_RATIO,
            }
        )
    return checks


def machine(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return (
        f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def _fmt(value: Any, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def render(report: dict) -> str:
    lines = [f"# dype device check: {report['machine']}, {report['dtype']}", ""]
    lines += [
        "| size | tokens | plain RoPE | DyPE new σ | DyPE repeated σ | new σ / plain |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["embedder"]:
        if "plain_ms" not in r:
            lines.append(f"| {r['size']} | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        lines.append(
            f"| {r['size']} | {r['tokens']} | {r['plain_ms']:.2f} ms | {r['dype_new_sigma_ms']:.2f} ms | "
            f"{r['dype_repeated_sigma_ms']:.3f} ms | {r['dype_new_sigma_ms'] / r['plain_ms']:.2f}× |"
        )
    lines += [
        "",
        "| size | double block (InvokeAI pe / fp32 pe / DyPE pe) | single block (same) | 57-block step | "
        "blocks, DyPE pe / InvokeAI pe | DyPE share of the step |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["blocks"]:
        if "step_ms" not in r:
            lines.append(f"| {r['size']} | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        double = " / ".join(f"{r[f'double_ms_{k}']:.2f}" for k in ("invokeai_pe", "plain_fp32_pe", "dype_pe"))
        single = " / ".join(f"{r[f'single_ms_{k}']:.2f}" for k in ("invokeai_pe", "plain_fp32_pe", "dype_pe"))
        lines.append(
            f"| {r['size']} | {double} ms | {single} ms | {r['step_ms']:.0f} ms | "
            f"{r['blocks_with_dype_pe_over_invokeai_pe']:.3f}× | {r['dype_share_of_step']:.3%} |"
        )
    lines += [
        "",
        "| size | decode | tile | park | auto would park | wall | peak VRAM | max abs err | mean abs err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["vae"]:
        head = f"| {r['size']} | {r['mode']} | {r['tile'] or '–'} | {r['park']} | {r.get('auto_would_park', '–')} |"
        if "wall_s" not in r:
            lines.append(f"{head} {r.get('skipped') or r.get('error')} | | | |")
            continue
        lines.append(
            f"{head} {r['wall_s']:.2f} s | {_fmt(r['peak_gib'], '.2f', ' GiB')} | "
            f"{_fmt(r.get('max_abs_error'), '.1e')} | {_fmt(r.get('mean_abs_error'), '.1e')} |"
        )
    lines += ["", "| target | value | met |", "|---|---|---|"]
    for t in report["targets"]:
        value = t["value"]
        shown = "n/a" if value is None else (f"{value:.3%}" if "share" in t["target"] else f"{value:.2f}")
        lines.append(f"| {t['target']} | {shown} | {'yes' if t['met'] else 'no'} |")
    sections = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["section_s"].items())
    lines.append(f"\n{report['elapsed_s']:.0f} s of a {report['setup']['budget_s']:.0f} s budget ({sections}).")
    return "\n".join(lines)


def run(setup: Setup) -> dict:
    import torch

    device = torch.device(setup.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu for the tiny-size check")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[setup.dtype]
    budget = Budget(setup.budget_s)
    report: dict = {
        "machine": "",
        "dtype": setup.dtype,
        "setup": asdict(setup),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        report["machine"] = machine(device)
        report["section_s"] = {}
        for section, check in (
            ("embedder", lambda: check_embedder(setup, device, budget)),
            ("blocks", lambda: check_blocks(setup, device, dtype, budget, report["embedder"])),
            ("vae", lambda: check_vae(setup, device, dtype, budget)),
        ):
            start = budget.elapsed()
            report[section] = check()
            report["section_s"][section] = round(budget.elapsed() - start, 1)
    finally:
        torch.set_num_threads(threads)
    report["elapsed_s"] = round(budget.elapsed(), 1)
    report["targets"] = targets(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (the test suite's smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON path (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=None, help="whole-run time budget in seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per embedder / block figure")
    args = parser.parse_args(argv)

    from dype._torchvision_compat import import_torchvision

    import_torchvision()  # FLUX's modules import torchvision, which a CPU torch wheel may not match
    setup = CPU_SETUP if args.cpu else GPU_SETUP
    if args.budget_s is not None:
        setup = replace(setup, budget_s=args.budget_s)
    if args.repeats is not None:
        setup = replace(setup, repeats=args.repeats)
    try:
        report = run(setup)
    except Exception:
        traceback.print_exc()
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing
    raise SystemExit(main())
