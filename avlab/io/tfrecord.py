"""TFRecord files without TensorFlow: reading with CRC checks, counting and writing records.

Framing (as TensorFlow's ``tensorflow/core/lib/io/record_writer.cc`` defines it): a TFRecord file
is a plain sequence of records, each laid out as::

    uint64 length          (little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

with ``masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8  (mod 2**32)`` over the
Castagnoli CRC-32C. :func:`iter_records` verifies both CRCs by default; a damaged file raises
:class:`~avlab.errors.DataError` naming the file and the **byte offset** of the bad record, or,
with ``skip_corrupt=True``, is skipped as far as it must be and reported through a callback:

* a bad *data* CRC (header intact) skips that one record: the length field was verified, so the
  next record's position is still known;
* a bad *length* CRC or a truncated record skips the rest of the file: once the length field is
  untrustworthy there is no way to find the next record boundary.

The records' payloads (``tf.train.Example`` / ``SequenceExample`` protobufs) are decoded and
encoded by :mod:`avlab.io.tf_example`.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import crc32c as _crc32c

from avlab.errors import DataError

__all__ = ["CorruptRecord", "TFRecordWriter", "count_records", "iter_records", "masked_crc32c"]

log = logging.getLogger(__name__)

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC-32C of ``data`` (rotate right by 15, add ``0xa282ead8``)."""
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------- framing
@dataclass(frozen=True)
class CorruptRecord:
    """One damaged spot in a TFRecord file, as reported to ``iter_records(on_corrupt=...)``."""

    path: str
    offset: int  #: byte offset of the start of the damaged record
    reason: str
    rest_skipped: bool  #: True when everything from ``offset`` to the end of the file was skipped

    def message(self) -> str:
        """Human-readable description naming the file and byte offset."""
        what = "the rest of the file" if self.rest_skipped else "this record"
        return f"{self.path}: {self.reason} at byte offset {self.offset} (skipped {what})"


def _corrupt(
    path: str,
    offset: int,
    reason: str,
    rest: bool,
    skip_corrupt: bool,
    on_corrupt: Callable[[CorruptRecord], None] | None,
) -> None:
    """Raise for a damaged record, or report it when the caller asked to skip damage."""
    if not skip_corrupt:
        raise DataError(
            f"{path}: {reason} at byte offset {offset}. The shard is truncated or corrupt; "
            "download it again, or set data.skip_corrupt=true to skip damaged records "
            "(they are counted and reported)."
        )
    event = CorruptRecord(path, offset, reason, rest)
    log.warning("skipping corrupt TFRecord data: %s", event.message())
    if on_corrupt is not None:
        on_corrupt(event)


def iter_records(
    path: str | os.PathLike[str],
    *,
    verify_crc: bool = True,
    skip_corrupt: bool = False,
    on_corrupt: Callable[[CorruptRecord], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(byte_offset, data)`` for every record of a TFRecord file, in file order.

    Args:
        path: the ``.tfrecord`` file (uncompressed; YouTube-8M ships uncompressed shards).
        verify_crc: check both masked CRC-32Cs of every record (the cost is small: the CRC
            uses the SSE4.2/ARMv8 instruction through the ``crc32c`` package).
        skip_corrupt: skip damaged records instead of raising (see the module docstring for
            how far a skip reaches); each skip is logged and passed to ``on_corrupt``.
        on_corrupt: callback receiving a :class:`CorruptRecord` for every skip.

    Raises:
        DataError: a truncated or corrupt record (naming the file and the byte offset), unless
            ``skip_corrupt``; also when the file cannot be opened.
    """
    spath = os.fspath(path)
    try:
        f = open(spath, "rb")  # noqa: SIM115 - opened apart from `with` so an open error has its own message
    except OSError as exc:
        raise DataError(f"cannot open TFRecord file {spath}: {exc.strerror or exc}") from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        # mmap lets the OS page the file in with read-ahead and gives cheap slicing.
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        pos = 0
        while pos < size:
            if pos + 12 > size:
                _corrupt(
                    spath,
                    pos,
                    f"truncated record header ({size - pos} of 12 bytes)",
                    True,
                    skip_corrupt,
                    on_corrupt,
                )
                return
            length, length_crc = _HEADER.unpack_from(mm, pos)
            if verify_crc and masked_crc32c(mm[pos : pos + 8]) != length_crc:
                _corrupt(
                    spath, pos, "corrupt record header (length CRC mismatch)", True, skip_corrupt, on_corrupt
                )
                return
            start = pos + 12
            end = start + length
            if end + 4 > size:
                _corrupt(
                    spath,
                    pos,
                    f"truncated record (header announces {length} data bytes + 4 CRC bytes, "
                    f"the file has {max(size - start, 0)} left)",
                    True,
                    skip_corrupt,
                    on_corrupt,
                )
                return
            data = mm[start:end]
            if verify_crc and masked_crc32c(data) != _U32.unpack_from(mm, end)[0]:
                # The length was verified, so the framing is intact: only this record is lost.
                _corrupt(
                    spath, pos, "corrupt record data (data CRC mismatch)", False, skip_corrupt, on_corrupt
                )
                pos = end + 4
                continue
            yield pos, data
            pos = end + 4
    finally:
        mm.close()


def count_records(path: str | os.PathLike[str], *, verify_crc: bool = True) -> int:
    """Number of records in a TFRecord file, reading only the 12-byte headers.

    Raises:
        DataError: truncated file or (with ``verify_crc``) a corrupt length field.
    """
    spath = os.fspath(path)
    n = 0
    with open(spath, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            f.seek(pos)
            header = f.read(12)
            if len(header) < 12:
                raise DataError(f"{spath}: truncated record header at byte offset {pos}")
            length, length_crc = _HEADER.unpack(header)
            if verify_crc and masked_crc32c(header[:8]) != length_crc:
                raise DataError(f"{spath}: corrupt record header (length CRC mismatch) at byte offset {pos}")
            if pos + 12 + length + 4 > size:
                raise DataError(f"{spath}: truncated record at byte offset {pos}")
            pos += 12 + length + 4
            n += 1
    return n


class TFRecordWriter:
    """Write records to a TFRecord file (used by the demo builder and tests).

    Use as a context manager::

        with TFRecordWriter(path) as w:
            w.write(encode_example({...}))
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f = open(self.path, "wb")  # noqa: SIM115 - the writer owns the file until close()
        self.count = 0

    def write(self, record: bytes) -> int:
        """Append one record; returns its byte offset in the file."""
        offset = self._f.tell()
        length = _U64.pack(len(record))
        self._f.write(length + _U32.pack(masked_crc32c(length)) + record + _U32.pack(masked_crc32c(record)))
        self.count += 1
        return offset

    def close(self) -> None:
        """Flush and close the file."""
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> TFRecordWriter:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
