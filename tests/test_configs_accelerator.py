"""No experiment pins the CPU: on a GPU machine every one trains on the GPU without being asked.

A config that sets ``trainer.accelerator: cpu`` runs the paper's schedule on the CPU even where a
GPU is free, and says nothing. CPU-only choices belong in overlays named ``_cpu``
(``--overlay unqa/_cpu``), which a user adds on purpose.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from avlab import config
from avlab.config import experiments_root, load_experiment

CPU_OVERLAY = "_cpu"


def resolved_accelerator(path: Path) -> str:
    """``trainer.accelerator`` of a YAML file composed with its ``defaults:`` over the schema."""
    cfg = OmegaConf.merge(config.schema_defaults(), config._compose(path))
    return str(OmegaConf.select(cfg, "trainer.accelerator"))


def pinned_to_cpu(root: Path) -> list[str]:
    """Every YAML under ``root`` (experiments and ``_base`` files alike), except the ``_cpu``
    overlays, whose resolved accelerator is not ``auto``."""
    return sorted(
        f"{p.relative_to(root)}: {acc}"
        for p in root.rglob("*.yaml")
        if p.stem != CPU_OVERLAY and (acc := resolved_accelerator(p)) != "auto"
    )


def test_no_experiment_or_base_config_pins_an_accelerator() -> None:
    root = experiments_root()
    files = list(root.rglob("*.yaml"))
    assert len(files) > 50 and any(p.name == "_base.yaml" for p in files), "the walk must see every config"
    assert pinned_to_cpu(root) == []


def test_the_check_catches_a_pin_inherited_through_defaults(tmp_path: Path) -> None:
    # A task base that pins the CPU is reported, and so is every experiment built on it.
    root = tmp_path / "experiments"
    (root / "t").mkdir(parents=True)
    (root / "t" / "_base.yaml").write_text("task: t\ntrainer:\n  accelerator: cpu\n")
    (root / "t" / "exp.yaml").write_text("defaults: [_base.yaml]\nseed: 1\n")
    (root / "t" / "_cpu.yaml").write_text("trainer:\n  accelerator: cpu\n")
    (root / "t" / "gpu.yaml").write_text("defaults: [_base.yaml]\ntrainer:\n  accelerator: auto\n")
    assert pinned_to_cpu(root) == ["t/_base.yaml: cpu", "t/exp.yaml: cpu"]


@pytest.mark.parametrize("experiment", ["unqa/unqa", "unqa/unqa_demo", "unqa/unqa_paper"])
def test_the_cpu_overlay_is_where_the_cpu_is_chosen(experiment: str) -> None:
    assert load_experiment(experiment, validate_targets=False).trainer.accelerator == "auto"
    cpu = load_experiment(experiment, validate_targets=False, overlays=[f"unqa/{CPU_OVERLAY}"])
    assert cpu.trainer.accelerator == "cpu"


def test_auto_workers_share_the_usable_cpus_among_the_devices(monkeypatch) -> None:
    import os

    from avlab.datamodules import base
    from avlab.datamodules.saliency import SaliencyDataModule
    from avlab.errors import ConfigError

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [base.auto_workers(d) for d in (1, 2, 4, 8, 16)] == [8, 7, 3, 1, 0]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert base.auto_workers(1) == 0  # one CPU: the main process loads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    dm = SaliencyDataModule(num_workers="auto", demo_size="tiny")
    assert dm.num_workers == 5  # no trainer attached: one device

    class _Trainer:
        num_devices = 2

    dm.trainer = _Trainer()
    assert dm.num_workers == 2  # 6 CPUs / 2 devices - 1
    assert SaliencyDataModule(num_workers=3).num_workers == 3
    for bad in (-1, "many", 2.5, True):
        with pytest.raises(ConfigError, match="data.num_workers must be a whole number >= 0 or `auto`"):
            SaliencyDataModule(num_workers=bad)


def test_paper_experiments_default_to_auto_workers_and_cpu_overlays_to_none() -> None:
    from avlab.config import load_experiment

    for name in ("saliency/avrsp_av", "saliency/avrsp_visual", "unqa/unqa_paper"):
        assert load_experiment(name).data.num_workers == "auto", name
    assert load_experiment("saliency/avrsp_av", overlays=["saliency/_cpu"]).data.num_workers == 0
