"""Progress of every long step: Rich on a terminal, tqdm elsewhere, nothing when quiet.

One place decides how progress looks, so feature extraction, cache building, demo builders,
data checks and sweeps all behave alike:

* stderr is a terminal: a Rich bar (description, bar, count, elapsed, time left);
* stderr is not a terminal (a log file, CI, a notebook): tqdm, which is a widget in a notebook
  (``tqdm.auto``, when ipywidgets is installed) and a text bar with counts and ETA anywhere else;
* quiet (``avlab --quiet``, :func:`set_quiet`, or ``AVLAB_QUIET=1``) or not rank zero: nothing.

The quiet switch lives in the environment, so DDP ranks and other processes started from a
quiet command are quiet too.

Two forms::

    for path in progress(paths, desc="VMAF"):
        ...

    with progress_task("building cache", total=n) as task:
        for chunk in chunks:
            ...
            task.advance(len(chunk))

``lines=True`` reports each step as one line (count, elapsed, time left) instead of a live bar;
it is for steps that run something with its own live display inside (a sweep runs Lightning's
progress bar in every trial, and two live displays on one terminal overwrite each other).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["QUIET_ENV", "ProgressTask", "backend", "is_quiet", "progress", "progress_task", "set_quiet"]

QUIET_ENV = "AVLAB_QUIET"

T = TypeVar("T")


def set_quiet(quiet: bool = True) -> None:
    """Turn every progress display of this process (and of processes it starts) off or back on."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def is_quiet() -> bool:
    """Whether progress is switched off (``AVLAB_QUIET`` is ``1``/``true``/``yes``/``on``)."""
    return os.environ.get(QUIET_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def backend(disable: bool = False) -> str:
    """``rich``, ``tqdm`` or ``none``: what a progress display started now would use."""
    # Imported here: shard checks import this module in worker processes that must start fast.
    from avlab.rundir import is_rank_zero

    if disable or is_quiet() or not is_rank_zero():
        return "none"
    return "rich" if sys.stderr.isatty() else "tqdm"


# One Rich display per process: Rich refuses a second live display on the same console, and a
# step inside another step (a cache built while a dataset is prepared) adds its task to it.
_rich_progress: Any = None
_rich_users = 0


def _rich_start() -> Any:
    global _rich_progress, _rich_users
    if _rich_progress is None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        _rich_progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        _rich_progress.start()
    _rich_users += 1
    return _rich_progress


def _rich_stop() -> None:
    global _rich_progress, _rich_users
    _rich_users -= 1
    if _rich_users <= 0 and _rich_progress is not None:
        _rich_progress.stop()
        _rich_progress, _rich_users = None, 0


def _tqdm() -> Any:
    # tqdm.auto picks the notebook widget in Jupyter, but without ipywidgets it warns and falls
    # back to text anyway; Lightning's own bar makes the same check.
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressTask:
    """A progress display for work that is not a simple loop; use through :func:`progress_task`.

    ``advance(n)`` records ``n`` more units done; ``set_total`` changes the expected total when it
    becomes known. Closing it (leaving the ``with`` block) ends the display.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        *,
        unit: str = "it",
        disable: bool = False,
        lines: bool = False,
    ) -> None:
        self.desc, self.total, self.unit, self.lines = desc, total, unit, lines
        self.kind = backend(disable)
        self.done = 0
        self._start = time.monotonic()
        self._bar: Any = None
        self._task_id: Any = None
        if self.kind == "none" or lines:
            return
        if self.kind == "rich":
            self._bar = _rich_start()
            self._task_id = self._bar.add_task(desc, total=total)
        else:
            self._bar = _tqdm()(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.kind == "none":
            return
        if self.lines:
            self._line()
        elif self.kind == "rich":
            self._bar.advance(self._task_id, n)
        else:
            self._bar.update(n)

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self.kind == "none" or self.lines:
            return
        if self.kind == "rich":
            self._bar.update(self._task_id, total=total)
        else:
            self._bar.total = total
            self._bar.refresh()

    def _line(self) -> None:
        elapsed = time.monotonic() - self._start
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        text = f"{self.desc}: {count} {self.unit}, {_clock(elapsed)} elapsed"
        if self.total and 0 < self.done < self.total:
            text += f", eta {_clock(elapsed / self.done * (self.total - self.done))}"
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is None:
            return
        if self.kind == "rich":
            if _rich_users > 1:  # a step inside another: its line goes; the outermost stays on screen
                self._bar.remove_task(self._task_id)
            _rich_stop()
        else:
            self._bar.close()
        self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def progress_task(
    desc: str, total: int | None = None, *, unit: str = "it", disable: bool = False, lines: bool = False
) -> ProgressTask:
    """A :class:`ProgressTask` (a context manager) for ``desc``; see the module docstring."""
    return ProgressTask(desc, total, unit=unit, disable=disable, lines=lines)


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "working",
    *,
    unit: str = "it",
    disable: bool = False,
    lines: bool = False,
) -> Iterator[T]:
    """Iterate over ``iterable`` with a progress display (count, elapsed time, time left).

    ``total`` defaults to ``len(iterable)`` when it has one. ``disable=True`` (a caller's own
    ``progress=False``) shows nothing, like quiet mode does.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if backend(disable) == "none":
        yield from iterable
        return
    with ProgressTask(desc, total, unit=unit, lines=lines) as task:
        for item in iterable:
            yield item
            task.advance()
