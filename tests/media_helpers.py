"""Media the unqa tests build on the fly from the tiny demo databases."""

from __future__ import annotations

from pathlib import Path

from avlab.media.ffmpeg import probe, run_ffmpeg


def mux_av(video: Path, wav: Path, out: Path) -> Path:
    """An AV stimulus: ``video``'s picture (copied) with ``wav`` as its AAC audio track."""
    run_ffmpeg(
        ["-v", "error", "-i", str(video), "-i", str(wav), "-map", "0:v", "-map", "1:a"]
        + ["-c:v", "copy", "-c:a", "aac", "-shortest", "-y", str(out)],
        what="muxing a test AV file",
    )
    # The tests built on this file mean an AV stimulus: a mux that silently dropped a stream
    # would make them test a plain video or audio file instead.
    info = probe(out)
    assert info.has_video and info.has_audio, f"{out}: muxed file lacks a stream ({info})"
    return out
