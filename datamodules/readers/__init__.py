"""One catalog of on-disk dataset formats, shared by every task.

A reader turns one dataset folder into a :class:`pandas.DataFrame`, one row per sample, and is
registered under a format name with :func:`register_reader`. Tasks pick a reader by name
(``data.format``, or ``format:`` of a unqa database entry) with :func:`get_reader`, or by the
files present with :func:`detect_format`; adding a format is one decorated function, nothing to
edit elsewhere. The quality formats shared by several tasks live here (``live_sjtu``,
``manifest``); task-only formats register from their task's reader module the same way.

Quality readers (those registered with a ``mos_range``) return these columns (see
``docs/architecture.md``):

===================  =================================================================================
column               meaning
===================  =================================================================================
stimulus             unique name of the sample
media                absolute path of the (distorted) media file: image, video, audio, or muxed AV
audio                absolute path of a separate audio file of ``media`` (or None)
reference            full-reference formats: absolute path of the reference media (else None)
reference_audio      full-reference formats: separate reference audio (or None)
mos                  score as written in the score file (native scale; not validated here)
group                content id (source clip); splits never put one group on two sides
where                ``<score file> row N``, for error messages
===================  =================================================================================

An absent path is a missing value (test a path with ``isinstance(value, str)``: pandas' string
dtype turns ``None`` into NaN). Optional columns: ``mos_scale`` (``LOW-HIGH`` per row),
``audio_bitrate_kbps``, ``video_bitrate_kbps``, and ``width``/``height``/``fps`` for raw ``.yuv``
video. Paths that the score file names but that are not on disk are still returned (under the
folder), so that a caller can report every missing file at once with :func:`missing_files`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from avlab.errors import ConfigError, DataError, did_you_mean

__all__ = [
    "READERS",
    "ReadOptions",
    "Reader",
    "detect_format",
    "get_reader",
    "missing_files",
    "register_reader",
]


@dataclass(frozen=True)
class ReadOptions:
    """Per-dataset options a reader may use.

    Attributes:
        name: the dataset's name in the config (used in every error message).
        score_file: the score file, relative to the folder, if not the format's usual one.
        score_column: the score column, for formats with several (e.g. KonIQ's ``MOS_zscore``).
    """

    name: str = ""
    score_file: str | None = None
    score_column: str | None = None

    def label(self, fmt: str) -> str:
        return f"dataset `{self.name}` ({fmt})" if self.name else fmt


ReadFn = Callable[[Path, ReadOptions], pd.DataFrame]


@dataclass(frozen=True)
class Reader:
    """A registered format.

    Attributes:
        name: format name (``data.format`` / ``format:``).
        read: ``read(folder, options) -> DataFrame``.
        modalities: media kinds the format holds (``image``, ``video``, ``audio``, ``av``).
        mos_range: the nominal score scale, or None when it is declared per dataset (manifest).
        score_file: the file that identifies the format in a folder (used by :func:`detect_format`).
    """

    name: str
    read: ReadFn
    modalities: tuple[str, ...]
    mos_range: tuple[float, float] | None
    score_file: str | None


READERS: dict[str, Reader] = {}
F = TypeVar("F", bound=ReadFn)


def register_reader(
    name: str,
    *,
    modalities: Sequence[str] = (),
    mos_range: tuple[float, float] | None = None,
    score_file: str | None = None,
) -> Callable[[F], F]:
    """Decorator: register ``read(folder, options)`` as format ``name``."""

    def wrap(fn: F) -> F:
        if name in READERS and READERS[name].read is not fn:
            where = f"{READERS[name].read.__module__} and {fn.__module__}"
            raise ValueError(f"reader format `{name}` is registered twice ({where})")
        READERS[name] = Reader(
            name,
            fn,
            tuple(modalities),
            None if mos_range is None else (float(mos_range[0]), float(mos_range[1])),
            score_file,
        )
        return fn

    return wrap


def get_reader(name: str, *, where: str = "data.format", allowed: Sequence[str] | None = None) -> Reader:
    """The reader of format ``name``; unknown names fail with the closest one and the list."""
    options = [n for n in READERS if allowed is None or n in allowed]
    if name not in options:
        hint = did_you_mean(str(name), options)
        raise ConfigError(f"{where}: unknown format {name!r}.{hint} Formats: {', '.join(options)}")
    return READERS[name]


def detect_format(folder: Path, candidates: Sequence[str]) -> str:
    """The first of ``candidates`` whose score file is in ``folder``."""
    for name in candidates:
        marker = get_reader(name).score_file
        if marker and (Path(folder) / marker).is_file():
            return name
    files = [f"{get_reader(n).score_file} ({n})" for n in candidates if get_reader(n).score_file]
    raise DataError(
        f"{folder} holds none of {', '.join(files)}; set data.format or point data.root at a dataset folder"
    )


def missing_files(
    table: pd.DataFrame,
    columns: Sequence[str] = ("media", "audio", "reference", "reference_audio"),
    *,
    label: str = "",
) -> list[str]:
    """One message per file that a row names and that does not exist."""
    problems = []
    for _, row in table.iterrows():
        for col in columns:
            value: Any = row.get(col)
            if isinstance(value, str) and value and not Path(value).is_file():
                stimulus = f" (stimulus {row['stimulus']!r})" if isinstance(row.get("stimulus"), str) else ""
                where = f"{label + ': ' if label else ''}{row.get('where', '')}{stimulus}"
                problems.append(f"{where}: {col} file {value} does not exist")
    return problems


# The shared quality formats register themselves on import (after the registry above exists).
from avlab.datamodules.readers import live_sjtu, manifest  # noqa: F401
