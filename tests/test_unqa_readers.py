"""UNQA database readers: native score-file formats of the demo, and clear errors naming database and row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from avlab import cli
from avlab.datamodules.unqa import UNQADataModule, detect_modality
from avlab.datamodules.unqa_readers import parse_databases, read_database
from avlab.demo.unqa import DEMO_DATABASES
from avlab.errors import ConfigError, DataError
from avlab.paths import cache_dir

# Stimuli per demo database at size "tiny" (CLIVE's 7 leading training images are dropped).
TINY_COUNTS = {"koniq": 21, "clive": 21, "konvid": 20, "tcd_voip": 20, "noizeus": 16, "live_sjtu": 12}


def tiny_demo() -> Path:
    """The tiny demo under the test cache (built once; the datamodule finds it with data.demo_size=tiny)."""
    return UNQADataModule.build_demo(cache_dir() / "demo" / "unqa" / "tiny", size="tiny")


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "qa"
    shutil.copytree(tiny_demo(), dst, ignore=shutil.ignore_patterns(".features"))
    return dst


def test_every_demo_database_reads_in_its_native_format() -> None:
    root = tiny_demo()
    assert (root / "KonIQ-10k" / "koniq10k_scores_and_distributions.csv").is_file()
    assert (root / "CLIVE" / "Data" / "AllMOS_release.mat").is_file()
    assert (root / "TCD-VoIP" / "Subjective Test Scores.xlsx").is_file()
    assert (root / "LIVE-SJTU" / "MOS.mat").is_file()
    for spec in parse_databases(DEMO_DATABASES):
        table, problems = read_database(spec, root)
        assert problems == [], problems
        assert len(table) == TINY_COUNTS[spec.name], spec.name
        lo, hi = spec.mos_range
        assert table["mos"].between(lo, hi).all() and table["mos"].std() > 0
    sjtu, _ = read_database(parse_databases({"s": DEMO_DATABASES["live_sjtu"]})[0], root)
    assert sjtu["media"].str.endswith(".yuv").all() and sjtu["audio"].str.endswith(".wav").all()
    assert sjtu["group"].nunique() == 3 and (sjtu["width"] == 112).all()


def _problems(root: Path, name: str) -> list[str]:
    spec = parse_databases({name: DEMO_DATABASES[name]})[0]
    return read_database(spec, root)[1]


def test_missing_media_names_database_and_row(demo_copy: Path) -> None:
    csv = pd.read_csv(demo_copy / "KonIQ-10k" / "koniq10k_scores_and_distributions.csv")
    (demo_copy / "KonIQ-10k" / "1024x768" / csv["image_name"][4]).unlink()
    problems = _problems(demo_copy, "koniq")
    assert len(problems) == 1
    assert "database `koniq`" in problems[0] and "row 6" in problems[0] and "does not exist" in problems[0]


def test_mos_outside_declared_range(demo_copy: Path) -> None:
    path = demo_copy / "KoNViD-1k" / "KoNViD_1k_mos.csv"
    text = path.read_text().splitlines()
    vid = text[3].split(",")[0]
    text[3] = f"{vid},7.5"
    path.write_text("\n".join(text) + "\n")
    problems = _problems(demo_copy, "konvid")
    assert problems == [
        (
            "database `konvid` (KoNViD_1k_mos.csv row 4): MOS 7.5 is outside the declared range [1, 5] "
            "(data.databases.konvid.mos_range)"
        )
    ]


def test_duplicate_rows(demo_copy: Path) -> None:
    path = demo_copy / "NOIZEUS" / "manifest.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[2]]) + "\n")
    problems = _problems(demo_copy, "noizeus")
    assert len(problems) == 1 and "duplicate row" in problems[0] and "database `noizeus`" in problems[0]
    assert f"manifest.csv row {len(lines) + 1}" in problems[0] and "manifest.csv row 3" in problems[0]


def test_unsupported_modality_and_unknown_format() -> None:
    with pytest.raises(ConfigError, match=r"database `x`: unsupported modality 'haptic'"):
        parse_databases({"x": {"format": "manifest", "modality": "haptic", "mos_range": [1, 5]}})
    with pytest.raises(ConfigError, match=r"database `k`: format koniq10k holds image data, not video"):
        parse_databases({"k": {"format": "koniq10k", "modality": "video"}})
    with pytest.raises(ConfigError, match=r"Did you mean `konvid1k`"):
        parse_databases({"v": {"format": "konvid"}})
    with pytest.raises(ConfigError, match=r"needs `mos_range"):
        parse_databases({"m": {"format": "manifest", "modality": "audio"}})
    # Dropping a database is a config edit.
    assert [s.name for s in parse_databases({**DEMO_DATABASES, "clive": None})] == [
        n for n in DEMO_DATABASES if n != "clive"
    ]


def test_setup_raises_all_problems_and_data_check_reports(demo_copy: Path, capsys) -> None:
    (demo_copy / "TCD-VoIP" / "Test Set" / "echo").rename(demo_copy / "TCD-VoIP" / "echo_moved")
    dm = UNQADataModule(root=str(demo_copy))
    with pytest.raises(
        DataError, match=r"(?s)4 problem\(s\).*database `tcd_voip` \(Subjective Test Scores.xlsx row \d+\)"
    ):
        dm.setup("fit")
    assert cli.main(["data", "check", "unqa/unqa_demo", f"data.root={demo_copy}"]) == 1
    out = capsys.readouterr().out
    assert "4 problem(s) found" in out and "tcd_voip" in out


def test_splits_are_by_group_and_repeat_differently() -> None:
    dm = UNQADataModule(demo_size="tiny")
    dm.configure_split("repeat", 0, 2)
    dm.setup("fit")
    t = dm.table
    sjtu = t.index[t["db_name"] == "live_sjtu"]
    first = {p: set(dm.parts[p][5]) for p in ("train", "val", "test")}
    for a in ("train", "val", "test"):
        groups = set(t.loc[list(first[a]), "group"])
        for b in ("train", "val", "test"):
            if a != b:
                assert not groups & set(t.loc[list(first[b]), "group"]), "a LIVE-SJTU source on two sides"
    assert sum(len(v) for v in first.values()) == len(sjtu)
    koniq_test = set(dm.parts["test"][0])
    dm.configure_split("repeat", 1, 2)
    dm.setup("fit")
    assert koniq_test and set(dm.parts["test"][0]) != koniq_test, "repeats must draw different random splits"
    n = len(t[t["db_name"] == "koniq"])
    assert len(dm.parts["train"][0]) == pytest.approx(0.7 * n, abs=1) and len(dm.parts["val"][0]) >= 1


def test_detect_modality(tmp_path: Path) -> None:
    from media_helpers import mux_av

    root = tiny_demo()
    image = next((root / "KonIQ-10k" / "1024x768").iterdir())
    video = next((root / "KoNViD-1k" / "KoNViD_1k_videos").iterdir())
    wav = next((root / "NOIZEUS" / "wav").iterdir())
    av = tmp_path / "av.mp4"
    mux_av(video, wav, av)
    assert [detect_modality(p) for p in (image, video, wav, av)] == ["image", "video", "audio", "av"]
