"""bench/device_check.py --cpu: the GPU check's code, run at tiny sizes so that it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "device_check.py"


def _load_device_check(monkeypatch):
    spec = importlib.util.spec_from_file_location("device_check", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "device_check", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_device_check_cpu_completes_and_writes_its_json(tmp_path, capsys, monkeypatch):
    device_check = _load_device_check(monkeypatch)
    out = tmp_path / "results" / "device_check.json"
    # A budget far above the run's few seconds: on a busy CPU a skipped case would hide a broken one.
    assert device_check.main(["--cpu", "--out", str(out), "--budget-s", "600"]) == 0
    report = json.loads(out.read_text())
    assert report["machine"].startswith("CPU") and report["dtype"] == "fp32"
    sizes = ["128x128", "224x128", "256x256"]
    assert [r["size"] for r in report["embedder"]] == [r["size"] for r in report["blocks"]] == sizes
    assert all(r["plain_ms"] > 0 and r["dype_new_sigma_ms"] > 0 for r in report["embedder"])
    assert all(0 < r["dype_share_of_step"] < 1 for r in report["blocks"])
    assert report["blocks"][0]["pe_dtype"] == {
        "invokeai_pe": "float32",
        "plain_fp32_pe": "float32",
        "dype_pe": "float32",
    }
    # Every size: untiled, then tiles 128 and 96 each parked on the device and in host RAM, all run.
    vae = report["vae"]
    assert len(vae) == 15 and all("wall_s" in r for r in vae)
    assert {(r["tile"], r["park"]) for r in vae} == {
        (None, "-"),
        (128, "device"),
        (128, "host"),
        (96, "device"),
        (96, "host"),
    }
    # float32: tiled equals untiled up to rounding (a tile-local GroupNorm would be off by ~0.1-1).
    assert max(r["max_abs_error"] for r in vae if r["mode"] == "tiled") < 1e-3
    assert len(report["targets"]) == 5 and all(isinstance(t["met"], bool) for t in report["targets"])
    printed = capsys.readouterr().out
    assert "| target | value | met |" in printed and str(out) in printed
