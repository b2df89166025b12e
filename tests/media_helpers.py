"""What several tests share: media built on the fly from the tiny demo databases, the overrides
that shrink a task to CPU-test size, and a bare CPU Trainer for tests of a hook or a callback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import Trainer

from avlab.media.ffmpeg import probe, run_ffmpeg

#: AVRSP on the tiny saliency demo: 8-frame 32x56 clips, an S3D at 1/8 width, 16 decoder channels.
SALIENCY_TINY = [
    "data.demo_size=tiny",
    "data.clip_len=8",
    "data.frame_size=[32,56]",
    "data.test_stride=4",
    "data.batch_size=4",
    "model.visual.width_mult=0.125",
    "model.channels=16",
    "logger.wandb.mode=disabled",
    "data.num_workers=0",  # the experiments' `auto` would start worker processes for tiny clips
]

#: yt8m on its tiny demo at CPU-test size: one epoch of a 32-wide model.
YT8M_TINY = [
    "logger.wandb.mode=disabled",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "data.batch_size=32",
    "model.net.hidden=32",
]


def bare_trainer(**kwargs: Any) -> Trainer:
    """A CPU Trainer without loggers, checkpoints, progress bar or model summary; ``kwargs`` add to
    or replace its arguments."""
    args = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return Trainer(**{**args, **kwargs})


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
