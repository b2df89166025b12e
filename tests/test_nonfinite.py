"""A run whose training loss turns NaN stops at that step with an error that says where and why
(bad data or a diverging model), its run directory is marked failed, and AUC-Judd of a NaN map is
NaN (not an area above 1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from media_helpers import bare_trainer
from torch import nn
from torch.utils.data import DataLoader

from avlab import cli
from avlab.callbacks.nonfinite import StopOnNonFinite
from avlab.errors import TrainingDiverged
from avlab.lightningmodules.base import AvlabModule
from avlab.metrics.saliency import auc_judd


class _Regressor(AvlabModule):
    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)
        self.nan_at = nan_at

    def training_step(self, batch, batch_idx):
        loss = nn.functional.mse_loss(self.net(batch["x"]).squeeze(-1), batch["y"])
        if self.nan_at is not None and self.global_step >= self.nan_at:
            loss = loss * math.nan  # a model that diverges at this step
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(nan_target_in_batch: int | None = None) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    rows = [{"x": torch.randn(3, generator=g), "y": torch.randn((), generator=g)} for _ in range(32)]
    if nan_target_in_batch is not None:
        rows[nan_target_in_batch * 8]["y"] = torch.tensor(math.nan)  # a NaN score in the data
    return DataLoader(rows, batch_size=8)


def _fit(module: AvlabModule, loader: DataLoader, callbacks: list) -> Trainer:
    trainer = bare_trainer(max_epochs=2, callbacks=callbacks)
    trainer.fit(module, loader)
    return trainer


def test_a_diverging_model_stops_at_the_step_that_diverged() -> None:
    with pytest.raises(TrainingDiverged) as err:
        _fit(_Regressor(nan_at=5), _loader(), [StopOnNonFinite(gradients=True)])
    message = str(err.value)
    # The NaN loss gives NaN gradients: caught before the optimizer writes them into the weights.
    assert message.startswith("non-finite gradients in 2 of 2 parameters (net.weight, net.bias)")
    assert "at training step 6 (epoch 1, batch 1)" in message  # the 6th step
    assert "the model diverged" in message and "lower model.lr" in message and "32-true" in message
    # Without the callback Lightning trains on to the end, on NaN weights.
    module = _Regressor(nan_at=5)
    assert _fit(module, _loader(), []).global_step == 8
    assert not torch.isfinite(module.net.weight).all()


def test_a_nan_in_the_data_is_named_as_the_cause() -> None:
    with pytest.raises(TrainingDiverged) as err:
        _fit(_Regressor(), _loader(nan_target_in_batch=2), [StopOnNonFinite()])
    message = str(err.value)
    assert "training step 3 (epoch 0, batch 2)" in message and "non-finite values in `y`" in message
    assert "avlab data check" in message


def test_train_marks_the_run_failed_with_the_reason(toy_experiment: Path, tmp_path: Path, capsys) -> None:
    # SGD at lr 1e30 sends the toy regression to infinity within a few steps.
    base = ["train", str(toy_experiment), "model.lr=1e30", "logger.wandb.mode=disabled"]
    assert cli.main([*base, f"run.root={tmp_path}", "callbacks.stop_on_nonfinite=gradients"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: non-finite gradients") and "the model diverged" in err
    (status_file,) = tmp_path.glob("*/*/status.json")
    status = json.loads(status_file.read_text())
    assert status["status"] == "failed" and status["error"].startswith("TrainingDiverged: non-finite")
    assert cli.main([*base, f"run.root={tmp_path / 'loss'}"]) == 2  # the default loss check
    assert capsys.readouterr().err.startswith("error: train loss is")
    assert cli.main([*base, f"run.root={tmp_path / 'none'}", "callbacks.stop_on_nonfinite=none"]) == 0
    assert cli.main([*base, f"run.root={tmp_path / 'x'}", "callbacks.stop_on_nonfinite=maybe"]) == 2
    assert "callbacks.stop_on_nonfinite must be one of loss, gradients, none" in capsys.readouterr().err


def test_the_default_loss_check_stops_after_the_step() -> None:
    # As under 16-mixed, where the gradient scaler owns overflowing gradients, the loss check remains.
    with pytest.raises(TrainingDiverged, match=r"^train loss is nan at training step 6 \(epoch 1, batch 1\)"):
        _fit(_Regressor(nan_at=5), _loader(), [StopOnNonFinite()])


def test_the_gradient_check_is_off_only_under_float16_amp() -> None:
    class _Precision:
        def __init__(self, precision: str) -> None:
            self.precision, self.global_step, self.current_epoch, self.world_size = precision, 0, 0, 1

    module = _Regressor()
    module.net.weight.grad = torch.full_like(module.net.weight, math.nan)
    check = StopOnNonFinite(gradients=True)
    check.on_before_optimizer_step(_Precision("16-mixed"), module, None)  # the scaler's job
    StopOnNonFinite().on_before_optimizer_step(_Precision("32-true"), module, None)  # loss mode: no check
    for precision in ("bf16-mixed", "32-true", "16-true"):
        with pytest.raises(TrainingDiverged, match=r"gradients in 1 of 1 parameters \(net.weight\)"):
            check.on_before_optimizer_step(_Precision(precision), module, None)


def test_auc_judd_of_a_map_with_nan_is_nan() -> None:
    pred = torch.rand(8, 8, dtype=torch.float64)
    fix = torch.zeros(8, 8)
    fix[2, 3] = fix[5, 5] = 1
    assert 0 <= float(auc_judd(pred, fix)) <= 1
    pred[0, 0] = math.nan
    assert math.isnan(float(auc_judd(pred, fix)))
