"""Run directories under launchers that start every rank at once (torchrun, srun)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from avlab import rundir


def _cfg(root: Path):
    return OmegaConf.create({"experiment": "toy/x", "run": {"root": str(root), "suffix": None}})


@pytest.mark.parametrize(
    "env, name",
    [
        ({"TORCHELASTIC_RUN_ID": "job7"}, "torchrun-job7"),
        ({"SLURM_JOB_ID": "123", "SLURM_NTASKS": "8"}, "slurm-123"),
    ],
)
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


def test_atomic_path_replaces_only_a_complete_file(tmp_path: Path) -> None:
    from avlab.rundir import atomic_path, atomic_write

    target = tmp_path / "sub" / "table.csv"
    atomic_write(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".csv" and tmp != target
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]  # no temporary left behind
    with atomic_path(target, suffix=".npy") as tmp:
        assert tmp.suffix == ".npy"
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
