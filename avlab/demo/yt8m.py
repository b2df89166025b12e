"""Demo YouTube-8M dataset: synthetic videos in the exact official TFRecord formats.

``build_yt8m_demo(out_dir)`` writes::

    out_dir/
      video/train0000.tfrecord …   tf.train.Example: id, labels, mean_rgb[1024], mean_audio[128]
      video/validate0000.tfrecord …
      video/test0000.tfrecord …
      frame/train0000.tfrecord …   tf.train.SequenceExample: context id, labels;
      frame/validate0000.tfrecord …  feature lists rgb (1024 B/second), audio (128 B/second)
      frame/test0000.tfrecord …
      vocabulary.csv               the official 2018 columns, one row per class
      demo_info.json               what the generator did (read it before quoting numbers)

Version ``"2018"`` (default) uses key ``id``, 3862 classes and names ``train0000.tfrecord``;
``"2017"`` uses key ``video_id``, 4716 classes and names ``traina0.tfrecord``.

The generator (documented again in ``demo_info.json``): a few dozen *active* classes, spread over
the vocabulary (including its last index), each of one of three kinds —

* **seen**: the class adds a fixed random direction to the visual features only;
* **heard**: it adds a direction to the audio features only;
* **seen and heard**: it adds weaker directions to both (each alone is a weaker cue).

So an audio-only model cannot find seen classes, a visual-only model cannot find heard ones, and
fusion has something to learn. Per video: 1–4 labels drawn from a long-tailed class prior, a
video-level background (Gaussian), per-second frames = video content + temporal noise, clipped
to [-2, 2] and quantised exactly like the official extractor (``round((x + 2) * 255 / 4)``).
Video-level ``mean_rgb``/``mean_audio`` are the means of the *dequantised* frames, as in the
released data, so both schemas describe the same videos. Every split keeps its labels (the real
test split's labels are withheld; the demo keeps them so that test metrics can be reported).

Deterministic for a given ``(size, seed, version)``; a second call with the same arguments
returns at once (the finished ``demo_info.json`` marks a complete build).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avlab.errors import DataError
from avlab.io.tf_example import encode_example, encode_sequence_example
from avlab.io.tfrecord import TFRecordWriter
from avlab.progress import progress
from avlab.rundir import atomic_write

__all__ = ["DEMO_SIZES", "VERSIONS", "build_yt8m_demo"]

#: videos per split, shards per split, frames per video (min, max)
DEMO_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "videos": {"train": 160, "validate": 64, "test": 64},
        "shards": {"train": 4, "validate": 2, "test": 2},
        "frames": (3, 6),
        "classes": {"seen": 6, "heard": 5, "both": 4},
    },
    "small": {
        "videos": {"train": 2400, "validate": 600, "test": 600},
        "shards": {"train": 8, "validate": 4, "test": 4},
        "frames": (6, 16),
        "classes": {"seen": 12, "heard": 10, "both": 8},
    },
}
VERSIONS: dict[str, dict[str, Any]] = {
    "2018": {"num_classes": 3862, "id_key": "id"},
    "2017": {"num_classes": 4716, "id_key": "video_id"},
}
_GENERATOR = "avlab.demo.yt8m v1"
# Noise levels, in the dequantised feature scale ([-2, 2]).
_BACKGROUND = 0.25  # per-video background, per dimension
_TEMPORAL = 0.3  # per-second variation around the video's content
_STRENGTH = {"seen": (5.0, 8.0), "heard": (5.0, 8.0), "both": (3.5, 5.5)}  # ‖direction‖ / background


def _shard_name(split: str, i: int, version: str) -> str:
    # 2018: train0000 … (4 digits); 2017: traina0, traina1, … (two-character suffixes).
    return (
        f"{split}{i:04d}.tfrecord"
        if version == "2018"
        else f"{split}{'abcdefghij'[i // 10]}{i % 10}.tfrecord"
    )


def _quantize(x: np.ndarray) -> np.ndarray:
    """The official extractor's quantiser: clip to [-2, 2], ``round((x + 2) * 255/4)``, uint8."""
    return np.round((np.clip(x, -2.0, 2.0) + 2.0) * (255.0 / 4.0)).astype(np.uint8)


def _dequantize(q: np.ndarray) -> np.ndarray:
    # starter code utils.Dequantize with max=2, min=-2
    return q.astype(np.float32) * np.float32(4.0 / 255.0) + np.float32(4.0 / 512.0 - 2.0)


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=n)
    return v / np.linalg.norm(v)


def build_yt8m_demo(
    out_dir: str | os.PathLike[str], *, size: str = "small", seed: int = 0, version: str = "2018"
) -> Path:
    """Write the demo dataset to ``out_dir`` (created) and return it as a ``Path``.

    Args:
        out_dir: destination folder; an existing non-demo folder holding TFRecords is refused.
        size: ``"tiny"`` (tests) or ``"small"`` (``make demo``).
        seed: generator seed.
        version: ``"2018"`` (``id``, 3862 classes) or ``"2017"`` (``video_id``, 4716 classes).

    Raises:
        DataError: unknown size/version, or ``out_dir`` holds someone else's TFRecords.
    """
    if size not in DEMO_SIZES:
        raise DataError(f"unknown yt8m demo size {size!r}; use one of {', '.join(DEMO_SIZES)}")
    if version not in VERSIONS:
        raise DataError(f"unknown YouTube-8M version {version!r}; use one of {', '.join(VERSIONS)}")
    out = Path(out_dir)
    info_path = out / "demo_info.json"
    params = {"generator": _GENERATOR, "size": size, "seed": int(seed), "version": version}
    if info_path.is_file():
        try:
            old = json.loads(info_path.read_text())
        except ValueError:
            old = {}
        if {k: old.get(k) for k in params} == params:
            return out  # already built with the same arguments
    elif any(out.glob("*/*.tfrecord")):
        raise DataError(
            f"{out} already holds TFRecord files that are not avlab demo data; choose an empty folder"
        )

    # Rebuilding our own demo (other arguments): remove only what a previous build wrote.
    info_path.unlink(missing_ok=True)
    for schema in ("video", "frame"):
        if (out / schema).is_dir():
            shutil.rmtree(out / schema)
    (out / "video").mkdir(parents=True, exist_ok=True)
    (out / "frame").mkdir(parents=True, exist_ok=True)

    spec = DEMO_SIZES[size]
    ver = VERSIONS[version]
    num_classes, id_key = ver["num_classes"], ver["id_key"]
    rng = np.random.default_rng(seed)

    # ---- classes: kinds, vocabulary indices (spread out, always including the last index)
    kinds = [k for k, n in spec["classes"].items() for _ in range(n)]
    n_active = len(kinds)
    idx = np.sort(rng.choice(num_classes - 1, size=n_active - 1, replace=False))
    class_index = np.append(idx, num_classes - 1)
    rng.shuffle(kinds)
    prior = 1.0 / np.arange(1, n_active + 1) ** 0.7  # long-tailed like YouTube-8M
    prior = prior[rng.permutation(n_active)]
    prior /= prior.sum()
    visual_dirs = np.zeros((n_active, 1024))
    audio_dirs = np.zeros((n_active, 128))
    for j, kind in enumerate(kinds):
        strength = rng.uniform(*_STRENGTH[kind]) * _BACKGROUND
        if kind in ("seen", "both"):
            visual_dirs[j] = _unit(rng, 1024) * strength
        if kind in ("heard", "both"):
            audio_dirs[j] = _unit(rng, 128) * strength

    # ---- videos
    counts = {"train": np.zeros(n_active, int)}
    files: dict[str, list[dict[str, Any]]] = {}
    video_counter = 0
    for split in ("train", "validate", "test"):
        n_videos, n_shards = spec["videos"][split], spec["shards"][split]
        shard_of = np.arange(n_videos) % n_shards
        writers = {
            schema: [
                TFRecordWriter(out / schema / (_shard_name(split, s, version) + ".tmp"))
                for s in range(n_shards)
            ]
            for schema in ("video", "frame")
        }
        try:
            for v in progress(range(n_videos), desc=f"yt8m demo: {split}", unit="video"):
                n_labels = min(1 + rng.poisson(0.9), 4)
                active = np.sort(rng.choice(n_active, size=n_labels, replace=False, p=prior))
                if split == "train":
                    counts["train"][active] += 1
                visual = rng.normal(0.0, _BACKGROUND, 1024) + visual_dirs[active].sum(0)
                audio = rng.normal(0.0, _BACKGROUND, 128) + audio_dirs[active].sum(0)
                t = int(rng.integers(spec["frames"][0], spec["frames"][1] + 1))
                q_rgb = _quantize(visual + rng.normal(0.0, _TEMPORAL, (t, 1024)))
                q_audio = _quantize(audio + rng.normal(0.0, _TEMPORAL, (t, 128)))
                vid = f"{'demo' if version == '2018' else 'dm17'}{video_counter:06d}".encode()
                video_counter += 1
                labels = class_index[active].astype(np.int64)
                shard = int(shard_of[v])
                writers["video"][shard].write(
                    encode_example(
                        {
                            id_key: [vid],
                            "labels": ("int64", labels),
                            "mean_rgb": _dequantize(q_rgb).mean(0, dtype=np.float64).astype(np.float32),
                            "mean_audio": _dequantize(q_audio).mean(0, dtype=np.float64).astype(np.float32),
                        }
                    )
                )
                writers["frame"][shard].write(
                    encode_sequence_example(
                        {id_key: [vid], "labels": ("int64", labels)}, {"rgb": q_rgb, "audio": q_audio}
                    )
                )
        finally:
            for ws in writers.values():
                for w in ws:
                    w.close()
        for schema in ("video", "frame"):
            for s, w in enumerate(writers[schema]):
                final = w.path.with_suffix("")  # drop ".tmp"
                os.replace(w.path, final)
                files.setdefault(schema, []).append(
                    {"file": f"{schema}/{final.name}", "records": w.count, "split": split}
                )

    _write_vocabulary(out / "vocabulary.csv", num_classes, class_index, kinds, counts["train"])
    info = {
        **params,
        "num_classes": num_classes,
        "id_key": id_key,
        "description": (
            "Synthetic YouTube-8M-format data for demos and tests; NOT real YouTube-8M. "
            f"{n_active} active classes out of {num_classes}: 'seen' classes add a fixed random direction to "
            "the visual features only, 'heard' classes to the audio features only, "
            "'seen and heard' classes add "
            "weaker directions to both. Frames = per-video content (background N(0, 0.5²) + the label "
            "directions) + per-second noise N(0, 0.3²), clipped to [-2, 2] and quantised like the official "
            "extractor; video-level means are the means of the dequantised frames. All splits are labelled."
        ),
        "noise": {
            "background_std": _BACKGROUND,
            "temporal_std": _TEMPORAL,
            "direction_norm_over_background": _STRENGTH,
        },
        "frames_per_video": list(spec["frames"]),
        "active_classes": [
            {"index": int(c), "kind": k, "prior": round(float(p), 6)}
            for c, k, p in zip(class_index, kinds, prior)
        ],
        "files": files,
    }
    # Written last: its presence marks a complete build.
    atomic_write(info_path, json.dumps(info, indent=1))
    return out


def _write_vocabulary(
    path: Path, num_classes: int, class_index: np.ndarray, kinds: list[str], train_counts: np.ndarray
) -> None:
    """``vocabulary.csv`` with the official 2018 columns; inactive classes are placeholders."""
    kind_name = {"seen": "Seen", "heard": "Heard", "both": "Seen and heard"}
    vertical = {"seen": "Demo visual", "heard": "Demo audio", "both": "Demo audio-visual"}
    rows = {
        "Index": np.arange(num_classes),
        "TrainVideoCount": np.zeros(num_classes, int),
        "KnowledgeGraphId": [f"/m/demo{i:04d}" for i in range(num_classes)],
        "Name": [f"Unused demo class {i}" for i in range(num_classes)],
        "WikiUrl": [""] * num_classes,
        "Vertical1": [""] * num_classes,
        "Vertical2": [""] * num_classes,
        "Vertical3": [""] * num_classes,
        "WikiDescription": ["Synthetic placeholder class without videos in the avlab demo."] * num_classes,
    }
    for j, (c, kind) in enumerate(zip(class_index, kinds)):
        rows["TrainVideoCount"][c] = int(train_counts[j])
        rows["Name"][c] = f"{kind_name[kind]} {j:02d}"
        rows["Vertical1"][c] = vertical[kind]
        rows["WikiDescription"][c] = (
            f"Synthetic demo class whose presence is {kind_name[kind].lower()} in the features."
        )
    atomic_write(path, pd.DataFrame(rows).to_csv(index=False))
