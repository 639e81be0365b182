"""`dype generate` end to end on the tiny FLUX checkpoints saved to a temp folder (in-process, CPU)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dype.cli import main
from dype.diffusers.generate import GenerateRequest, decode_packed_latents, vae_decode_mode
from dype.families import FLUX1
from dype.schedule import stock_mu
from tests.cli_helpers import run_python, unwritable_folder

DYPE_MU = FLUX1.dype_mu

# 1088×128: the long side is past the 1024 px base (DyPE acts on the columns) yet only 544 tokens.
WIDTH, HEIGHT = 1088, 128
FAST = ["--steps", "2", "--max-sequence-length", "16", "--seed", "7", "--prompt", "a red cat"]


def cli(*argv: str) -> tuple[int, str, str]:
    """Run `dype generate ARGV` in-process as a shell would see it: (exit code, stdout, stderr).

    A SystemExit carrying a message is what the interpreter turns into that message on stderr and exit 1.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["generate", *argv])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
    return code, out.getvalue(), err.getvalue()


def fails(*argv: str, code: int | None = None) -> str:
    """Run `dype generate ARGV`, expect a non-zero exit (`code` if given), return the error line."""
    exit_code, _, stderr = cli(*argv)
    assert exit_code != 0 and (code is None or exit_code == code), (exit_code, stderr)
    return stderr.rstrip("\n").splitlines()[-1]


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
    elif kind == "unknown-pipeline":
        shutil.copytree(tiny_flux_dir, folder)
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = "StableDiffusion3Pipeline"
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
        ("empty", "not a diffusers-format model folder (no model_index.json)"),
        ("not-flux", "not a FluxPipeline checkpoint (model_index.json names transformer"),
        ("unknown-pipeline", "names the pipeline 'StableDiffusion3Pipeline'; dype generate runs FluxPipeline"),
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
    code, _, stderr = cli("--model", str(tiny_flux_dir), "--size", "128x128", *FAST, "--preset", "8k")
    assert code == 2 and "invalid choice: '8k'" in stderr


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
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    for option in ("--model", "--prompt", "--size", "--preset", "--offload", "--compare", "--out", "--seed"):
        assert option in result.stdout
    assert "PNG only" in result.stdout  # --out documents that it refuses other suffixes


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


def _out_target(kind: str, tmp_path: Path) -> Path:
    if kind == "folder":
        return tmp_path
    if kind == "under a file":
        (tmp_path / "notes.txt").write_text("a file")
        return tmp_path / "notes.txt" / "x.png"
    if kind in ("jpg", "no suffix"):
        return tmp_path / ("x.jpg" if kind == "jpg" else "x")
    folder = unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("no folder here that this process cannot write")
    return folder / "x.png"


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("folder", "is a folder"),
        ("under a file", "notes.txt is a file, not a folder"),
        ("jpg", "must end in .png"),
        ("no suffix", "must end in .png"),
        ("unwritable", "cannot write in"),
    ],
)
def test_out_is_checked_before_the_model_loads(tiny_flux_dir: Path, tmp_path: Path, kind: str, match: str) -> None:
    target = _out_target(kind, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, stdout, stderr = cli("--model", str(tiny_flux_dir), "--size", "128x128", *FAST, "--out", str(target))
    assert code == 2 and stderr.startswith(f"dype generate: error: out {target}")
    assert match in stderr and stderr.count("\n") == 1
    assert "loaded FLUX" not in stdout  # no render thrown away
    assert sorted(tmp_path.rglob("*")) == before


def test_out_error_comes_before_the_model_error(tmp_path: Path) -> None:
    message = fails("--model", str(tmp_path / "nowhere"), "--size", "128x128", *FAST, "--out", str(tmp_path), code=2)
    assert message.startswith(f"dype generate: error: out {tmp_path} is a folder")


@pytest.mark.parametrize(
    ("guidance", "match"),
    [("nan", "guidance must be a finite number"), ("inf", "guidance must be a finite number"),
     ("-1", "guidance must be in [0, 100], got -1")],
)  # fmt: skip
def test_guidance_must_be_finite_and_in_range(tiny_flux_dir: Path, tmp_path: Path, guidance: str, match: str) -> None:
    out = tmp_path / "x.png"
    model = ["--model", str(tiny_flux_dir), "--size", "128x128"]
    message = fails(*model, *FAST, "--guidance", guidance, "--out", str(out), code=2)
    assert match in message and not out.exists()  # nan used to write a black image and exit 0


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_unavailable_device_is_a_clear_error(tiny_flux_dir: Path, tmp_path: Path, device: str) -> None:
    backend = torch.cuda if device == "cuda" else torch.backends.mps
    if backend.is_available():
        pytest.skip(f"{device} is available here")
    code, stdout, stderr = cli(
        "--model", str(tiny_flux_dir), "--size", "128x128", *FAST, "--device", device, "--out", str(tmp_path / "x.png")
    )
    assert code == 2 and stderr.count("\n") == 1, stderr  # cuda: an AssertionError from deep in torch before
    assert f"device {device} is not available" in stderr and "available here: cpu" in stderr
    assert "loaded FLUX" not in stdout


def test_generate_without_diffusers_names_the_extra(
    tiny_flux_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what `import diffusers` meets when it is missing
    out = tmp_path / "x.png"
    code, _, stderr = cli("--model", str(tiny_flux_dir), "--size", "128x128", *FAST, "--out", str(out))
    assert code == 1 and "diffusers" in stderr and "pip install 'dype[diffusers]'" in stderr
    assert stderr.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(
    "config", ["model_index.json", "tokenizer/tokenizer_config.json", "tokenizer_2/tokenizer.json"]
)
def test_a_non_utf8_config_is_named(tiny_flux_dir: Path, tmp_path: Path, config: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_flux_dir, model)
    data = (model / config).read_bytes()
    quote = data.index(b'"') + 1
    (model / config).write_bytes(data[:quote] + "café ".encode("latin-1") + data[quote:])  # é in Latin-1
    code, stdout, stderr = cli("--model", str(model), "--size", "128x128", *FAST, "--out", str(tmp_path / "x.png"))
    assert code == 1 and f"{model / config}: not UTF-8" in stderr, stderr
    assert "loaded FLUX" not in stdout


def test_numpy_scalars_in_a_generate_request(tmp_path: Path) -> None:
    request = GenerateRequest(
        model="some/model",
        prompt="a red cat",
        width=np.int64(1088),
        height=np.int16(128),
        preset="manual",
        dype_scale=np.float32(2.5),
        dype_exponent=np.float64(2.0),
        steps=np.int64(2),
        guidance=np.float32(3.5),
        seed=np.uint64(7),
        max_sequence_length=np.int32(16),
        out=tmp_path / "x.png",
    )
    values = (request.width, request.height, request.dype_scale, request.steps, request.guidance, request.seed)
    assert values == (1088, 128, 2.5, 2, 3.5, 7) and request.max_sequence_length == 16
    assert [type(value) for value in values] == [int, int, float, int, float, int]  # JSON-ready for the PNG
    with pytest.raises(ValueError, match=r"steps must be a positive integer, got 0"):
        GenerateRequest(model="m", prompt="p", width=128, height=128, steps=np.int64(0), out=tmp_path / "x.png")


def test_decode_of_an_empty_latent_is_a_clear_error(flux_pipe: Any) -> None:
    with pytest.raises(ValueError, match="width must be a positive multiple of 16"):
        decode_packed_latents(flux_pipe, torch.zeros(1, 0, 16), 0, 128)
    with pytest.raises(ValueError, match=r"latents hold 0 tokens; a 128x128 image has 64"):
        decode_packed_latents(flux_pipe, torch.zeros(1, 0, 16), 128, 128)


def test_python_dash_m_dype_generate_runs_without_the_test_workaround(tiny_flux_dir: Path, tmp_path: Path) -> None:
    # A fresh process loads no conftest: the CLI itself must cope with this environment's torchvision.
    out = tmp_path / "sub" / "x.png"
    argv = ["--model", str(tiny_flux_dir), "--size", "128x128", "--steps", "1", "--max-sequence-length", "16"]
    result = run_python("-m", "dype", "generate", *argv, "--prompt", "a cat", "--out", str(out))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout and Image.open(out).text["prompt"] == "a cat"


def test_a_failed_png_write_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    from dype.cli._render_output import write_png

    path = write_png(Image.new("RGB", (4, 4), "blue"), tmp_path / "x.png", {"seed": 1})
    before = path.read_bytes()
    with pytest.raises(OSError, match="cannot write mode CMYK as PNG"):  # fails inside the encoder
        write_png(Image.new("CMYK", (4, 4)), path, {"seed": 2})
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]
