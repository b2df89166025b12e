"""The Python API (``from avlab import train, ...``), ``Module.load_from_checkpoint`` and the
run directory's status of finished and failed runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from media_helpers import YT8M_TINY

import avlab
from avlab.compare import compare_runs
from avlab.datamodules.avq import AVQDataModule
from avlab.datamodules.yt8m import YT8MDataModule
from avlab.errors import ConfigError, DataError
from avlab.instantiate import instantiate
from avlab.lightningmodules.avq import AVQModule
from avlab.lightningmodules.base import AvlabModule
from avlab.lightningmodules.yt8m import YT8MModule
from avlab.runner import build_trainer

AVQ = [
    "logger.wandb.mode=disabled",
    "data.demo_size=tiny",
    "data.holdout_sources=1",
    "data.val_sources=1",
    "trainer.max_epochs=2",
]
YT8M = YT8M_TINY


@pytest.fixture(scope="module")
def tiny_avq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return AVQDataModule.build_demo(tmp_path_factory.mktemp("avq-tiny") / "data", size="tiny")


@pytest.fixture(scope="module")
def tiny_yt8m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return YT8MDataModule.build_demo(tmp_path_factory.mktemp("yt8m-tiny") / "data", size="tiny")


def test_import_avlab_does_not_load_lightning() -> None:
    # The CLI and sweep workers import avlab first; the API names must not pull Lightning/torch in.
    code = (
        "import sys, avlab, avlab.cli; assert callable(avlab.__getattr__); "
        "assert 'lightning' not in sys.modules and 'torch' not in sys.modules, 'eager import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    from avlab import load_experiment, predict, test, train

    assert all(callable(f) for f in (load_experiment, train, test, predict))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        avlab.nope  # noqa: B018


def test_load_experiment_takes_the_cli_names_keys_and_overlays() -> None:
    cfg = avlab.load_experiment("avq/simple_fusion", ["trainer.max_epochs=1", "seed=7"], overlay=None)
    assert cfg.experiment == "avq/simple_fusion" and cfg.trainer.max_epochs == 1 and cfg.seed == 7
    with pytest.raises(ConfigError, match="trainer.max_epoch"):
        avlab.load_experiment("avq/simple_fusion", ["trainer.max_epoch=1"])
    with pytest.raises(ConfigError, match="load_experiment"):
        avlab.train(cfg, ["seed=1"])


def test_train_test_and_load_from_checkpoint_from_python(tiny_avq: Path, tmp_path: Path) -> None:
    overrides = [*AVQ, f"data.root={tiny_avq}", f"run.root={tmp_path}"]
    result = avlab.train("avq/simple_fusion", overrides)
    assert {"test/plcc", "test/srcc", "test/rmse"} <= set(result.metrics)
    assert json.loads((result.run_dir / "status.json").read_text()) == {"status": "finished"}
    best = next((result.run_dir / "checkpoints").glob("best-epoch*.ckpt"))
    # The tested checkpoint, reloaded the usual Lightning way, predicts what the run wrote.
    model = AVQModule.load_from_checkpoint(best).eval()
    assert isinstance(model, AVQModule) and model.run_dir is None
    dm = instantiate(avlab.load_experiment("avq/simple_fusion", overrides).data)
    dm.prepare_data()
    dm.setup("test")
    preds, index = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            preds.append(model(batch["video"], batch["audio"]))
            index.append(batch["index"])
    # The CSV's rows are in dataset-index order (the shared evaluation hook sorts by it).
    ours = torch.cat(preds)[torch.argsort(torch.cat(index))].numpy()
    written = pd.read_csv(result.run_dir / "predictions_test.csv")
    np.testing.assert_allclose(ours, written["predicted"].to_numpy(), rtol=0, atol=1e-6)
    again = avlab.test("avq/simple_fusion", [*overrides, f"ckpt_path={best}"])
    assert again.metrics["test/plcc"] == pytest.approx(result.metrics["test/plcc"], abs=1e-6)
    with pytest.raises(ConfigError, match="not a YT8MModule"):
        YT8MModule.load_from_checkpoint(best)


@pytest.mark.parametrize(
    ("experiment", "inputs"),
    [("avq/simple_fusion", ("video", "audio")), ("yt8m/fc_late_fusion", ("rgb", "audio"))],
)
def test_load_from_checkpoint_predicts_like_the_trained_module(
    experiment: str, inputs: tuple[str, str], tiny_avq: Path, tiny_yt8m: Path, tmp_path: Path
) -> None:
    common = AVQ if experiment.startswith("avq") else YT8M
    root = tiny_avq if experiment.startswith("avq") else tiny_yt8m
    cfg = avlab.load_experiment(experiment, [*common, f"data.root={root}", f"run.root={tmp_path}"])
    model, dm = instantiate(cfg.model), instantiate(cfg.data)
    trainer = build_trainer(cfg, tmp_path / "run")  # the runner's callbacks store the config
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(path)
    loaded = AvlabModule.load_from_checkpoint(path)
    assert type(loaded) is type(model)
    model.eval(), loaded.eval()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*(batch[k] for k in inputs)), model(*(batch[k] for k in inputs)))


def test_a_failed_run_is_marked_and_compare_skips_it(tiny_avq: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_avq, bad, ignore=shutil.ignore_patterns(".features"))
    table = pd.read_csv(bad / "manifest.csv")
    table.loc[3, "mos"] = np.nan
    table.to_csv(bad / "manifest.csv", index=False)
    runs = tmp_path / "runs"
    with pytest.raises(DataError, match="MOS is missing"):
        avlab.train("avq/simple_fusion", [*AVQ, f"data.root={bad}", f"run.root={runs}"])
    (failed,) = (runs / "avq" / "simple_fusion").iterdir()
    status = json.loads((failed / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("DataError: ")
    assert "MOS is missing" in status["error"]
    assert "Traceback" in (failed / "error.txt").read_text()
    good = avlab.train("avq/simple_fusion", [*AVQ, f"data.root={tiny_avq}", f"run.root={tmp_path / 'ok'}"])
    out = compare_runs([good.run_dir, failed])
    skipped = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and failed.name in skipped[0] and "DataError" in skipped[0]
    assert "test/plcc" in out
    with pytest.raises(DataError, match="every run given to `avlab compare` failed"):
        compare_runs([failed])
