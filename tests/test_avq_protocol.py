"""avq's two cross-validation protocols (issue 11): ``cv.protocol=rotate`` (the test fold rotates over
every source) and ``cv.protocol=holdout_cv`` (the Attentive AV-FusionNet paper's: a fixed held-out
test set, K-fold cross-validation on the other sources), and the Table 1 / Table 2 configs that use
the paper's one.

The DataModule here is avq's own with a synthetic feature table instead of media (no VMAF, no
ffmpeg), so every split, fit and sweep trial below runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest

from avlab import cli, runner
from avlab.config import load_experiment
from avlab.datamodules.avq import AVQDataModule
from avlab.errors import ConfigError, DataError
from avlab.sweep import load_sweep
from avlab.tables import load_table
from avlab.tables.build import resolve_row

THIS = Path(__file__).resolve()
D_AUDIO = 8


class SyntheticAVQ(AVQDataModule):
    """avq's DataModule on a synthetic table (``n_sources`` sources × 4 stimuli); with ``record`` set,
    every ``setup`` appends the sources of its train/val/test sample tables to that JSON-lines file."""

    def __init__(self, n_sources: int = 12, record: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_sources, self.record = int(n_sources), record

    def extract_features(self, progress: bool = True) -> dict[str, Any]:
        rng = np.random.default_rng(0)
        n = self.n_sources * 4
        video = rng.uniform(0.0, 1.0, size=(n, 1, 6)).astype(np.float32)
        audio = rng.normal(size=(n, 1, D_AUDIO)).astype(np.float32)
        mos = 1.0 + 4.0 * video[:, 0, :].mean(1)
        self.table = pd.DataFrame(
            {
                "stimulus": [f"s{i // 4:02d}_{i % 4}" for i in range(n)],
                "source": [f"src{i // 4:02d}" for i in range(n)],
                "audio_bitrate_kbps": np.tile([16.0, 32.0, 64.0, 256.0], self.n_sources),
                "video_bitrate_kbps": 1000.0,
                "mos": mos,
                "q_video": mos + 0.1 * rng.normal(size=n),
                "q_audio": np.clip(3.0 + rng.normal(size=n), 1.0, 5.0),
            }
        )
        self.video, self.audio = video, audio
        return {"stimuli": n}

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.record:
            seen = {
                split: sorted(set(self.sample_table(split)["source"])) for split in ("train", "val", "test")
            }
            with open(self.record, "a") as fh:
                fh.write(json.dumps({"kind": self.split_kind, "index": self.split_index, **seen}) + "\n")


def _dm(**kwargs: Any) -> SyntheticAVQ:
    dm = SyntheticAVQ(**kwargs)
    dm.extract_features()
    return dm


def _parts(dm: SyntheticAVQ, kind: str | None, index: int = 0, count: int = 1) -> dict[str, set[str]]:
    dm.configure_split(kind, index, count)
    dm.setup("fit")
    return {split: set(dm.sample_table(split)["source"]) for split in ("train", "val", "test")}


def _experiment(tmp_path: Path, base: str, record: Path | None = None, **data: Any) -> Path:
    """A YAML experiment: the packaged ``base`` on the synthetic DataModule, at test size."""
    lines = [f"  {k}: {json.dumps(v)}" for k, v in data.items()]
    if record is not None:
        lines.append(f"  record: {json.dumps(str(record))}")
    path = tmp_path / "synthetic.yaml"
    path.write_text(
        "\n".join(
            [
                f"defaults: [{base}]",
                "data:",
                f"  _target_: {THIS}:SyntheticAVQ",
                "  holdout_sources: 3",
                *lines,
                "trainer: {max_epochs: 2, accelerator: cpu}",
                "callbacks: {progress_bar: none}",
                "logger: {wandb: {mode: disabled}}",
                f"run: {{root: {json.dumps(str(tmp_path / 'runs'))}}}",
                "",
            ]
        )
    )
    return path


SMALL_NET = [
    f"model.net.d_audio={D_AUDIO}",
    "model.net.d_model=16",
    "model.net.d_ff=16",
    "model.net.num_heads=2",
]


# --------------------------------------------------------------------------- splits
def test_holdout_cv_tests_the_fixed_holdout_and_validates_each_fold_once() -> None:
    dm = _dm(holdout_sources=3)
    held_out = _parts(dm, None)["test"]  # the single-split protocol's test set
    assert len(held_out) == 3
    rest = {f"src{i:02d}" for i in range(12)} - held_out
    vals = []
    for k in range(5):
        parts = _parts(dm, "holdout_fold", k, 5)
        # The same held-out test set in every fold, and no source on two sides of any fold.
        assert parts["test"] == held_out
        assert not parts["train"] & parts["val"] and not held_out & (parts["train"] | parts["val"])
        assert parts["train"] | parts["val"] == rest, "every non-held-out source trains or validates"
        # The DataModule's indices agree with its sample tables.
        src = dm.table["source"].to_numpy()
        assert set(src[dm.split_indices["test"]]) == held_out
        vals.append(parts["val"])
    # The 5 validation folds partition the 9 non-held-out sources (sizes 2,2,2,2,1).
    assert sorted(len(v) for v in vals) == [1, 2, 2, 2, 2]
    assert set().union(*vals) == rest and sum(len(v) for v in vals) == len(rest)


def test_holdout_is_deterministic_by_seed_and_accepts_names() -> None:
    a = _parts(_dm(holdout_sources=3, split_seed=4), "holdout_fold", 1, 3)
    b = _parts(_dm(holdout_sources=3, split_seed=4), "holdout_fold", 1, 3)
    c = _parts(_dm(holdout_sources=3, split_seed=5), "holdout_fold", 1, 3)
    assert a == b and a["test"] != c["test"]
    named = _parts(_dm(holdout_sources=["src00", "src07"]), "holdout_fold", 0, 4)
    assert named["test"] == {"src00", "src07"}
    with pytest.raises(DataError, match="data.holdout_sources names unknown source"):
        _parts(_dm(holdout_sources=["src99"]), "holdout_fold", 0, 4)
    with pytest.raises(DataError, match=r"cv.folds=10 with cv.protocol=holdout_cv needs at least 10"):
        _parts(_dm(holdout_sources=3), "holdout_fold", 0, 10)


def test_holdout_all_makes_a_test_only_dataset_for_cross_dataset_testing() -> None:
    # LIVE-SJTU as test_data: every one of its sources is scored, nothing of it trains.
    dm = _dm(holdout_sources="all")
    parts = _parts(dm, None)
    assert parts == {"train": set(), "val": set(), "test": {f"src{i:02d}" for i in range(12)}}
    assert len(dm.split_indices["test"]) == len(dm.table) and dm.stats == {}
    batch = next(iter(dm.test_dataloader()))
    assert batch["video"].shape[-1] == 6
    assert len(dm.arrays("test").target) == len(dm.table)
    with pytest.raises(DataError, match="holdout_sources=all leaves no source to train on"):
        _parts(_dm(holdout_sources="all"), "holdout_fold", 0, 3)
    with pytest.raises(DataError, match="neither a count, a list of source names nor 'all'"):
        _parts(_dm(holdout_sources="some"), None)


def test_rotate_still_tests_every_source_once() -> None:
    dm = _dm(holdout_sources=3, val_sources=1)
    tested = []
    for k in range(4):
        parts = _parts(dm, "fold", k, 4)
        assert not parts["test"] & (parts["train"] | parts["val"]) and not parts["train"] & parts["val"]
        tested += sorted(parts["test"])
    assert sorted(tested) == [f"src{i:02d}" for i in range(12)]


def test_baselines_fit_on_the_folds_training_sources_only() -> None:
    dm = _dm(holdout_sources=3)
    for k in range(3):
        parts = _parts(dm, "holdout_fold", k, 3)
        fitted = set(dm.table["source"].iloc[dm.arrays("train").index])
        assert fitted == parts["train"], "a baseline's fold fits exactly the deep model's training sources"
        assert set(dm.table["source"].iloc[dm.arrays("test").index]) == parts["test"]
    # rotate and the single split keep fitting on train + val (no checkpoint to select).
    parts = _parts(dm, None)
    assert set(dm.table["source"].iloc[dm.arrays("train").index]) == parts["train"] | parts["val"]


# --------------------------------------------------------------------------- config and runner
def test_protocol_names_and_config_checks(tmp_path: Path) -> None:
    cfg = load_experiment(str(_experiment(tmp_path, "avq/svr_8f")), ["cv.protocol=holdout_cv", "cv.folds=5"])
    assert runner.protocol(cfg) == [("holdout_fold", i, 5) for i in range(5)]
    cfg = load_experiment(str(_experiment(tmp_path, "avq/svr_8f")), ["cv.folds=3"])
    assert cfg.cv.protocol == "rotate" and runner.protocol(cfg) == [("fold", i, 3) for i in range(3)]
    with pytest.raises(ConfigError, match="`cv.protocol` must be one of rotate, holdout_cv.*`holdout_cv`"):
        load_experiment("avq/svr_8f", ["cv.protocol=holdout", "cv.folds=5"])
    with pytest.raises(ConfigError, match="needs `cv.folds` > 1"):
        load_experiment("avq/svr_8f", ["cv.protocol=holdout_cv"])
    # A DataModule without a fixed hold-out (saliency's folds are the STAViS ones) is refused up front.
    with pytest.raises(
        ConfigError, match="needs a DataModule with a fixed hold-out set.*Use cv.protocol=rotate"
    ):
        load_experiment("saliency/avrsp_av", ["cv.protocol=holdout_cv", "cv.folds=3"])


def test_svr_follows_the_holdout_cv_splits_and_reports_mean_and_std(capsys, tmp_path: Path) -> None:
    record = tmp_path / "splits.jsonl"
    exp = _experiment(tmp_path, "avq/svr_8f", record=record)
    assert cli.main(["train", str(exp), "cv.protocol=holdout_cv", "cv.folds=3"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    folds = pd.read_csv(run_dir / "folds.csv")
    assert len(folds) == 3 and {"test/plcc", "test/plcc_std", "test/rmse"} <= set(metrics)
    assert metrics["test/plcc"] == pytest.approx(folds["test/plcc"].mean())
    assert metrics["test/plcc_std"] == pytest.approx(folds["test/plcc"].std(ddof=1))
    assert metrics["test/plcc_std"] > 0, "each fold fits its own training sources, so the folds differ"
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert {s["kind"] for s in seen} == {"holdout_fold"} and {s["index"] for s in seen} == {0, 1, 2}
    assert len({tuple(s["test"]) for s in seen}) == 1, "one fixed test set for all folds"


# --------------------------------------------------------------------------- sweep and table
SWEEP = """
experiment: synthetic.yaml
objective: {metric: val/loss, direction: minimize, aggregate: mean}
overrides: [cv.protocol=holdout_cv, cv.folds=3]
trials: 2
sampler: {type: tpe, seed: 0}
pruner: {type: none}
params:
  model.lr: {type: categorical, choices: [0.001, 0.01]}
"""


def test_sweep_objective_reads_validation_only_and_never_sees_the_holdout(
    capsys, monkeypatch, tmp_path: Path
) -> None:
    record = tmp_path / "splits.jsonl"
    _experiment(tmp_path, "avq/attentive_fusion", record=record)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    results: list[runner.RunResult] = []
    train = runner.train

    def recording_train(cfg, extra_callbacks=()):
        result = train(cfg, extra_callbacks=extra_callbacks)
        results.append(result)
        return result

    monkeypatch.setattr(runner, "train", recording_train)
    assert cli.main(["sweep", str(tmp_path / "sweep.yaml"), "--trials", "2", *SMALL_NET]) == 0
    sweep_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("sweep directory: "))
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep_dir / 'study.db'}")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == len(results) == 2
    for trial, result in zip(trials, results):
        val = [m["val/loss"] for m in result.val_metrics]
        assert len(val) == 3 and trial.user_attrs["fold_values"] == pytest.approx(val)
        assert trial.value == pytest.approx(float(np.mean(val)))
        assert not any(k.startswith("test/") for m in result.val_metrics for k in m)
    # What the trials' DataModules held: the held-out sources never in a train or val table.
    held_out = set(_parts(_dm(holdout_sources=3), None)["test"])
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert len({(s["index"], tuple(s["val"])) for s in seen}) == 3 and len(seen) >= 2 * 3
    for s in seen:
        assert s["kind"] == "holdout_fold" and set(s["test"]) == held_out
        assert not held_out & (set(s["train"]) | set(s["val"]))


def test_table1_and_table2_use_the_papers_protocol(tmp_path: Path) -> None:
    spec = load_sweep("avq/table2")
    assert {"cv.protocol=holdout_cv", "cv.folds=5"} <= set(spec.overrides) and spec.metric.startswith("val/")
    table = load_table("avq/table1")
    assert "holdout_cv" in table.protocol
    for row in (r for r in table.rows if r.experiment):
        cfg, _, _ = resolve_row(table, row, [f"data.root={tmp_path}"], [], tmp_path)
        assert (cfg.cv.protocol, cfg.cv.folds, cfg.data.holdout_sources) == ("holdout_cv", 5, 5), row.name
