"""The yt8m feature cache reads whole batches: the same tensors, in the same order, as per-example reading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avlab import cli
from avlab.datamodules.yt8m import (
    YT8MDataModule,
    YT8MFeatureCacheDataset,
    YT8MRecordDataset,
    batch_as_is,
    build_feature_cache,
)
from avlab.datamodules.yt8m.feature_cache import _BatchBuffers, densify_labels
from avlab.errors import ConfigError
from avlab.io.tf_example import encode_example
from avlab.io.tfrecord import TFRecordWriter

NUM_CLASSES = 40
VIDEOS = 53  # not a multiple of any batch size used here: every epoch ends in a partial batch


def _write_split(path: Path, prefix: str, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with TFRecordWriter(path) as w:
        for i in range(n):
            labels = sorted(rng.choice(NUM_CLASSES, size=int(rng.integers(0, 4)), replace=False).tolist())
            w.write(
                encode_example(
                    {
                        "id": [f"{prefix}{i}".encode()],
                        "labels": ("int64", labels),  # some videos have no label at all
                        "mean_rgb": rng.normal(size=1024).astype(np.float32),
                        "mean_audio": rng.normal(size=128).astype(np.float32),
                    }
                )
            )
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("yt8m_batched")
    shard = _write_split(folder / "train0000.tfrecord", "v", VIDEOS, seed=0)
    records = YT8MRecordDataset([shard], num_classes=NUM_CLASSES)
    return build_feature_cache(records, folder / "cache", progress=False)


def _assert_same_batches(per_item: list[dict], batched: list[dict]) -> None:
    assert len(per_item) == len(batched) > 0
    for want, got in zip(per_item, batched):
        assert want.keys() == got.keys()
        assert want["video_id"] == got["video_id"]
        for key in ("index", "rgb", "audio", "labels"):
            assert want[key].dtype == got[key].dtype, key
            assert torch.equal(want[key], got[key]), key


def _epochs(loader: DataLoader, n: int = 2) -> list[dict]:
    return [batch for _ in range(n) for batch in loader]


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_batched_reads_equal_per_example_reads(cache, shuffle):
    opts = {"shuffle": shuffle, "seed": 5, "block": 16}
    per_item = DataLoader(YT8MFeatureCacheDataset(cache, **opts), batch_size=8)
    batched = DataLoader(
        YT8MFeatureCacheDataset(cache, batch_size=8, **opts), batch_size=None, collate_fn=batch_as_is
    )
    want, got = _epochs(per_item), _epochs(batched)  # 2 epochs: the shuffle advances alike
    _assert_same_batches(want, got)
    assert [len(b["video_id"]) for b in got[:7]] == [8] * 6 + [5]  # the last, partial batch
    if shuffle:
        assert got[0]["video_id"] != got[7]["video_id"]  # a new order in the second epoch


def test_batched_reads_equal_per_example_reads_with_workers(cache):
    opts = {"shuffle": True, "seed": 1, "block": 8}
    per_item = DataLoader(
        YT8MFeatureCacheDataset(cache, **opts), batch_size=6, num_workers=2, persistent_workers=True
    )
    batched = DataLoader(
        YT8MFeatureCacheDataset(cache, batch_size=6, **opts),
        batch_size=None,
        collate_fn=batch_as_is,
        num_workers=2,
        persistent_workers=True,
    )
    want, got = _epochs(per_item), _epochs(batched)
    _assert_same_batches(want, got)
    assert sorted(v for b in got[: len(got) // 2] for v in b["video_id"]) == sorted(
        f"v{i}" for i in range(VIDEOS)
    )


def test_batched_reads_equal_per_example_reads_on_ddp_ranks(cache):
    seen = []
    for rank in range(2):
        opts = {"rank": rank, "world_size": 2, "shuffle": True, "block": 8, "balance_batch_size": 4}
        want = list(DataLoader(YT8MFeatureCacheDataset(cache, **opts), batch_size=4))
        got = list(DataLoader(YT8MFeatureCacheDataset(cache, batch_size=4, **opts), batch_size=None))
        _assert_same_batches(want, got)  # DataLoader's default conversion leaves the batches alike
        got = list(
            DataLoader(
                YT8MFeatureCacheDataset(cache, batch_size=4, **opts), batch_size=None, collate_fn=batch_as_is
            )
        )
        _assert_same_batches(want, got)
        seen.append(got)
    assert len(seen[0]) == len(seen[1])  # equal steps per rank, as DDP training needs
    ids = [v for batches in seen for b in batches for v in b["video_id"]]
    assert len(ids) == len(set(ids))  # no video on both ranks


def test_read_rows_in_any_order_equals_stacked_examples(cache):
    ds = YT8MFeatureCacheDataset(cache)
    examples = list(ds)
    rows = np.random.default_rng(0).permutation(VIDEOS)[:20]
    got = ds.read_rows(rows)
    assert got["video_id"] == [examples[r]["video_id"] for r in rows]
    assert torch.equal(got["index"], torch.tensor([examples[r]["index"] for r in rows]))
    for key in ("rgb", "audio", "labels"):
        assert torch.equal(got[key], torch.stack([examples[r][key] for r in rows])), key
    empty = ds.read_rows(np.zeros(0, np.int64))
    assert empty["rgb"].shape == (0, 1024) and empty["labels"].shape == (0, NUM_CLASSES)


def test_datamodule_train_loader_serves_whole_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("AVLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for split, n in (("train", VIDEOS), ("validate", 11), ("test", 9)):
        _write_split(root / "video" / f"{split}0000.tfrecord", split[0], n, seed=len(split))
    dm = YT8MDataModule(
        root=str(root), num_classes=NUM_CLASSES, feature_cache=True, batch_size=8, vocabulary=None, seed=3
    )
    dm.extract_features(progress=False)
    loader = dm.train_dataloader()
    assert loader.batch_size is None and loader.collate_fn is batch_as_is  # the dataset batches
    train = dm.datasets["train"]
    assert isinstance(train, YT8MFeatureCacheDataset) and train.batch_size == 8
    reference = YT8MFeatureCacheDataset(train.cache, shuffle=True, seed=3, balance_batch_size=8)
    _assert_same_batches(_epochs(DataLoader(reference, batch_size=8)), _epochs(loader))
    val = list(dm.val_dataloader())
    assert [len(b["video_id"]) for b in val] == [8, 3]  # evaluation keeps its partial batch


def test_held_batches_are_never_overwritten(cache):
    opts = {"shuffle": True, "seed": 2, "block": 16}
    reference = list(DataLoader(YT8MFeatureCacheDataset(cache, **opts), batch_size=8))
    loader = DataLoader(
        YT8MFeatureCacheDataset(cache, batch_size=8, **opts), batch_size=None, collate_fn=batch_as_is
    )
    pointers = []
    for k, (batch, want) in enumerate(zip(loader, reference)):
        _assert_same_batches([want], [batch])
        pointers.append(batch["labels"].data_ptr())
        if k == 1:
            held_view = batch["labels"][2:4]  # a view keeps the whole batch's memory in use
        if k == 2:
            held_array = batch["rgb"].numpy()  # so does an array made from a tensor
    assert pointers[1] not in pointers[2:] and pointers[2] not in pointers[3:]  # held: never reused
    assert torch.equal(held_view, reference[1]["labels"][2:4])
    assert np.array_equal(held_array, reference[2]["rgb"].numpy())


def test_batch_buffers_come_back_cleared_only_once_nobody_holds_them():
    buffers = _BatchBuffers(keep=2)
    rgb, audio, labels = buffers.get(4, 3, 2, 5)
    labels.reshape(-1)[[1, 7]] = 1.0
    buffers.put((rgb, audio, labels), np.array([1, 7]))
    ident = id(labels)
    del rgb, audio
    assert id(buffers.get(4, 3, 2, 5)[2]) != ident  # `labels` is still held here
    labels_view = labels[1:]
    del labels
    assert id(buffers.get(4, 3, 2, 5)[2]) != ident  # a view still holds it
    del labels_view
    assert id(buffers.get(3, 3, 2, 5)[2]) != ident  # another batch size
    again = buffers.get(4, 3, 2, 5)
    assert id(again[2]) == ident and not again[2].any()  # unreferenced: reused, labels cleared


def _data_root(root: Path) -> Path:
    for split, n in (("train", VIDEOS), ("validate", 11), ("test", 9)):
        _write_split(root / "video" / f"{split}0000.tfrecord", split[0], n, seed=len(split))
    return root


def _assert_identical(want: list[dict], got: list[dict]) -> None:
    """Same keys in the same order, same values, dtypes and shapes."""
    assert len(want) == len(got) > 0
    for w, g in zip(want, got):
        assert list(w) == list(g)
        for key, value in w.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == g[key].dtype and torch.equal(value, g[key]), key
            else:
                assert value == g[key], key


@pytest.mark.parametrize("split", ["train", "val"], ids=["shuffled", "unshuffled"])
def test_labels_on_device_gives_the_model_the_same_batches(tmp_path, monkeypatch, split):
    monkeypatch.setenv("AVLAB_CACHE", str(tmp_path / "cache"))
    root = _data_root(tmp_path / "data")
    opts = {"root": str(root), "num_classes": NUM_CLASSES, "feature_cache": True, "batch_size": 8}
    loader_dm = YT8MDataModule(**opts, vocabulary=None, seed=3)
    device_dm = YT8MDataModule(**opts, vocabulary=None, seed=3, labels_on="device")
    loader_dm.extract_features(progress=False)
    n = 2 if split == "train" else 1  # 2 training epochs: the shuffle advances alike
    want = _epochs(getattr(loader_dm, f"{split}_dataloader")(), n)
    raw = _epochs(getattr(device_dm, f"{split}_dataloader")(), n)
    for batch in raw:  # what the loader carries: the classes, no dense matrix
        assert "labels" not in batch
        assert batch["label_offsets"].dtype == batch["label_classes"].dtype == torch.int64
        assert len(batch["label_offsets"]) == len(batch["video_id"]) + 1
        assert int(batch["label_offsets"][-1]) == len(batch["label_classes"])
    assert sum(len(b["label_classes"]) for b in raw) == sum(int(b["labels"].sum()) for b in want) > 0
    got = [device_dm.on_after_batch_transfer(b, 0) for b in raw]
    _assert_identical(want, got)
    assert all(loader_dm.on_after_batch_transfer(b, 0) is b for b in want)  # dense: left as it is


def test_densify_labels_handles_videos_without_labels_and_empty_batches():
    batch = {
        "index": torch.arange(3),
        "label_offsets": torch.tensor([0, 2, 2, 3]),
        "label_classes": torch.tensor([4, 1, 0]),
    }
    out = densify_labels(batch, 5)
    assert list(out) == ["index", "labels"]
    assert torch.equal(out["labels"], torch.tensor([[0, 1, 0, 0, 1], [0] * 5, [1, 0, 0, 0, 0]]).float())
    empty = densify_labels(
        {
            "label_offsets": torch.zeros(1, dtype=torch.int64),
            "label_classes": torch.zeros(0, dtype=torch.int64),
        },
        5,
    )
    assert empty["labels"].shape == (0, 5) and empty["labels"].dtype == torch.float32


def test_sparse_labels_need_whole_batches(cache):
    with pytest.raises(ValueError, match="sparse_labels needs batch_size"):
        YT8MFeatureCacheDataset(cache, sparse_labels=True)


def test_labels_on_rejects_unknown_values():
    with pytest.raises(ConfigError, match=r"data.labels_on must be one of loader, device; got 'gpu'"):
        YT8MDataModule(labels_on="gpu")


def test_training_with_labels_on_device_gives_the_same_metrics(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AVLAB_CACHE", str(tmp_path / "cache"))
    tiny = YT8MDataModule.build_demo(tmp_path / "data", size="tiny")
    metrics = {}
    for where in ("loader", "device"):
        args = [
            "train",
            "yt8m/fc_late_fusion",
            "logger.wandb.mode=disabled",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=2",
            "data.batch_size=32",
            "model.net.hidden=32",
            "model.lr=1e-3",
            "data.feature_cache=true",
            f"data.labels_on={where}",
            f"data.root={tiny}",
            f"run.root={tmp_path / where}",
        ]
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        run_dir = Path(out.strip().splitlines()[-1].removeprefix("run directory: "))
        metrics[where] = json.loads((run_dir / "metrics.json").read_text())
    scores = {k: v for k, v in metrics["loader"].items() if k.startswith(("test/", "val/"))}
    assert "test/gap" in scores and "test/loss" in scores and all(map(math.isfinite, scores.values()))
    assert {k: metrics["device"][k] for k in scores} == scores
