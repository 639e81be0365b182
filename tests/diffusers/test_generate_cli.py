"""`dype generate` end to end on the tiny FLUX checkpoints saved to a temp folder (in-process, CPU)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dype.cli import main
from dype.diffusers.generate import decode_packed_latents, vae_decode_mode
from dype.families import FLUX1
from dype.schedule import stock_mu

DYPE_MU = FLUX1.dype_mu

# 1088×128: the long side is past the 1024 px base (DyPE acts on the columns) yet only 544 tokens.
WIDTH, HEIGHT = 1088, 128
FAST = ["--steps", "2", "--max-sequence-length", "16", "--seed", "7", "--prompt", "a red cat"]


def cli(*argv: str) -> tuple[int, str, str]:
    """Run `dype generate ARGV` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["generate", *argv])
    return code, out.getvalue(), err.getvalue()


def fails(*argv: str) -> str:
    """Run `dype generate ARGV`, expect a non-zero exit, return its message."""
    with pytest.raises(SystemExit) as info:
        cli(*argv)
    assert info.value.code not in (0, None)
    return str(info.value.code)


@pytest.fixture(scope="module")
def renders(tiny_flux_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three runs on the same seed: DyPE on (4k preset), off, and --compare."""
    folder = tmp_path_factory.mktemp("renders")
    model, size = ["--model", str(tiny_flux_dir)], ["--size", f"{WIDTH}x{HEIGHT}"]
    results = {}
    for name, extra in (
        ("on", ["--preset", "4k"]),
        ("off", ["--preset", "off"]),
        ("cmp", ["--preset", "4k", "--compare"]),
    ):
        path = folder / f"{name}.png"
        code, stdout, stderr = cli(*model, *size, *FAST, *extra, "--out", str(path))
        results[name] = {"code": code, "stdout": stdout, "stderr": stderr, "path": path}
    return results


def test_png_written_with_every_parameter(renders: dict[str, Any], tiny_flux_dir: Path) -> None:
    run = renders["on"]
    assert run["code"] == 0
    image = Image.open(run["path"])
    assert image.size == (WIDTH, HEIGHT)
    text = image.text
    assert text["prompt"] == "a red cat" and text["model"] == str(tiny_flux_dir)
    assert (text["width"], text["height"], text["seed"], text["steps"]) == (str(WIDTH), str(HEIGHT), "7", "2")
    assert (text["variant"], text["guidance"], text["max_sequence_length"]) == ("dev", "3.5", "16")
    assert (text["preset"], text["method"], text["dype"], text["shift"]) == ("4k", "vision_yarn", "on", "official")
    assert (text["dype_scale"], text["dype_exponent"], text["dype_start_sigma"]) == ("2.0", "2.0", "1.0")
    assert text["dype_base_resolution"] == "1024" and text["dype_enable_dype"] == "true"
    assert json.loads(text["mu"]) == pytest.approx(DYPE_MU)
    assert text["vae_tiling"] == "true" and text["vae_decode"] == "dype tiled"  # 1088 px > the 1024 px base
    assert text["software"].startswith("dype ")
    parameters = json.loads(text["parameters"])
    assert parameters["prompt"] == "a red cat" and parameters["dype_scale"] == 2.0
    assert set(parameters) == set(text) - {"parameters"}


def test_prints_path_timings_and_progress(renders: dict[str, Any]) -> None:
    run = renders["on"]
    assert f"wrote {run['path']}" in run["stdout"]
    timings = run["stdout"].splitlines()[-1]
    for phase in ("load", "encode", "denoise", "decode", "save", "total"):
        assert f"{phase} " in timings
    assert "denoise, DyPE on" in run["stderr"] and "2/2" in run["stderr"]  # the tqdm bar
    assert "decode (tiled)" in run["stderr"]


def test_off_uses_the_stock_schedule_and_differs(renders: dict[str, Any]) -> None:
    text = Image.open(renders["off"]["path"]).text
    assert text["dype"] == "off" and "dype_scale" not in text
    assert json.loads(text["mu"]) == pytest.approx(stock_mu("flux1", width=WIDTH, height=HEIGHT))
    on = np.asarray(Image.open(renders["on"]["path"]))
    off = np.asarray(Image.open(renders["off"]["path"]))
    assert np.abs(on.astype(int) - off.astype(int)).max() > 0


def test_compare_has_both_labelled_halves(renders: dict[str, Any]) -> None:
    image = Image.open(renders["cmp"]["path"])
    band = image.height - HEIGHT
    assert image.width == 2 * WIDTH + 8 and band > 0
    pixels = np.asarray(image.convert("RGB"))
    left, right = pixels[band:, :WIDTH], pixels[band:, WIDTH + 8 :]
    # Same seed, same model: each half is exactly the single run of that mode.
    assert np.array_equal(left, np.asarray(Image.open(renders["off"]["path"]).convert("RGB")))
    assert np.array_equal(right, np.asarray(Image.open(renders["on"]["path"]).convert("RGB")))
    for labels in (pixels[:band, :WIDTH], pixels[:band, WIDTH + 8 :]):  # dark label text on white
        assert (labels < 128).any() and (labels == 255).any()
    text = image.text
    assert text["compare"] == "true" and text["panels"] == "left: DyPE off, right: DyPE on"
    assert (
        json.loads(text["mu_off"]) == pytest.approx(stock_mu("flux1", width=WIDTH, height=HEIGHT))
        and json.loads(text["mu"]) == DYPE_MU
    )
    timings = renders["cmp"]["stdout"].splitlines()[-1]
    assert "denoise (off)" in timings and "denoise (on)" in timings


def test_schnell_is_detected(tiny_schnell_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "schnell.png"
    code, _, _ = cli(
        "--model", str(tiny_schnell_dir), "--size", "128x128", "--preset", "manual", *FAST, "--out", str(out)
    )
    text = Image.open(out).text
    assert code == 0 and text["variant"] == "schnell" and text["dype"] == "on"
    assert text["mu"] == "null"  # schnell has no shift: nothing to pin
    assert text["guidance"] == "0.0" and text["vae_tiling"] == "false"


def _fake_hf_cache(root: Path, repo_id: str, source: Path) -> None:
    """The hub cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_repo_id_resolved_offline_from_the_hf_cache(
    tiny_flux_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    _fake_hf_cache(tmp_path / "hub", "tiny-org/tiny-flux", tiny_flux_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "cached.png"
    code, stdout, _ = cli("--model", "tiny-org/tiny-flux", "--size", "128x128", *FAST, "--out", str(out))
    assert code == 0 and "snapshots" in stdout and Image.open(out).text["model"] == "tiny-org/tiny-flux"
    message = fails("--model", "tiny-org/not-cached", "--size", "128x128", *FAST)
    assert "no snapshot of the repo 'tiny-org/not-cached' in the local Hugging Face cache" in message


def _folder(tmp_path: Path, kind: str, tiny_flux_dir: Path) -> str:
    if kind == "missing":
        return str(tmp_path / "nowhere")
    if kind == "file":
        (tmp_path / "flux.safetensors").write_bytes(b"")
        return str(tmp_path / "flux.safetensors")
    folder = tmp_path / kind
    if kind == "empty":
        folder.mkdir()
    elif kind == "not-flux":
        shutil.copytree(tiny_flux_dir, folder)
        index = json.loads((folder / "model_index.json").read_text())
        index["transformer"] = ["diffusers", "SD3Transformer2DModel"]
        (folder / "model_index.json").write_text(json.dumps(index))
    elif kind == "no-transformer-config":
        shutil.copytree(tiny_flux_dir, folder)
        (folder / "transformer" / "config.json").unlink()
    return str(folder)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("missing", "no such folder"),
        ("file", "not a folder"),
        ("empty", "not a diffusers-format FLUX folder (no model_index.json)"),
        ("not-flux", "not a FLUX pipeline"),
        ("no-transformer-config", "no transformer/config.json"),
    ],
)
def test_bad_model_folder(tmp_path: Path, tiny_flux_dir: Path, kind: str, match: str) -> None:
    model = _folder(tmp_path, kind, tiny_flux_dir)
    assert match in fails("--model", model, "--size", "128x128", *FAST, "--out", str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--size", "1000x1000"], "width must be a positive multiple of 16"),
        (["--size", "1024x1000"], "height must be a positive multiple of 16"),
        (["--size", "1024"], "WIDTHxHEIGHT"),
        (["--size", "128x128", "--scale", "9"], r"dype_scale must be in [0, 8]"),
        (["--size", "128x128", "--preset", "off", "--compare"], "--compare needs DyPE on"),
        (["--size", "1536x256", "--preset", "auto", "--compare"], "auto and area switch on above 1536 px"),
        (["--size", "128x128", "--device", "cpu", "--offload", "model"], "--offload model needs a GPU"),
        (["--size", "128x128", "--steps", "0"], "steps must be a positive integer"),
    ],
)
def test_bad_arguments(tiny_flux_dir: Path, tmp_path: Path, argv: list[str], match: str) -> None:
    message = fails("--model", str(tiny_flux_dir), *FAST, *argv, "--out", str(tmp_path / "x.png"))
    assert message.startswith("dype generate: error: ") and match in message
    assert not (tmp_path / "x.png").exists()


def test_unknown_preset_is_an_argparse_error(tiny_flux_dir: Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli("--model", str(tiny_flux_dir), "--size", "128x128", *FAST, "--preset", "8k")
    assert info.value.code == 2


def test_out_of_memory_gives_a_hint(tiny_flux_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import FluxTransformer2DModel

    def out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 38.00 GiB")

    monkeypatch.setattr(FluxTransformer2DModel, "forward", out_of_memory)
    message = fails("--model", str(tiny_flux_dir), "--size", "128x128", *FAST, "--out", str(tmp_path / "x.png"))
    assert "out of memory at 128x128" in message
    assert "--offload model" in message and "smaller --size" in message and "Tried to allocate" in message
    assert not (tmp_path / "x.png").exists()


def test_help_in_a_subprocess() -> None:
    # The real console entry point; `dype generate --help` must not import diffusers.
    code = (
        "import sys\nfrom dype.cli import main\n"
        "try:\n    main(['generate', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'diffusers' not in sys.modules, 'diffusers imported by --help'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--model", "--prompt", "--size", "--preset", "--offload", "--compare", "--out", "--seed"):
        assert option in result.stdout


def test_vae_decode_mode() -> None:
    assert vae_decode_mode(1024, 1024, "none") == "untiled"
    assert vae_decode_mode(1088, 128, "none") == "dype tiled"
    assert vae_decode_mode(3840, 2160, "model") == "diffusers tiled"  # accelerate hooks wrap vae.decode


def test_tiled_decode_of_pipeline_latents_matches_the_pipeline_decode(flux_pipe: Any) -> None:
    """The tiled decode `dype generate` uses above 1024 px gives the pipeline's own (untiled) image."""

    def run(output_type: str) -> Any:
        generator = torch.Generator("cpu").manual_seed(3)
        kwargs = {"prompt": "a red cat", "width": 1088, "height": 128, "num_inference_steps": 1}
        return flux_pipe(**kwargs, max_sequence_length=16, generator=generator, output_type=output_type).images

    packed = run("latent")
    ours = np.asarray(decode_packed_latents(flux_pipe, packed, 1088, 128), dtype=np.int16)
    theirs = np.asarray(run("pil")[0], dtype=np.int16)
    assert ours.shape == theirs.shape == (128, 1088, 3)
    assert np.abs(ours - theirs).max() <= 1  # 8-bit rounding of float32 round-off
