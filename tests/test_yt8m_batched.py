"""The yt8m feature cache reads whole batches: the same tensors, in the same order, as per-example reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avlab.datamodules.yt8m import (
    YT8MDataModule,
    YT8MFeatureCacheDataset,
    YT8MRecordDataset,
    batch_as_is,
    build_feature_cache,
)
from avlab.datamodules.yt8m.feature_cache import _BatchBuffers
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
