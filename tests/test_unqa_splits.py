"""UNQA splits: 7:1:2 by content group, an item-level fallback (with a warning that `avlab data check`
reports) when a database has fewer than 3 groups, a clear error when it cannot be split at all, and
TCD-VoIP grouped by the content of its reference recordings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avlab import cli
from avlab.datamodules.unqa import UNQADataModule
from avlab.datamodules.unqa_splits import assign_splits, split_groups
from avlab.errors import DataError
from avlab.paths import cache_dir

NOIZEUS = {"noizeus": {"format": "manifest", "path": "NOIZEUS", "modality": "audio", "mos_range": [1, 5]}}


@pytest.fixture
def noizeus_copy(tmp_path: Path) -> Path:
    src = UNQADataModule.build_demo(cache_dir() / "demo" / "unqa" / "tiny", size="tiny")
    dst = tmp_path / "qa"
    shutil.copytree(src / "NOIZEUS", dst / "NOIZEUS")
    return dst


def test_assign_splits_keeps_groups_whole_and_follows_the_ratios() -> None:
    groups = np.repeat([f"g{i}" for i in range(10)], 3)
    which = assign_splits(groups, [0.7, 0.1, 0.2], np.random.default_rng(0))
    per_group = pd.Series(which).groupby(groups).nunique()
    assert (per_group == 1).all(), "a content group on two sides"
    assert [int((which == p).sum()) // 3 for p in ("train", "val", "test")] == [7, 1, 2]
    with pytest.raises(DataError, match="at least 3 content groups"):
        assign_splits(np.array(["a", "a", "b"]), [0.7, 0.1, 0.2], np.random.default_rng(0))


def test_too_few_groups_fall_back_to_items_with_a_warning(noizeus_copy: Path, capsys) -> None:
    manifest = noizeus_copy / "NOIZEUS" / "manifest.csv"
    table = pd.read_csv(manifest)
    table["group"] = np.where(np.arange(len(table)) % 2 == 0, "speakerA", "speakerB")  # 2 groups only
    table.to_csv(manifest, index=False)
    dm = UNQADataModule(root=str(noizeus_copy), databases=NOIZEUS)
    with pytest.warns(UserWarning, match=r"`noizeus` has only 2 content group\(s\).*item level"):
        dm.setup("fit")
    sizes = {p: len(dm.parts[p][0]) for p in ("train", "val", "test")}
    assert sum(sizes.values()) == len(table) and min(sizes.values()) >= 1, sizes
    assert "noizeus" in dm.split_notes and dm.untested_databases() == {}
    # `avlab data check` reports the fallback (it is a warning, not an error: exit status 0).
    others = [f"data.databases.{name}=null" for name in ("koniq", "clive", "konvid", "tcd_voip", "live_sjtu")]
    assert cli.main(["data", "check", "unqa/unqa_demo", f"data.root={noizeus_copy}", *others]) == 0
    out = capsys.readouterr().out
    assert "split noizeus: WARNING" in out and "item level" in out


def test_a_database_of_two_stimuli_cannot_be_split() -> None:
    with pytest.raises(DataError, match=r"`tiny` has only 2 stimuli.*data.databases.tiny=null"):
        split_groups("tiny", np.array(["a", "a"]), np.array(["x.wav", "y.wav"]))


def test_tcd_voip_is_grouped_by_reference_recording() -> None:
    root = UNQADataModule.build_demo(cache_dir() / "demo" / "unqa" / "tiny", size="tiny")
    dm = UNQADataModule(root=str(root), databases={"tcd": {"format": "tcd_voip", "path": "TCD-VoIP"}})
    dm.setup("fit")
    t = dm.table
    # The demo degrades each speaker's one sentence under the five conditions: one reference per speaker.
    speaker = t["media"].map(lambda m: Path(m).stem.split("_")[-1])
    assert t["group"].str.startswith("ref:").all()
    assert t.groupby("group").apply(lambda g: speaker[g.index].nunique()).eq(1).all()
    assert t["group"].nunique() == speaker.nunique() == 4
    for a in ("train", "val", "test"):
        for b in ("train", "val", "test"):
            if a < b:
                assert not set(t.loc[dm.parts[a][0], "group"]) & set(t.loc[dm.parts[b][0], "group"])


def test_a_database_without_a_test_metric_is_named_in_the_summary() -> None:
    """Every configured database gets test metrics, or the run's summary says why it has none."""
    import torch

    from avlab.lightningmodules.unqa import UNQAModule
    from avlab.models.unqa import AudioExtractor, UNQANet

    dbs = {
        name: {"format": "manifest", "path": name, "modality": "audio", "mos_range": [1, 5]}
        for name in ("big", "small", "absent")
    }
    module = UNQAModule(UNQANet(audio=AudioExtractor(dim=16, num_heads=2)), databases=dbs)
    names = ["big"] * 5 + ["small"] * 2
    table = pd.DataFrame({"database": names, "modality": "audio", "media": [f"{i}.wav" for i in range(7)]})
    mos = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 2.0, 3.0])
    metrics = module.evaluate("test", {"index": torch.arange(7), "pred": mos * 2, "mos": mos}, table)
    assert metrics["big/srcc"] == pytest.approx(1.0) and not any(k.startswith("small/") for k in metrics)
    summary = "\n".join(module.summary_lines)
    assert "small" in summary and "only 2 test stimuli" in summary
    assert "absent" in summary and "no test stimuli" in summary
