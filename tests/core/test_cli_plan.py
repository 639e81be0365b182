"""`dype plan` end to end, and every console script's --help."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dype
from dype.cli import SUBCOMMAND_MODULES, main
from tests.cli_helpers import dype_env, unwritable_folder

FAST_PLAN = ["plan", "--size", "2048x2048", "--steps", "2"]


def test_plan_prints_one_row_per_step(capsys) -> None:
    assert main(["plan", "--size", "3840x2160", "--steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "3840×2160" in out and "vision_yarn, λs=7.5, λt=2" in out and "μ=1.150 (official)" in out
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 6
    first, last = rows[0].split(), rows[-1].split()
    assert first[1] == "1.0000" and float(first[2]) == pytest.approx(7.5)
    assert float(last[2]) < float(first[2])  # κ decays
    # Each axis: base/blend/interp add up to 28 slots.
    for cell in (first[4], first[7]):
        assert sum(int(n) for n in cell.split("/")) == 28


def test_plan_off_and_stock_shift(capsys) -> None:
    assert main(["plan", "--size", "4096x4096", "--preset", "off", "--steps", "4", "--shift", "stock"]) == 0
    out = capsys.readouterr().out
    assert "DyPE off" in out and "μ=11.5" in out
    assert "28/0/0" in out  # nothing changes without DyPE


def test_plan_schnell_has_no_shift(capsys) -> None:
    assert main(["plan", "--size", "2048x2048", "--variant", "schnell", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "no shift (schnell)" in out and " 0.7500 " in out


def test_plan_writes_a_png(tmp_path, capsys) -> None:
    target = tmp_path / "plot" / "plan.png"
    assert main(["plan", "--size", "2048x1024", "--method", "yarn", "--steps", "5", "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 20_000
    assert f"wrote {target}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "1000x1024"], "width must be a positive multiple of 16"),
        (["--size", "big"], "--size must look like WIDTHxHEIGHT"),
        (["--size", "2048x2048", "--scale", "9"], r"dype_scale must be in \[0, 8\]"),
        (["--size", "2048x2048", "--steps", "0"], "num_steps must be a positive integer"),
    ],
)
def test_plan_bad_input_exits_2_with_a_message(argv, message: str, capsys) -> None:
    assert main(["plan", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_plan_rejects_unknown_choices(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--size", "2048x2048", "--preset", "on"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'on'" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys) -> None:
    for module in SUBCOMMAND_MODULES:
        command = module.rsplit(".", 1)[1]
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: dype" in capsys.readouterr().out


def test_console_script_help_runs() -> None:
    # The installed `dype` script of this environment, running the dype under test (PYTHONPATH first).
    script = Path(sys.executable).with_name("dype")
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=120, env=dype_env(), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "plan" in result.stdout and "generate" in result.stdout and "invokeai" in result.stdout


def run_main(*argv: str) -> tuple[int, str, str]:
    """`dype ARGV` in-process as a shell would see it: (exit code, stdout, stderr).

    A SystemExit carrying a message is what the interpreter turns into that message on stderr and exit 1.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--size", "1000x1024"], "--size width must be a positive multiple of 16 (pixels), got 1000"),
        (["--size", "2048x2048", "--scale", "9"], "dype_scale must be in [0, 8], got 9"),
    ],
)
def test_same_bad_input_same_message_and_exit_code_in_plan_and_generate(bad: list[str], message: str) -> None:
    plan = run_main("plan", *bad)
    generate = run_main("generate", "--model", "no-such-model", "--prompt", "a cat", *bad)
    assert plan[0] == generate[0] == 2
    assert plan[2] == f"dype plan: error: {message}\n"
    assert generate[2] == f"dype generate: error: {message}\n"


def _plot_target(kind: str, tmp_path: Path) -> Path:
    if kind == "folder":
        return tmp_path
    if kind in ("no suffix", "jpg suffix"):
        return tmp_path / ("plan" if kind == "no suffix" else "plan.jpg")
    if kind == "parent is a file":
        (tmp_path / "notes.txt").write_text("a file")
        return tmp_path / "notes.txt" / "plan.png"
    folder = unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("no folder here that this process cannot write")
    return folder / "sub" / "plan.png"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("folder", "is a folder"),
        ("no suffix", "must end in .png"),
        ("jpg suffix", "must end in .png"),
        ("parent is a file", "notes.txt is a file, not a folder"),
        ("unwritable", "cannot write in"),
    ],
)
def test_plan_refuses_a_plot_path_it_cannot_write_before_planning(kind: str, message: str, tmp_path: Path) -> None:
    target = _plot_target(kind, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_main(*FAST_PLAN, "--plot", str(target))
    assert (code, out) == (2, "")  # the cheap check comes first: no table printed, nothing computed
    assert err.startswith(f"dype plan: error: plot {target}") and message in err and err.count("\n") == 1
    assert sorted(tmp_path.rglob("*")) == before and not tmp_path.with_suffix(".png").exists()  # nothing written


def test_plot_without_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is missing
    code, out, err = run_main(*FAST_PLAN, "--plot", str(tmp_path / "plan.png"))
    assert (code, out) == (1, "")
    assert "matplotlib" in err and "pip install 'dype[cli]'" in err and "Traceback" not in err
    assert not (tmp_path / "plan.png").exists()


def test_plot_plan_library_refuses_a_folder(tmp_path: Path) -> None:
    from dype.plan import make_plan
    from dype.plot import plot_plan

    plan = make_plan(None, "flux1", width=1024, height=1024, num_steps=2)
    with pytest.raises(ValueError, match="is a folder"):
        plot_plan(plan, tmp_path)
    assert not tmp_path.with_suffix(".png").exists()


def test_numpy_scalars_are_accepted_by_the_public_api() -> None:
    config = dype.resolve_dype_config(
        "manual",
        width=np.int64(3840),
        height=np.int32(2160),
        dype_scale=np.float32(2.5),
        dype_exponent=np.float64(2.0),
        base_resolution=np.int64(1024),
    )
    assert config == dype.DyPEConfig(dype_scale=2.5, dype_exponent=2.0, base_resolution=1024)
    assert type(config.dype_scale) is float and type(config.base_resolution) is int
    direct = dype.DyPEConfig(dype_scale=np.float32(3.0), dype_start_sigma=np.float16(0.5), enable_dype=np.bool_(True))
    assert (direct.dype_scale, direct.dype_start_sigma, direct.enable_dype) == (3.0, 0.5, True)
    with pytest.raises(ValueError, match=r"dype_scale must be in \[0, 8\], got 9"):
        dype.DyPEConfig(dype_scale=np.float64(9.0))


@pytest.mark.parametrize(("family", "slots"), [("flux2", 16), ("z_image", 24), ("chroma", 28)])
def test_plan_for_each_family(family: str, slots: int, capsys, tmp_path) -> None:
    target = tmp_path / f"{family}.png"
    assert main(["plan", "--family", family, "--size", "4096x2048", "--steps", "4", "--plot", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"slots per axis ({slots})" in out
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 4
    for cell in (rows[0].split()[4], rows[0].split()[7]):
        assert sum(int(n) for n in cell.split("/")) == slots
    if family == "z_image":  # isotropic by default: both axes scaled by 4096/1024
        assert "axis scales: rows 4, columns 4" in out
        assert rows[0].split()[4] == rows[0].split()[7]
    if family == "flux2":  # B = 2048: the rows are at the base, the columns at 2×
        assert "axis scales: rows 1, columns 2" in out and "μ=2.020" in out
    assert target.stat().st_size > 20_000


def test_plan_family_options_are_checked(capsys) -> None:
    assert main(["plan", "--family", "flux2", "--size", "2048x2048", "--variant", "schnell"]) == 2
    assert "--variant schnell is a FLUX.1 variant" in capsys.readouterr().err
    assert main(["plan", "--family", "z_image", "--size", "2048x1024", "--no-isotropic", "--steps", "2"]) == 0
    assert "axis scales: rows 1, columns 2" in capsys.readouterr().out
    assert main(["plan", "--size", "2048x2048", "--base-resolution", "1000"]) == 2
    assert "base_resolution must be a positive multiple of 16" in capsys.readouterr().err
