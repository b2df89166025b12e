"""unqa's decoded-stimulus store (``data.frame_cache``): batches read from it equal the decoded
ones, a changed source is decoded again, ``avlab features`` fills it, and training metrics do not
depend on it."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from avlab import cli
from avlab.cache_admin import CacheEntry, prune, scan
from avlab.datamodules.unqa import UNQADataModule
from avlab.errors import ConfigError, DataError
from avlab.features.frame_cache import FrameStore
from avlab.media.decoders import available_decoders, resolve_decoder
from avlab.paths import cache_dir

#: One database per modality.
DATABASES = {
    "koniq": {"format": "koniq10k", "path": "KonIQ-10k"},
    "konvid": {"format": "konvid1k", "path": "KoNViD-1k"},
    "tcd_voip": {"format": "tcd_voip", "path": "TCD-VoIP"},
    "live_sjtu": {"format": "live_sjtu", "path": "LIVE-SJTU"},
}


@pytest.fixture(scope="module")
def demo() -> Path:
    return UNQADataModule.build_demo(cache_dir() / "demo" / "unqa" / "tiny", size="tiny")


def _dm(root: Path, frame_cache: str, databases: dict[str, Any] = DATABASES, **kw: Any) -> UNQADataModule:
    kw = {"image_size": 32, "spatial_sampling": "native", "frames": 2, "audio_seconds": 1.0, **kw}
    dm = UNQADataModule(root=str(root), databases=databases, frame_cache=frame_cache, batch_size=4, **kw)
    dm.setup("fit")
    return dm


def _assert_same_batch(a: dict[str, Any], b: dict[str, Any], atol: float = 0.0) -> None:
    assert list(a) == list(b)
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[key].dtype and value.shape == b[key].shape, key
            if atol:
                torch.testing.assert_close(value, b[key], rtol=0, atol=atol)
            else:
                assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def _no_hashing(path: Any) -> None:
    raise AssertionError(f"{path} was hashed again")


def test_stored_batches_equal_decoded_batches(demo: Path) -> None:
    # Native crops never resample, so uint8 storage is exact; random training crops are drawn per
    # step from the stored whole image with the same seeded draws as from the decoded one.
    kw = {"train_crops": "random", "image_crops": 4}
    off, auto = _dm(demo, "off", **kw), _dm(demo, "auto", **kw)
    for d, name in enumerate(DATABASES):
        for part in ("train", "test"):
            uids = auto.parts[part][d][:4]
            augment = (3, 7) if part == "train" else None
            stored = auto.load_batch(uids, augment)
            _assert_same_batch(off.collate([off.load_item(int(u), augment) for u in uids]), stored)
            # One batched read equals the items read one at a time.
            _assert_same_batch(auto.collate([auto.load_item(int(u), augment) for u in uids]), stored)
        assert stored["modality"] == auto.modalities[d] and name == stored["database"]
    # Another step draws other crops of the same images.
    img = auto.parts["train"][0][:4]
    assert not torch.equal(auto.load_batch(img, (3, 7))["frames"], auto.load_batch(img, (3, 8))["frames"])
    # setup() resolved every entry: reading needs no hashing of sources (forked workers inherit this).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("avlab.datamodules.unqa.file_fingerprint", _no_hashing)
        _assert_same_batch(stored, auto.load_batch(uids, augment))
    # The evaluation loaders serve whole batches through _Items.__getitems__, equal to per-item ones.
    for loader_off, loader_auto in zip(off.test_dataloader(), auto.test_dataloader(), strict=True):
        for a, b in zip(loader_off, loader_auto, strict=True):
            _assert_same_batch(a, b)


def test_resized_frames_stay_within_the_uint8_bound(demo: Path) -> None:
    # resize sampling interpolates, so the stored round(255 x) differs from x by at most half a level.
    dbs = {k: DATABASES[k] for k in ("koniq", "konvid")}
    kw = {"spatial_sampling": "resize", "resize_short": 40}
    off, auto = _dm(demo, "off", dbs, **kw), _dm(demo, "auto", dbs, **kw)
    for d in range(2):
        uids = auto.parts["test"][d][:4]
        a, b = off.collate([off.load_item(int(u)) for u in uids]), auto.load_batch(uids)
        diff = (a["frames"] - b["frames"]).abs()
        assert 0 < float(diff.max()) <= 0.5 / 255 + 1e-6


def test_changed_source_is_decoded_again(demo: Path, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "qa"
    shutil.copytree(demo / "KonIQ-10k", root / "KonIQ-10k")
    monkeypatch.delenv("AVLAB_CACHE")  # the store then lives under the dataset
    dbs = {"koniq": DATABASES["koniq"]}
    auto = _dm(root, "auto", dbs)
    uid = int(auto.parts["test"][0][0])
    before = auto.load_item(uid)["frames"]
    source = Path(auto.table.iloc[uid]["media"])

    def metas() -> list[dict[str, Any]]:
        found = [json.loads(m.read_text()) for m in (root / ".features" / "frames").rglob("meta.json")]
        return [m for m in found if m["sources"][0]["path"] == str(source)]

    # setup() stored every image (so DataLoader workers never hash sources); one entry is this one.
    assert len(list((root / ".features" / "frames").rglob("meta.json"))) == len(auto.table)
    [meta] = metas()
    assert meta["kind"] == "unqa-frames" and meta["params"]["decoder"] == "pil-rgb"
    assert meta["sources"][0]["path"] == str(source) and len(meta["sources"][0]["sha1"]) == 40
    assert meta["arrays"]["frames"] == {"shape": [1, 3, 32, 32], "dtype": "uint8"}

    # Rewrite the source with other pixels: the same DataModule decodes it again.
    with Image.open(source) as im:
        flipped = np.asarray(im.convert("RGB"))[::-1, ::-1].copy()
    Image.fromarray(flipped).save(source, quality=95)
    after = auto.load_item(uid)["frames"]
    assert not torch.equal(before, after)
    assert torch.equal(after, _dm(root, "off", dbs).load_item(uid)["frames"])
    assert len(metas()) == 2
    # `avlab cache prune` finds the superseded entry (and the motion features of the same file) and
    # removes only those; the rewritten image is served from its new entry.
    by_status: dict[str, list[CacheEntry]] = {}
    for entry in scan([root]):
        by_status.setdefault(entry.status, []).append(entry)
    assert set(by_status) <= {"current", "changed"}
    stale_frames = [e for e in by_status["changed"] if e.area == "frames"]
    assert len(stale_frames) == 1 and str(source) in stale_frames[0].reason
    prune([root])
    assert len(metas()) == 1 and all(e.status == "current" for e in scan([root]))
    assert torch.equal(_dm(root, "auto", dbs).load_item(uid)["frames"], after)


def test_features_command_builds_the_store_once(
    demo: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store under this copy of the data: the session's shared $AVLAB_CACHE may already hold these
    # demo stimuli (entries are keyed by content) from another test, in shuffled orders.
    monkeypatch.delenv("AVLAB_CACHE")
    root = tmp_path / "qa"
    shutil.copytree(demo / "TCD-VoIP", root / "TCD-VoIP")
    shutil.copytree(demo / "KoNViD-1k", root / "KoNViD-1k")
    args = [
        "features",
        "unqa/unqa_demo",
        f"data.root={root}",
        "model.net.motion=null",
        *(f"data.databases.{k}=null" for k in ("koniq", "clive", "noizeus", "live_sjtu")),
    ]

    def summary(*extra: str) -> dict[str, Any]:
        assert cli.main([*args, *extra]) == 0
        out = capsys.readouterr().out
        return json.loads(out[out.index("{") : out.rindex("}") + 1])

    first = summary()["frame_cache"]
    n = first["stimuli"]
    assert n > 20 and first["built"] == n  # one view each (video frames or audio)
    assert summary()["frame_cache"]["built"] == 0
    assert summary("data.frame_cache=off")["frame_cache"] == "off"
    # Another video decoder is another key: the videos are stored again, the audio is not. (`auto`
    # resolves to the first available backend, so the other one must differ from that.)
    others = [d for d in available_decoders() if d != resolve_decoder("auto")]
    if not others:
        pytest.skip(f"only one video decoder is installed ({available_decoders()})")
    again = summary("data.frame_cache=auto", f"data.decoder={others[0]}")["frame_cache"]
    assert 0 < again["built"] < n


def test_cache_decoded_is_a_deprecated_alias_and_modes_are_checked(demo: Path) -> None:
    dbs = {"koniq": DATABASES["koniq"]}
    for old, new in ((True, "auto"), (False, "off")):
        with pytest.warns(DeprecationWarning, match="data.frame_cache"):
            dm = UNQADataModule(root=str(demo), databases=dbs, cache_decoded=old)
        assert dm.frame_cache == new
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert UNQADataModule(root=str(demo), databases=dbs).frame_cache == "auto"
    assert not [w for w in caught if "cache_decoded" in str(w.message)]
    with pytest.raises(ConfigError, match="data.frame_cache must be one of auto, off"):
        UNQADataModule(root=str(demo), databases=dbs, frame_cache="on")


def _steps() -> str:
    return (
        "callbacks.extra.schedule.steps=["
        "{name: database_heads, epochs: 1, heads: database, loss: mae_rank, "
        "train: [spatial, audio, database_heads], lr: 1.0e-3},"
        "{name: modality_heads, epochs: 1, heads: modality, loss: srcc, "
        "train: [spatial, audio, modality_heads], lr: 1.0e-3},"
        "{name: finetune, epochs: 1, heads: modality, loss: srcc, train: [modality_heads], lr: 1.0e-3}]"
    )


@pytest.mark.slow
def test_test_metrics_do_not_depend_on_the_frame_cache(tmp_path: Path, capsys) -> None:
    metrics = {}
    for mode in ("off", "auto"):
        args = [
            "train",
            "unqa/unqa_demo",
            "data.demo_size=tiny",
            *(f"data.databases.{k}=null" for k in ("clive", "noizeus")),
            "data.frames=1",
            "data.audio_seconds=1.0",
            "data.train_crops=random",
            f"data.frame_cache={mode}",
            "trainer.max_epochs=3",
            _steps(),
            "logger.wandb.mode=disabled",
            f"run.root={tmp_path / mode}",
        ]
        assert cli.main(args) == 0
        run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
        metrics[mode] = json.loads((run / "metrics.json").read_text())
    test = {k: v for k, v in metrics["off"].items() if k.startswith("test/")}
    assert {"test/koniq/srcc", "test/konvid/srcc", "test/tcd_voip/srcc", "test/live_sjtu/srcc"} <= set(test)
    assert test == {k: metrics["auto"][k] for k in test}


def test_unwritable_store_names_the_way_out(demo: Path, monkeypatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FrameStore, "build", refuse)
    monkeypatch.setattr(FrameStore, "open", lambda self, key: None)  # force a miss
    with pytest.raises(DataError, match="set AVLAB_CACHE to a writable folder .* or data.frame_cache=off"):
        _dm(demo, "auto", {"koniq": DATABASES["koniq"]})  # setup() stores every stimulus
