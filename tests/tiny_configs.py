"""Command-line overrides that shrink a task to CPU-test size, shared by the tests that train it."""

from __future__ import annotations

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
]
