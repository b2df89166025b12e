"""The data-wait callback: the fraction of each training step spent waiting for the next batch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning import LightningModule
from media_helpers import bare_trainer
from torch.utils.data import DataLoader, Dataset

from avlab import cli
from avlab.callbacks.data_wait import METRIC, DataWait

# Known costs: each batch takes ITEM_SLEEP x BATCH to load and STEP_SLEEP to train on. Sleeps,
# not computation, so the expected fraction holds on a loaded machine; 50 ms per side keeps
# Lightning's own few milliseconds per step small next to them.
ITEM_SLEEP, BATCH, STEP_SLEEP, STEPS = 0.025, 2, 0.05, 8


class _SleepyRows(Dataset):
    def __init__(self, sleep: float) -> None:
        self.sleep = sleep

    def __len__(self) -> int:
        return BATCH * STEPS

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.sleep:
            time.sleep(self.sleep)
        return torch.full((2,), float(i))


class _SlowStep(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        time.sleep(STEP_SLEEP)
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _fit(item_sleep: float, tmp_path: Path) -> DataWait:
    wait = DataWait()
    trainer = bare_trainer(max_epochs=2, callbacks=[wait], default_root_dir=str(tmp_path))
    trainer.fit(_SlowStep(), DataLoader(_SleepyRows(item_sleep), batch_size=BATCH))
    assert len(wait.epoch_fractions) == 2 and len(wait.steps) == STEPS
    assert float(trainer.callback_metrics[METRIC]) == pytest.approx(wait.epoch_fractions[-1])
    return wait


def test_a_loader_as_slow_as_the_step_waits_half_the_time(tmp_path: Path) -> None:
    wait = _fit(ITEM_SLEEP, tmp_path)
    expected = ITEM_SLEEP * BATCH / (ITEM_SLEEP * BATCH + STEP_SLEEP)  # 0.5
    for fraction in wait.epoch_fractions:
        # Generous: scheduling delays on a busy machine stretch both sides, and Lightning's own
        # per-step work (backward, optimiser) counts as step time.
        assert expected - 0.15 < fraction < expected + 0.15, wait.epoch_fractions
    # Every step waited at least its batch's sleeps: the wait is measured per step, not guessed.
    assert all(w >= 0.9 * ITEM_SLEEP * BATCH for w, _ in wait.steps), wait.steps


def test_a_loader_that_never_sleeps_gives_a_fraction_near_zero(tmp_path: Path) -> None:
    wait = _fit(0.0, tmp_path)
    assert all(f < 0.1 for f in wait.epoch_fractions), wait.epoch_fractions
    assert all(step >= STEP_SLEEP for _, step in wait.steps)


def test_the_config_key_writes_the_fraction_to_metrics_and_prints_it(capsys, toy_experiment: Path) -> None:
    assert cli.main(["train", str(toy_experiment), "callbacks.data_wait=true"]) == 0
    out = capsys.readouterr().out
    run_dir = Path(out.strip().splitlines()[-1].removeprefix("run directory: "))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics[METRIC] <= 1.0 and "test/rmse" in metrics
    assert "data wait: " in out and METRIC in out
    # One value per epoch in the CSV log, the same series W&B receives.
    with open(run_dir / "csv" / "metrics.csv") as fh:
        logged = [row[METRIC] for row in csv.DictReader(fh) if row.get(METRIC)]
    assert len(logged) == 3
    # Off (the default), nothing is measured and metrics.json holds only the test metrics.
    assert cli.main(["train", str(toy_experiment)]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
    assert METRIC not in json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.ddp
def test_under_ddp_the_ranks_agree_on_one_fraction(toy_experiment: Path, tmp_path: Path) -> None:
    # The fraction is averaged over ranks inside the callback (a collective call per epoch): a
    # rank that skipped it would hang the run, hence the timeout.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("AVLAB_RUN_DIR", None)
    command = [
        sys.executable,
        "-m",
        "avlab.cli",
        "train",
        str(toy_experiment),
        "callbacks.data_wait=true",
        "data.batch_size=8",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    ]
    proc = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1].removeprefix("run directory: "))
    assert 0.0 <= json.loads((run_dir / "metrics.json").read_text())[METRIC] <= 1.0
    assert proc.stdout.count("data wait: ") == 1  # printed once, by rank 0
