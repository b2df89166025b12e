"""UNQA's SlowFast motion features (eq. 7) are data: `avlab features` computes and caches them
through the DataModule, with the weights file's content hash in the provenance, and training reads
the same cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avlab import cli
from avlab.datamodules.unqa import UNQADataModule
from avlab.models.unqa import MotionExtractor
from avlab.paths import cache_dir

ARCH = {"depths": [1, 1, 1, 1], "width": 16, "alpha": 4, "beta_inv": 8}
VIDEO_ONLY = [
    "data.databases.koniq=null",
    "data.databases.clive=null",
    "data.databases.tcd_voip=null",
    "data.databases.noizeus=null",
    "data.databases.live_sjtu=null",
    "data.motion_size=32",
]


@pytest.fixture
def demo_root(tmp_path: Path) -> Path:
    src = UNQADataModule.build_demo(cache_dir() / "demo" / "unqa" / "tiny", size="tiny")
    shutil.copytree(src / "KoNViD-1k", tmp_path / "qa" / "KoNViD-1k")
    return tmp_path / "qa"


def _features(capsys, root: Path, *extra: str) -> dict:
    assert cli.main(["features", "unqa/unqa_demo", f"data.root={root}", *VIDEO_ONLY, *extra]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") : out.rindex("}") + 1])


def test_features_command_caches_motion_with_weights_provenance(
    demo_root: Path, tmp_path: Path, capsys
) -> None:
    weights = tmp_path / "slowfast_avlab.pt"
    torch.save(MotionExtractor(**ARCH, init_seed=3).net.state_dict(), weights)
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    first = _features(capsys, demo_root, f"model.net.motion.weights={weights}")
    assert first["videos"] == 20 and first["computed"] == 20
    assert first["signature"]["weights_sha256"] == sha256
    sidecars = [json.loads(p.read_text()) for p in (demo_root / ".features").rglob("*.json")]
    assert len(sidecars) == 20
    assert all(
        s["extractor"] == "unqa-slowfast" and s["params"]["weights_sha256"] == sha256 for s in sidecars
    )
    # The weights file is an input of every entry: its content fingerprint is in the provenance.
    assert all(any(i["path"] == str(weights) for i in s["inputs"]) for s in sidecars)

    # A second call does no work; other weights (same architecture, other content) are new entries.
    assert _features(capsys, demo_root, f"model.net.motion.weights={weights}")["computed"] == 0
    torch.save(MotionExtractor(**ARCH, init_seed=4).net.state_dict(), weights)
    assert _features(capsys, demo_root, f"model.net.motion.weights={weights}")["computed"] == 20


def test_training_reads_the_cache_that_features_filled(demo_root: Path, capsys) -> None:
    summary = _features(capsys, demo_root)
    assert summary["computed"] == 20
    motion = MotionExtractor(**ARCH, init_seed=0)
    dm = UNQADataModule(
        root=str(demo_root),
        databases={"konvid": {"format": "konvid1k", "path": "KoNViD-1k"}},
        motion=motion,
        motion_size=32,
        image_size=32,
    )
    dm.setup("fit")
    index = int(dm.parts["train"][0][0])
    batch = dm.collate([dm.load_item(index), dm.load_item(int(dm.parts["train"][0][1]))])
    assert batch["motion"].shape == (2, motion.out_dim)
    # The served feature is the extractor's output on this video's clips (mean over chunks).
    direct = dm.motion_feature(dm.table.iloc[index]["media"])
    np.testing.assert_allclose(batch["motion"][0].numpy(), direct, rtol=1e-5, atol=1e-6)
    assert set(batch) >= {"index", "database", "frames", "motion", "mos"} and batch["database"] == "konvid"


def test_without_motion_extractor_nothing_is_extracted(demo_root: Path, capsys) -> None:
    summary = _features(capsys, demo_root, "model.net.motion=null")
    assert summary["features"].startswith("none") and not (demo_root / ".features").exists()
