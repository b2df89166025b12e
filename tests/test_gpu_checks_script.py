"""bench/gpu_checks.py, the one script to run when a GPU is lent, works before one is: its smoke
mode trains both paper experiments' code paths for a few steps on the CPU and writes the report."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_checks.py"


def test_smoke_run_writes_every_section(tmp_path: Path, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("gpu_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.os, "cpu_count", lambda: 1)  # one loader worker: the suite runs in parallel
    out = tmp_path / "gpu_checks.json"
    report = module.main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == report
    assert report["machine"]["smoke"] is True
    for experiment in ("saliency/avrsp_av", "unqa/unqa_paper"):
        figures = report["train"][experiment]
        assert figures["steps"] == 4 and len(figures["losses"]) == 4 and figures["losses_finite"]
        assert 0 <= figures["data_wait_fraction"] < 1 and figures["steps_per_s"] > 0
        agreement = figures["fp32_agreement"]
        # On the CPU both runs are fp32 from one seed: the same first losses, exactly (determinism).
        assert agreement["steps"] == 2 and agreement["max_relative_difference"] == 0.0
        assert agreement["fp32_losses"] == figures["losses"][:2]
        assert all(math.isfinite(x) for x in agreement["fp32_losses"])
    assert report["nvjpeg"]["files"] > 0 and report["nvjpeg"]["cpu_frames_per_s"] > 0
    assert "cuda_frames_per_s" not in report["nvjpeg"]
    assert report["vmaf_torch"] == report["gpu_tests"] == {"skipped": "needs a GPU (smoke run)"}
