"""``ThreeStepSchedule(carry_best=True)``: each step starts from the previous step's epoch with the best
mean validation SRCC (paper §V-A: "in each step ... find the top models on the validation set"),
and the kept weights survive a checkpoint round trip."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from avlab.callbacks.unqa_schedule import ThreeStepSchedule
from avlab.lightningmodules.unqa import UNQAModule
from avlab.models.unqa import SpatialExtractor, UNQANet

STEPS = [
    {
        "name": "database_heads",
        "epochs": 3,
        "heads": "database",
        "loss": "mae_rank",
        "train": ["spatial", "database_heads"],
        "lr": 1.0e-3,
    },
    {
        "name": "modality_heads",
        "epochs": 1,
        "heads": "modality",
        "loss": "srcc",
        "train": ["spatial", "modality_heads"],
        "lr": 1.0e-3,
    },
]


def _spatial(module: UNQAModule) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.net.spatial.state_dict().items()}


def _run(
    carry_best: bool, monkeypatch: pytest.MonkeyPatch, resume: bool = False
) -> tuple[UNQAModule, list[dict[str, torch.Tensor]], Any]:
    torch.manual_seed(0)
    module = UNQAModule(
        UNQANet(spatial=SpatialExtractor("convnextv2_atto", stages=[0, 1, 2])),
        databases={"koniq": {"format": "koniq10k", "path": "KonIQ-10k"}},
    )
    monkeypatch.setattr(module, "log", lambda *a, **k: None)  # no Trainer to log to
    schedule = ThreeStepSchedule(STEPS, carry_best=carry_best)
    trainer = SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        callback_metrics={},
        max_epochs=4,
        strategy=SimpleNamespace(setup_optimizers=lambda trainer: None),
    )
    schedule.setup(trainer, module, "fit")
    snapshots = []
    for epoch, val_srcc in enumerate([0.2, 0.7, 0.4]):  # epoch 1 is step one's best
        trainer.current_epoch = epoch
        schedule.on_train_epoch_start(trainer, module)
        with torch.no_grad():  # stands in for an epoch of training
            for p in module.net.spatial.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append(_spatial(module))
        trainer.callback_metrics = {"val/srcc_mean": torch.tensor(val_srcc)}
        schedule.on_validation_end(trainer, module)
    if resume:  # a checkpoint written after epoch 2, loaded by a fresh callback
        state = schedule.state_dict()
        schedule = ThreeStepSchedule(STEPS, carry_best=carry_best)
        schedule.load_state_dict(state)
    trainer.current_epoch = 3
    schedule.on_train_epoch_start(trainer, module)
    return module, snapshots, schedule


@pytest.mark.parametrize("resume", [False, True])
def test_carry_best_starts_the_next_step_from_the_best_validation_epoch(
    monkeypatch: pytest.MonkeyPatch, resume: bool
) -> None:
    module, snapshots, schedule = _run(True, monkeypatch, resume)
    assert module.step_index == 1
    for key, value in _spatial(module).items():
        torch.testing.assert_close(value, snapshots[1][key], msg=key)
    assert schedule.transitions[-1]["carried_from_epoch"] == 1


def test_without_carry_best_the_next_step_continues_from_the_last_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, snapshots, schedule = _run(False, monkeypatch)
    for key, value in _spatial(module).items():
        torch.testing.assert_close(value, snapshots[2][key], msg=key)
    assert "carried_from_epoch" not in schedule.transitions[-1]
