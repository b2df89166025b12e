"""The shared reader catalog: registration, the LIVE-SJTU and manifest readers, error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from avlab.datamodules.readers import (
    READERS,
    ReadOptions,
    detect_format,
    get_reader,
    missing_files,
    register_reader,
)
from avlab.errors import ConfigError, DataError


def _cells(rows: list[list[str]]) -> np.ndarray:
    out = np.empty((len(rows), len(rows[0])), dtype=object)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            out[i, j] = np.array([value])
    return out


def _live_sjtu(folder: Path, *, drop: str | None = None) -> Path:
    """A 4-row MOS.mat in the release's layout, media in subfolders, plus a decoy in a hidden cache."""
    sources, vconds, aconds = ["Boxing", "Town"], ["QP16", "QP35_S"], ["128kbps", "8kbps"]
    rows = [(s, v, a) for s in sources for v, a in zip(vconds, aconds)]
    mat = {
        "MOS": np.array([[61.5], [30.25], [70.0], [21.93]]),
        "disNames": _cells([[f"{s}_{v}.yuv", f"{s}_{a}.wav"] for s, v, a in rows]),
        "refNames": _cells([[f"{s}.yuv", f"{s}.wav"] for s, _, _ in rows]),
        "allNames": _cells([list(r) for r in rows]),
        "frameRate": np.array([[25.0], [25.0], [29.97], [29.97]]),
        "resolution": np.array([[1080, 1920]]),
    }
    folder.mkdir(parents=True)
    scipy.io.savemat(folder / "MOS.mat", mat)
    names = {n for s, v, a in rows for n in (f"{s}_{v}.yuv", f"{s}_{a}.wav", f"{s}.yuv", f"{s}.wav")}
    for n in sorted(names - {drop}):
        sub = folder / ("ref" if "_" not in n else "dis")
        sub.mkdir(exist_ok=True)
        (sub / n).write_bytes(b"x")
    (folder / ".features").mkdir()
    (folder / ".features" / "Boxing.yuv").write_bytes(b"decoy")
    return folder


def test_live_sjtu_reader_reads_every_field(tmp_path: Path) -> None:
    folder = _live_sjtu(tmp_path / "sjtu")
    table = get_reader("live_sjtu").read(folder, ReadOptions(name="sjtu"))
    assert list(table["stimulus"]) == [
        "Boxing_QP16_128kbps",
        "Boxing_QP35_S_8kbps",
        "Town_QP16_128kbps",
        "Town_QP35_S_8kbps",
    ]
    assert list(table["group"]) == ["Boxing", "Boxing", "Town", "Town"]
    np.testing.assert_array_equal(table["mos"], [61.5, 30.25, 70.0, 21.93])
    np.testing.assert_array_equal(table["audio_bitrate_kbps"], [128.0, 8.0, 128.0, 8.0])
    np.testing.assert_array_equal(table["fps"], [25.0, 25.0, 29.97, 29.97])
    assert set(table["width"]) == {1920} and set(table["height"]) == {1080}
    assert table.loc[1, "media"] == str(folder / "dis" / "Boxing_QP35_S.yuv")
    assert table.loc[1, "audio"] == str(folder / "dis" / "Boxing_8kbps.wav")
    # The reference comes from the dataset, never from a derived file in a hidden cache folder.
    assert table.loc[0, "reference"] == str(folder / "ref" / "Boxing.yuv")
    assert table.loc[0, "reference_audio"] == str(folder / "ref" / "Boxing.wav")
    assert table.loc[3, "where"] == "MOS.mat entry 4"
    assert missing_files(table) == []


def test_live_sjtu_missing_files_are_all_reported_with_their_row(tmp_path: Path) -> None:
    folder = _live_sjtu(tmp_path / "sjtu", drop="Town_8kbps.wav")
    table = get_reader("live_sjtu").read(folder, ReadOptions(name="sjtu"))
    problems = missing_files(table)
    assert len(problems) == 1 and "MOS.mat entry 4" in problems[0] and "Town_8kbps.wav" in problems[0]
    from avlab.datamodules.avq import read_live_sjtu

    with pytest.raises(DataError, match="Town_8kbps.wav"):
        read_live_sjtu(folder, [8, 128])
    kept = read_live_sjtu(_live_sjtu(tmp_path / "ok"), [128])  # the avq view: only 128 kb/s, avq column names
    assert list(kept["stimulus"]) == ["Boxing_QP16_128kbps", "Town_QP16_128kbps"]
    assert {"distorted", "distorted_audio", "source"} <= set(kept.columns)


def test_live_sjtu_without_its_score_fields_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    scipy.io.savemat(folder / "MOS.mat", {"scores": np.ones((2, 1))})
    with pytest.raises(DataError, match=r"MOS.mat lacks field\(s\) MOS, disNames"):
        get_reader("live_sjtu").read(folder, ReadOptions(name="bad"))


def test_manifest_reader_accepts_both_vocabularies(tmp_path: Path) -> None:
    for name, header in (
        ("fr", "stimulus,source,reference,distorted,mos"),
        ("nr", "stimulus,group,reference,media,mos"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.csv").write_text(f"{header}\na,s1,r.mp4,d.mp4,3.5\nb,s2,,e.mp4,\n")
        table = get_reader("manifest").read(folder, ReadOptions(name=name))
        assert list(table["media"]) == [str((folder / "d.mp4").resolve()), str((folder / "e.mp4").resolve())]
        assert table.loc[0, "reference"] == str((folder / "r.mp4").resolve()) and pd.isna(
            table.loc[1, "reference"]
        )
        assert (
            list(table["group"]) == ["s1", "s2"]
            and table.loc[0, "mos"] == 3.5
            and pd.isna(table.loc[1, "mos"])
        )
        assert table.loc[1, "where"] == "manifest.csv row 3"
        assert len(missing_files(table)) == 3  # d.mp4, e.mp4, r.mp4: every missing file, with its row
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "manifest.csv").write_text("media,distorted,mos\na,b,1\n")
    with pytest.raises(DataError, match="both spellings.*distorted/media"):
        get_reader("manifest").read(tmp_path / "both", ReadOptions(name="both"))
    (tmp_path / "nomos").mkdir()
    (tmp_path / "nomos" / "manifest.csv").write_text("media\na.png\n")
    with pytest.raises(DataError, match="no column.*mos"):
        get_reader("manifest").read(tmp_path / "nomos", ReadOptions(name="nomos"))


def test_catalog_lookup_detection_and_registration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown format 'live_sjt'.*Did you mean `live_sjtu`"):
        get_reader("live_sjt")
    with pytest.raises(ConfigError, match="Formats: live_sjtu, manifest$"):
        get_reader("koniq10k", allowed=("manifest", "live_sjtu"))
    folder = _live_sjtu(tmp_path / "sjtu")
    assert detect_format(folder, ("manifest", "live_sjtu")) == "live_sjtu"
    with pytest.raises(DataError, match="manifest.csv \\(manifest\\), MOS.mat \\(live_sjtu\\)"):
        detect_format(tmp_path, ("manifest", "live_sjtu"))

    @register_reader("test_only_format", modalities=("image",), mos_range=(1, 5), score_file="scores.txt")
    def read_test_only(folder: Path, options: ReadOptions) -> pd.DataFrame:
        return pd.DataFrame({"media": [str(folder / "a.png")], "mos": [2.0]})

    try:
        reader = get_reader("test_only_format")
        assert reader.read is read_test_only and reader.mos_range == (1.0, 5.0)
        with pytest.raises(ValueError, match="registered twice"):
            register_reader("test_only_format")(lambda folder, options: pd.DataFrame())
    finally:
        READERS.pop("test_only_format")
