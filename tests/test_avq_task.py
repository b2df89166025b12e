"""The avq task end to end: splits, the runner, baselines, predict, bad input, learning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avlab import cli
from avlab.config import load_experiment
from avlab.datamodules.avq import AVQDataModule, read_manifest
from avlab.errors import DataError
from avlab.instantiate import instantiate
from avlab.models.avq import AttentiveAVFusionNet
from avlab.models.blocks import count_trainable_parameters

COMMON = ["logger.wandb.mode=disabled", "data.demo_size=tiny", "data.holdout_sources=1", "data.val_sources=1"]


@pytest.fixture(scope="session")
def tiny_avq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("avq-tiny")
    return AVQDataModule.build_demo(root / "data", size="tiny")


def _train(capsys, experiment: str, *overrides: str) -> tuple[Path, str]:
    assert cli.main(["train", experiment, *COMMON, *overrides]) == 0
    out = capsys.readouterr().out
    return Path(out.strip().splitlines()[-1].removeprefix("run directory: ")), out


def test_paper_configuration_parameter_count() -> None:
    cfg = load_experiment("avq/attentive_fusion")
    net = instantiate(cfg.model.net)
    assert isinstance(net, AttentiveAVFusionNet)
    # Projection and fusion network of Table 2's best configuration; the paper reports 7.4M.
    assert count_trainable_parameters(net) == 7_354_369
    assert abs(count_trainable_parameters(net) - 7.4e6) / 7.4e6 < 0.01


@pytest.mark.parametrize("folds", [3])
def test_no_source_on_both_sides_of_any_split(tiny_avq: Path, folds: int) -> None:
    dm = AVQDataModule(root=str(tiny_avq), holdout_sources=1, val_sources=1)
    dm.prepare_data()
    seen_test = []
    for k in range(folds):
        dm.configure_split("fold", k, folds)
        dm.setup("fit")
        parts = dm.sources_by_split()
        assert not set(parts["test"]) & set(parts["train"])
        assert not set(parts["test"]) & set(parts["val"])
        idx = dm.split_indices
        assert not set(dm.table["source"].iloc[idx["train"]]) & set(dm.table["source"].iloc[idx["test"]])
        seen_test += parts["test"]
    assert sorted(seen_test) == sorted(dm.table["source"].unique()), "each source is tested exactly once"
    # Standardisation statistics come from training rows only.
    train = dm.split_indices["train"]
    np.testing.assert_allclose(dm.stats["video_mean"], dm.video[train].reshape(-1, 6).mean(0), rtol=1e-5)


def test_full_train_run_writes_the_run_directory(capsys, tiny_avq: Path, tmp_path: Path) -> None:
    run_dir, out = _train(
        capsys,
        "avq/attentive_fusion",
        f"data.root={tiny_avq}",
        "trainer.max_epochs=2",
        f"run.root={tmp_path}",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/plcc", "test/srcc", "test/rmse", "test/importance_audio", "test/importance_video"):
        assert key in metrics
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert (run_dir / "plots" / "prediction_vs_mos_test.png").stat().st_size > 0
    assert (run_dir / "plots" / "modality_importance.png").stat().st_size > 0
    importance = pd.read_csv(run_dir / "modality_importance.csv")
    assert len(importance) == 9 and {"importance_audio", "importance_video", "source"} <= set(
        importance.columns
    )
    assert "modality importance" in out
    # avlab predict from raw media, with the checkpoint just written.
    ref = next((tiny_avq / "references").glob("*.mkv"))
    dist = next((tiny_avq / "stimuli").glob(f"{ref.stem}_*.mp4"))
    assert (
        cli.main(
            [
                "predict",
                "avq/attentive_fusion",
                *COMMON,
                f"data.root={tiny_avq}",
                f"run.root={tmp_path}",
                f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                f"reference={ref}",
                f"distorted={dist}",
            ]
        )
        == 0
    )
    pred_out = capsys.readouterr().out
    result = json.loads(pred_out[: pred_out.rindex("}") + 1])
    assert 0.0 < result["predicted_quality"] < 6.0
    assert set(result["modality_importance"]) == {"audio", "video"}


@pytest.mark.parametrize("experiment", ["avq/weighted_product", "avq/weighted_product_fitted", "avq/svr_8f"])
def test_baselines_run_through_the_runner(capsys, tiny_avq: Path, tmp_path: Path, experiment: str) -> None:
    run_dir, _ = _train(capsys, experiment, f"data.root={tiny_avq}", f"run.root={tmp_path}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/plcc", "test/srcc", "test/rmse"} <= set(metrics)
    assert (run_dir / "checkpoints" / "estimator.joblib").is_file()
    assert (run_dir / "predictions_test.csv").is_file()


def _corrupt_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".features"))
    table = pd.read_csv(dst / "manifest.csv")
    edit(table)
    table.to_csv(dst / "manifest.csv", index=False)
    return dst


def test_bad_manifest_rows_are_named(tiny_avq: Path, tmp_path: Path) -> None:
    def nan_mos(t):
        t.loc[3, "mos"] = np.nan

    def out_of_scale(t):
        t.loc[0, "mos"] = 7.5

    def missing_file(t):
        t.loc[1, "distorted"] = "stimuli/nope.mp4"

    def duplicate(t):
        t.loc[2, "stimulus"] = t.loc[1, "stimulus"]

    for name, edit, pattern in [
        ("nan", nan_mos, r"row 5 .*MOS is missing"),
        ("scale", out_of_scale, r"row 2 .*outside"),
        ("file", missing_file, r"row 3 .*nope.mp4 does not exist"),
        ("dup", duplicate, "duplicate stimulus"),
    ]:
        root = _corrupt_copy(tiny_avq, tmp_path / name, edit)
        with pytest.raises(DataError, match=pattern):
            read_manifest(root / "manifest.csv")
        problems = AVQDataModule(root=str(root)).check()
        assert problems and any(
            pattern.split(" ")[-1] in p or "manifest" in p or "row" in p for p in problems
        )


def test_corrupt_video_is_reported_with_its_stimulus(tiny_avq: Path, tmp_path: Path) -> None:
    root = _corrupt_copy(tiny_avq, tmp_path / "corrupt", lambda t: None)
    victim = min((root / "stimuli").glob("*.mp4"))
    victim.write_bytes(victim.read_bytes()[:200])  # truncated file
    from avlab.errors import MediaError

    with pytest.raises(MediaError, match=victim.stem):
        AVQDataModule(root=str(root)).extract_features()
    # The original dataset's cached features are untouched.
    assert any((tiny_avq / ".features").iterdir())


def test_attentive_fusion_beats_fixed_weight_product_on_held_out_sources(capsys, tmp_path: Path) -> None:
    """Learning on the (small) demo data: the trained model must beat Q-Random on unseen sources."""
    common = ["logger.wandb.mode=disabled", f"run.root={tmp_path}"]
    assert cli.main(["train", "avq/attentive_fusion", *common]) == 0
    deep = json.loads(
        (
            Path(capsys.readouterr().out.strip().splitlines()[-1].split(": ", 1)[1]) / "metrics.json"
        ).read_text()
    )
    assert cli.main(["train", "avq/weighted_product", *common]) == 0
    fixed = json.loads(
        (
            Path(capsys.readouterr().out.strip().splitlines()[-1].split(": ", 1)[1]) / "metrics.json"
        ).read_text()
    )
    assert deep["test/plcc"] > fixed["test/plcc"]
    assert deep["test/rmse"] < fixed["test/rmse"]


def test_wandb_offline_run_carries_config_group_and_tags(capsys, tiny_avq: Path, tmp_path: Path) -> None:
    assert (
        cli.main(
            [
                "train",
                "avq/weighted_product",
                "data.demo_size=tiny",
                "data.holdout_sources=1",
                f"data.root={tiny_avq}",
                f"run.root={tmp_path}",
                "logger.wandb.mode=offline",
            ]
        )
        == 0
    )
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
    # Estimators log no W&B run; a Lightning model does. Train one epoch of one to check the W&B run.
    assert (
        cli.main(
            [
                "train",
                "avq/simple_fusion",
                *COMMON[1:],
                f"data.root={tiny_avq}",
                f"run.root={tmp_path}",
                "logger.wandb.mode=offline",
                "trainer.max_epochs=1",
                "logger.wandb.tags=[demo]",
            ]
        )
        == 0
    )
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # The offline run file holds the run record (group, tags) and the resolved config as protobuf
    # strings; `wandb sync` uploads exactly this.
    record = next(runs[0].glob("*.wandb")).read_bytes()
    for text in (b"avq/simple_fusion", b"avlab.models.avq.SimpleAVFusion", b"demo", b'"max_epochs"'):
        assert text in record, text


def test_data_check_and_features_commands(capsys, tiny_avq: Path, tmp_path: Path) -> None:
    assert cli.main(["data", "check", "avq/attentive_fusion", f"data.root={tiny_avq}"]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert cli.main(["features", "avq", f"data.root={tiny_avq}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stimuli"] == 27 and summary["audio_dim"] == 512 and len(summary["video_features"]) == 6
    broken = _corrupt_copy(
        tiny_avq, tmp_path / "broken", lambda t: t.__setitem__("mos", t["mos"].where(t.index != 0))
    )
    assert cli.main(["data", "check", "avq/attentive_fusion", f"data.root={broken}"]) == 1
    assert "MOS is missing" in capsys.readouterr().out


def test_cross_dataset_evaluation_reports_the_external_dataset(
    capsys, tiny_avq: Path, tmp_path: Path
) -> None:
    run_dir, _ = _train(
        capsys,
        "avq/cross_dataset",
        f"data.root={tiny_avq}",
        f"test_data.root={tiny_avq}",
        "test_data.holdout_sources=2",
        "trainer.max_epochs=1",
        f"run.root={tmp_path}",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/plcc" in metrics and "test/external/plcc" in metrics and "test/external/srcc" in metrics


def test_features_command_fills_the_cache_that_training_reads(
    capsys, tiny_avq: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avlab.features.cache import FeatureCache

    root = _corrupt_copy(tiny_avq, tmp_path / "fresh", lambda t: None)  # no .features folder
    assert not (root / ".features").exists()
    assert cli.main(["features", "avq/simple_fusion", f"data.root={root}"]) == 0
    assert json.loads(capsys.readouterr().out)["stimuli"] == 27
    entries = sorted((root / ".features").rglob("*.npz"))
    assert len(entries) == 2 * 27  # one VMAF and one audio entry per stimulus

    def no_new_entry(self, key, *args, **kwargs):
        raise AssertionError(f"training recomputed feature entry {key} instead of reading the cache")

    monkeypatch.setattr(FeatureCache, "put", no_new_entry)
    run_dir, _ = _train(
        capsys, "avq/simple_fusion", f"data.root={root}", "trainer.max_epochs=1", f"run.root={tmp_path}"
    )
    assert "test/plcc" in json.loads((run_dir / "metrics.json").read_text())
    assert sorted((root / ".features").rglob("*.npz")) == entries
