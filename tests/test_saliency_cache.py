"""Saliency decoded-frame cache: cached clips equal decoded ones, stale entries are never served,
batched reading equals per-item reading, test metrics do not depend on the cache, JPEG decoders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import SALIENCY_TINY
from PIL import Image

from avlab import cli
from avlab.datamodules.saliency import SaliencyDataModule, collate_saliency
from avlab.demo.saliency import build_saliency_demo
from avlab.errors import ConfigError
from avlab.features.frame_cache import FrameStore, decode_images, frame_key, resize_frames

#: torchvision's CPU ``decode_jpeg`` against PIL. Measured (torchvision 0.29.1, Pillow's wheel): every
#: pixel equal, on the demo's frames and maps and on 720p Big Buck Bunny JPEGs (both are
#: libjpeg-turbo with the same IDCT and upsampling defaults). The bound leaves room for other builds
#: of the two libraries, whose IDCTs may round differently.
TV_PIL_MAX_DIFF = 2
TV_PIL_MEAN_DIFF = 0.05
#: nvJPEG has its own IDCT and chroma upsampling, so edges may differ by more; not yet measured on a
#: GPU by this suite, hence a loose bound that still catches a wrong colour order or a shifted image.
NVJPEG_MAX_DIFF = 32
NVJPEG_MEAN_DIFF = 1.5


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_saliency_demo(tmp_path_factory.mktemp("saliency-cache-demo"), size="tiny") / "stavis"


@pytest.fixture
def root(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of two demo datasets, with its frame cache under the dataset itself."""
    monkeypatch.delenv("AVLAB_CACHE", raising=False)
    out = tmp_path / "stavis"
    shutil.copytree(demo, out, ignore=shutil.ignore_patterns(".features"))
    return out


def _dm(root: Path, **kw) -> SaliencyDataModule:
    kw.setdefault("clip_len", 8)
    kw.setdefault("frame_size", (32, 56))
    kw.setdefault("datasets", ["AVAD", "DIEM"])
    dm = SaliencyDataModule(root=str(root), **kw)
    dm.setup()
    return dm


def _assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, list):
            for x, y in zip(value, b[key], strict=True):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
        else:
            torch.testing.assert_close(value, b[key], rtol=0, atol=0)


# --------------------------------------------------------------------------- equality
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_cached_clips_equal_decoded_clips_exactly(root: Path, split: str) -> None:
    off, auto = _dm(root, frame_cache="off"), _dm(root, frame_cache="auto")
    ds_off, ds_auto = off._dataset(split), auto._dataset(split)
    assert ds_auto.frames is not ds_off.frames and type(ds_auto.frames).__name__ == "_CachedFrames"
    picks = list(range(len(ds_off)))[:: max(1, len(ds_off) // 6)]
    torch.manual_seed(3)
    a = collate_saliency([ds_off[i] for i in picks])
    torch.manual_seed(3)
    b = collate_saliency([ds_auto[i] for i in picks])
    _assert_batches_equal(a, b)  # same draws, same pixels, same targets (and gt/fix on test)
    assert a["clip"].shape[1:] == (3, 8, 32, 56)


def test_getitems_serves_the_batch_that_per_item_reading_gives(root: Path) -> None:
    for split in ("train", "test"):
        ds = _dm(root)._dataset(split)
        picks = [len(ds) - 1, 0, len(ds) // 2, 0]  # any order, repeats allowed
        torch.manual_seed(11)
        batched = ds.__getitems__(picks)
        torch.manual_seed(11)
        single = collate_saliency([ds[i] for i in picks])
        _assert_batches_equal(batched, single)
        assert collate_saliency(batched) is batched  # the DataLoader's collate passes it through


def test_dataloader_batches_through_getitems(root: Path) -> None:
    dm = _dm(root, batch_size=3)
    batch = next(iter(dm.test_dataloader()))
    assert batch["clip"].shape == (3, 3, 8, 32, 56) and batch["clip"].is_contiguous()
    assert len(batch["gt"]) == 3 and batch["index"].tolist() == [0, 1, 2]


def test_normalize_on_device_gives_the_model_the_same_clips(root: Path) -> None:
    loader = next(iter(_dm(root, batch_size=3).test_dataloader()))
    dm = _dm(root, batch_size=3, normalize_on="device")
    raw = next(iter(dm.test_dataloader()))
    assert raw["clip"].dtype == torch.uint8 and raw["clip"].shape == (3, 8, 32, 56, 3)
    _assert_batches_equal(dm.on_after_batch_transfer(raw, 0), loader)


def test_normalisation_matches_the_whole_tensor_formula() -> None:
    from avlab.datamodules.saliency import IMAGENET_MEAN, IMAGENET_STD, normalize_frames

    x = torch.randint(0, 256, (2, 4, 8, 10, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ref = x.movedim(-1, 1).float() / 255.0
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1, 1
    )
    torch.testing.assert_close(normalize_frames(x, "imagenet", 1), ref, rtol=0, atol=0)
    torch.testing.assert_close(
        normalize_frames(x, "pm1", 1), x.movedim(-1, 1).float() / 255.0 * 2 - 1, rtol=0, atol=0
    )
    assert normalize_frames(x[0], "imagenet", 0).is_contiguous()


# --------------------------------------------------------------------------- building, staleness
def test_extract_features_builds_once_with_provenance(root: Path) -> None:
    dm = _dm(root)
    first = dm.extract_features(progress=False)
    n_videos = len({id(r) for s in dm.splits.values() for r in s})
    assert first["built"] == first["videos"] == n_videos > 0
    assert Path(first["frame_cache"]) == root / ".features" / "frames"
    second = _dm(root).extract_features(progress=False)
    assert second["built"] == 0 and second["bytes"] == first["bytes"] > 0
    metas = list((root / ".features" / "frames").glob("*/*/meta.json"))
    assert len(metas) == n_videos
    meta = json.loads(metas[0].read_text())
    assert meta["kind"] == "saliency-frames" and meta["params"]["frame_size"] == [32, 56]
    assert meta["params"]["decoder"] == {"frames": "pil", "maps": "pil", "resize": "cpu"}
    assert meta["sources"]["files"] > 0 and len(meta["sources"]["sha1"]) == 40
    assert set(meta["arrays"]) == {"frames", "maps"} and meta["arrays"]["frames"]["shape"][1:] == [32, 56, 3]


def test_parallel_build_writes_the_same_entries(root: Path, tmp_path: Path, monkeypatch) -> None:
    import avlab.datamodules.saliency as sal

    serial = _dm(root).extract_features(progress=False)
    monkeypatch.setenv("AVLAB_CACHE", str(tmp_path / "parallel"))
    monkeypatch.setattr(sal, "BUILD_PARALLEL_MIN_FRAMES", 0)
    monkeypatch.setattr(sal.os, "cpu_count", lambda: 2)
    dm = _dm(root)
    parallel = dm.extract_features(progress=False)
    assert parallel["built"] == serial["built"] > 1 and parallel["bytes"] == serial["bytes"]
    ds = dm._dataset("test")
    for v in range(len(ds.videos)):
        key = ds.frames.key(v)
        a = FrameStore(tmp_path / "parallel" / "frames").open(key)
        b = FrameStore(root / ".features" / "frames").open(key)
        assert a is not None and b is not None
        for name in ("frames", "maps"):
            np.testing.assert_array_equal(a[name], b[name])


def test_cache_goes_under_avlab_cache_when_set(root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AVLAB_CACHE", str(tmp_path / "cache"))
    summary = _dm(root).extract_features(progress=False)
    assert Path(summary["frame_cache"]) == tmp_path / "cache" / "frames"
    assert not (root / ".features").exists()


def test_a_changed_source_frame_is_decoded_again_never_served_stale(root: Path) -> None:
    dm = _dm(root)
    dm.extract_features(progress=False)
    ds = dm._dataset("val")
    vid, start = ds.items[0]
    rec = ds.videos[vid]
    before = ds.frames.frames(vid, [start])
    # Rewrite one source frame with other content (a new size and mtime, as any editor would).
    path = rec.frames[start]
    with Image.open(path) as im:
        size = im.size
    Image.fromarray(np.full((size[1], size[0], 3), 250, np.uint8)).save(path, quality=75)
    after = _dm(root)._dataset("val")
    fresh = after.frames.frames(vid, [start])
    expected = _dm(root, frame_cache="off")._dataset("val").frames.frames(vid, [start])
    assert not torch.equal(before, fresh)
    torch.testing.assert_close(fresh, expected, rtol=0, atol=0)
    assert int(fresh.float().mean()) >= 240


def test_a_damaged_entry_is_rebuilt(tmp_path: Path) -> None:
    store = FrameStore(tmp_path)
    key = frame_key("test", {"size": [2, 3]}, {"sha1": "x"})
    spec = {"frames": ((4, 2, 3, 3), "uint8")}

    def fill(out: dict) -> None:
        out["frames"][:] = np.arange(72, dtype=np.uint8).reshape(4, 2, 3, 3)

    arrays, built = store.open_or_build(key, spec, fill, {"kind": "test"})
    assert built and isinstance(arrays["frames"], np.memmap) and int(arrays["frames"][3, 1, 2, 2]) == 71
    assert store.open_or_build(key, spec, fill, {"kind": "test"})[1] is False
    npy = store.path(key) / "frames.npy"
    npy.write_bytes(npy.read_bytes()[:100])  # truncated, e.g. by a full disk
    assert store.open(key) is None
    arrays, built = store.open_or_build(key, spec, fill, {"kind": "test"})
    assert built and int(arrays["frames"].sum()) == sum(range(72))


def test_a_failing_fill_leaves_no_entry(tmp_path: Path) -> None:
    store = FrameStore(tmp_path)
    key = frame_key("test", {}, {"sha1": "y"})

    def fill(out: dict) -> None:
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        store.build(key, {"a": ((2,), "uint8")}, fill, {})
    assert store.open(key) is None and not any(
        p.name.startswith(".") for p in store.path(key).parent.iterdir()
    )


def test_frame_cache_value_is_checked(root: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.frame_cache must be one of auto, off, got 'yes'"):
        SaliencyDataModule(root=str(root), frame_cache="yes")
    with pytest.raises(ConfigError, match=r"data.normalize_on must be one of loader, device"):
        SaliencyDataModule(root=str(root), normalize_on="gpu")


def test_frame_cache_off_on_the_command_line_means_off() -> None:
    from avlab.config import load_experiment
    from avlab.instantiate import instantiate

    # YAML reads a bare `off` as false; the DataModule takes it as the word it was meant to be.
    cfg = load_experiment("saliency/avrsp_av", ["data.frame_cache=off", "data.demo_size=tiny"])
    assert cfg.data.frame_cache is False
    dm = instantiate(cfg.data)
    assert dm.frame_cache == "off" and dm.frame_store() is None
    assert instantiate(load_experiment("saliency/avrsp_av", []).data).frame_cache == "auto"


# --------------------------------------------------------------------------- test metrics
@pytest.mark.slow  # two 1-epoch trainings: ~25 s on 2 CPU cores
def test_test_metrics_are_identical_with_and_without_the_cache(capsys, tmp_path: Path) -> None:
    base = [
        *SALIENCY_TINY,
        "data.datasets=[AVAD]",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        f"run.root={tmp_path}",
    ]
    metrics = []
    for mode in ("off", "auto"):
        assert cli.main(["train", "saliency/avrsp_av", *base, f"data.frame_cache={mode}"]) == 0
        run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
        metrics.append(json.loads((run / "metrics.json").read_text()))
    tests = [{k: v for k, v in m.items() if k.startswith("test/")} for m in metrics]
    assert tests[0] and "test/cc" in tests[0]
    assert tests[0] == tests[1]


# --------------------------------------------------------------------------- JPEG decoding
def test_torchvision_cpu_decode_equals_pil_within_tolerance(demo: Path) -> None:
    files = sorted((demo / "video_frames" / "AVAD").glob("*/img_*.jpg"))[:12]
    maps = sorted((demo / "annotations" / "AVAD").glob("*/maps/*.jpg"))[:12]
    for group, gray in ((files, False), (maps, True)):
        pil = decode_images(group, "cpu", backend="pil", gray=gray).int()
        tv = decode_images(group, "cpu", backend="torchvision", gray=gray).int()
        assert pil.shape == tv.shape and tv.shape[-1 if not gray else 0] in (3, len(group))
        diff = (pil - tv).abs()
        assert int(diff.max()) <= TV_PIL_MAX_DIFF and float(diff.float().mean()) <= TV_PIL_MEAN_DIFF


def test_uint8_resize_is_within_one_level_of_the_float_resize() -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 90, 160, 3), dtype=torch.uint8, generator=g)
    out = resize_frames(frames, (32, 56))
    ref = torch.nn.functional.interpolate(
        frames.permute(0, 3, 1, 2).float(),
        size=(32, 56),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 56, 3)
    assert int((out.int() - ref.int()).abs().max()) <= 1


def test_gray_frames_resize_like_one_channel_images() -> None:
    g = torch.randint(0, 256, (7, 45, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = resize_frames(g, (16, 28))  # 7 frames: packed four at a time, one group padded
    ref = torch.nn.functional.interpolate(g[:, None], size=(16, 28), mode="bilinear", antialias=True)[:, 0]
    assert out.shape == (7, 16, 28) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_jpeg_device_cuda_without_cuda_is_a_clear_error(root: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.jpeg_device=cuda, but PyTorch sees no CUDA device"):
        SaliencyDataModule(root=str(root), jpeg_device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_jpeg_decoding_builds_the_cache_close_to_pil(root: Path) -> None:
    files = sorted((root / "video_frames" / "AVAD").glob("*/img_*.jpg"))[:12]
    gpu = decode_images(files, "cuda", backend="torchvision")
    assert gpu.device.type == "cuda"
    diff = (gpu.cpu().int() - decode_images(files, "cpu", backend="pil").int()).abs()
    assert int(diff.max()) <= NVJPEG_MAX_DIFF and float(diff.float().mean()) <= NVJPEG_MEAN_DIFF
    cuda, cpu = _dm(root, jpeg_device="cuda"), _dm(root)
    summary = cuda.extract_features(progress=False)
    assert summary["built"] == summary["videos"] and summary["jpeg_device"] == "cuda"
    torch.manual_seed(5)
    a = cuda._dataset("train")[0]
    torch.manual_seed(5)
    b = cpu._dataset("train")[0]
    # Decoded and resized on another device: a few levels apart, normalised by the ImageNet std.
    assert float((a["clip"] - b["clip"]).abs().mean()) < 0.05
