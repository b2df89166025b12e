"""Frame and audio clip helpers for clip-based video models (the ``saliency`` task and others).

Frames
    :func:`read_frames` reads RGB frames from a folder of images (``img_00001.jpg`` ...), and
    :func:`decode_video` / :class:`VideoFrames` decode them from a video file with the backend
    ``decoder`` names (:mod:`avlab.media.decoders`: decord, torchcodec or PyAV). Both return
    ``uint8`` arrays ``[T, H, W, 3]``.

Audio (the per-clip SoundNet convention of the STAViS release)
    The waveform is mono at 22,050 Hz, scaled from [-1, 1] to ±256 (SoundNet's original
    ``2^-23`` scaling of int32 PCM). Frame ``k`` (0-based here) is centred at ``k / fps`` seconds
    and owns the samples ``[k·Fs/fps − n/2, k·Fs/fps + n/2]`` with ``n = Fs / fps`` (clipped to the
    signal). A clip of frames ``s .. e`` takes ``wav[start_s : end_e + 1]``, multiplies it by a Hann
    window of its own length (to soften the cut edges) and writes it centred into a zero buffer of
    ``int(22050 / 10 · clip_len)`` samples (70,560 for 32 frames, which SoundNet-8 maps to 3 steps).

Windows (reverse-window inference, as in STAViS and ViNet)
    :func:`window_indices` gives, for every target frame, the frame indices of its input window:
    ``[t−T+1 .. t]`` when ``t ≥ T−1`` (predict the last frame), else the time-reversed window
    ``[t+T−1 .. t]`` whose last frame is ``t``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avlab.errors import DataError, MediaError
from avlab.media.decoders import VideoBackend, open_video, resolve_decoder, take_frames
from avlab.media.decoders import read_frames as decode_frames

__all__ = [
    "IMAGE_SUFFIXES",
    "SOUNDNET_SCALE",
    "SOUNDNET_SR",
    "VideoFrames",
    "audio_buffer_len",
    "clip_audio",
    "decode_video",
    "frame_audio_bounds",
    "list_frame_files",
    "load_wav",
    "read_frames",
    "read_image",
    "window_indices",
]

log = logging.getLogger(__name__)

#: SoundNet's sample rate (the released STAViS WAVs are at most this rate).
SOUNDNET_SR = 22050
#: A float waveform in [-1, 1] times this is SoundNet's original input range (±256).
SOUNDNET_SCALE = 256.0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


# --------------------------------------------------------------------------- frames
def list_frame_files(folder: Path) -> list[Path]:
    """Image files of a frame folder in frame order (names sort naturally: ``img_00001.jpg``)."""
    if not folder.is_dir():
        raise DataError(f"frame folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return files


def read_image(path: Path, *, gray: bool = False) -> np.ndarray:
    """One image as ``uint8`` ``[H, W, 3]`` (RGB) or ``[H, W]`` (``gray``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L" if gray else "RGB"))
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    except OSError as exc:
        raise MediaError(f"{path} cannot be read as an image ({exc}); re-extract or replace it") from exc


def read_frames(files: list[Path], indices: list[int] | np.ndarray) -> np.ndarray:
    """Frames ``indices`` (0-based) of an image sequence as ``uint8 [T, H, W, 3]``."""
    return np.stack([read_image(files[int(i)]) for i in indices])


class VideoFrames:
    """Random access to the frames of a video file (opened lazily, once, by :mod:`avlab.media.decoders`).

    The backends seek to the key frame before a requested frame and decode forward, so reading a
    clip of consecutive frames costs one seek; :meth:`get` sorts and de-duplicates the indices.

    Args:
        path: the video file.
        width, height: resize frames to this size while decoding (``None``/``-1``: native size).
        decoder: ``auto`` or a backend name of :data:`avlab.media.decoders.DECODERS`; checked here,
            so a bad ``data.decoder`` fails before any file is opened.
    """

    def __init__(
        self, path: str | Path, *, width: int | None = None, height: int | None = None, decoder: str = "auto"
    ) -> None:
        self.path = Path(path)
        # -1 was decord's "native size"; keep accepting it.
        self.width = None if width is None or width < 0 else int(width)
        self.height = None if height is None or height < 0 else int(height)
        self.decoder = resolve_decoder(decoder)
        self._reader: VideoBackend | None = None

    @property
    def reader(self) -> VideoBackend:
        if self._reader is None:
            self._reader = open_video(self.path, decoder=self.decoder, width=self.width, height=self.height)
        return self._reader

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def fps(self) -> float:
        return self.reader.fps

    def get(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """Frames at ``indices`` as ``uint8 [T, H, W, 3]`` (any order, repeats allowed)."""
        return take_frames(self.reader, indices)

    def __getstate__(self) -> dict:
        # An open decoder does not pickle (DataLoader workers get a copy); each copy reopens lazily.
        return {**self.__dict__, "_reader": None}


def decode_video(
    path: str | Path, indices: list[int] | np.ndarray | None = None, *, decoder: str = "auto"
) -> np.ndarray:
    """Decode frames of a video file (all frames when ``indices`` is None) with ``decoder``."""
    return decode_frames(path, indices, decoder=decoder)


# --------------------------------------------------------------------------- audio
def load_wav(path: str | Path, *, sr: int = SOUNDNET_SR) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] at ``sr`` Hz (channel mean; polyphase resampling)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file {path} does not exist")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise MediaError(f"{path} cannot be read as audio ({exc}); re-export it as WAV") from exc
    wav = data.mean(axis=1)
    if rate != sr:
        from math import gcd

        g = gcd(int(rate), int(sr))
        wav = resample_poly(wav, sr // g, int(rate) // g).astype(np.float32)
    return np.clip(wav, -1.0, 1.0).astype(np.float32)


def audio_buffer_len(clip_len: int, sr: int = SOUNDNET_SR) -> int:
    """Length of the zero buffer a clip's audio is centred in: ``int(sr / 10 · clip_len)``."""
    return int(sr / 10 * clip_len)


def frame_audio_bounds(
    n_frames: int, fps: float, n_samples: int, sr: int = SOUNDNET_SR
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame sample bounds ``(start, end)`` (end inclusive) of the SoundNet convention."""
    if fps <= 0:
        raise DataError(f"frame rate must be positive, got {fps}")
    half = sr / fps / 2.0
    centre = np.arange(n_frames) / fps * sr  # frame k (0-based) is centred at k / fps seconds
    start = np.clip(np.floor(centre - half), 0, max(n_samples - 1, 0)).astype(np.int64)
    end = np.clip(np.floor(centre + half), 0, max(n_samples - 1, 0)).astype(np.int64)
    return start, end


def clip_audio(
    wav: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    frames: list[int] | np.ndarray,
    buffer_len: int,
    *,
    reverse: bool = False,
    scale: float = SOUNDNET_SCALE,
) -> np.ndarray:
    """The audio of the frames ``frames`` (consecutive, in either order) as ``float32 [buffer_len]``.

    The excerpt spans the first to the last frame's samples, is multiplied by a Hann window of its
    own length, optionally time-reversed (the reversed window of reverse-window inference), and is
    centred in a zero buffer. An excerpt longer than the buffer keeps its centre part.
    """
    frames = np.asarray(frames)
    lo, hi = int(frames.min()), int(frames.max())
    start, end = bounds
    out = np.zeros(buffer_len, dtype=np.float32)
    if wav.size == 0:
        return out
    excerpt = wav[int(start[lo]) : int(end[hi]) + 1].astype(np.float32)
    if excerpt.size == 0:
        return out
    excerpt = excerpt * np.hanning(excerpt.size).astype(np.float32)
    if reverse:
        # The Hann window is symmetric, so windowing before or after the flip is the same.
        excerpt = excerpt[::-1]
    if excerpt.size > buffer_len:
        cut = (excerpt.size - buffer_len) // 2
        excerpt = excerpt[cut : cut + buffer_len]
    offset = (buffer_len - excerpt.size) // 2
    out[offset : offset + excerpt.size] = excerpt * scale
    return out


# --------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Window:
    """The input of one prediction: ``frames`` in model order; the target is ``frames[-1]``."""

    target: int
    frames: tuple[int, ...]
    reversed: bool


def window_indices(n_frames: int, clip_len: int) -> list[Window]:
    """One window per frame, for sliding-window inference with step 1 (paper §IV-B, Testing).

    Frame ``t ≥ T−1`` is predicted from ``[t−T+1, ..., t]``; frame ``t < T−1`` from the reversed
    window ``[t+T−1, ..., t]`` (its last frame is ``t``); the audio of a reversed window is reversed
    too. Policy for ``T ≤ n < 2T−1`` (the peers skip such videos): indices past the end of the video
    are clamped to the last frame, so every frame still gets a prediction.

    Raises:
        DataError: the video has fewer frames than the window.
    """
    if n_frames < clip_len:
        raise DataError(
            f"the video has {n_frames} frames, fewer than the {clip_len}-frame window; "
            f"use a longer video or a smaller data.clip_len"
        )
    out = []
    for t in range(n_frames):
        if t >= clip_len - 1:
            out.append(Window(t, tuple(range(t - clip_len + 1, t + 1)), False))
        else:
            out.append(Window(t, tuple(min(t + k, n_frames - 1) for k in range(clip_len - 1, -1, -1)), True))
    return out
