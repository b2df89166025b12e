"""What reaches W&B: evaluation figures and CSVs, test-metric summaries, CV groups and summary runs.

The offline runs are read back from their ``.wandb`` files, the exact records ``wandb sync`` uploads.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from avlab import cli
from avlab.config import load_experiment
from avlab.datamodules.avq import AVQDataModule
from avlab.lightningmodules.base import EvalOutputs
from avlab.runner import build_loggers
from avlab.wandb_media import WandbMedia, split_group, wandb_loggers, write_summary

AVQ = ["data.demo_size=tiny", "data.holdout_sources=1", "data.val_sources=1", "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def tiny_avq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return AVQDataModule.build_demo(tmp_path_factory.mktemp("avq-wandb") / "data", size="tiny")


# --------------------------------------------------------------------------- reading offline runs
def _records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline ``.wandb`` file.

    wandb 0.31 writes it from its Go core and ships no Python reader, only the record schema
    (``wandb.proto.wandb_internal_pb2.Record``). The container is LevelDB's log format: a 7-byte
    ``:W&B`` header, then 32 KiB blocks of chunks (crc32 4 bytes, length 2, type 1: full, first,
    middle, last), the rest of a block too short for a chunk header being padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding at the end of the file
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _items(items: Any) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def _offline_runs(run_dir: Path) -> list[dict[str, Any]]:
    """Per offline run: its run record, every history key's last value, its summary."""
    runs = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/*.wandb")):
        run: dict[str, Any] = {"dir": path.parent, "history": {}, "summary": {}}
        for record in _records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["run"] = record.run
            elif kind == "history":
                run["history"].update(_items(record.history.item))
            elif kind == "summary":
                run["summary"].update(_items(record.summary.update))
        runs.append(run)
    return runs


# --------------------------------------------------------------------------- end to end
def test_cv_run_logs_media_summaries_one_group_and_a_summary_run(
    capsys: pytest.CaptureFixture[str], tiny_avq: Path, tmp_path: Path
) -> None:
    argv = ["train", "avq/simple_fusion", *AVQ, f"data.root={tiny_avq}", f"run.root={tmp_path}"]
    assert cli.main([*argv, "logger.wandb.mode=offline", "cv.folds=2"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    folds = pd.read_csv(run_dir / "folds.csv")
    runs = _offline_runs(run_dir)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_type.setdefault(run["run"].job_type, []).append(run)
    assert sorted((t, len(r)) for t, r in by_type.items()) == [("fold", 2), ("summary", 1)]
    group = f"avq/simple_fusion/{run_dir.name}"
    assert {run["run"].run_group for run in runs} == {group}, "one group per invocation, not per experiment"

    pngs = sorted(p.stem for p in (run_dir / "plots").glob("*.png"))
    assert {"prediction_vs_mos_test", "modality_importance"} <= set(pngs)
    for k, run in enumerate(sorted(by_type["fold"], key=lambda r: r["run"].display_name)):
        assert run["run"].display_name.endswith(f"fold{k}")
        history = run["history"]
        for stem in pngs:
            assert history[f"plots/{stem}/_type"] == "image-file", stem
            assert (run["dir"] / "files" / history[f"plots/{stem}/path"]).stat().st_size > 0
        assert history["tables/predictions_test/_type"] == "table-file"
        table = json.loads((run["dir"] / "files" / history["tables/predictions_test/path"]).read_text())
        assert table["data"], "the table holds the predictions"
        if k == 1:  # the files on disk are the last fold's
            predictions = pd.read_csv(run_dir / "predictions_test.csv")
            assert history["tables/predictions_test/nrows"] == len(predictions)
            assert table["columns"] == list(predictions.columns)
        # The fold run's summary holds that fold's final test metrics, as folds.csv does.
        row = folds.iloc[k]
        for key in (c for c in folds.columns if c.startswith("test/")):
            assert run["summary"][key] == pytest.approx(row[key], rel=1e-6), key
        # ... and the fingerprint of the data it read, as data.json does.
        data = json.loads((run_dir / "data.json").read_text())["data"]
        assert run["summary"]["data/data/sha1"] == data["sha1"] and run["summary"]["data/data/files"] > 0

    summary = by_type["summary"][0]
    assert summary["run"].display_name == f"{group}/summary"
    assert summary["summary"]["splits"] == 2
    assert {"test/srcc", "test/srcc_std", "test/plcc_std"} <= set(metrics)
    for key, value in metrics.items():
        assert summary["summary"][key] == pytest.approx(value, rel=1e-6), key
    assert summary["history"]["tables/folds/nrows"] == 2
    table = json.loads((summary["dir"] / "files" / summary["history"]["tables/folds/path"]).read_text())
    assert table["columns"][0] == "fold" and [r[0] for r in table["data"]] == ["fold0", "fold1"]
    assert table["columns"][1:] == list(folds.columns[1:])


# --------------------------------------------------------------------------- units
def test_groups_single_runs_by_experiment_and_splits_by_invocation(tmp_path: Path) -> None:
    cfg = load_experiment("avq/simple_fusion", ["logger.wandb.mode=offline"])
    run_dir = tmp_path / "20260101-000000"
    assert split_group(cfg, run_dir, 1) == "avq/simple_fusion"
    assert split_group(cfg, run_dir, 3) == "avq/simple_fusion/20260101-000000"
    named = load_experiment("avq/simple_fusion", ["logger.wandb.group=study"])
    assert split_group(named, run_dir, 1) == "study"
    assert split_group(named, run_dir, 2) == "study"  # a sweep keeps every trial in its study
    # The logger only holds its init arguments until it is first used: no run starts here.
    (single,) = wandb_loggers(build_loggers(cfg, run_dir, None))
    assert (single._wandb_init["group"], single._wandb_init["job_type"]) == ("avq/simple_fusion", "train")
    (fold,) = wandb_loggers(build_loggers(cfg, run_dir, "fold1", group="g/r", job_type="fold"))
    assert (fold._wandb_init["group"], fold._wandb_init["job_type"]) == ("g/r", "fold")
    assert fold._wandb_init["name"].endswith("/fold1")


class _RecordingLogger:
    """Stands in for a WandbLogger: keeps what would be logged."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, Any], int | None]] = []

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.logged.append((metrics, step))


class WandbLogger(_RecordingLogger):
    """Named like Lightning's: W&B loggers are recognised by class name, without importing wandb."""


def test_large_csvs_log_their_first_rows_and_say_how_many_were_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    logger = _RecordingLogger()
    out = EvalOutputs(tmp_path, prefix="db_", media=WandbMedia([logger], step=7, max_table_rows=3))
    # A column of numbers and text (ids, names) is a valid CSV column, so it must be a valid table.
    frame = pd.DataFrame(
        {"score": [0.1, 0.2, 0.3, 0.4, 0.5], "name": [1, "b", None, "d", 5.0]},
        index=pd.Index(range(5), name="video"),
    )
    with caplog.at_level(logging.WARNING, logger="avlab.wandb_media"):
        path = out.write_csv("predictions_test.csv", frame, index=True)
    assert path is not None and len(pd.read_csv(path)) == 5, "the file on disk keeps every row"
    ((metrics, step),) = logger.logged
    table = metrics["tables/db_predictions_test"]
    assert isinstance(table, wandb.Table) and step == 7
    assert table.columns == ["video", "score", "name"] and len(table.data) == 3
    assert [row[2] for row in table.data] == [1, "b", None]
    assert "first 3 of 5 rows" in caplog.text and "2 dropped" in caplog.text

    no_tables = EvalOutputs(tmp_path, media=WandbMedia([logger := _RecordingLogger()], max_table_rows=0))
    no_tables.write_csv("x.csv", frame)
    assert logger.logged == [] and (tmp_path / "x.csv").is_file()


def test_without_a_wandb_logger_nothing_is_logged_and_nothing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.loggers import CSVLogger

    # W&B is optional: with the package unimportable, evaluation output must not need it.
    monkeypatch.setitem(sys.modules, "wandb", None)
    csv = CSVLogger(save_dir=str(tmp_path), name="csv")
    trainer = SimpleNamespace(is_global_zero=True, loggers=[csv], global_step=3)
    assert WandbMedia.for_trainer(trainer) is None
    assert WandbMedia.for_trainer(None) is None
    logger = WandbLogger()
    off_rank_zero = SimpleNamespace(is_global_zero=False, loggers=[logger], global_step=3)
    assert WandbMedia.for_trainer(off_rank_zero) is None
    on_rank_zero = WandbMedia.for_trainer(
        SimpleNamespace(is_global_zero=True, loggers=[csv, logger], global_step=3)
    )
    assert on_rank_zero is not None and on_rank_zero.loggers == [logger] and on_rank_zero.step == 3
    out = EvalOutputs(tmp_path, media=WandbMedia.for_trainer(trainer))
    assert (
        out.write_csv("predictions_test.csv", pd.DataFrame({"a": [1, 2]}))
        == tmp_path / "predictions_test.csv"
    )

    def draw(path: Path) -> None:
        path.write_bytes(b"\x89PNG")

    assert out.plot("figure.png", draw) == tmp_path / "plots" / "figure.png"
    assert (tmp_path / "plots" / "figure.png").read_bytes() == b"\x89PNG"
    write_summary([csv], {"test/srcc": 0.5})  # no W&B logger: a no-op
    assert logger.logged == []
