"""Thin, safe wrappers around the ffmpeg binary that ships inside the ``imageio-ffmpeg`` wheel.

Why that binary and not the system one: Debian 12's ffmpeg has no ``libvmaf`` filter (and there is
no libvmaf apt package), while the static build inside ``imageio-ffmpeg`` is configured with
``--enable-libvmaf --enable-libx264`` and has the native AAC encoder. Using one binary for
encoding, decoding and VMAF also keeps the demo data and the features reproducible.

Every external call goes through :func:`run_ffmpeg` with an argument list (never a shell string),
and every failure caused by the input becomes a :class:`~avlab.errors.MediaError` that names the
file and says what to do.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avlab.errors import MediaError

__all__ = [
    "MediaInfo",
    "count_frames",
    "ffmpeg_command",
    "ffmpeg_exe",
    "ffmpeg_version",
    "load_audio",
    "probe",
    "raw_rgb_input",
    "run_ffmpeg",
]


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg executable bundled with ``imageio-ffmpeg`` (has libvmaf, libx264, AAC)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - it is a hard dependency of avlab
        raise MediaError(
            "imageio-ffmpeg is not installed; install it with `pip install imageio-ffmpeg` "
            "(avlab needs its ffmpeg, which is built with libvmaf)"
        ) from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    """First line of ``ffmpeg -version``; part of feature-cache keys so a new binary invalidates them."""
    proc = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()[0].strip() if proc.stdout else "unknown"


def ffmpeg_command(*args: str | Path) -> list[str]:
    """``ffmpeg -hide_banner -nostdin ARGS``: the banner only clutters error messages, and
    ``-nostdin`` stops ffmpeg from reading the terminal (it would otherwise swallow keystrokes or
    block when run in the background). For callers that stream through ``subprocess`` themselves;
    :func:`run_ffmpeg` uses it too."""
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", *(str(a) for a in args)]


def raw_rgb_input(width: int, height: int, fps: str, source: str = "-") -> list[str]:
    """ffmpeg input arguments for packed 8-bit RGB frames of ``width`` × ``height`` at ``fps``
    (as written, so a caller keeps its exact rate string), read from ``source`` (``-``: stdin)."""
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", fps, "-i", source]


def _tail(text: str, n: int = 15) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def run_ffmpeg(args: list[str], *, what: str, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run ffmpeg with ``args`` (without the executable) and return the completed process.

    The command is :func:`ffmpeg_command`'s (``-hide_banner -nostdin`` added). ``cwd`` lets
    callers name output files relative to a folder (e.g. a libvmaf log, whose path would
    otherwise need filtergraph escaping).

    Raises:
        MediaError: when ffmpeg exits non-zero; the message says ``what`` was being done and
            carries the last ~15 lines of ffmpeg's stderr.
    """
    if isinstance(args, str):  # a shell string would be split wrongly and is unsafe
        raise TypeError("run_ffmpeg takes an argument list, not a string")
    cmd = ffmpeg_command(*args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    except OSError as exc:  # pragma: no cover - only when the binary vanished
        raise MediaError(f"could not start ffmpeg ({cmd[0]}) while {what}: {exc}") from exc
    if proc.returncode != 0:
        raise MediaError(
            f"ffmpeg failed while {what} (exit status {proc.returncode}). "
            f"Check that the input files exist and are valid media. ffmpeg said:\n{_tail(proc.stderr)}"
        )
    return proc


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found in a media file.

    ``n_frames`` counts the packets of the first video stream (exact for the constant-frame-rate
    files avlab writes and reads); video fields are 0 when ``has_video`` is False, audio fields 0
    when ``has_audio`` is False.
    """

    path: Path
    width: int
    height: int
    fps: float
    n_frames: int
    duration: float
    has_video: bool
    has_audio: bool
    audio_sample_rate: int
    audio_channels: int
    pix_fmt: str = ""


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO_RE = re.compile(r"Stream #0:\d+[^:]*: Video: (.*)")
_AUDIO_RE = re.compile(r"Stream #0:\d+[^:]*: Audio: (.*)")
_SIZE_RE = re.compile(r"\b(\d{2,5})x(\d{2,5})\b")
_FPS_RE = re.compile(r"([\d.]+)(k?) fps")
_TBR_RE = re.compile(r"([\d.]+)(k?) tbr")
_HZ_RE = re.compile(r"(\d+) Hz")
_LAYOUTS = {
    "mono": 1,
    "stereo": 2,
    "2.1": 3,
    "3.0": 3,
    "quad": 4,
    "4.0": 4,
    "5.0": 5,
    "5.1": 6,
    "6.1": 7,
    "7.1": 8,
}


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise MediaError(
            f"{path} does not exist; check the path (relative paths are resolved from {Path.cwd()})"
        )
    if not path.is_file():
        raise MediaError(f"{path} is not a file; give the path of a video or audio file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path} is empty (0 bytes); re-create or re-download it")


def count_frames(path: str | Path) -> int:
    """Number of video frames, by remuxing the first video stream to the null muxer (no decoding)."""
    path = Path(path)
    proc = run_ffmpeg(
        [
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-c",
            "copy",
            "-f",
            "null",
            "-progress",
            "pipe:1",
            "-nostats",
            "-",
        ],
        what=f"counting the frames of {path}",
    )
    frames = re.findall(r"^frame=(\d+)", proc.stdout, flags=re.MULTILINE)
    if not frames:
        raise MediaError(f"{path}: could not count its video frames; the file may be truncated or corrupt")
    return int(frames[-1])


def probe(path: str | Path) -> MediaInfo:
    """Describe a media file: streams, size, frame rate, exact frame count, audio format.

    Parses ffmpeg's description of the input (ffprobe is not shipped in the wheel) and counts
    frames by a stream copy, which reads packets only (no decoding) and is exact for
    constant-frame-rate files. A single ffmpeg process does both.

    Raises:
        MediaError: the file is missing, empty, not media, truncated (e.g. an MP4 whose ``moov``
            atom is missing) or has neither a video nor an audio stream.
    """
    path = Path(path)
    _check_exists(path)
    # One call does both jobs: stderr describes the input, and stream-copying the first video
    # stream (if any: `0:v:0?`) to the null muxer counts its packets on stdout via -progress.
    # The exit status is not used (it is non-zero for audio-only files, which have no output
    # stream); success is judged from what ffmpeg printed.
    proc = subprocess.run(
        ffmpeg_command(
            "-i",
            str(path),
            "-map",
            "0:v:0?",
            "-c",
            "copy",
            "-f",
            "null",
            "-progress",
            "pipe:1",
            "-nostats",
            "-",
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    err = proc.stderr
    if "Input #0" not in err:
        raise MediaError(
            f"{path} cannot be read as media (corrupt, truncated or not a video/audio file); "
            f"re-encode or replace it. ffmpeg said:\n{_tail(err, 5)}"
        )
    m = _DURATION_RE.search(err)
    duration = float(m.group(1)) * 3600 + float(m.group(2)) * 60 + float(m.group(3)) if m else 0.0
    width = height = n_frames = sample_rate = channels = 0
    fps = 0.0
    pix_fmt = ""
    vm = _VIDEO_RE.search(err)
    has_video = vm is not None
    if vm:
        desc = vm.group(1)
        sm = _SIZE_RE.search(desc)
        if sm:
            width, height = int(sm.group(1)), int(sm.group(2))
        fm = _FPS_RE.search(desc) or _TBR_RE.search(desc)
        if fm:
            fps = float(fm.group(1)) * (1000.0 if fm.group(2) else 1.0)
        pm = re.match(r"[^,]+,\s*([a-z0-9_]+)", desc)
        pix_fmt = pm.group(1) if pm else ""
        if width == 0 or height == 0:
            raise MediaError(f"{path}: its video stream has no readable frame size; the file may be corrupt")
        counted = re.findall(r"^frame=(\d+)", proc.stdout, flags=re.MULTILINE)
        n_frames = int(counted[-1]) if counted and proc.returncode == 0 else 0
        if n_frames == 0:
            raise MediaError(
                f"{path}: its video stream holds no frames; the file is truncated or corrupt, re-encode it"
            )
    am = _AUDIO_RE.search(err)
    has_audio = am is not None
    if am:
        desc = am.group(1)
        hm = _HZ_RE.search(desc)
        sample_rate = int(hm.group(1)) if hm else 0
        parts = [p.strip() for p in desc.split(",")]
        for p in parts:
            base = p.split("(")[0].strip()
            if base in _LAYOUTS:
                channels = _LAYOUTS[base]
                break
            cm = re.match(r"(\d+) channels", base)
            if cm:
                channels = int(cm.group(1))
                break
    if not has_video and not has_audio:
        raise MediaError(f"{path} has neither a video nor an audio stream; give a media file")
    return MediaInfo(
        path=path,
        width=width,
        height=height,
        fps=fps,
        n_frames=n_frames,
        duration=duration,
        has_video=has_video,
        has_audio=has_audio,
        audio_sample_rate=sample_rate,
        audio_channels=channels,
        pix_fmt=pix_fmt,
    )


def load_audio(path: str | Path, *, sr: int | None = None, mono: bool = False) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of ``path``.

    ffmpeg decodes (and, when ``sr`` is given, resamples with swresample) into a temporary 32-bit
    float WAV that soundfile reads back. Going through ffmpeg rather than decord's AudioReader
    honours the MP4 edit list, so AAC encoder priming samples are trimmed exactly as a player
    would.

    Returns:
        ``(audio, sample_rate)`` with ``audio`` float32 of shape ``[channels, samples]`` in [-1, 1]
        (one channel when ``mono``: the average of the channels).

    Raises:
        MediaError: the file is missing/corrupt or has no audio stream.
    """
    import soundfile as sf

    path = Path(path)
    info = probe(path)
    if not info.has_audio:
        raise MediaError(
            f"{path} has no audio stream; give a file with an audio track, or give the audio "
            "separately (manifest columns `reference_audio` / `distorted_audio`)"
        )
    with tempfile.TemporaryDirectory(prefix="avlab-audio-") as tmp:
        wav = Path(tmp) / "audio.wav"
        args = ["-v", "error", "-i", str(path), "-map", "0:a:0", "-vn", "-c:a", "pcm_f32le"]
        if sr is not None:
            args += ["-ar", str(int(sr))]
        run_ffmpeg([*args, "-y", str(wav)], what=f"decoding the audio of {path}")
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    audio = np.clip(data.T, -1.0, 1.0)
    if mono:
        # Plain channel mean, done here rather than by ffmpeg's `-ac 1`, whose downmix gains depend on
        # the channel layout and swresample's normalisation settings.
        audio = audio.mean(axis=0, keepdims=True)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.shape[1] == 0:
        raise MediaError(f"{path}: its audio stream decodes to no samples; the file is truncated or corrupt")
    return audio, int(rate)
