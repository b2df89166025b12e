"""Run directories under launchers that start every rank at once (torchrun, srun)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from avlab import rundir


def _cfg(root: Path):
    return OmegaConf.create({"experiment": "toy/x", "run": {"root": str(root), "suffix": None}})


@pytest.mark.parametrize("env, name", [({"TORCHELASTIC_RUN_ID": "job7"}, "torchrun-job7"),
                                       ({"SLURM_JOB_ID": "123", "SLURM_NTASKS": "8"}, "slurm-123")])
def test_every_rank_of_a_launcher_job_gets_the_same_directory(monkeypatch, tmp_path: Path, env, name) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    a = rundir.create_run_dir(_cfg(tmp_path))
    b = rundir.create_run_dir(_cfg(tmp_path))  # what another rank computes
    assert a == b and a.name == name


def test_without_a_launcher_each_run_gets_a_new_directory(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert rundir.create_run_dir(_cfg(tmp_path)) != rundir.create_run_dir(_cfg(tmp_path))
