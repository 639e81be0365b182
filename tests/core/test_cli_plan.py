"""`dype plan` end to end, and every console script's --help."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from dype.cli import SUBCOMMAND_MODULES, main


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
    script = shutil.which("dype") or str(__import__("pathlib").Path(sys.executable).with_name("dype"))
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "plan" in result.stdout and "generate" in result.stdout and "invokeai" in result.stdout
