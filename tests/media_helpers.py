"""Media the unqa tests build on the fly from the tiny demo databases."""

from __future__ import annotations

from pathlib import Path

from avlab.media.ffmpeg import run_ffmpeg


def mux_av(video: Path, wav: Path, out: Path) -> Path:
    """An AV stimulus: ``video``'s picture (copied) with ``wav`` as its AAC audio track."""
    run_ffmpeg(
        ["-v", "error", "-i", str(video), "-i", str(wav), "-map", "0:v", "-map", "1:a"]
        + ["-c:v", "copy", "-c:a", "aac", "-shortest", "-y", str(out)],
        what="muxing a test AV file",
    )
    return out
