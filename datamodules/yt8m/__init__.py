"""YouTube-8M data for the ``yt8m`` task: the official TFRecord shards, read without TensorFlow.

One job per module:

* :mod:`.schema` — record schemas (video-level ``Example``, frame-level ``SequenceExample``),
  input features (MF, MF+STD), dequantisation, shard globs and ``vocabulary.csv``;
* :mod:`.counts` — per-shard record counts, cached on disk;
* :mod:`.sharding` — exactly-once dealing of records over DDP ranks × DataLoader workers;
* :mod:`.records` — :class:`YT8MRecordDataset`, the decoded record stream;
* :mod:`.feature_cache` — the memory-mapped feature cache (``data.feature_cache=true``);
* :mod:`.shard_check` — every record's CRCs for ``avlab data check``, over several processes;
* :mod:`.datamodule` — :class:`YT8MDataModule`, the LightningDataModule the configs name
  (``avlab.datamodules.yt8m.YT8MDataModule``).
"""

from avlab.datamodules.yt8m.datamodule import YT8MDataModule
from avlab.datamodules.yt8m.feature_cache import (
    YT8MFeatureCacheDataset,
    batch_as_is,
    build_feature_cache,
    feature_cache_key,
)
from avlab.datamodules.yt8m.records import YT8MRecordDataset
from avlab.datamodules.yt8m.schema import (
    AUDIO_DIM,
    RGB_DIM,
    VOCABULARY_COLUMNS,
    check_schema,
    dequantize,
    feature_dims,
    read_vocabulary,
    resolve_split,
    split_record_key,
)

__all__ = [
    "AUDIO_DIM",
    "RGB_DIM",
    "VOCABULARY_COLUMNS",
    "YT8MDataModule",
    "YT8MFeatureCacheDataset",
    "YT8MRecordDataset",
    "batch_as_is",
    "build_feature_cache",
    "check_schema",
    "dequantize",
    "feature_cache_key",
    "feature_dims",
    "read_vocabulary",
    "resolve_split",
    "split_record_key",
]
