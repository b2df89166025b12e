"""Readers and writers for on-disk dataset formats that need no framework beyond numpy.

* :mod:`avlab.io.tfrecord` — TFRecord framing with CRC checks, without TensorFlow;
* :mod:`avlab.io.tf_example` — ``tf.train.Example`` / ``tf.train.SequenceExample`` protobuf
  encoding and decoding, without TensorFlow or protobuf.
"""

from avlab.io.tf_example import encode_example, encode_sequence_example, parse_example, parse_sequence_example
from avlab.io.tfrecord import CorruptRecord, TFRecordWriter, count_records, iter_records, masked_crc32c

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
