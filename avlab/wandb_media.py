"""What reaches W&B besides scalars: evaluation figures, prediction tables, summaries, CV summary runs.

Evaluation writes its PNGs and CSVs through :class:`~avlab.lightningmodules.base.EvalOutputs`;
when the Trainer has a W&B logger, EvalOutputs hands each written file to :class:`WandbMedia`,
which logs a figure as ``plots/<name>`` (``wandb.Image``) and a CSV as ``tables/<name>``
(``wandb.Table``) into that run. Without a W&B logger nothing is built, and ``wandb`` is never
imported, so W&B stays optional.

With ``cv.folds`` or ``splits.repeats`` every fold/repeat is its own W&B run; all runs of one
``avlab train`` invocation share the group :func:`split_group` names, and :func:`log_split_summary`
adds one run (job type ``summary``) holding the aggregated metrics and a table of every split's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: Rows of one CSV logged as a ``wandb.Table`` (``logger.wandb.max_table_rows``). W&B tables are
#: uploaded whole and rendered in the browser; a yt8m prediction file can hold millions of rows.
#: Longer files log their first rows only, with a log line saying how many were dropped.
DEFAULT_MAX_TABLE_ROWS = 10_000


def wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    """The Lightning ``WandbLogger``s among ``loggers`` (matched by class name, so that asking
    imports neither ``wandb`` nor Lightning's W&B integration)."""
    return [lg for lg in loggers if any(c.__name__ == "WandbLogger" for c in type(lg).__mro__)]


class WandbMedia:
    """Logs evaluation files into the W&B runs of ``loggers`` at Trainer step ``step``.

    Build it with :meth:`for_trainer`, which returns ``None`` off rank zero or without a W&B
    logger. Logging never raises: a W&B hiccup must not lose the results already on disk.
    """

    def __init__(
        self, loggers: Sequence[Any], step: int | None = None, max_table_rows: int = DEFAULT_MAX_TABLE_ROWS
    ) -> None:
        self.loggers = list(loggers)
        self.step = step
        self.max_table_rows = max_table_rows

    @classmethod
    def for_trainer(cls, trainer: Any, max_table_rows: int = DEFAULT_MAX_TABLE_ROWS) -> WandbMedia | None:
        if trainer is None or not trainer.is_global_zero:
            return None
        loggers = wandb_loggers(trainer.loggers)
        if not loggers:
            return None
        return cls(loggers, step=trainer.global_step, max_table_rows=max_table_rows)

    def image(self, path: Path) -> None:
        """Log the figure at ``path`` as ``plots/<file stem>``."""

        def build() -> Any:
            import wandb

            return wandb.Image(str(path))

        self._log(f"plots/{path.stem}", build)

    def table(self, path: Path, frame: pd.DataFrame, *, index: bool = False) -> None:
        """Log ``frame`` (the CSV written to ``path``) as ``tables/<file stem>``, at most
        ``max_table_rows`` rows; ``index=True`` keeps the index as the first column(s), as in the CSV."""
        key = f"tables/{path.stem}"
        if self.max_table_rows <= 0:
            log.info("W&B: %s not logged (logger.wandb.max_table_rows=%d)", key, self.max_table_rows)
            return
        if index:
            frame = frame.reset_index()
        if len(frame) > self.max_table_rows:
            log.warning(
                "W&B: %s logs the first %d of %d rows of %s (%d dropped; logger.wandb.max_table_rows "
                "raises the limit, the full file stays in the run directory)",
                key,
                self.max_table_rows,
                len(frame),
                path.name,
                len(frame) - self.max_table_rows,
            )
            frame = frame.iloc[: self.max_table_rows]

        def build() -> Any:
            import wandb

            # W&B wants string column names (a CSV's header is text anyway) and by default rejects
            # a column holding numbers and text, which a CSV column may (ids, names, missing values).
            return wandb.Table(dataframe=frame.rename(columns=str), allow_mixed_types=True)

        self._log(key, build)

    def _log(self, key: str, build: Any) -> None:
        try:
            value = build()
            for logger in self.loggers:
                logger.log_metrics({key: value}, step=self.step)
        except Exception as exc:  # noqa: BLE001 - the file is on disk; W&B only mirrors it
            log.warning("could not log %s to W&B: %s", key, exc)


def write_summary(loggers: Iterable[Any], metrics: Mapping[str, float]) -> None:
    """Set ``run.summary[key] = value`` for every metric in each W&B run of ``loggers`` (rank zero).

    W&B's summary otherwise keeps the last logged value of each key, which for a cross-dataset
    test or an extra metric is not necessarily what ``metrics.json`` holds.
    """
    from avlab.rundir import is_rank_zero

    if not is_rank_zero():
        return
    for logger in wandb_loggers(loggers):
        try:
            logger.experiment.summary.update({k: v for k, v in metrics.items() if not _is_nan(v)})
        except Exception as exc:  # noqa: BLE001 - metrics.json holds them either way
            log.warning("could not write the W&B summary in %s: %s", logger.save_dir, exc)


def split_group(cfg: DictConfig, run_dir: Path, splits: int) -> str:
    """W&B group of the runs of one ``avlab train``. An explicit ``logger.wandb.group`` is used as
    it is: ``avlab sweep`` sets it to the study, so every trial's fold runs and fold summary sit
    in one group and trials compare side by side. Otherwise the experiment for a single run, so
    runs of one experiment compare side by side; for several folds/repeats the experiment plus
    the run directory's name, so two CV runs of one experiment never mix."""
    if cfg.logger.wandb.group:
        return str(cfg.logger.wandb.group)
    return cfg.experiment if splits <= 1 else f"{cfg.experiment}/{run_dir.name}"


def log_split_summary(
    cfg: DictConfig,
    run_dir: Path,
    mode: str,
    group: str,
    kind: str,
    per_split: Sequence[Mapping[str, float]],
    metrics: Mapping[str, float],
) -> Path | None:
    """One W&B run (job type ``summary``) in ``group`` whose summary holds the aggregated metrics
    (mean and ``_std``, as ``metrics.json``) and which logs every split's metrics as
    ``tables/folds``; finished and flushed before it returns. Returns the W&B run folder, or
    ``None`` when W&B is disabled or logging failed (with a warning; ``metrics.json`` is written)."""
    if mode == "disabled":
        return None
    import wandb

    w = cfg.logger.wandb
    frame = pd.DataFrame([dict(m) for m in per_split])
    frame.insert(0, kind, [f"{kind}{i}" for i in range(len(per_split))])
    try:
        run = wandb.init(
            project=w.project,
            entity=w.entity,
            mode=mode,
            dir=str(run_dir),
            group=group,
            job_type="summary",
            name=f"{w.name or f'{cfg.experiment}/{run_dir.name}'}/summary",
            tags=list(dict.fromkeys([cfg.task, cfg.experiment, *w.tags])),
            config=OmegaConf.to_container(cfg, resolve=True),
            reinit="create_new",
        )
        try:
            run.summary.update({k: v for k, v in metrics.items() if not _is_nan(v)})
            run.summary["splits"] = len(per_split)
            run.log({"tables/folds": wandb.Table(dataframe=frame, allow_mixed_types=True)})
            return Path(run.dir).parent
        finally:
            run.finish()
            # finish() may return before W&B's service has written the offline run file.
            wandb.teardown()
    except Exception as exc:  # noqa: BLE001 - metrics.json and folds.csv hold the same numbers
        log.warning("could not log the %s summary run to W&B: %s", kind, exc)
        return None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
