"""YouTube-8M TFRecord reading: formats, dequantisation, CRC damage, validation, exact-once sharding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avlab.datamodules.yt8m import (
    YT8MDataModule,
    YT8MFeatureCacheDataset,
    YT8MRecordDataset,
    build_feature_cache,
    dequantize,
    read_vocabulary,
    resolve_split,
    split_record_key,
)
from avlab.demo.yt8m import build_yt8m_demo
from avlab.errors import ConfigError, DataError
from avlab.io.tf_example import encode_example, encode_sequence_example, parse_example
from avlab.io.tfrecord import TFRecordWriter, count_records, iter_records, masked_crc32c


# ----------------------------------------------------------------------------- helpers
def video_record(vid, labels, rgb=None, audio=None, key="id", rng=None):
    rng = rng or np.random.default_rng(0)
    rgb = rng.normal(size=1024).astype(np.float32) if rgb is None else rgb
    audio = rng.normal(size=128).astype(np.float32) if audio is None else audio
    return encode_example(
        {key: [vid.encode()], "labels": ("int64", labels), "mean_rgb": rgb, "mean_audio": audio}
    )


def frame_record(vid, labels, q_rgb, q_audio, key="id"):
    return encode_sequence_example(
        {key: [vid.encode()], "labels": ("int64", labels)}, {"rgb": q_rgb, "audio": q_audio}
    )


def write_shard(path, records):
    offsets = []
    with TFRecordWriter(path) as w:
        for r in records:
            offsets.append(w.write(r))
    return offsets


def read_all(ds):
    return list(iter(ds))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_yt8m_demo(tmp_path_factory.mktemp("yt8m") / "demo", size="tiny")


# ----------------------------------------------------------------------------- formats
def test_masked_crc_known_values(tmp_path):
    assert masked_crc32c(b"") == 0xA282EAD8  # CRC-32C of nothing is 0; only the mask delta remains
    c = 0xE3069283  # the CRC-32C (Castagnoli) check value of b"123456789"
    assert masked_crc32c(b"123456789") == (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    write_shard(tmp_path / "x.tfrecord", [b"hello", b""])
    assert [d for _, d in iter_records(tmp_path / "x.tfrecord")] == [b"hello", b""]
    assert count_records(tmp_path / "x.tfrecord") == 2


def test_our_files_read_with_the_pypi_tfrecord_reader(demo):
    # Cross-check the writer/format against an independent implementation (vahidk/tfrecord).
    import tfrecord

    path = demo / "video" / "train0000.tfrecord"
    theirs = list(
        tfrecord.tfrecord_loader(str(path), None, {"id": "byte", "labels": "int", "mean_rgb": "float"})
    )
    ours = [parse_example(d) for _, d in iter_records(path)]
    assert len(theirs) == len(ours) > 0
    for t, o in zip(theirs, ours):
        assert bytes(t["id"]) == o["id"][0]
        assert np.array_equal(t["labels"], o["labels"])
        assert np.array_equal(t["mean_rgb"], o["mean_rgb"])
    _ctx, seq = next(
        iter(
            tfrecord.tfrecord_loader(
                str(demo / "frame" / "train0000.tfrecord"),
                None,
                {"id": "byte"},
                sequence_description={"rgb": "byte"},
            )
        )
    )
    frames = np.stack([np.frombuffer(bytes(f), np.uint8) for f in seq["rgb"]])
    assert frames.shape[1] == 1024


def test_video_level_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    rgbs = rng.normal(size=(4, 1024)).astype(np.float32)
    auds = rng.normal(size=(4, 128)).astype(np.float32)
    labels = [[0], [5, 3861], [], [7, 7]]
    write_shard(
        tmp_path / "train0000.tfrecord",
        [video_record(f"v{i}", labels[i], rgbs[i], auds[i]) for i in range(4)],
    )
    samples = read_all(YT8MRecordDataset([tmp_path / "train0000.tfrecord"], num_classes=3862))
    assert [s["video_id"] for s in samples] == ["v0", "v1", "v2", "v3"]
    for i, s in enumerate(samples):
        assert s["rgb"].dtype == torch.float32 and s["rgb"].shape == (1024,)
        assert torch.equal(s["rgb"], torch.from_numpy(rgbs[i])) and torch.equal(
            s["audio"], torch.from_numpy(auds[i])
        )
        assert s["labels"].shape == (3862,)
        assert sorted(torch.nonzero(s["labels"]).flatten().tolist()) == sorted(set(labels[i]))
        assert split_record_key(s["index"]) == (0, i)


def test_2017_video_id_key_and_4716_classes(tmp_path):
    write_shard(tmp_path / "traina0.tfrecord", [video_record("old", [4715], key="video_id")])
    (s,) = read_all(YT8MRecordDataset([tmp_path / "traina0.tfrecord"], num_classes=4716))
    assert s["video_id"] == "old" and s["labels"][4715] == 1 and s["labels"].shape == (4716,)


def test_dequantisation_is_the_starter_codes():
    assert dequantize(np.array([0], np.uint8))[0] == pytest.approx(-1.9921875)
    assert dequantize(np.array([255], np.uint8))[0] == pytest.approx(2.0078125)
    q = np.arange(256, dtype=np.uint8)
    assert np.allclose(dequantize(q), q * (4 / 255) + (4 / 512 - 2), atol=1e-6)


def test_frame_level_mf_and_mf_std(tmp_path):
    rng = np.random.default_rng(2)
    q_rgb = rng.integers(0, 256, (7, 1024), dtype=np.uint8)
    q_aud = rng.integers(0, 256, (7, 128), dtype=np.uint8)
    write_shard(tmp_path / "f.tfrecord", [frame_record("f0", [1, 2], q_rgb, q_aud)])
    (mf,) = read_all(YT8MRecordDataset([tmp_path / "f.tfrecord"], schema="frame", features="mf"))
    (ms,) = read_all(YT8MRecordDataset([tmp_path / "f.tfrecord"], schema="frame", features="mf_std"))
    deq_rgb, deq_aud = dequantize(q_rgb).astype(np.float64), dequantize(q_aud).astype(np.float64)
    assert mf["rgb"].shape == (1024,) and mf["audio"].shape == (128,)
    assert ms["rgb"].shape == (2048,) and ms["audio"].shape == (256,)
    assert np.allclose(mf["rgb"].numpy(), deq_rgb.mean(0), atol=1e-6)
    assert np.allclose(
        ms["rgb"].numpy(), np.concatenate([deq_rgb.mean(0), deq_rgb.std(0)]), atol=1e-6
    )  # ddof=0
    assert np.allclose(ms["audio"].numpy(), np.concatenate([deq_aud.mean(0), deq_aud.std(0)]), atol=1e-6)
    (capped,) = read_all(YT8MRecordDataset([tmp_path / "f.tfrecord"], schema="frame", max_frames=2))
    assert np.allclose(capped["rgb"].numpy(), deq_rgb[:2].mean(0), atol=1e-6)


def test_frame_means_reproduce_the_video_level_means(demo):
    vid = {
        s["video_id"]: s for s in read_all(YT8MRecordDataset(resolve_split(demo, "video/validate*.tfrecord")))
    }
    frm = read_all(YT8MRecordDataset(resolve_split(demo, "frame/validate*.tfrecord"), schema="frame"))
    assert len(frm) == len(vid) > 0
    for s in frm:
        v = vid[s["video_id"]]
        assert torch.allclose(s["rgb"], v["rgb"], atol=1e-6) and torch.allclose(
            s["audio"], v["audio"], atol=1e-6
        )
        assert torch.equal(s["labels"], v["labels"])


def test_mf_std_needs_frame_level_records(tmp_path):
    write_shard(tmp_path / "v.tfrecord", [video_record("a", [1])])
    with pytest.raises(ConfigError, match="data.schema=frame"):
        YT8MRecordDataset([tmp_path / "v.tfrecord"], features="mf_std")


def test_schema_mismatch_is_explained(tmp_path, demo):
    with pytest.raises(DataError, match="data.schema=frame"):
        read_all(YT8MRecordDataset([demo / "frame" / "train0000.tfrecord"], schema="video"))


# ----------------------------------------------------------------------------- damage
def _three_records(tmp_path):
    path = tmp_path / "train0000.tfrecord"
    offsets = write_shard(path, [video_record(f"v{i}", [i]) for i in range(3)])
    return path, offsets


def test_corrupt_data_names_file_and_offset(tmp_path):
    path, offsets = _three_records(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[offsets[1] + 12 + 100] ^= 0xFF  # flip a byte inside record 1's data
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{path}.*data CRC.*byte offset {offsets[1]}.*skip_corrupt"):
        read_all(YT8MRecordDataset([path]))


def test_corrupt_header_names_offset(tmp_path):
    path, offsets = _three_records(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[offsets[2] + 3] ^= 0x01  # damage record 2's length field
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"length CRC.*byte offset {offsets[2]}"):
        read_all(YT8MRecordDataset([path]))


def test_truncated_shard_names_offset(tmp_path):
    path, offsets = _three_records(tmp_path)
    path.write_bytes(path.read_bytes()[: offsets[2] + 50])
    with pytest.raises(DataError, match=rf"{path}: truncated record .*byte offset {offsets[2]}"):
        read_all(YT8MRecordDataset([path]))
    with pytest.raises(DataError, match="truncated"):
        count_records(path)


def test_skip_corrupt_skips_and_counts(tmp_path):
    path, offsets = _three_records(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[offsets[0] + 12 + 40] ^= 0xFF  # record 0: bad data CRC -> only that record is lost
    path.write_bytes(bytes(raw[: offsets[2] + 20]))  # record 2: truncated -> rest of shard lost
    ds = YT8MRecordDataset([path], skip_corrupt=True)
    assert [s["video_id"] for s in read_all(ds)] == ["v1"]
    assert ds.skipped_corrupt == 2 and ds.skipped_shard_tails == 1


def test_skip_corrupt_counts_cross_worker_processes(tmp_path):
    paths = []
    for k in range(2):
        p = tmp_path / f"train{k:04d}.tfrecord"
        offs = write_shard(p, [video_record(f"s{k}r{i}", [1]) for i in range(3)])
        p.write_bytes(p.read_bytes()[: offs[2] + 5])  # each shard loses its last record
        paths.append(p)
    ds = YT8MRecordDataset(paths, skip_corrupt=True)
    got = [vid for b in DataLoader(ds, batch_size=2, num_workers=2) for vid in b["video_id"]]
    assert len(got) == 4
    assert ds.skipped_corrupt == 2  # counted in the workers, visible here


# ----------------------------------------------------------------------------- validation
def test_wrong_width_is_an_error(tmp_path):
    write_shard(tmp_path / "v.tfrecord", [video_record("a", [1], rgb=np.zeros(1000, np.float32))])
    with pytest.raises(DataError, match=r"v.tfrecord: record 0 .*'mean_rgb' has 1000 values, expected 1024"):
        read_all(YT8MRecordDataset([tmp_path / "v.tfrecord"]))
    q = np.zeros((3, 1000), np.uint8)
    write_shard(tmp_path / "f.tfrecord", [frame_record("b", [1], q, np.zeros((3, 128), np.uint8))])
    with pytest.raises(
        DataError, match=r"f.tfrecord: record 0 .*'rgb': frame 0 has 1000 bytes, expected 1024"
    ):
        read_all(YT8MRecordDataset([tmp_path / "f.tfrecord"], schema="frame"))


def test_label_out_of_range_names_file_record_and_label(tmp_path):
    write_shard(
        tmp_path / "train0000.tfrecord",
        [video_record("ok", [1]), video_record("bad", [4000], key="video_id")],
    )
    with pytest.raises(
        DataError, match=r"train0000.tfrecord: record 1 .*'bad': label 4000 .*data.num_classes=3862"
    ):
        read_all(YT8MRecordDataset([tmp_path / "train0000.tfrecord"], num_classes=3862))


def test_empty_split_names_the_glob(tmp_path):
    with pytest.raises(DataError, match=r"video/validate\*\.tfrecord"):
        resolve_split(tmp_path, "video/validate*.tfrecord")
    with pytest.raises(DataError, match="no TFRecord shards"):
        YT8MRecordDataset([], source="x/*.tfrecord")


def test_missing_id_is_explained(tmp_path):
    write_shard(
        tmp_path / "v.tfrecord", [encode_example({"labels": [1], "mean_rgb": np.zeros(1024, np.float32)})]
    )
    with pytest.raises(DataError, match="'id' \\(2018 data\\) or 'video_id' \\(2017 data\\)"):
        read_all(YT8MRecordDataset([tmp_path / "v.tfrecord"]))


# ----------------------------------------------------------------------------- sharding
def _shards(tmp_path, n_shards, per_shard):
    paths = []
    for k in range(n_shards):
        p = tmp_path / f"train{k:04d}.tfrecord"
        write_shard(
            p,
            [
                video_record(f"s{k}r{i}", [k])
                for i in range(per_shard[k] if isinstance(per_shard, list) else per_shard)
            ],
        )
        paths.append(p)
    return paths


@pytest.mark.parametrize("n_shards", [6, 3], ids=["round-robin-shards", "records-modulo"])
def test_exact_once_with_2_ranks_x_2_workers(tmp_path, n_shards):
    paths = _shards(tmp_path, n_shards, [5, 3, 4, 2, 6, 1][:n_shards])
    expected = {f"s{k}r{i}" for k in range(n_shards) for i in range([5, 3, 4, 2, 6, 1][k])}
    seen_ids, seen_index = [], []
    for rank in range(2):
        ds = YT8MRecordDataset(paths, rank=rank, world_size=2, shuffle=True, shuffle_buffer=4, seed=3)
        for batch in DataLoader(ds, batch_size=3, num_workers=2):
            seen_ids += batch["video_id"]
            seen_index += batch["index"].tolist()
    assert sorted(seen_ids) == sorted(expected)  # every record once: no loss, no duplicate
    assert len(set(seen_index)) == len(seen_index) == len(expected)


def test_shuffle_changes_order_per_epoch_not_content(tmp_path):
    paths = _shards(tmp_path, 4, 8)
    ds = YT8MRecordDataset(paths, shuffle=True, shuffle_buffer=8, seed=0)
    e0 = [s["video_id"] for s in ds]
    e1 = [s["video_id"] for s in ds]  # __iter__ advances the epoch
    assert e0 != e1 and sorted(e0) == sorted(e1)
    ds.set_epoch(0)
    assert [s["video_id"] for s in ds] == e0  # reproducible


def test_balanced_batches_per_rank_for_ddp_training(tmp_path):
    paths = _shards(tmp_path, 5, [9, 2, 7, 3, 8])  # rank 0 gets far more records than rank 1
    batches = []
    for rank in range(2):
        ds = YT8MRecordDataset(paths, rank=rank, world_size=2, balance_batch_size=2)
        loader = DataLoader(ds, batch_size=2, num_workers=2)
        sizes = [len(b["video_id"]) for b in loader]
        assert all(s == 2 for s in sizes)  # only full batches
        batches.append(len(sizes))
    assert batches[0] == batches[1] > 0


# ----------------------------------------------------------------------------- vocabulary + demo
def test_vocabulary_and_demo_layout(demo):
    vocab = read_vocabulary(demo / "vocabulary.csv")
    assert len(vocab) == 3862 and list(vocab.columns)[:4] == [
        "Index",
        "TrainVideoCount",
        "KnowledgeGraphId",
        "Name",
    ]
    info = json.loads((demo / "demo_info.json").read_text())
    kinds = {c["kind"] for c in info["active_classes"]}
    assert kinds == {"seen", "heard", "both"} and info["active_classes"][-1]["index"] == 3861
    for schema in ("video", "frame"):
        for split in ("train", "validate", "test"):
            assert resolve_split(demo, f"{schema}/{split}*.tfrecord")


def test_vocabulary_errors(tmp_path):
    (tmp_path / "v.csv").write_text("Idx,Name\n0,a\n")
    with pytest.raises(DataError, match="missing column"):
        read_vocabulary(tmp_path / "v.csv")
    (tmp_path / "v.csv").write_text("Index,Name\n0,a\n0,b\n")
    with pytest.raises(DataError, match="more than once"):
        read_vocabulary(tmp_path / "v.csv")


def test_demo_is_deterministic_idempotent_and_has_2017_variant(tmp_path, demo):
    again = build_yt8m_demo(tmp_path / "again", size="tiny")
    for f in sorted(demo.glob("*/*.tfrecord")):
        assert (again / f.parent.name / f.name).read_bytes() == f.read_bytes()
    stamp = (again / "video" / "train0000.tfrecord").stat().st_mtime_ns
    build_yt8m_demo(again, size="tiny")
    assert (again / "video" / "train0000.tfrecord").stat().st_mtime_ns == stamp
    old = build_yt8m_demo(tmp_path / "v2017", size="tiny", version="2017")
    assert (old / "video" / "traina0.tfrecord").is_file()
    (s,) = read_all(YT8MRecordDataset([old / "video" / "testa0.tfrecord"], num_classes=4716))[:1]
    assert s["labels"].shape == (4716,)
    (tmp_path / "foreign" / "video").mkdir(parents=True)
    (tmp_path / "foreign" / "video" / "train0000.tfrecord").write_bytes(b"")
    with pytest.raises(DataError, match="not avlab demo data"):
        build_yt8m_demo(tmp_path / "foreign", size="tiny")


# ----------------------------------------------------------------------------- feature cache
def test_feature_cache_equals_the_records_and_shards_exactly_once(tmp_path, demo):
    records = YT8MRecordDataset(
        resolve_split(demo, "frame/train*.tfrecord"), schema="frame", features="mf_std"
    )
    cache = build_feature_cache(records, tmp_path / "cache")
    want = {s["video_id"]: s for s in records}
    got = list(YT8MFeatureCacheDataset(cache))
    assert len(got) == len(want) == 160
    for s in got:
        w = want[s["video_id"]]
        assert s["index"] == w["index"] and s["rgb"].shape == (2048,) and s["audio"].shape == (256,)
        assert (
            torch.equal(s["rgb"], w["rgb"])
            and torch.equal(s["audio"], w["audio"])
            and torch.equal(s["labels"], w["labels"])
        )
    seen = []
    for rank in range(2):
        ds = YT8MFeatureCacheDataset(cache, rank=rank, world_size=2, shuffle=True, block=16)
        seen += [v for b in DataLoader(ds, batch_size=7, num_workers=2) for v in b["video_id"]]
    assert sorted(seen) == sorted(want)
    sizes = []
    for rank in range(2):
        ds = YT8MFeatureCacheDataset(cache, rank=rank, world_size=2, block=48, balance_batch_size=8)
        sizes.append([len(b["video_id"]) for b in DataLoader(ds, batch_size=8, num_workers=2)])
    assert len(sizes[0]) == len(sizes[1]) and all(n == 8 for n in sizes[0] + sizes[1])


def test_datamodule_feature_cache_option(tmp_path, demo):
    dm = YT8MDataModule(root=str(demo), schema="frame", features="mf_std", feature_cache=True, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    assert isinstance(dm.datasets["train"], YT8MFeatureCacheDataset)
    batch = next(iter(dm.train_dataloader()))
    assert batch["rgb"].shape == (16, 2048) and batch["labels"].shape == (16, 3862)


def test_extract_features_fills_the_cache_that_setup_reads(tmp_path, demo):
    dm = YT8MDataModule(root=str(demo), schema="frame", features="mf", feature_cache=True, batch_size=16)
    summary = dm.extract_features(progress=False)
    caches = [Path(summary[f"{split} cache"]) for split in ("train", "val", "test")]
    assert all((c / "meta.json").is_file() for c in caches)
    stamp = [(c / "rgb.npy").stat().st_mtime_ns for c in caches]
    assert dm.extract_features(progress=False) == summary  # second call: nothing rebuilt
    dm.setup("test")
    assert Path(dm.datasets["test"].cache) == caches[2]
    assert [(c / "rgb.npy").stat().st_mtime_ns for c in caches] == stamp
    plain = YT8MDataModule(root=str(demo)).extract_features(progress=False)
    assert "decoded on the fly" in plain["cache"]


@pytest.mark.parametrize("feature_cache", [False, True], ids=["records", "cache"])
def test_sample_table_describes_every_batch_sample(demo, feature_cache):
    dm = YT8MDataModule(root=str(demo), feature_cache=feature_cache, batch_size=16)
    dm.prepare_data()
    table = dm.sample_table("val")
    assert list(table.columns) == ["video_id", "labels", "shard", "record"] and table.index.is_unique
    seen = 0
    for batch in dm.val_dataloader():
        rows = table.loc[batch["index"].numpy()]
        assert rows["video_id"].tolist() == list(batch["video_id"])
        for labels, y in zip(rows["labels"], batch["labels"]):
            assert [int(c) for c in labels.split()] == torch.nonzero(y).flatten().tolist()
        for index, shard, record in zip(batch["index"].tolist(), rows["shard"], rows["record"]):
            assert split_record_key(index) == (shard, record)
        seen += len(rows)
    assert seen == len(table) == 64


def test_dataset_info_names_the_classes_from_the_vocabulary(demo, tmp_path):
    names = YT8MDataModule(root=str(demo)).dataset_info().class_names
    vocab = read_vocabulary(demo / "vocabulary.csv")
    assert len(names) == 3862 and names[3861] == vocab.loc[3861, "Name"]
    assert YT8MDataModule(root=str(demo), vocabulary=None).dataset_info().class_names is None
