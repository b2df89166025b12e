"""Run directories record the data they read (`data.json`); the fingerprint follows its definition,
sees edits that keep a file's size, ignores avlab's own caches, and `avlab compare` shows it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from avlab import cli
from avlab.compare import compare_runs
from avlab.data_fingerprint import DATA_RECORD, data_fingerprint, stale_data, write_data_record
from avlab.datamodules.yt8m import YT8MDataModule
from avlab.tables import load_table
from avlab.tables.build import plan


def _dataset(root: Path) -> Path:
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"\x00" * 100)
    (root / "scores.csv").write_text("name,mos\na.mp4,3.21\n")
    (root / ".features" / "ab").mkdir(parents=True)
    (root / ".features" / "ab" / "cache.npz").write_bytes(b"cache")
    return root


def test_fingerprint_is_the_documented_hash(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    video, scores = root / "videos" / "a.mp4", root / "scores.csv"
    # Sorted relative names; annotation files by content, media by modification time; no hidden entries.
    lines = [
        f"scores.csv\x00{scores.stat().st_size}\x00{hashlib.sha1(scores.read_bytes()).hexdigest()}\n",
        f"videos/a.mp4\x00100\x00{video.stat().st_mtime_ns}\n",
    ]
    want = hashlib.sha1("".join(lines).encode()).hexdigest()
    size = 100 + scores.stat().st_size
    assert data_fingerprint(root) == {"root": str(root.absolute()), "files": 2, "bytes": size, "sha1": want}


def test_what_changes_the_fingerprint_and_what_does_not(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    first = data_fingerprint(root)["sha1"]
    (root / ".features" / "ab" / "other.npz").write_bytes(b"more cache")  # avlab's cache grows
    scores = root / "scores.csv"
    past = time.time() - 3600
    os.utime(scores, (past, past))  # touched, same bytes
    assert data_fingerprint(root)["sha1"] == first
    scores.write_text("name,mos\na.mp4,3.25\n")  # a corrected score: the same size
    second = data_fingerprint(root)["sha1"]
    assert second != first
    os.utime(root / "videos" / "a.mp4", (past, past))  # media: a rewrite shows as a new time
    third = data_fingerprint(root)["sha1"]
    assert third != second
    (root / "videos" / "b.mp4").write_bytes(b"\x01")
    assert data_fingerprint(root)["files"] == 3 and data_fingerprint(root)["sha1"] != third
    assert data_fingerprint(tmp_path / "gone")["sha1"] is None


def test_stale_data_names_the_folder_and_the_change(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    assert "recorded no data.json" in stale_data(run)
    write_data_record(run, {"data": root})
    assert stale_data(run) is None
    (root / "videos" / "b.mp4").write_bytes(b"\x01")
    why = stale_data(run)
    assert why is not None and str(root.absolute()) in why and "2 → 3 files" in why
    shutil.rmtree(root)
    assert "is gone" in stale_data(run)


@pytest.fixture
def yt8m_copy(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    tiny = YT8MDataModule.build_demo(tmp_path_factory.mktemp("yt8m-tiny-fp") / "data", size="tiny")
    return Path(shutil.copytree(tiny, tmp_path / "yt8m"))


def test_a_table_row_runs_again_when_its_data_changed(yt8m_copy: Path, tmp_path: Path, capsys) -> None:
    spec = yaml.safe_load(Path(load_table("yt8m/table1").path).read_text())
    spec["task"] = "yt8m"
    spec["rows"] = [r for r in spec["rows"] if r["experiment"] == "yt8m/fc_audio"]
    spec["overrides"] = [
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "data.batch_size=32",
        "model.net.hidden=32",
        "callbacks.progress_bar=none",
        f"data.root={yt8m_copy}",
    ]
    path = tmp_path / "one_row.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = tmp_path / "runs"
    assert cli.main(["table", str(path), "--runs", str(runs), "logger.wandb.mode=disabled"]) == 0
    (run_dir,) = (p.parent for p in runs.glob("yt8m/*/*/metrics.json"))
    record = json.loads((run_dir / DATA_RECORD).read_text())
    assert record == {"data": data_fingerprint(yt8m_copy)}  # written by the runner
    capsys.readouterr()

    def action() -> tuple[str, str]:
        (res,) = [r for r in plan(load_table(str(path)), ["logger.wandb.mode=disabled"], [], runs) if r.cfg]
        return res.action, res.note

    assert action() == ("reuse", "")
    shard = min((yt8m_copy / "video").glob("train*.tfrecord"))
    shard.write_bytes(shard.read_bytes())  # re-extracted: the same bytes, a new time
    past = time.time() - 60
    os.utime(shard, (past, past))
    what, note = action()
    assert what == "run" and f"not reusing {run_dir.name}" in note and "changed since the run" in note
    assert cli.main(["table", str(path), "--runs", str(runs), "--dry-run", "logger.wandb.mode=disabled"]) == 0
    out = capsys.readouterr().out
    assert ": run (not reusing" in out

    # `avlab compare` lists the data fingerprints once they differ between runs.
    other = tmp_path / "other_run"
    shutil.copytree(run_dir, other)
    write_data_record(other, {"data": yt8m_copy})
    text = compare_runs([run_dir, other])
    assert "data.json: data" in text and record["data"]["sha1"][:12] in text
    assert "configs are identical" not in text
