"""`avlab data check` lists every damaged yt8m record (each CRC, each shard), not only the first."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from avlab import cli
from avlab.datamodules.yt8m import shard_check
from avlab.demo.yt8m import build_yt8m_demo
from avlab.io.tfrecord import iter_records


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_yt8m_demo(tmp_path_factory.mktemp("yt8m") / "demo", size="tiny")


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def damaged(demo: Path, tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A demo copy with two bad data CRCs in one shard and a bad length CRC in another."""
    root = tmp_path / "demo"
    shutil.copytree(demo, root)
    train = root / "video" / "train0001.tfrecord"
    val = root / "video" / "validate0000.tfrecord"
    t_offsets = [off for off, _ in iter_records(train)]
    v_offsets = [off for off, _ in iter_records(val)]
    assert len(t_offsets) >= 3 and len(v_offsets) >= 2, "the tiny demo shards are too small for this test"
    _flip(train, t_offsets[1] + 12 + 7)  # inside record 1's payload: its data CRC fails
    _flip(train, t_offsets[2] + 12 + 3)  # and record 2's: the scan must go on past record 1
    _flip(val, v_offsets[1] + 2)  # inside record 1's 8-byte length field: its length CRC fails
    return root, {"train1": t_offsets[1], "train2": t_offsets[2], "val": v_offsets[1]}


@pytest.mark.parametrize("min_shards", [1000, 1], ids=["one-process", "process-pool"])
def test_data_check_reports_every_bad_crc(
    damaged: tuple[Path, dict[str, int]], min_shards: int, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    root, at = damaged
    monkeypatch.setattr(shard_check, "PARALLEL_MIN_SHARDS", min_shards)
    assert cli.main(["data", "check", "yt8m/attend_fusion", f"data.root={root}"]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s) found" in out, out
    for offset in (at["train1"], at["train2"]):
        assert f"train0001.tfrecord: corrupt record data at byte offset {offset} (data CRC mismatch)" in out
    assert f"validate0000.tfrecord: corrupt record header at byte offset {at['val']} (length CRC" in out


def test_scan_shards_is_empty_for_intact_shards(demo: Path) -> None:
    paths = sorted((demo / "video").glob("*.tfrecord"))
    assert shard_check.scan_shards(paths, workers=2) == {p: [] for p in paths}
