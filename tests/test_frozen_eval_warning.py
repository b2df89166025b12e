"""Lightning's "modules in eval mode" warning is silenced exactly when the modules in eval mode are
the frozen extractors a module declares, and still shows for any other module left in eval mode."""

from __future__ import annotations

import warnings

import pytest
import torch
from media_helpers import bare_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from avlab.lightningmodules.base import AvlabModule

EVAL_WARNING = "in eval mode at the start of training"


class FrozenExtractorModule(AvlabModule):
    def __init__(self, stray_eval: bool) -> None:
        super().__init__()
        self.extractor = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))  # frozen on purpose
        self.head = nn.Linear(4, 1)
        self.dropout = nn.Dropout(0.1)
        self.stray_eval = stray_eval

    def frozen_in_eval(self) -> list[nn.Module]:
        return [self.extractor]

    def train(self, mode: bool = True) -> FrozenExtractorModule:
        super().train(mode)
        self.extractor.eval()
        if self.stray_eval:
            self.dropout.eval()  # a module nobody declared: the warning must stay
        return self

    def training_step(self, batch, batch_idx):
        x, y = batch
        with torch.no_grad():
            features = self.extractor(x)
        return nn.functional.mse_loss(self.head(self.dropout(features)).squeeze(-1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


def _fit_warnings(module: AvlabModule) -> list[str]:
    data = TensorDataset(torch.randn(16, 4), torch.randn(16))
    trainer = bare_trainer(max_steps=2, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module.train(), DataLoader(data, batch_size=8))
    return [str(w.message) for w in caught if EVAL_WARNING in str(w.message)]


@pytest.mark.parametrize("stray_eval", [False, True], ids=["declared", "stray"])
def test_eval_mode_warning_only_for_undeclared_modules(stray_eval: bool) -> None:
    found = _fit_warnings(FrozenExtractorModule(stray_eval))
    if stray_eval:
        assert found and found[0].startswith("Found 4 module(s)")  # Sequential, Linear, BatchNorm, Dropout
    else:
        assert found == []


def test_unqa_declares_its_frozen_extractors() -> None:
    from avlab.config import load_experiment
    from avlab.instantiate import instantiate

    module = instantiate(load_experiment("unqa/unqa_demo", ["trainer.accelerator=cpu"]).model)
    module.train()
    frozen = {id(m) for root in module.frozen_in_eval() for m in root.modules()}
    in_eval = [name for name, m in module.named_modules() if not m.training]
    assert in_eval and all(id(m) in frozen for m in module.modules() if not m.training), in_eval
