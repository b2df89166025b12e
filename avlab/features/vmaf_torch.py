"""VMAF elementary features through ``vmaf-torch`` (PyTorch, CPU or GPU): the ``torch`` VMAF backend.

The same six per-frame features as :func:`avlab.features.vmaf.extract_vmaf` (columns
:data:`~avlab.features.vmaf.VMAF_FEATURES`: VIF scales 0–3, motion2, ADM2), the same per-frame and
pooled VMAF score (model vmaf_v0.6.1, clipped to [0, 100] as libvmaf does) and the same
:class:`~avlab.features.vmaf.VmafResult`, so a DataModule and its feature cache use either backend
unchanged. The difference is where the arithmetic runs: libvmaf's fixed-point C on the CPU, or
vmaf-torch's floating-point re-implementation on any PyTorch device.

What vmaf-torch sees is what libvmaf sees: both videos are decoded by the same ffmpeg binary with
the same filter chain as the libvmaf path (the distorted video scaled bicubic to the reference's
size and converted to the reference's pixel format when they differ), paired by frame index and cut
to the common prefix; only the luma plane is kept (``extractplanes=y``, a plain copy without
range conversion), since every VMAF feature is computed on luma. High-bit-depth luma is divided by
``2**(bits - 8)`` because vmaf-torch's constants are those of the 8-bit range, as libvmaf's float
extractors normalise it.

Frames are streamed from two ffmpeg pipes in batches of :data:`DEFAULT_BATCH_PIXELS` pixels,
so memory does not grow with the clip length. motion2 needs each frame's neighbours: it is
assembled after the last batch from the per-frame motion (SAD with the previous frame) that each
batch computes with one carried-over frame.

vmaf-torch computes in floating point while libvmaf's default extractors are integer ones, so the
features differ slightly; ``tests/test_vmaf_torch.py`` states the measured bounds.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import subprocess
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import numpy as np
import torch

from avlab.errors import ConfigError, FeatureError, MediaError
from avlab.features.cache import FeatureCache, cache_key, file_fingerprint
from avlab.features.vmaf import (
    EXTRACTOR_NAME,
    EXTRACTOR_VERSION,
    VMAF_FEATURES,
    VmafResult,
    _check_pair,
    cached_vmaf,
    check_vmaf_inputs,
    pool_frames,
    vmaf_arrays,
)
from avlab.media.ffmpeg import ffmpeg_command, ffmpeg_version

__all__ = [
    "DEFAULT_BATCH_PIXELS",
    "LIBVMAF_PIX_FMTS",
    "extract_vmaf_torch",
    "import_vmaf_torch",
    "resolve_device",
    "vmaf_torch_cache_key",
    "vmaf_torch_version",
]

log = logging.getLogger(__name__)

#: Luma pixels (per video) processed at once, by device type. A GPU wants large batches to fill
#: it (8 frames of 1080p; vmaf-torch keeps a few dozen float32 intermediates per pixel, so ~2 GB).
#: A CPU is fastest with batches that stay in its caches: on a 2-core machine 8 frames of 352×150
#: ran 2.3× faster than 50 frames at once; one frame is always processed whatever its size.
DEFAULT_BATCH_PIXELS = {"cuda": 8 * 1920 * 1080, "cpu": 1 << 19}

#: Pixel formats the ffmpeg ``libvmaf`` filter accepts; other formats are converted to the one of
#: these with the same bit depth (4:2:0), as ffmpeg's format negotiation does in front of libvmaf.
LIBVMAF_PIX_FMTS = (
    "yuv420p",
    "yuv422p",
    "yuv444p",
    "yuv420p10le",
    "yuv422p10le",
    "yuv444p10le",
    "yuv420p12le",
    "yuv422p12le",
    "yuv444p12le",
    "yuv420p16le",
    "yuv422p16le",
    "yuv444p16le",
)

#: Bumped with changes of the decoding or pooling here; part of the cache key with vmaf-torch's version.
TORCH_BACKEND_VERSION = "1"

_INSTALL_HINT = "pip install 'avlab[vmaf-torch]' (or pip install vmaf-torch)"
_DEPTH_RE = re.compile(r"p(\d+)(?:le|be)$")


def import_vmaf_torch() -> ModuleType:
    """The ``vmaf_torch`` package, or a :class:`FeatureError` that says how to install it."""
    try:
        return importlib.import_module("vmaf_torch")
    except ImportError as exc:
        raise FeatureError(
            f"data.vmaf_backend=torch needs the vmaf-torch package, which is not installed ({exc}). "
            f"Install it with `{_INSTALL_HINT}`, or use data.vmaf_backend=libvmaf (the default)."
        ) from exc


def vmaf_torch_version() -> str:
    """Installed vmaf-torch version (part of the cache key: another implementation gives other floats)."""
    import_vmaf_torch()
    try:
        return metadata.version("vmaf-torch")
    except metadata.PackageNotFoundError:  # imported from a source tree without package metadata
        return "unknown"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cpu``/``cuda``/``cuda:N`` as given.

    Raises:
        ConfigError: an unknown device name, or CUDA requested where none is available.
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or re.fullmatch(r"cuda:\d+", name):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"data.vmaf_device={name} but PyTorch sees no CUDA device "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                "use data.vmaf_device=auto or cpu"
            )
        return torch.device(name)
    raise ConfigError(f"data.vmaf_device must be auto, cpu, cuda or cuda:N, got {name!r}")


def _params(n_units: int) -> dict[str, Any]:
    # The "backend" key (absent from the libvmaf backend's params) keeps the two backends' cache
    # entries apart; the device is left out on purpose: CPU and GPU agree to float rounding, so
    # features extracted on a GPU machine are reused on a CPU one.
    return {
        "backend": "torch",
        "backend_version": TORCH_BACKEND_VERSION,
        "vmaf_torch": vmaf_torch_version(),
        "model": "vmaf_v0.6.1",
        "dtype": "float32",
        "n_units": int(n_units),
        "pooling": "mean",
        "ffmpeg": ffmpeg_version(),
        "features": list(VMAF_FEATURES),
    }


def vmaf_torch_cache_key(reference: str | Path, distorted: str | Path, *, n_units: int = 1) -> str:
    """Feature-cache key of :func:`extract_vmaf_torch` (differs from the libvmaf backend's key)."""
    return cache_key(EXTRACTOR_NAME, EXTRACTOR_VERSION, _params(n_units), [reference, distorted])


def _work_pix_fmt(ref_pix_fmt: str) -> str:
    """The pixel format both videos are compared in: the reference's, made one libvmaf accepts."""
    if ref_pix_fmt in LIBVMAF_PIX_FMTS:
        return ref_pix_fmt
    depth = _bit_depth(ref_pix_fmt)
    return "yuv420p" if depth <= 8 else f"yuv420p{min(d for d in (10, 12, 16) if d >= depth)}le"


def _bit_depth(pix_fmt: str) -> int:
    m = _DEPTH_RE.search(pix_fmt or "")
    return int(m.group(1)) if m else 8


@dataclass
class _LumaPipe:
    """One ffmpeg process writing the luma plane of every frame of a video as raw samples."""

    path: Path
    proc: subprocess.Popen
    stderr: IO[bytes]
    frame_bytes: int
    dtype: np.dtype
    shape: tuple[int, int]

    def read(self, n_frames: int) -> np.ndarray:
        """Up to ``n_frames`` frames ``[k, h, w]``; fewer (possibly 0) at the end of the video."""
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(self.frame_bytes * n_frames)
        if len(data) % self.frame_bytes:
            raise MediaError(f"decoding {self.path} ended inside a frame; the file may be truncated")
        return np.frombuffer(data, dtype=self.dtype).reshape(-1, *self.shape)

    def close(self, *, finished: bool) -> None:
        """Stop ffmpeg; with ``finished`` (the whole video was read) a failure is an error."""
        if not finished:
            # The other video ended first (common prefix): the rest of this one is not needed.
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.seek(0)
        err = self.stderr.read().decode(errors="replace").strip()
        self.stderr.close()
        if finished and self.proc.returncode != 0:
            raise MediaError(
                f"ffmpeg failed decoding {self.path} for vmaf-torch (exit status {self.proc.returncode}):\n"
                + "\n".join(err.splitlines()[-15:])
            )


def _open_luma(
    path: Path, *, size: tuple[int, int], pix_fmt: str, scale: bool, convert_to: str | None
) -> _LumaPipe:
    """Decode ``path``'s first video stream to raw luma through the libvmaf path's filter chain."""
    chain = []
    if scale:
        chain.append(f"scale={size[0]}:{size[1]}:flags=bicubic")  # as vmaf_command scales the distorted
    if convert_to:
        chain.append(f"format={convert_to}")
    chain.append("extractplanes=y")
    depth = _bit_depth(pix_fmt)
    out_fmt = "gray" if depth <= 8 else f"gray{depth}le"
    cmd = ffmpeg_command(
        "-v",
        "error",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-vf",
        ",".join(chain),
        # One output frame per decoded frame: pairing is by index, as the libvmaf path's setpts=N.
        "-fps_mode",
        "passthrough",
        "-pix_fmt",
        out_fmt,
        "-f",
        "rawvideo",
        "-",
    )
    # A file, not a pipe: a full stderr pipe would block ffmpeg. _LumaPipe.close closes it.
    stderr = tempfile.TemporaryFile()  # noqa: SIM115
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
    except OSError as exc:  # pragma: no cover - only when the binary vanished
        stderr.close()
        raise MediaError(f"could not start ffmpeg ({cmd[0]}) to decode {path}: {exc}") from exc
    dtype = np.dtype(np.uint8 if depth <= 8 else "<u2")
    w, h = size
    return _LumaPipe(path, proc, stderr, w * h * dtype.itemsize, dtype, (h, w))


def _luma_batches(
    reference: Path,
    distorted: Path,
    *,
    size: tuple[int, int],
    ref_pix_fmt: str,
    dist_scale: bool,
    dist_pix_fmt: str,
    batch_frames: int,
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """Pairs of luma batches ``([k, h, w], [k, h, w])`` over the common prefix of both videos."""
    work = _work_pix_fmt(ref_pix_fmt)
    ref = _open_luma(
        reference, size=size, pix_fmt=work, scale=False, convert_to=work if work != ref_pix_fmt else None
    )
    try:
        dist = _open_luma(
            distorted,
            size=size,
            pix_fmt=work,
            scale=dist_scale,
            convert_to=work if (dist_scale or dist_pix_fmt != work) else None,
        )
    except BaseException:
        ref.close(finished=False)
        raise
    ref_done = dist_done = False
    try:
        while True:
            r, d = ref.read(batch_frames), dist.read(batch_frames)
            ref_done, dist_done = len(r) < batch_frames, len(d) < batch_frames
            k = min(len(r), len(d))
            if k:
                yield r[:k], d[:k]
            if ref_done or dist_done:
                break
    finally:
        # Close both even if one fails, and report a decoding failure only for a video read to its end.
        try:
            ref.close(finished=ref_done)
        finally:
            dist.close(finished=dist_done)


def _to_tensor(luma: np.ndarray, device: torch.device, depth: int) -> torch.Tensor:
    # [k, h, w] integers -> [k, 1, h, w] float32 on the 8-bit scale that vmaf-torch's constants assume.
    if depth <= 8:
        # uint8 goes to the device as is (a quarter of the float32 bytes) and is converted there.
        return torch.from_numpy(luma.copy()).to(device).unsqueeze(1).float()
    t = torch.from_numpy(luma.astype(np.float32)).to(device).unsqueeze(1)
    return t / float(1 << (depth - 8))


def _motion2(motion: np.ndarray) -> np.ndarray:
    """libvmaf's motion2 from per-frame motion (``motion[i]`` = SAD of frame i and i-1, ``motion[0]`` = 0).

    motion2[i] = min(motion[i], motion[i+1]); the first frame has 0 and the last frame its own motion.
    """
    out = np.minimum(motion, np.roll(motion, -1))
    out[0] = 0.0
    out[-1] = motion[-1]
    return out


@contextlib.contextmanager
def _no_tf32_convolutions(device: torch.device) -> Generator[None, None, None]:
    """Full float32 convolutions on CUDA while VMAF is computed.

    cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by default on Ampere and later GPUs,
    and every VMAF filter (VIF's Gaussians, ADM's wavelet, motion's blur) is a convolution, so the
    GPU would drift from the CPU and from libvmaf by far more than float32 rounding. The setting is
    process-wide, hence restored afterwards.
    """
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


@torch.no_grad()
def _compute(
    reference: Path, distorted: Path, *, device: torch.device, batch_pixels: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``[n, 6]`` features (order :data:`VMAF_FEATURES`) and per-frame VMAF ``[n]``."""
    vt = import_vmaf_torch()
    ref_info, dist_info = _check_pair(reference, distorted)
    size = (ref_info.width, ref_info.height)
    work = _work_pix_fmt(ref_info.pix_fmt)
    depth = _bit_depth(work)
    # clip_score: libvmaf clips the vmaf_v0.6.1 score to its model's [0, 100].
    model = vt.VMAF(temporal_pooling=False, enable_motion=True, clip_score=True).to(device).eval()
    if batch_pixels is None:
        batch_pixels = DEFAULT_BATCH_PIXELS.get(device.type, DEFAULT_BATCH_PIXELS["cpu"])
    batch_frames = max(1, batch_pixels // max(1, size[0] * size[1]))
    vif, adm, motion = [], [], []
    prev: torch.Tensor | None = None  # last reference frame of the previous batch, for motion
    batches = _luma_batches(
        reference,
        distorted,
        size=size,
        ref_pix_fmt=ref_info.pix_fmt,
        dist_scale=(dist_info.width, dist_info.height) != size,
        dist_pix_fmt=dist_info.pix_fmt,
        batch_frames=batch_frames,
    )
    # closing(): an error while scoring (e.g. GPU out of memory) stops both ffmpeg processes at once.
    with contextlib.closing(batches), _no_tf32_convolutions(device):
        for r_np, d_np in batches:
            r, d = _to_tensor(r_np, device, depth), _to_tensor(d_np, device, depth)
            vif.append(model.compute_vif_features(r, d).double().cpu())
            adm.append(model.compute_adm_score(r, d).double().cpu())
            # Motion is the SAD of each frame with the one before, so the batch gets the previous
            # batch's last frame prepended; vmaf-torch sets the first entry of its input to 0.
            with_prev = r if prev is None else torch.cat([prev, r])
            m = model.compute_motion(with_prev).double().cpu()
            motion.append(m if prev is None else m[1:])
            prev = r[-1:]
    if not vif:
        raise MediaError(f"no frame of {distorted} or {reference} could be decoded for vmaf-torch")
    vif_t, adm_t = torch.cat(vif), torch.cat(adm)
    motion2 = torch.from_numpy(_motion2(torch.cat(motion)[:, 0].numpy())).unsqueeze(1)
    model.svm.to("cpu")  # a few hundred support vectors on n frames: not worth a device round trip
    scores = model.predict(adm_t.float(), motion2.float(), vif_t.float())
    per_frame = torch.cat([vif_t, motion2, adm_t], dim=1).numpy()
    assert per_frame.shape[1] == len(VMAF_FEATURES)
    return per_frame, scores[:, 0].double().numpy()


def extract_vmaf_torch(
    reference: str | Path,
    distorted: str | Path,
    *,
    n_units: int = 1,
    device: str | torch.device = "auto",
    cache: FeatureCache | None = None,
    batch_pixels: int | None = None,
) -> VmafResult:
    """X_v (``[n_units, 6]``) and the clip VMAF of a pair, computed by vmaf-torch on ``device``.

    Same policies as :func:`avlab.features.vmaf.extract_vmaf` (resolution, length tolerance and
    common prefix, pairing by frame index, cache) and the same result layout; ``device`` is
    ``auto`` (a GPU when PyTorch sees one), ``cpu``, ``cuda`` or ``cuda:N``. ``batch_pixels``
    (luma pixels decoded and scored at once) defaults to :data:`DEFAULT_BATCH_PIXELS` of the
    device type; it changes speed and memory, not the result.

    Raises:
        FeatureError: vmaf-torch is not installed (with the install command), bad ``n_units``.
        ConfigError: ``device`` is unknown or names an unavailable GPU.
        MediaError: missing, corrupt or video-less inputs, too different lengths, decoding failure.
    """
    import_vmaf_torch()  # fail on a missing package before any decoding or hashing
    dev = resolve_device(device)
    reference, distorted = check_vmaf_inputs(reference, distorted, n_units)
    params = _params(n_units)
    key = None
    if cache is not None:
        key = vmaf_torch_cache_key(reference, distorted, n_units=n_units)
        hit = cached_vmaf(cache, key, params)
        if hit is not None:
            return hit
    per_frame, per_frame_vmaf = _compute(reference, distorted, device=dev, batch_pixels=batch_pixels)
    n_eval = len(per_frame)
    if n_eval < n_units:
        raise FeatureError(f"{distorted}: only {n_eval} frames were scored, fewer than n_units={n_units}")
    result = VmafResult(
        features=pool_frames(per_frame, n_units).astype(np.float32),
        vmaf=float(per_frame_vmaf.mean()),
        n_frames=n_eval,
        per_frame=per_frame.astype(np.float32),
        per_frame_vmaf=per_frame_vmaf.astype(np.float32),
        params=params,
    )
    if cache is not None and key is not None:
        provenance = {
            "extractor": EXTRACTOR_NAME,
            "version": EXTRACTOR_VERSION,
            "backend": "torch",
            "params": params,
            "inputs": [file_fingerprint(reference), file_fingerprint(distorted)],
            "torch": torch.__version__,
            "device": str(dev),
            "feature_order": list(VMAF_FEATURES),
        }
        cache.put(key, vmaf_arrays(result), provenance)
    return result
