"""Decoded-frame caches: per-video uint8 arrays at the model's resolution, read by memory map.

Decoding a 720p JPEG and resizing it costs milliseconds per frame; slicing the same frame out of
a memory-mapped uint8 array at 224×384 costs microseconds. A task that trains on clips of frames
therefore decodes each video once, at the size its model uses, into a :class:`FrameStore` entry
and reads clips from it by slicing; random crops, flips and temporal sampling still happen per
step on the cached arrays.

Layout (one folder per entry, ``root`` from :func:`frame_cache_root`)::

    root/<key[:2]>/<key>/<name>.npy     one array per name, e.g. frames T×H×W×3, maps T×H×W (uint8)
    root/<key[:2]>/<key>/meta.json      provenance: kind, version, params, sources, arrays, created

API:

* :func:`frame_cache_root` — ``$AVLAB_CACHE/frames`` when ``AVLAB_CACHE`` is set, otherwise
  ``<dataset>/.features/frames`` (next to the feature cache of :mod:`avlab.features.cache`).
* :func:`sources_fingerprint` / :func:`frame_key` — the key of an entry: a SHA-1 (through
  :func:`avlab.features.cache.cache_key`) over the kind, :data:`FRAME_CACHE_VERSION`, the params
  (target size, decoder, ...) and the *stat* fingerprint of every source file.
* :class:`FrameStore` — :meth:`~FrameStore.open` (memory maps, or None on a miss),
  :meth:`~FrameStore.build` (streams arrays into place, atomically) and
  :meth:`~FrameStore.open_or_build`.
* :func:`decode_images` / :func:`resize_frames` — decode image files (PIL, or torchvision's
  ``decode_jpeg`` on CPU or CUDA) and resize uint8 frames to the model size; the uncached path of
  a DataModule uses the same two functions, so cached and uncached frames are equal.

Why a stat fingerprint (relative name, size, ``mtime_ns`` of every source file) rather than the
content hashes of :func:`avlab.features.cache.file_fingerprint`: a video is thousands of frame
files (DIEM alone is ~240k JPEGs), and hashing all their bytes at every start would take minutes,
while ``stat`` takes microseconds per file. Any rewrite of a source file by ordinary tools
changes its size or mtime, so the entry is re-decoded and never served stale; a copy of the
dataset that does not keep mtimes (``cp`` without ``-p``) is decoded once more, which costs time
but is never wrong. An edit that restores both size and mtime on purpose (``touch -r``) is not
detected; delete the entry's folder in that case.

Writes are atomic: an entry is filled in a temporary sibling folder (arrays streamed through
``numpy.lib.format.open_memmap``, so a long video never has to fit in memory), its ``meta.json``
is written last, and the folder is renamed into place. An entry counts only when ``meta.json``
exists and every array it lists opens with the recorded shape and dtype, so an interrupted build
leaves nothing that is ever read.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avlab.errors import ConfigError, DataError, FeatureError, MediaError
from avlab.features.cache import cache_key, mark_used

__all__ = [
    "FRAME_CACHE_VERSION",
    "JPEG_DEVICES",
    "FrameStore",
    "check_jpeg_device",
    "decode_images",
    "frame_cache_root",
    "frame_key",
    "resize_frames",
    "sources_fingerprint",
]

#: Bumped whenever the decoding or resizing of cached arrays changes, so old entries are not read.
FRAME_CACHE_VERSION = "1"
#: Devices :func:`decode_images` decodes JPEGs on (``data.jpeg_device``).
JPEG_DEVICES = ("cpu", "cuda")
_JPEG_SUFFIXES = (".jpg", ".jpeg")


# --------------------------------------------------------------------------- keys
def frame_cache_root(dataset_root: str | Path) -> Path:
    """Where frame caches of ``dataset_root`` live: ``$AVLAB_CACHE/frames`` if set, else
    ``<dataset_root>/.features/frames`` (deleting the dataset deletes its caches)."""
    env = os.environ.get("AVLAB_CACHE")
    return Path(env) / "frames" if env else Path(dataset_root) / ".features" / "frames"


def sources_fingerprint(files: Sequence[str | Path], base: str | Path | None = None) -> dict[str, Any]:
    """``{"files", "bytes", "sha1"}`` over (name, size, mtime_ns) of ``files`` in order.

    Names are relative to ``base`` when given (so a moved dataset that keeps mtimes still hits).
    A missing file is a :class:`FeatureError` naming it.
    """
    h = hashlib.sha1()
    total = 0
    for f in files:
        path = Path(f)
        try:
            st = path.stat()
        except FileNotFoundError as exc:
            raise FeatureError(f"{path} does not exist; cannot fingerprint it for the frame cache") from exc
        name = str(path.relative_to(base)) if base is not None else str(path)
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        total += st.st_size
    return {"files": len(files), "bytes": total, "sha1": h.hexdigest()}


def frame_key(kind: str, params: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> str:
    """Key of a cache entry: SHA-1 of (kind, :data:`FRAME_CACHE_VERSION`, params, source fingerprint)."""
    return cache_key(kind, FRAME_CACHE_VERSION, {**params, "sources": dict(fingerprint)}, inputs=())


# --------------------------------------------------------------------------- store
ArraySpec = Mapping[str, tuple[tuple[int, ...], str]]


class FrameStore:
    """Entries of named uint8 (or other numeric) arrays under ``root``, opened as memory maps."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The folder of entry ``key``."""
        return self.root / key[:2] / key

    def provenance(self, key: str) -> dict[str, Any] | None:
        """The ``meta.json`` of entry ``key`` (None when absent)."""
        meta = self.path(key) / "meta.json"
        return json.loads(meta.read_text()) if meta.is_file() else None

    def open(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of entry ``key`` as read-only memory maps, or None when it is absent or damaged."""
        try:
            meta = self.provenance(key)
        except (OSError, ValueError):
            return None
        if meta is None:
            return None
        out = {}
        for name, spec in meta.get("arrays", {}).items():
            try:
                arr = np.load(self.path(key) / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                return None  # a damaged entry is rebuilt rather than trusted
            if list(arr.shape) != spec["shape"] or str(arr.dtype) != spec["dtype"]:
                return None
            out[name] = arr
        if out:
            mark_used(self.path(key) / "meta.json")
        return out or None

    def build(
        self,
        key: str,
        spec: ArraySpec,
        fill: Callable[[dict[str, np.ndarray]], None],
        provenance: Mapping[str, Any],
    ) -> dict[str, np.ndarray]:
        """Create entry ``key``: arrays of ``spec`` (name → (shape, dtype)) filled in place by ``fill``.

        ``fill`` gets writable memory maps and writes every element (in chunks, so nothing has to
        fit in memory). It runs before anything becomes visible, so an exception leaves no entry.
        Returns the entry opened read-only.
        """
        if not spec:
            raise ValueError("FrameStore.build needs at least one array")
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            arrays = {
                name: np.lib.format.open_memmap(
                    tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=tuple(shape)
                )
                for name, (shape, dtype) in spec.items()
            }
            fill(arrays)
            for arr in arrays.values():
                arr.flush()
            del arrays
            meta = json.loads(json.dumps(dict(provenance), default=str))
            meta.update(
                key=key,
                version=FRAME_CACHE_VERSION,
                created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                arrays={n: {"shape": list(s), "dtype": str(np.dtype(d))} for n, (s, d) in spec.items()},
            )
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)  # a damaged entry (open() returned None) is replaced
            try:
                os.rename(tmp, final)
            except OSError:
                if self.open(key) is None:  # another process did not win the race either
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        opened = self.open(key)
        if opened is None:
            raise FeatureError(f"frame cache entry {final} cannot be read back after writing it")
        return opened

    def open_or_build(
        self,
        key: str,
        spec: ArraySpec,
        fill: Callable[[dict[str, np.ndarray]], None],
        provenance: Mapping[str, Any],
    ) -> tuple[dict[str, np.ndarray], bool]:
        """``(arrays, built)``: the entry if present, else :meth:`build` it (``built`` True)."""
        hit = self.open(key)
        if hit is not None:
            return hit, False
        return self.build(key, spec, fill, provenance), True


# --------------------------------------------------------------------------- decoding
def check_jpeg_device(device: str, where: str = "data.jpeg_device") -> str:
    """``device`` if it is usable for JPEG decoding; a ConfigError naming ``where`` otherwise."""
    if device not in JPEG_DEVICES:
        raise ConfigError(f"{where} must be one of {', '.join(JPEG_DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{where}=cuda, but PyTorch sees no CUDA device on this machine; set {where}=cpu "
            "(decode with PIL on the CPU) or run on a machine with a GPU"
        )
    return device


def decode_images(
    files: Sequence[str | Path], device: str = "cpu", *, backend: str = "pil", gray: bool = False
) -> torch.Tensor:
    """Image files as uint8 ``[N, H, W, 3]`` RGB (``[N, H, W]`` luma with ``gray``) on ``device``.

    ``backend="pil"`` decodes with PIL on the CPU (avlab's reference decoder); ``"torchvision"``
    decodes JPEGs with :func:`torchvision.io.decode_jpeg` on ``device`` (nvJPEG on ``cuda``, all
    files in one batched call) and other image types with PIL. On the CPU both are libjpeg-turbo
    and gave identical pixels in avlab's tests; other library builds and nvJPEG may round a few
    pixels differently, which is why the decoder is part of the frame-cache key.
    """
    from avlab.media.clips import read_image

    paths = [Path(f) for f in files]
    if backend == "pil":
        out = torch.from_numpy(np.stack([read_image(p, gray=gray) for p in paths]))
        return out.to(device) if device != "cpu" else out
    if backend != "torchvision":
        raise ValueError(f"decode_images: backend must be pil or torchvision, got {backend!r}")
    from torchvision.io import ImageReadMode, decode_jpeg

    jpeg = [i for i, p in enumerate(paths) if p.suffix.lower() in _JPEG_SUFFIXES]
    decoded: dict[int, torch.Tensor] = {}
    if jpeg:
        data = []
        for i in jpeg:
            try:
                data.append(torch.frombuffer(bytearray(paths[i].read_bytes()), dtype=torch.uint8))
            except FileNotFoundError as exc:
                raise DataError(f"{paths[i]} does not exist") from exc
        try:
            chw = decode_jpeg(data, mode=ImageReadMode.GRAY if gray else ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            raise MediaError(
                f"torchvision cannot decode the JPEGs {paths[jpeg[0]]} .. {paths[jpeg[-1]]} on {device} "
                f"({exc}); re-extract them, or set data.jpeg_device=cpu"
            ) from exc
        decoded = {i: img[0] if gray else img.permute(1, 2, 0) for i, img in zip(jpeg, chw, strict=True)}
    for i, p in enumerate(paths):
        if i not in decoded:
            decoded[i] = torch.from_numpy(read_image(p, gray=gray)).to(device)
    return torch.stack([decoded[i] for i in range(len(paths))])


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` (or ``[N, H, W]``) → uint8 at ``size`` = (h, w): bilinear, antialiased.

    On the CPU this runs PyTorch's uint8 kernel (about 25× faster than resizing in float, and
    within one level of the rounded float result); on CUDA, where there is no uint8 kernel, it
    resizes in float and rounds. Both the cache builder and the uncached path call this, so their
    frames are identical on the same device.
    """
    gray = frames.ndim == 3
    if gray and frames.device.type == "cpu" and tuple(frames.shape[1:]) != tuple(size):
        # PyTorch's fast uint8 kernel handles 3 or 4 channels; a single channel takes a generic
        # path 2-3x slower. Resizing is per channel, so four gray frames travel as one RGBA frame.
        n = frames.shape[0]
        pad = (-n) % 4
        x = torch.cat([frames, frames[:1].expand(pad, -1, -1)]) if pad else frames
        x = x.reshape(-1, 4, *x.shape[1:]).permute(0, 2, 3, 1)
        y = resize_frames(x, size)
        return y.permute(0, 3, 1, 2).reshape(-1, *y.shape[1:3])[:n].contiguous()
    x = frames[..., None] if gray else frames
    if tuple(x.shape[1:3]) != tuple(size):
        x = x.permute(0, 3, 1, 2)
        if x.device.type == "cpu":
            x = F.interpolate(
                x.contiguous(memory_format=torch.channels_last),
                size=tuple(size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        else:
            x = F.interpolate(
                x.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True
            )
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        x = x.permute(0, 2, 3, 1)
    x = x.contiguous()
    return x[..., 0] if gray else x
