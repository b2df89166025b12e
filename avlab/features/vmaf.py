"""VMAF elementary features (the video input X_v of Attentive AV-FusionNet) from ffmpeg's libvmaf.

Attentive AV-FusionNet (Salaj & Biswas, Sec. 2 "Feature Extraction") feeds the model
``X_v ∈ R^{N×d_v}`` with ``d_v = 6``: the four VIF scales, Motion2 and ADM2 of VMAF, pooled over
N temporal units (the paper uses N = 1, the clip mean). :data:`VMAF_FEATURES` fixes the column
order of ``X_v`` everywhere in avlab::

    0 vif_scale0   1 vif_scale1   2 vif_scale2   3 vif_scale3   4 motion2   5 adm2

(the order of Netflix's ``vmaf_feature_v6`` feature list with motion2 before adm2; the model's
projection W_v of Eq. (1) is learned, so the order matters only in being fixed).

The features come from the official libvmaf via the ``libvmaf`` filter of the ffmpeg inside the
``imageio-ffmpeg`` wheel, with the default model ``vmaf_v0.6.1``; that model uses the *integer*
feature extractors, so the per-frame log keys are ``integer_vif_scale0`` etc. :func:`parse_vmaf_log`
also accepts the float aliases (``vif_scale0``) and the Python framework's names
(``VMAF_feature_vif_scale0_score``). The clip-level VMAF score (pooled mean, 0–100) is the Q_v of
the weighted-product and SVR baselines (Eq. (9)).

:func:`extract_vmaf_with_backend` also offers vmaf-torch (``data.vmaf_backend=torch``, module
:mod:`avlab.features.vmaf_torch`), which computes the same features in PyTorch on a CPU or GPU.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avlab.errors import ConfigError, FeatureError, MediaError, did_you_mean
from avlab.features.cache import FeatureCache, cache_key, file_fingerprint
from avlab.media.ffmpeg import MediaInfo, ffmpeg_version, probe, run_ffmpeg

__all__ = [
    "VMAF_BACKENDS",
    "VMAF_FEATURES",
    "VMAF_MODEL",
    "VmafResult",
    "check_vmaf_backend",
    "extract_vmaf",
    "extract_vmaf_with_backend",
    "length_tolerance",
    "parse_vmaf_log",
    "pool_frames",
    "vmaf_cache_key",
    "vmaf_command",
]

log = logging.getLogger(__name__)

#: Column order of X_v (d_v = 6). Do not reorder: trained checkpoints depend on it.
VMAF_FEATURES: tuple[str, ...] = ("vif_scale0", "vif_scale1", "vif_scale2", "vif_scale3", "motion2", "adm2")

#: libvmaf model used for the per-frame VMAF score (and therefore for which feature extractors run).
VMAF_MODEL = "version=vmaf_v0.6.1"

#: Bump when the extraction or pooling logic changes, to invalidate cached features.
EXTRACTOR_VERSION = "2"
EXTRACTOR_NAME = "vmaf"


def _spellings(name: str) -> tuple[str, ...]:
    # integer_ first: it is what the default vmaf_v0.6.1 model logs.
    return (f"integer_{name}", name, f"VMAF_feature_{name}_score", f"VMAF_integer_feature_{name}_score")


def _lookup(metrics: dict[str, Any], name: str, where: str) -> float:
    for key in _spellings(name):
        if key in metrics:
            return float(metrics[key])
    raise FeatureError(
        f"VMAF log {where} has no `{name}` feature (looked for {', '.join(_spellings(name)[:3])}); "
        "run libvmaf with the vmaf_v0.6.1 model (default) or a model/feature list that computes it"
    )


def parse_vmaf_log(log: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame features ``[frames, 6]`` (order :data:`VMAF_FEATURES`) and per-frame VMAF ``[frames]``.

    ``log`` is libvmaf's JSON log (``{"frames": [{"frameNum", "metrics": {...}}], ...}``). Each
    feature may be spelled ``integer_vif_scale0``, ``vif_scale0`` or ``VMAF_feature_vif_scale0_score``.

    Raises:
        FeatureError: no frames, or a frame lacks one of the six features or the ``vmaf`` score.
    """
    frames = log.get("frames") if isinstance(log, dict) else None
    if not frames:
        raise FeatureError("VMAF log has no `frames` list; was it written by libvmaf with log_fmt=json?")
    feats = np.empty((len(frames), len(VMAF_FEATURES)), dtype=np.float64)
    scores = np.empty(len(frames), dtype=np.float64)
    for i, frame in enumerate(frames):
        metrics = frame.get("metrics", {})
        where = f"frame {frame.get('frameNum', i)}"
        for j, name in enumerate(VMAF_FEATURES):
            feats[i, j] = _lookup(metrics, name, where)
        if "vmaf" not in metrics:
            raise FeatureError(f"VMAF log {where} has no `vmaf` score; run libvmaf with a VMAF model")
        scores[i] = float(metrics["vmaf"])
    return feats, scores


def pool_frames(per_frame: np.ndarray, n_units: int) -> np.ndarray:
    """Mean over ``n_units`` contiguous temporal chunks: ``[frames, d] -> [n_units, d]``.

    Chunks are as equal as possible (``numpy.array_split``). ``n_units = 1`` is the clip mean, which
    is VMAF's own temporal pooling and the paper's setting (N = 1).

    Raises:
        FeatureError: ``n_units`` < 1 or larger than the number of frames.
    """
    per_frame = np.asarray(per_frame, dtype=np.float64)
    if per_frame.ndim == 1:
        per_frame = per_frame[:, None]
    n = per_frame.shape[0]
    if n_units < 1:
        raise FeatureError(f"n_units must be >= 1, got {n_units}")
    if n_units > n:
        raise FeatureError(f"cannot pool {n} frames into {n_units} temporal units; use n_units <= {n}")
    return np.stack([chunk.mean(axis=0) for chunk in np.array_split(per_frame, n_units, axis=0)])


def length_tolerance(n_ref: int, n_dist: int) -> int:
    """Largest frame-count difference that is evaluated on the common prefix: max(2, 2 % of the longer)."""
    return max(2, int(0.02 * max(n_ref, n_dist)))


@dataclass
class VmafResult:
    """VMAF of one (reference, distorted) pair.

    Attributes:
        features: ``[n_units, 6]`` float32, columns :data:`VMAF_FEATURES` (X_v of the paper).
        vmaf: pooled clip VMAF (mean over frames, 0–100); the baselines' Q_v.
        n_frames: frames evaluated (the common prefix when lengths differ slightly).
        per_frame: ``[n_frames, 6]`` per-frame features.
        per_frame_vmaf: ``[n_frames]`` per-frame VMAF.
        log: libvmaf's JSON log (None when the result came from the cache).
        from_cache: whether the result was read from the feature cache.
    """

    features: np.ndarray
    vmaf: float
    n_frames: int
    per_frame: np.ndarray
    per_frame_vmaf: np.ndarray
    log: dict | None = None
    from_cache: bool = False
    params: dict = field(default_factory=dict)


def _params(n_units: int) -> dict[str, Any]:
    # n_threads is deliberately not part of the key: libvmaf's result does not depend on it.
    return {
        "model": VMAF_MODEL,
        "n_units": int(n_units),
        "pooling": "mean",
        "ffmpeg": ffmpeg_version(),
        "features": list(VMAF_FEATURES),
    }


def vmaf_cache_key(reference: str | Path, distorted: str | Path, *, n_units: int = 1) -> str:
    """Feature-cache key of :func:`extract_vmaf` for this pair (libvmaf model, ffmpeg build, n_units)."""
    return cache_key(EXTRACTOR_NAME, EXTRACTOR_VERSION, _params(n_units), [reference, distorted])


def vmaf_command(
    reference: Path,
    distorted: Path,
    log_path: str,
    *,
    n_threads: int,
    scale_to: tuple[int, int] | None = None,
    pix_fmt: str | None = None,
    fps: float | None = None,
) -> list[str]:
    """ffmpeg arguments (without the executable) that run libvmaf on the pair.

    The distorted stream is input 0 and the reference input 1, as libvmaf's filter expects
    ("main" then "reference"). With ``fps`` set, both streams are re-stamped by frame index
    (``setpts=N/(fps*TB)``), so frame i is compared with frame i exactly as the ``vmaf`` tool does on
    raw YUV. Container timestamps are not trusted for pairing: Matroska stores milliseconds, so at
    29.97 fps a lossless ``.mkv`` reference and an ``.mp4`` stimulus disagree by a fraction of a
    frame and framesync would pair frame 2 with reference frame 1. Without ``fps`` the graph is the
    documented libvmaf one (``setpts=PTS-STARTPTS``). ``shortest=1`` stops at the end of the
    shorter stream instead of repeating its last frame, so only the common prefix is scored.
    """
    dist_chain = []
    if scale_to is not None:
        dist_chain.append(f"scale={scale_to[0]}:{scale_to[1]}:flags=bicubic")
    if pix_fmt:
        dist_chain.append(f"format={pix_fmt}")
    stamp = f"setpts=N/({fps!r}*TB)" if fps else "setpts=PTS-STARTPTS"
    dist_chain.append(stamp)
    graph = (
        f"[0:v]{','.join(dist_chain)}[d];[1:v]{stamp}[r];"
        f"[d][r]libvmaf=log_fmt=json:log_path={log_path}:n_threads={n_threads}:shortest=1"
    )
    return ["-v", "error", "-i", str(distorted), "-i", str(reference), "-lavfi", graph, "-f", "null", "-"]


def _from_log(log_dict: dict, n_units: int) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    per_frame, per_frame_vmaf = parse_vmaf_log(log_dict)
    pooled = log_dict.get("pooled_metrics") or {}
    if n_units == 1 and pooled:
        # libvmaf's own pooled means are computed before the log rounds values to 6 decimals, so
        # they are the exact VMAF pooling; the per-frame mean agrees to ~1e-6.
        try:
            feats = np.array(
                [
                    [
                        _lookup({k: v["mean"] for k, v in pooled.items()}, n, "pooled_metrics")
                        for n in VMAF_FEATURES
                    ]
                ]
            )
            vmaf = float(pooled["vmaf"]["mean"])
        except (FeatureError, KeyError, TypeError):
            feats, vmaf = pool_frames(per_frame, 1), float(per_frame_vmaf.mean())
    else:
        feats, vmaf = pool_frames(per_frame, n_units), float(per_frame_vmaf.mean())
    return feats, vmaf, per_frame, per_frame_vmaf


def _check_pair(reference: Path, distorted: Path) -> tuple[MediaInfo, MediaInfo]:
    infos = []
    for role, path in (("reference", reference), ("distorted", distorted)):
        info = probe(path)  # raises MediaError naming the file when missing/corrupt
        if not info.has_video:
            raise MediaError(f"{role} {path} has no video stream; VMAF needs a video file")
        infos.append(info)
    ref, dist = infos
    diff = abs(ref.n_frames - dist.n_frames)
    if diff > length_tolerance(ref.n_frames, dist.n_frames):
        raise MediaError(
            f"reference {reference} has {ref.n_frames} frames but distorted {distorted} has {dist.n_frames}; "
            f"VMAF compares frame by frame and tolerates a difference of at most "
            f"{length_tolerance(ref.n_frames, dist.n_frames)} frames. Trim the files to the same segment."
        )
    if diff:
        log.warning(
            "reference %s has %d frames and distorted %s has %d; evaluating the common %d frames",
            reference,
            ref.n_frames,
            distorted,
            dist.n_frames,
            min(ref.n_frames, dist.n_frames),
        )
    return ref, dist


def check_vmaf_inputs(reference: str | Path, distorted: str | Path, n_units: int) -> tuple[Path, Path]:
    """The pair as paths, after the checks every VMAF backend makes before any decoding."""
    reference, distorted = Path(reference), Path(distorted)
    if n_units < 1:
        raise FeatureError(f"n_units must be >= 1, got {n_units}")
    for role, path in (("reference", reference), ("distorted", distorted)):
        if not path.is_file():
            raise MediaError(f"{role} video {path} does not exist; check the manifest or the path")
    return reference, distorted


def cached_vmaf(cache: FeatureCache, key: str, params: dict[str, Any]) -> VmafResult | None:
    """A VMAF result stored under ``key`` (the arrays of :func:`vmaf_arrays`), or None."""
    hit = cache.get(key)
    if hit is None:
        return None
    return VmafResult(
        features=hit["features"],
        vmaf=float(hit["vmaf"]),
        n_frames=int(hit["n_frames"]),
        per_frame=hit["per_frame"],
        per_frame_vmaf=hit["per_frame_vmaf"],
        from_cache=True,
        params=params,
    )


def extract_vmaf(
    reference: str | Path,
    distorted: str | Path,
    *,
    n_units: int = 1,
    n_threads: int = 0,
    cache: FeatureCache | None = None,
) -> VmafResult:
    """Run libvmaf (model vmaf_v0.6.1) on a pair and return X_v (``[n_units, 6]``) and the clip VMAF.

    Policies:
        * **Resolution**: VMAF compares pixels, so both inputs must have the same size. When they
          differ the distorted video is scaled (bicubic) to the reference's size, as in streaming
          practice where a lower-resolution rung is upsampled for display. Pixel formats that
          differ are converted to the reference's.
        * **Length**: frame counts (exact, from a stream copy) may differ by at most
          ``max(2 frames, 2 %)`` of the longer file; then the common prefix is scored (framesync
          ``shortest=1``) and a warning is logged. A larger difference raises :class:`MediaError`
          naming both files and both counts, since it means the files are not the same segment.
        * **Frame pairing**: by frame index, not container timestamps (see :func:`vmaf_command`).
        * **Threads**: ``n_threads = 0`` uses all CPU cores. Results do not depend on it.
        * **Cache**: with ``cache``, results are stored under a key of both files' content, the
          libvmaf model, the ffmpeg build and ``n_units``.

    Raises:
        MediaError: missing, corrupt or video-less inputs, too different lengths, libvmaf failure.
    """
    reference, distorted = check_vmaf_inputs(reference, distorted, n_units)
    params = _params(n_units)
    key = None
    if cache is not None:
        # A hit is keyed by both files' content, so files that produced a valid result before are
        # still valid: skip probing (which costs two ffmpeg calls) on hits.
        key = vmaf_cache_key(reference, distorted, n_units=n_units)
        hit = cached_vmaf(cache, key, params)
        if hit is not None:
            return hit
    ref_info, dist_info = _check_pair(reference, distorted)

    threads = n_threads if n_threads > 0 else (os.cpu_count() or 1)
    scale_to = None
    if (dist_info.width, dist_info.height) != (ref_info.width, ref_info.height):
        scale_to = (ref_info.width, ref_info.height)
    pix_fmt = ref_info.pix_fmt if (ref_info.pix_fmt and dist_info.pix_fmt != ref_info.pix_fmt) else None
    with tempfile.TemporaryDirectory(prefix="avlab-vmaf-") as tmp:
        # ffmpeg runs inside the temp folder with a bare log name, so the filtergraph never has to
        # escape a path (':' and ',' are filtergraph syntax); the inputs are passed as absolute paths.
        args = vmaf_command(
            reference.resolve(),
            distorted.resolve(),
            "vmaf.json",
            n_threads=threads,
            scale_to=scale_to,
            pix_fmt=pix_fmt,
            fps=ref_info.fps or 25.0,
        )
        run_ffmpeg(args, what=f"computing VMAF of {distorted} against {reference}", cwd=tmp)
        log_file = Path(tmp) / "vmaf.json"
        if not log_file.exists():
            raise MediaError(f"libvmaf wrote no log for {distorted} vs {reference}; check both files decode")
        log_dict = json.loads(log_file.read_text())
    n_eval = len(log_dict.get("frames", []))
    if n_eval < n_units:
        raise FeatureError(f"{distorted}: only {n_eval} frames were scored, fewer than n_units={n_units}")
    feats, vmaf, per_frame, per_frame_vmaf = _from_log(log_dict, n_units)
    result = VmafResult(
        features=feats.astype(np.float32),
        vmaf=vmaf,
        n_frames=n_eval,
        per_frame=per_frame.astype(np.float32),
        per_frame_vmaf=per_frame_vmaf.astype(np.float32),
        log=log_dict,
        params=params,
    )
    if cache is not None and key is not None:
        cache.put(key, vmaf_arrays(result), vmaf_provenance(reference, distorted, params, log_dict))
    return result


def vmaf_arrays(result: VmafResult) -> dict[str, np.ndarray]:
    """The arrays that the cache stores for a :class:`VmafResult`."""
    return {
        "features": result.features,
        "vmaf": np.float64(result.vmaf),
        "n_frames": np.int64(result.n_frames),
        "per_frame": result.per_frame,
        "per_frame_vmaf": result.per_frame_vmaf,
    }


def vmaf_provenance(reference: Path, distorted: Path, params: dict, log_dict: dict | None) -> dict[str, Any]:
    """Provenance sidecar for a cached VMAF result."""
    return {
        "extractor": EXTRACTOR_NAME,
        "version": EXTRACTOR_VERSION,
        "params": params,
        "inputs": [file_fingerprint(reference), file_fingerprint(distorted)],
        "libvmaf_version": (log_dict or {}).get("version"),
        "feature_order": list(VMAF_FEATURES),
    }


#: ``data.vmaf_backend`` values: ffmpeg's libvmaf (the official C code, CPU) or vmaf-torch (any device).
VMAF_BACKENDS: tuple[str, ...] = ("libvmaf", "torch")


def check_vmaf_backend(backend: str, device: str = "auto") -> None:
    """Fail early, before any decoding, on an unknown backend, a missing vmaf-torch or an absent GPU.

    Raises:
        ConfigError: unknown ``backend`` or ``device``, or ``device=cuda`` without a GPU.
        FeatureError: ``backend=torch`` without the vmaf-torch package (the message has the install
            command).
    """
    if backend not in VMAF_BACKENDS:
        raise ConfigError(
            f"data.vmaf_backend must be one of {', '.join(VMAF_BACKENDS)}, got {backend!r}"
            + did_you_mean(str(backend), VMAF_BACKENDS)
        )
    if backend == "torch":
        from avlab.features.vmaf_torch import import_vmaf_torch, resolve_device

        import_vmaf_torch()
        resolve_device(device)
    elif str(device) != "auto":
        log.info("data.vmaf_device=%s is ignored: the libvmaf backend runs on the CPU", device)


def extract_vmaf_with_backend(
    reference: str | Path,
    distorted: str | Path,
    *,
    backend: str = "libvmaf",
    device: str = "auto",
    n_units: int = 1,
    cache: FeatureCache | None = None,
) -> VmafResult:
    """:func:`extract_vmaf` (``backend="libvmaf"``) or vmaf-torch on ``device`` (``backend="torch"``).

    Both return the same :class:`VmafResult` layout, and their cache entries have different keys,
    so a cache never mixes the two backends' features.
    """
    check_vmaf_backend(backend, device)
    if backend == "torch":
        from avlab.features.vmaf_torch import extract_vmaf_torch

        return extract_vmaf_torch(reference, distorted, n_units=n_units, device=device, cache=cache)
    return extract_vmaf(reference, distorted, n_units=n_units, cache=cache)
