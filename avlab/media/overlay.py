"""An MP4 writer for per-frame overlays (saliency maps on the video), with the source's audio.

:class:`OverlayWriter` pipes RGB frames into ffmpeg (libx264, yuv420p) and muxes the audio track of
the source file, if it has one, re-encoded to AAC. The output lasts exactly as long as the frames
written (``-t``), whatever the length of the audio.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType

import numpy as np

from avlab.errors import MediaError
from avlab.media.ffmpeg import ffmpeg_command, raw_rgb_input

__all__ = ["OverlayWriter", "blend_heatmap", "jet_lut"]


def jet_lut() -> np.ndarray:
    """Matplotlib's ``jet`` colour map as a 256×3 uint8 lookup table."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.arange(256))[:, :3] * 255).astype(np.uint8)


def blend_heatmap(
    frame: np.ndarray, smap: np.ndarray, lut: np.ndarray, max_alpha: float = 0.65
) -> np.ndarray:
    """``frame`` uint8 ``[H, W, 3]`` with ``smap`` (float ``[H, W]`` in [0, 1]) coloured by ``lut`` on top.

    The opacity grows with the saliency (``max_alpha · smap``), so non-salient parts stay visible.
    """
    u8 = np.clip(np.round(smap * 255), 0, 255).astype(np.uint8)
    alpha = (max_alpha * smap)[..., None]
    blend = (1 - alpha) * frame.astype(np.float32) + alpha * lut[u8].astype(np.float32)
    return np.clip(blend, 0, 255).astype(np.uint8)


class OverlayWriter:
    """Context manager: ``with OverlayWriter(out, source, w, h, fps, n) as w: w.write(rgb)``.

    Args:
        out: the MP4 to write.
        source: media file whose first audio stream (if any) is copied in (as AAC).
        width, height: frame size; odd sides are padded by one pixel (yuv420p needs even sides).
        fps: frame rate of the frames written.
        n_frames: how many frames will be written (fixes the duration).
    """

    def __init__(
        self, out: str | Path, source: str | Path, width: int, height: int, fps: float, n_frames: int
    ) -> None:
        self.out, self.width, self.height = Path(out), int(width), int(height)
        w2, h2 = width + (width % 2), height + (height % 2)
        self.cmd = ffmpeg_command(
            "-v",
            "error",
            *raw_rgb_input(width, height, f"{fps}"),
            "-i",
            str(source),
            "-map",
            "0:v:0",
            "-map",
            "1:a:0?",
            "-vf",
            f"pad={w2}:{h2}",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "20",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-t",
            f"{n_frames / fps:.6f}",
            "-y",
            str(self.out),
        )
        self.proc: subprocess.Popen | None = None
        self.written = 0

    def __enter__(self) -> OverlayWriter:  # noqa: PYI034 - Self needs Python 3.11; avlab supports 3.10
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        return self

    def write(self, frame: np.ndarray) -> None:
        """One RGB uint8 frame ``[height, width, 3]``."""
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"OverlayWriter: expected uint8 [{self.height}, {self.width}, 3], "
                f"got {frame.dtype} {list(frame.shape)}"
            )
        assert self.proc is not None and self.proc.stdin is not None, "use OverlayWriter as a context manager"
        self.proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        self.written += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.proc is not None
        if self.proc.stdin:
            self.proc.stdin.close()
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        self.proc.wait()
        if exc_type is None and self.proc.returncode != 0:
            raise MediaError(f"ffmpeg could not write the overlay {self.out}: {err[-800:]}")
