"""Video decoding behind one small interface, with the backend chosen by config (``data.decoder``).

Backends (``DECODERS``), each optional at run time:

``decord``
    The ``decord`` module, installed by either the original ``decord`` 0.6 (x86-64 Linux and
    Windows wheels only, unmaintained) or the ``decord2`` distribution (its successor, wheels for
    Linux x86-64/aarch64, macOS arm64 and Windows). Both install the same import name, so they are
    one backend; :func:`backend_version` says which one is present. decord2 3.4.0 cannot decode
    some frame widths (96 px, the demo videos' width) at all, so avlab does not install it
    (docs/decoding.md).
``torchcodec``
    PyTorch's decoder. Its wheels are built for one torch release and, on Linux, load the system's
    FFmpeg 4-8 shared libraries (``apt install libavcodec59 libavformat59 libswscale6 ...``), so
    it is only "available" when those load.
``pyav``
    PyAV (``av``), whose wheels bundle FFmpeg on every platform; installed with avlab everywhere.

``auto`` takes the first available one of ``DECODERS``: PyAV, torchcodec, decord. All three
decode at similar speeds (bench/decoders.py), so the order is by random access, which is what
clip sampling needs. Reading single frames at random indices, :class:`PyAVBackend` returned the
right frame on every file tried (H.264 in MP4, MKV and AVI, with B-frames and open GOPs, MPEG-4
part 2 with B-frames in AVI and MP4, MJPEG, VP9); torchcodec fails with an error on AVI files
with B-frames; decord 0.6 silently returns other frames on AVI and MPEG-4 files with B-frames
and on open-GOP H.264 (upstream issues dmlc/decord#195, #252, #365). PyAV has no frame index of
its own, so the backend builds one by demuxing the file on open (a pass over the packets, no
decoding); at native size all three give the same pixels on the files each reads right.

All backends return ``uint8`` RGB arrays ``[T, H, W, 3]`` and count frames the same way (one per
video packet, in presentation order). At native size every backend's pixels equal the ffmpeg
command line's on the H.264/yuv420p clips avlab uses (tests/test_decoders.py); resized frames
differ by backend (the resampling filter differs), see ``RESIZE_MEAN_TOLERANCE``.
"""

from __future__ import annotations

import bisect
import importlib
import importlib.metadata
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from avlab.errors import ConfigError, MediaError

__all__ = [
    "AUTO",
    "DECODERS",
    "RESIZE_MEAN_TOLERANCE",
    "VideoBackend",
    "available_decoders",
    "backend_version",
    "open_video",
    "read_frames",
    "resolve_decoder",
    "take_frames",
    "unavailable_decoders",
]

log = logging.getLogger(__name__)

AUTO = "auto"
#: Backend names, in the order ``auto`` tries them (module docstring: exact random access first).
DECODERS = ("pyav", "torchcodec", "decord")
#: What to install for each backend (named in the error when a requested one is missing).
INSTALL_HINT = {
    "decord": "`pip install decord` (x86-64 Linux and Windows; elsewhere `pip install decord2`, which "
    "fails on some narrow videos, see docs/decoding.md)",
    "torchcodec": "`pip install torchcodec` (the release matching your torch) and, on Linux, the FFmpeg "
    "shared libraries (e.g. `apt install libavcodec59 libavformat59 libavutil57 libswscale6 "
    "libswresample4 libavfilter8 libavdevice59`)",
    "pyav": "`pip install av`",
}
#: Bound on the mean absolute difference (0-255) between a backend's resized frames and FFmpeg's
#: ``scale=W:H:flags=bilinear`` of the same frames. Each backend resamples its own way: decord runs
#: that very filter (difference 0) but falls back to torch's antialiased bilinear resize at widths
#: it cannot copy out (48 px), PyAV uses swscale's bilinear in one pass with the RGB conversion, and
#: torchcodec its own antialiased bilinear. Sharp synthetic edges differ by up to ~170 in single
#: pixels, so the test bounds the mean (measured ≤ 9.4 on the ~2x downscaled test clip).
RESIZE_MEAN_TOLERANCE = 12.0


class VideoBackend(ABC):
    """One open video file. Subclasses open the file in ``__init__`` and read frames by index.

    Args:
        path: the video file (checked to exist by :func:`open_video`).
        width, height: output size, or ``None`` for the native size (both or neither).
    """

    name: ClassVar[str]

    def __init__(self, path: Path, width: int | None = None, height: int | None = None) -> None:
        self.path, self.width, self.height = path, width, height

    @abstractmethod
    def __len__(self) -> int:
        """Number of frames."""

    @property
    @abstractmethod
    def fps(self) -> float:
        """Average frame rate (0.0 when the file does not say)."""

    @abstractmethod
    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at ``indices`` (sorted, unique, in range) as ``uint8 [T, H, W, 3]``."""

    def close(self) -> None:
        """Release the file (the object is not used afterwards)."""

    def _failed(self, exc: BaseException, doing: str = "decoded") -> MediaError:
        return MediaError(
            f"{self.path} cannot be {doing} with the {self.name} decoder ({type(exc).__name__}: {exc}); "
            "check the file (`ffprobe FILE`), re-encode it (`ffmpeg -i IN -c:v libx264 OUT.mp4`) or "
            f"choose another decoder with data.decoder ({', '.join(DECODERS)})"
        )


class DecordBackend(VideoBackend):
    """``decord.VideoReader`` on one CPU thread (DataLoader workers parallelise across videos)."""

    name = "decord"

    def __init__(self, path: Path, width: int | None = None, height: int | None = None) -> None:
        super().__init__(path, width, height)
        self._torch_resize = False
        self._vr = self._open(width or -1, height or -1)

    def _open(self, width: int, height: int) -> Any:
        import decord

        try:
            return decord.VideoReader(
                str(self.path), ctx=decord.cpu(0), width=width, height=height, num_threads=1
            )
        except Exception as exc:  # decord raises its own DECORDError (a RuntimeError) or others
            raise self._failed(exc, "opened") from exc

    def __len__(self) -> int:
        return len(self._vr)

    @property
    def fps(self) -> float:
        return float(self._vr.get_avg_fps())

    def read(self, indices: np.ndarray) -> np.ndarray:
        try:
            frames = self._vr.get_batch(indices.tolist()).asnumpy()
        except Exception as exc:
            if self.width is None or self._torch_resize or "must exactly match" not in str(exc):
                raise self._failed(exc) from exc
            # decord (0.6 and decord2 3.4) cannot copy out frames resized to some widths (48 px
            # fails, 56 works): decode at native size and resize here instead.
            log.info(
                "%s: decord cannot resize to %dx%d; resizing after decoding",
                self.path,
                self.width,
                self.height,
            )
            self._vr, self._torch_resize = self._open(-1, -1), True
            return self.read(indices)
        if self._torch_resize:
            frames = _resize_bilinear(frames, self.width, self.height)  # type: ignore[arg-type]
        return frames


def _resize_bilinear(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` resized with antialiased bilinear interpolation (torch)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class TorchCodecBackend(VideoBackend):
    """``torchcodec.decoders.VideoDecoder`` in exact seek mode (a full scan gives exact frame counts)."""

    name = "torchcodec"

    def __init__(self, path: Path, width: int | None = None, height: int | None = None) -> None:
        super().__init__(path, width, height)
        from torchcodec.decoders import VideoDecoder

        transforms = None
        if width is not None and height is not None:
            from torchcodec.transforms import Resize

            transforms = [Resize((height, width))]
        try:
            self._dec = VideoDecoder(
                str(path),
                dimension_order="NHWC",
                num_ffmpeg_threads=1,
                seek_mode="exact",
                transforms=transforms,
            )
            meta = self._dec.metadata
            self._n = int(meta.num_frames or 0)
            self._fps = float(meta.average_fps or 0.0)
        except Exception as exc:
            raise self._failed(exc, "opened") from exc

    def __len__(self) -> int:
        return self._n

    @property
    def fps(self) -> float:
        return self._fps

    def read(self, indices: np.ndarray) -> np.ndarray:
        try:
            return self._dec.get_frames_at(indices.tolist()).data.numpy()
        except Exception as exc:
            raise self._failed(exc) from exc


class PyAVBackend(VideoBackend):
    """PyAV with a frame index built by demuxing the file once (PyAV itself seeks by timestamp only).

    The index holds every video packet's presentation timestamp in presentation order (frame ``i``
    is the ``i``-th) and which of them are key frames. Reading a sorted list of frames decodes
    forward while the next one is close, and seeks to the key frame before it otherwise, so a clip
    of consecutive frames costs one seek.

    Some files carry no presentation timestamps for reordered frames: H.264 with B-frames in AVI
    has packet timestamps in decoding order, and the decoder then stamps its output frames out of
    order. Such a stream is found on open (the first frames' timestamps differ from the packets'),
    and its frames are then counted as they come out of the decoder, from the start of the file,
    which is what the ffmpeg command line does: exact, but a backward read decodes from frame 0.
    """

    name = "pyav"

    def __init__(self, path: Path, width: int | None = None, height: int | None = None) -> None:
        super().__init__(path, width, height)
        import av

        self._av = av
        try:
            self._container = av.open(str(path))
            if not self._container.streams.video:
                raise MediaError(f"{path} has no video stream")
            self._stream = self._container.streams.video[0]
            # One thread, as the other backends: DataLoader workers parallelise across videos.
            self._stream.thread_type = "SLICE"
            self._stream.codec_context.thread_count = 1
            pts, keys = [], []
            for packet in self._container.demux(self._stream):
                if packet.pts is None or packet.size == 0:  # the flush packet and damaged ones
                    continue
                pts.append(int(packet.pts))
                keys.append(bool(packet.is_keyframe))
        except MediaError:
            raise
        except Exception as exc:
            raise self._failed(exc, "opened") from exc
        decode_order = np.asarray(pts, dtype=np.int64)
        order = np.argsort(decode_order, kind="stable")
        self._pts = decode_order[order]
        self._index = {int(p): i for i, p in enumerate(self._pts)}
        self._keys = [i for i, k in enumerate(np.asarray(keys, dtype=bool)[order]) if k] or [0]
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._fps = float(rate) if rate else 0.0
        self._frames: Any = None  # the running decode generator
        self._pos = -1  # index of the last frame it returned
        self._sequential = False
        if len(decode_order) > 1 and bool(np.all(np.diff(decode_order) > 0)):
            # Timestamps already in presentation order: no B-frames, or a container that lost their
            # order (AVI); the decoder's first frames tell which.
            try:
                self._sequential = not self._output_follows_packets()
            except Exception as exc:
                raise self._failed(exc) from exc

    def _output_follows_packets(self, n: int = 16) -> bool:
        """Whether the first ``n`` decoded frames carry the packets' timestamps in presentation order."""
        self._seek(0)
        got = []
        for frame in self._frames:
            got.append(frame.pts)
            if len(got) == min(n, len(self._pts)):
                break
        self._frames = None
        return got == self._pts[: len(got)].tolist()

    def __len__(self) -> int:
        return len(self._pts)

    @property
    def fps(self) -> float:
        return self._fps

    def _seek(self, target: int) -> None:
        key = self._keys[max(bisect.bisect_right(self._keys, target) - 1, 0)]
        self._container.seek(int(self._pts[key]), stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._pos = -1

    def _to_rgb(self, frame: Any) -> np.ndarray:
        if self.width is None:
            return frame.to_ndarray(format="rgb24")
        # Bilinear, like decord's resize (FFmpeg's scale filter with bilinear flags); the scaling and
        # the RGB conversion are one swscale pass.
        return frame.reformat(
            width=self.width, height=self.height, format="rgb24", interpolation="BILINEAR"
        ).to_ndarray()

    def read(self, indices: np.ndarray) -> np.ndarray:
        out = []
        try:
            for target in indices.tolist():
                if self._sequential:
                    if self._frames is None or target <= self._pos:
                        self._seek(0)
                else:
                    next_key = self._keys[max(bisect.bisect_right(self._keys, target) - 1, 0)]
                    if self._frames is None or target <= self._pos or next_key > self._pos + 1:
                        self._seek(target)
                for frame in self._frames:
                    if self._sequential:
                        i = self._pos + 1
                    else:
                        i = self._index.get(frame.pts, -1) if frame.pts is not None else self._pos + 1
                    if i < 0:
                        continue  # a leading frame of an open GOP that has no packet of its own
                    self._pos = i
                    if i == target:
                        out.append(self._to_rgb(frame))
                        break
                    if i > target:  # the stream skipped it: the file lacks the frame its index promised
                        raise MediaError(f"{self.path}: frame {target} is missing from the decoded stream")
                else:
                    self._frames = None
                    raise MediaError(
                        f"{self.path}: the stream ended before frame {target} of {len(self)} "
                        f"(truncated file?) with the {self.name} decoder"
                    )
        except MediaError:
            raise
        except Exception as exc:
            self._frames = None
            raise self._failed(exc) from exc
        return np.stack(out) if out else np.zeros((0, *self._shape(), 3), np.uint8)

    def _shape(self) -> tuple[int, int]:
        if self.width is not None and self.height is not None:
            return self.height, self.width
        return self._stream.codec_context.height, self._stream.codec_context.width

    def close(self) -> None:
        self._frames = None
        self._container.close()


BACKENDS: dict[str, type[VideoBackend]] = {
    "decord": DecordBackend,
    "torchcodec": TorchCodecBackend,
    "pyav": PyAVBackend,
}
_MODULES = {"decord": "decord", "torchcodec": "torchcodec", "pyav": "av"}


def _check_torchcodec() -> None:
    import torchcodec

    # torchcodec imports without FFmpeg and only fails when a decoder is built; it records whether
    # its FFmpeg-dependent library loaded in `ffmpeg_major_version` (None when it did not).
    if getattr(torchcodec, "ffmpeg_major_version", None) is None:
        raise ImportError("torchcodec found no FFmpeg 4-8 shared libraries")


_CHECKS: dict[str, Callable[[], None]] = {
    "decord": lambda: importlib.import_module("decord").VideoReader,
    "torchcodec": _check_torchcodec,
    "pyav": lambda: importlib.import_module("av"),
}
_available: dict[str, str | None] = {}  # name -> None if usable, else why not


def _why_unavailable(name: str) -> str | None:
    if name not in _available:
        try:
            _CHECKS[name]()
            _available[name] = None
        except Exception as exc:  # noqa: BLE001 - ImportError, OSError of a shared library, ...: all mean unusable
            _available[name] = f"{type(exc).__name__}: {exc}"
    return _available[name]


def available_decoders() -> tuple[str, ...]:
    """The backends that can be used here, in the order ``auto`` tries them."""
    return tuple(n for n in DECODERS if _why_unavailable(n) is None)


def unavailable_decoders() -> dict[str, str]:
    """Why each backend that cannot be used here cannot (the import or library-loading error)."""
    return {n: why for n in DECODERS if (why := _why_unavailable(n)) is not None}


def backend_version(name: str) -> str:
    """``distribution version`` of an available backend, e.g. ``decord2 3.4.0``; for provenance."""
    name = resolve_decoder(name)
    dists = importlib.metadata.packages_distributions().get(_MODULES[name], [_MODULES[name]])
    for dist in dists:
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return name


def resolve_decoder(decoder: str, *, where: str = "data.decoder") -> str:
    """The backend ``decoder`` names (``auto``: the first available one).

    Raises:
        ConfigError: an unknown name (lists the valid ones) or a backend that is not installed
            (says what to install).
    """
    from avlab.errors import did_you_mean

    if decoder == AUTO:
        found = available_decoders()
        if not found:
            raise ConfigError(
                f"{where}=auto: no video decoder is installed; install PyAV with `pip install av` "
                f"(or decord2/torchcodec). Why each failed: "
                + "; ".join(f"{n}: {_why_unavailable(n)}" for n in DECODERS)
            )
        return found[0]
    if decoder not in BACKENDS:
        raise ConfigError(
            f"{where}: unknown video decoder {decoder!r}.{did_you_mean(str(decoder), (AUTO, *DECODERS))} "
            f"Valid: {AUTO}, {', '.join(DECODERS)}"
        )
    why = _why_unavailable(decoder)
    if why is not None:
        others = ", ".join(available_decoders()) or "none"
        raise ConfigError(
            f"{where}={decoder}: the {decoder} decoder cannot be used here ({why}); install it with "
            f"{INSTALL_HINT[decoder]}, or choose an installed one (available: {others}; "
            f"{where}=auto picks the first)"
        )
    return decoder


def open_video(
    path: str | Path, *, decoder: str = AUTO, width: int | None = None, height: int | None = None
) -> VideoBackend:
    """Open ``path`` with a backend (see :func:`resolve_decoder`); ``width``/``height`` resize the frames.

    Raises:
        ConfigError: bad ``decoder`` or a lone ``width``/``height``.
        MediaError: the file does not exist or the backend cannot open it (names file and backend).
    """
    if (width is None) != (height is None) or (width is not None and (width < 1 or height < 1)):  # type: ignore[operator]
        raise ConfigError(f"video resize needs a positive width and height together, got {width}x{height}")
    name = resolve_decoder(decoder)
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path} does not exist; check the path")
    return BACKENDS[name](path, width, height)


def read_frames(
    path: str | Path,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    decoder: str = AUTO,
    width: int | None = None,
    height: int | None = None,
) -> np.ndarray:
    """Frames ``indices`` (0-based, any order, repeats allowed; all when None) of a video file as
    ``uint8 [T, H, W, 3]`` RGB, decoded by ``decoder`` and optionally resized to ``width``×``height``.
    """
    video = open_video(path, decoder=decoder, width=width, height=height)
    try:
        return take_frames(video, np.arange(len(video)) if indices is None else indices)
    finally:
        video.close()


def take_frames(video: VideoBackend, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """``indices`` (any order, repeats allowed) of an open video; each distinct frame is decoded once."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(video)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise MediaError(
            f"{video.path}: frame index out of range [0, {n}): {int(idx.min())}..{int(idx.max())}"
        )
    uniq, inverse = np.unique(idx, return_inverse=True)
    frames = video.read(uniq)
    if len(frames) != len(uniq):
        raise MediaError(
            f"{video.path}: the {video.name} decoder returned {len(frames)} of {len(uniq)} frames "
            "(truncated or damaged file?)"
        )
    return frames[inverse]
