"""Error types that the command line turns into one clear, actionable message.

Every error raised for bad *input* (config, data, media, features) is an :class:`AvlabError`.
The CLI prints its message without a traceback and exits with status 2, so the message
must name the file, key or value at fault and say what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AvlabError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(AvlabError):
    """An experiment config or command-line override is invalid."""


class DataError(AvlabError):
    """A dataset folder, manifest, score file or label is invalid."""


class MediaError(AvlabError):
    """A video or audio file cannot be decoded or lacks a required stream."""


class FeatureError(AvlabError):
    """A cached or precomputed feature has the wrong shape, width or content."""


class TrainingDiverged(AvlabError):
    """The training loss became NaN or infinite; the message says where, and whether the data did."""


def closest(name: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """The candidates closest to ``name``, for 'did you mean ...?' hints."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not matches:
        # Fall back to a case-insensitive prefix/substring match so that short keys still get a hint.
        low = name.lower()
        matches = [c for c in candidates if low in c.lower() or c.lower() in low][:n]
    return matches


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean `x`?' or an empty string when nothing is close."""
    match = closest(name, candidates)
    return f" Did you mean `{match[0]}`?" if match else ""
