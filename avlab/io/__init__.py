"""Readers and writers for on-disk dataset formats that need no framework beyond numpy.

* :mod:`avlab.io.tfrecord` — TFRecord framing with CRC checks, and ``tf.train.Example`` /
  ``tf.train.SequenceExample`` protobuf encoding and decoding, without TensorFlow.
"""

from avlab.io.tfrecord import (
    CorruptRecord,
    TFRecordWriter,
    count_records,
    encode_example,
    encode_sequence_example,
    iter_records,
    masked_crc32c,
    parse_example,
    parse_sequence_example,
)

__all__ = [
    "CorruptRecord",
    "TFRecordWriter",
    "count_records",
    "encode_example",
    "encode_sequence_example",
    "iter_records",
    "masked_crc32c",
    "parse_example",
    "parse_sequence_example",
]
