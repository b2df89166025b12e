"""A new yt8m model is one file and one config: written to a temporary folder, nothing else edited,
it trains, tests, joins the parameter table and predicts, exactly like the paper's models."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest

from avlab import cli
from avlab.datamodules.yt8m import YT8MDataModule
from avlab.models.yt8m.params import parameter_table

MODEL_PY = '''
import torch
from torch import Tensor, nn

from avlab.models.blocks.residual import fc_layer
from avlab.models.yt8m.base import YT8MModel, classifier_head


class GatedSum(YT8MModel):
    """Both modalities projected to `hidden`; a learned gate g mixes them: g * v + (1 - g) * a."""

    def __init__(self, visual_dim: int = 1024, audio_dim: int = 128, num_classes: int = 3862,
                 hidden: int = 256, dropout: float = 0.4) -> None:
        super().__init__(visual_dim, audio_dim, num_classes, dropout)
        self.proj_v = fc_layer(visual_dim, hidden, dropout)
        self.proj_a = fc_layer(audio_dim, hidden, dropout)
        self.gate = nn.Linear(2 * hidden, hidden)
        self.head = classifier_head(hidden, num_classes, dropout)

    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        self.check_inputs(rgb, audio)
        v, a = self.proj_v(rgb), self.proj_a(audio)
        g = torch.sigmoid(self.gate(torch.cat([v, a], dim=-1)))
        return self.head(g * v + (1 - g) * a)
'''

MODEL_YAML = """
defaults: [yt8m/_base]
description: "Gated sum of the two modalities"
model:
  lr: 1.0e-3
  net:
    _target_: gated_sum.py:GatedSum
    hidden: 64
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return YT8MDataModule.build_demo(tmp_path_factory.mktemp("yt8m-tiny") / "data", size="tiny")


def _run_dir(out: str) -> Path:
    return Path(out.strip().splitlines()[-1].removeprefix("run directory: "))


def test_a_new_model_is_one_file_and_one_config(tmp_path: Path, tiny: Path, capsys, monkeypatch):
    student = tmp_path / "student"
    student.mkdir()
    (student / "gated_sum.py").write_text(textwrap.dedent(MODEL_PY))
    (student / "gated_sum.yaml").write_text(textwrap.dedent(MODEL_YAML))
    elsewhere = tmp_path / "elsewhere"  # `gated_sum.py` resolves next to the YAML, not in the cwd
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = str(student / "gated_sum.yaml")
    common = [
        "logger.wandb.mode=disabled",
        "trainer.accelerator=cpu",
        "data.batch_size=32",
        f"data.root={tiny}",
        f"run.root={tmp_path / 'runs'}",
    ]

    # An untrained checkpoint's metrics (0 epochs) are the bar the trained model must clear.
    assert cli.main(["train", config, *common, "trainer.max_epochs=0"]) == 0
    untrained = json.loads((_run_dir(capsys.readouterr().out) / "metrics.json").read_text())
    assert cli.main(["train", config, *common, "trainer.max_epochs=4"]) == 0
    run_dir = _run_dir(capsys.readouterr().out)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/gap", "test/hit_at_1", "test/perr", "test/map", "test/f1", "test/loss"):
        assert key in metrics and metrics[key] == metrics[key], key
    assert (
        metrics["test/loss"] < untrained["test/loss"] and metrics["test/gap"] > untrained["test/gap"] + 0.1
    ), (metrics, untrained)
    assert (run_dir / "per_class_ap.csv").is_file() and (run_dir / "plots" / "per_class_ap.png").is_file()
    resolved = (run_dir / "config.yaml").read_text()
    assert "GatedSum" in resolved

    # The parameter table takes it like any config; without `paper:` it is listed, not checked.
    (row,) = parameter_table([config])
    h, c = 64, 4716  # under the table's setup: 1024/128 inputs, 4716 classes
    assert row["params"] == (1024 * h + h) + (128 * h + h) + (2 * h * h + h) + (h * c + c)
    assert row["paper_m"] is None and row["tolerance"] is None

    # And it predicts: the Kaggle CSV from its checkpoint.
    sub = tmp_path / "submission.csv"
    assert (
        cli.main(
            [
                "predict",
                config,
                *common,
                f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                f"input={tiny / 'video' / 'test*.tfrecord'}",
                f"output={sub}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    rows = list(csv.reader(sub.open()))
    assert rows[0] == ["VideoId", "LabelConfidencePairs"] and len(rows) == 1 + 64
