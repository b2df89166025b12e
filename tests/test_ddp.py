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
from media_helpers import SALIENCY_TINY

pytestmark = pytest.mark.ddp
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("AVLAB_RUN_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "avlab.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


def avlab(*args: str, cwd: Path) -> Path:
    proc = run_cli(*args, cwd=cwd)
    if proc.returncode != 0:
        # Every rank's error line, not only the tail: the rank that failed first is the cause.
        errors = [line for line in proc.stderr.splitlines() if "Error" in line or "Exception" in line]
        raise AssertionError("\n".join([*errors[:40], "--- stderr tail ---", proc.stderr[-4000:]]))
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


def test_a_nan_target_on_one_rank_stops_every_rank(toy_experiment: Path, tmp_path: Path) -> None:
    # Row 0 is a training row: only the rank whose batch holds it sees the NaN score, yet both ranks
    # must stop at the same step (or the other would wait in its next all-reduce until timeout).
    args = ["train", str(toy_experiment), "data.batch_size=8", "data.nan_targets=[0]", *DDP]
    proc = run_cli(*args, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "non-finite" in line]
    assert any("non-finite values in `y`" in line for line in errors), proc.stderr[-3000:]
    assert any("on another process" in line for line in errors), proc.stderr[-3000:]
    (status,) = tmp_path.glob("runs/*/*/status.json")
    assert json.loads(status.read_text())["status"] == "failed"


def test_avq_trains_under_ddp_and_test_metrics_equal_one_process(tmp_path: Path) -> None:
    common = [
        "data.demo_size=tiny",
        "data.holdout_sources=1",
        "logger.wandb.mode=disabled",
        f"run.root={tmp_path}",
    ]
    run_dir = avlab("train", "avq/attentive_fusion", *common, "trainer.max_epochs=2", *DDP, cwd=tmp_path)
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    single = metrics(avlab("test", "avq/attentive_fusion", *common, ckpt, cwd=tmp_path))
    ddp = metrics(avlab("test", "avq/attentive_fusion", *common, ckpt, *DDP, cwd=tmp_path))
    # 9 test stimuli over 2 ranks: one padded duplicate that must not count. SRCC/PLCC need all
    # predictions, so any loss or duplication would change them.
    for key in ("test/plcc", "test/srcc", "test/rmse", "test/importance_audio"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-5), key


SALIENCY_SMALL = SALIENCY_TINY
UNQA_SMALL = [
    "data.demo_size=tiny",
    "data.databases.clive=null",
    "data.databases.tcd_voip=null",
    "data.image_size=32",
    "data.resize_short=32",
    "data.frames=1",
    "data.motion_size=32",
    "data.audio_seconds=1.0",
    "logger.wandb.mode=disabled",
]


YT8M_SMALL = [
    "--overlay",
    "yt8m/_cpu",
    "data.demo_size=tiny",
    "data.batch_size=16",
    "logger.wandb.mode=disabled",
]
# UNQA's step one trains one database head per step, so the other heads get no gradient.
DDP_UNUSED = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy=ddp_find_unused_parameters_true",
]


@pytest.mark.parametrize(
    "experiment, small, keys",
    [
        (
            "saliency/avrsp_av",
            SALIENCY_SMALL,
            ("test/cc", "test/nss", "test/auc_j", "test/AVAD/cc", "test/n_frames"),
        ),
        ("unqa/unqa_demo", UNQA_SMALL, ("test/srcc_mean", "test/koniq/srcc", "test/konvid/plcc")),
        ("yt8m/attend_fusion", YT8M_SMALL, ("test/gap", "test/hit_at_1", "test/perr", "test/map", "test/f1")),
    ],
)
def test_task_trains_under_ddp_and_its_metrics_equal_one_process(
    tmp_path: Path, experiment: str, small: list[str], keys: tuple[str, ...]
) -> None:
    """Each task trains on 2 ranks; its checkpoint then scores the same on 1 and on 2 ranks."""
    common = [*small, f"run.root={tmp_path}"]
    run_dir = avlab("train", experiment, *common, "trainer.max_epochs=1", *DDP_UNUSED, cwd=tmp_path)
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    single = metrics(avlab("test", experiment, *common, ckpt, cwd=tmp_path))
    ddp = metrics(avlab("test", experiment, *common, ckpt, *DDP_UNUSED, cwd=tmp_path))
    for key in keys:
        assert key in single, (key, sorted(single))
        assert ddp[key] == pytest.approx(single[key], abs=1e-4, nan_ok=True), key
