"""YouTube-8M on disk: the record schemas, input features, shard lists and ``vocabulary.csv``.

Formats (google/youtube-8m ``readers.py``):

* **video-level** ``tf.train.Example``: ``id`` (2018) or ``video_id`` (2017) bytes, ``labels``
  int64 list, ``mean_rgb`` float[1024], ``mean_audio`` float[128];
* **frame-level** ``tf.train.SequenceExample``: the same id/labels in the context, and feature
  lists ``rgb`` / ``audio`` with one uint8-quantised ``bytes`` value per second (1024 / 128 bytes).

Input features (``features``):

* ``"mf"`` — mean features: ``mean_rgb``/``mean_audio`` from video-level records, or the mean of
  the dequantised frames from frame-level records (which is how the released means were made);
* ``"mf_std"`` — mean and standard deviation (MF+STD): ``[mean_rgb, std_rgb]`` (2048) and
  ``[mean_audio, std_audio]`` (256). Video-level files hold no std, so this needs frame-level
  records. The std is the **population** std (``ddof=0``) over the video's frames: nothing public
  defines it for the Attend-Fusion paper, and ``ddof=0`` is defined for one-frame videos.

Dequantisation is the starter code's ``utils.Dequantize`` with its defaults
(``max_quantized_value=2``, ``min_quantized_value=-2``): ``x = q * 4/255 + (4/512 - 2)``.

A sample's ``index`` is a global record key, ``shard_number * 2**32 + record_number``
(:func:`split_record_key` inverts it), where ``shard_number`` is the shard's position in the
sorted path list: unique within an epoch and stable across epochs and runs, without needing every
shard's record count before the first sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from avlab.errors import ConfigError, DataError

__all__ = [
    "AUDIO_DIM",
    "FEATURES",
    "ID_KEYS",
    "Q_BIAS",
    "Q_SCALE",
    "RECORD_KEY_SHIFT",
    "RGB_DIM",
    "SCHEMAS",
    "VOCABULARY_COLUMNS",
    "check_schema",
    "dequantize",
    "feature_dims",
    "read_vocabulary",
    "resolve_split",
    "split_record_key",
]

#: Per-second feature widths of the released data (Inception-v3 PCA rgb, VGGish audio).
RGB_DIM = 1024
AUDIO_DIM = 128
#: Column order of the official 2018 ``vocabulary.csv``.
VOCABULARY_COLUMNS = (
    "Index",
    "TrainVideoCount",
    "KnowledgeGraphId",
    "Name",
    "WikiUrl",
    "Vertical1",
    "Vertical2",
    "Vertical3",
    "WikiDescription",
)
#: Context keys holding the video id: 2018 uses ``id``, 2017 ``video_id``.
ID_KEYS = ("id", "video_id")
SCHEMAS = ("video", "frame")
FEATURES = ("mf", "mf_std")
#: ``index = shard_number << RECORD_KEY_SHIFT | record_number`` (see the module docstring).
RECORD_KEY_SHIFT = 32

# starter code utils.Dequantize(feat_vector, max_quantized_value=2, min_quantized_value=-2)
_MAX_Q, _MIN_Q = 2.0, -2.0
#: Dequantisation ``x = q * Q_SCALE + Q_BIAS`` with the starter code's defaults.
Q_SCALE = (_MAX_Q - _MIN_Q) / 255.0
Q_BIAS = (_MAX_Q - _MIN_Q) / 512.0 + _MIN_Q


def dequantize(
    q: np.ndarray, max_quantized_value: float = _MAX_Q, min_quantized_value: float = _MIN_Q
) -> np.ndarray:
    """The starter code's dequantisation of uint8 features: ``q * scalar + bias`` (float32)."""
    scalar = (max_quantized_value - min_quantized_value) / 255.0
    bias = (max_quantized_value - min_quantized_value) / 512.0 + min_quantized_value
    return (np.asarray(q, np.float32) * np.float32(scalar) + np.float32(bias)).astype(np.float32)


def feature_dims(features: str) -> tuple[int, int]:
    """``(visual_dim, audio_dim)`` of the model inputs for ``features`` (``mf`` or ``mf_std``)."""
    if features not in FEATURES:
        raise ConfigError(f"data.features must be one of {', '.join(FEATURES)}; found {features!r}")
    k = 2 if features == "mf_std" else 1
    return RGB_DIM * k, AUDIO_DIM * k


def check_schema(schema: str, features: str) -> tuple[int, int]:
    """Validate a (schema, features) pair; returns the model's ``(visual_dim, audio_dim)``."""
    if schema not in SCHEMAS:
        raise ConfigError(f"data.schema must be one of {', '.join(SCHEMAS)}; found {schema!r}")
    dims = feature_dims(features)
    if schema == "video" and features == "mf_std":
        raise ConfigError(
            "data.features=mf_std needs frame-level records: video-level files hold only the means "
            "(mean_rgb, mean_audio). Set data.schema=frame and point data.root at the frame-level shards."
        )
    return dims


def split_record_key(index: int) -> tuple[int, int]:
    """``(shard_number, record_number)`` of a sample's ``index`` (see the module docstring)."""
    return index >> RECORD_KEY_SHIFT, index & ((1 << RECORD_KEY_SHIFT) - 1)


def resolve_split(root: str | os.PathLike[str], pattern: str) -> list[Path]:
    """Sorted shard paths matching ``pattern`` (a glob relative to ``root``).

    Raises:
        DataError: nothing matches; the message names the full glob.
    """
    root = Path(root)
    paths = sorted(p for p in root.glob(pattern) if p.is_file())
    if not paths:
        raise DataError(
            f"no TFRecord shards match {root / pattern}; check data.root and the split's file pattern "
            "(official names are train*.tfrecord, validate*.tfrecord, test*.tfrecord)"
        )
    return paths


def read_vocabulary(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the official ``vocabulary.csv`` (one row per class, ``Index`` = class index).

    Only ``Index`` and ``Name`` are required; other official columns are kept when present.
    The frame is indexed by ``Index`` (sorted).

    Raises:
        DataError: missing file or columns, or duplicate / negative indices.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"vocabulary file {path} not found (the official file is vocabulary.csv)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot parse as CSV ({exc})") from exc
    missing = [c for c in ("Index", "Name") if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the official header "
            f"{','.join(VOCABULARY_COLUMNS)}"
        )
    if not pd.api.types.is_integer_dtype(df["Index"]):
        raise DataError(f"{path}: column Index must hold integers")
    if (df["Index"] < 0).any():
        raise DataError(f"{path}: negative class index {int(df['Index'].min())}")
    dup = df["Index"][df["Index"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: class index {int(dup.iloc[0])} appears more than once")
    return df.set_index("Index", drop=False).sort_index()
