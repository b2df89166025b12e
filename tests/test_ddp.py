"""DDP on 2 CPU processes (gloo): the same results as one process.

Each test runs the real command line in a subprocess, because Lightning's DDP launcher starts
the workers by re-running that command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ddp
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def avlab(*args: str, cwd: Path) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("AVLAB_RUN_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "avlab.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("run directory: "), proc.stdout[-2000:]
    return Path(last.removeprefix("run directory: "))


def metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


def test_toy_training_under_ddp_matches_one_process(toy_experiment: Path, tmp_path: Path) -> None:
    # data.batch_size is per device: 2 ranks x 8 see the same global batch as 1 x 16.
    single = metrics(avlab("train", str(toy_experiment), "data.batch_size=16", cwd=tmp_path))
    ddp_dir = avlab("train", str(toy_experiment), "data.batch_size=8", *DDP, cwd=tmp_path)
    ddp = metrics(ddp_dir)
    # The whole test set is evaluated once: DistributedSampler's padding is removed.
    assert single["test/n"] == ddp["test/n"] == 24.0
    # Tolerance: the samplers shuffle differently, so the trajectories differ slightly.
    assert ddp["test/rmse"] == pytest.approx(single["test/rmse"], abs=0.1)
    # Workers share the launcher's run directory.
    assert len(list(ddp_dir.parent.iterdir())) == 2


def test_avq_test_metrics_under_ddp_equal_one_process(tmp_path: Path) -> None:
    common = ["data.demo_size=tiny", "data.holdout_sources=1", "logger.wandb.mode=disabled", f"run.root={tmp_path}"]
    run_dir = avlab("train", "avq/attentive_fusion", *common, "trainer.max_epochs=2", cwd=tmp_path)
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    single = metrics(avlab("test", "avq/attentive_fusion", *common, ckpt, cwd=tmp_path))
    ddp = metrics(avlab("test", "avq/attentive_fusion", *common, ckpt, *DDP, cwd=tmp_path))
    # 9 test stimuli over 2 ranks: one padded duplicate that must not count. SRCC/PLCC need all
    # predictions, so any loss or duplication would change them.
    for key in ("test/plcc", "test/srcc", "test/rmse", "test/importance_audio"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-5), key
