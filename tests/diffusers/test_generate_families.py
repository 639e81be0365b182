"""`dype generate` on tiny saved FLUX.2 Klein, Chroma and Z-Image checkpoints (in-process, CPU).

Each checkpoint is detected from its own configs (pipeline class, distillation, scheduler), run through
its pipeline's own prompt encoding with DyPE on, and written as a PNG whose metadata names the family,
the pinned μ and the family's resolved base resolution; DyPE off gives the pipeline's plain image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dype.diffusers.model_folder import read_model_kind

from .family_folders import build_chroma, build_klein, build_z_image
from .test_generate_cli import cli

SIZE = ["--size", "384x256"]  # 24×16 tokens: DyPE on with --base-resolution 128
FAST = ["--steps", "2", "--max-sequence-length", "24", "--seed", "3", "--prompt", "a red cat"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_components) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("family-checkpoints")
    return {
        "klein": build_klein(folder / "klein"),
        "z_image": build_z_image(folder / "z-image"),
        "chroma": build_chroma(folder / "chroma", tiny_components["text_encoder_2"], tiny_components["tokenizer_2"]),
    }


def test_the_checkpoint_kind_is_read_from_its_configs(checkpoints: dict[str, Path], tiny_flux_dir: Path) -> None:
    kinds = {name: read_model_kind(path) for name, path in checkpoints.items()}
    assert (kinds["klein"].pipeline, kinds["klein"].family, kinds["klein"].name) == (
        "Flux2KleinPipeline", "flux2", "klein")  # fmt: skip
    assert (kinds["klein"].steps, kinds["klein"].guidance) == (4, 1.0)  # distilled: 4 steps, no CFG
    assert (kinds["z_image"].family, kinds["z_image"].steps, kinds["z_image"].guidance) == ("z_image", 8, 0.0)
    assert (kinds["chroma"].family, kinds["chroma"].dynamic_shift) == ("chroma", True)
    assert read_model_kind(tiny_flux_dir).family == "flux1"


def test_flux2_dev_and_klein_base_are_told_apart(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """FLUX.2 dev (a Mistral text encoder: no tiny one is built here) is read from model_index.json alone."""
    import shutil

    for pipeline, distilled, expected in (("Flux2Pipeline", False, ("flux2-dev", 50, 4.0)),
                                          ("Flux2KleinPipeline", False, ("klein-base", 50, 4.0))):  # fmt: skip
        folder = tmp_path / expected[0]
        shutil.copytree(checkpoints["klein"], folder)
        index = json.loads((folder / "model_index.json").read_text())
        index.update({"_class_name": pipeline, "is_distilled": distilled})
        (folder / "model_index.json").write_text(json.dumps(index))
        kind = read_model_kind(folder)
        assert (kind.pipeline, kind.family, (kind.name, kind.steps, kind.guidance)) == (pipeline, "flux2", expected)


def png_parameters(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)


@pytest.mark.parametrize(
    ("name", "family", "mu"),
    [("klein", "flux2", "2.02"), ("z_image", "z_image", "null"), ("chroma", "chroma", "1.15")],
)
def test_generate_runs_each_family_with_dype(name, family, mu, checkpoints, tmp_path) -> None:
    out = tmp_path / f"{name}.png"
    dype = ["--preset", "4k", "--base-resolution", "128"]
    code, stdout, stderr = cli("--model", str(checkpoints[name]), *SIZE, *FAST, *dype, "--out", str(out))
    assert code == 0, stderr
    assert f"wrote {out}" in stdout and "Traceback" not in stderr
    text = png_parameters(out)
    assert (text["family"], text["dype"], text["dype_base_resolution"], text["mu"]) == (family, "on", "128", mu)
    assert text["dype_isotropic"] == ("true" if family == "z_image" else "false")  # the family's default
    with Image.open(out) as image:
        assert image.size == (384, 256)
    off = tmp_path / f"{name}-off.png"
    assert cli("--model", str(checkpoints[name]), *SIZE, *FAST, "--preset", "off", "--out", str(off))[0] == 0
    with Image.open(out) as on_image, Image.open(off) as off_image:
        assert on_image.tobytes() != off_image.tobytes()  # DyPE changed the picture
    assert png_parameters(off)["dype"] == "off"


def test_compare_checks_the_family_threshold_before_loading(checkpoints, tmp_path) -> None:
    """FLUX.2's base is 2048: auto is off at 2048 px, so --compare has nothing to compare."""
    out = tmp_path / "c.png"
    code, _, stderr = cli(
        "--model", str(checkpoints["klein"]), "--size", "2048x2048", *FAST, "--compare", "--out", str(out)
    )
    assert code == 2 and "--compare needs DyPE on" in stderr and "Flux2KleinPipeline" in stderr
    assert not (tmp_path / "c.png").exists()


def test_metadata_names_the_pipeline(checkpoints, tmp_path) -> None:
    out = tmp_path / "z.png"
    assert cli("--model", str(checkpoints["z_image"]), *SIZE, *FAST, "--out", str(out))[0] == 0
    text = png_parameters(out)
    assert (text["pipeline"], text["variant"], text["dype"]) == ("ZImagePipeline", "z-image", "off")  # auto: 384 px
    assert json.loads(text["parameters"])["steps"] == 2
