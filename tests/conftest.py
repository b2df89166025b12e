"""Shared fixtures: every test runs on the CPU, offline, with caches under a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("AVLAB_CACHE", str(tmp_path_factory.mktemp("avlab-cache")))
    os.environ["WANDB_MODE"] = os.environ.get("AVLAB_TEST_WANDB_MODE", "disabled")
    os.environ["WANDB_SILENT"] = "true"
    os.environ.pop("AVLAB_RUN_DIR", None)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _fresh_run_dir_env() -> None:
    # The runner exports the run directory for DDP workers; each test starts without one.
    os.environ.pop("AVLAB_RUN_DIR", None)
    yield
    os.environ.pop("AVLAB_RUN_DIR", None)


@pytest.fixture
def toy_experiment(tmp_path: Path) -> Path:
    """A YAML experiment whose targets are file paths (the way a student adds a module)."""
    toy = TESTS / "toy_task.py"
    path = tmp_path / "toy.yaml"
    path.write_text(
        f"""
defaults: [_base]
task: toy
data:
  _target_: {toy}:ToyDataModule
  batch_size: 16
model:
  _target_: {toy}:ToyModule
  lr: 0.05
  net:
    _target_: torch.nn.Linear
    in_features: 4
    out_features: 1
trainer:
  max_epochs: 3
  accelerator: cpu
logger:
  wandb:
    mode: disabled
run:
  root: {tmp_path / "runs"}
"""
    )
    from avlab.config import load_experiment

    assert load_experiment(str(path)).task == "toy", "the toy experiment must validate before tests use it"
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # DDP tests start 2 gloo processes each: running two of them at once on a 2-core machine
    # oversubscribes it and lets their rendezvous ports race. With `--dist loadgroup` (make test)
    # they all run on one xdist worker, one after another.
    for item in items:
        if item.get_closest_marker("ddp"):
            item.add_marker(pytest.mark.xdist_group("ddp"))
