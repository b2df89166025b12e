"""What ``avlab train``, ``avlab test`` and ``avlab predict`` do, as plain functions.

``train`` fits, tests on the best checkpoint, and writes the run directory. With
``cv.folds=K`` or ``splits.repeats=N`` it repeats that per fold/split, writes each one's metrics
to ``folds.csv`` and reports mean and ``_std`` in ``metrics.json``.

A ``model`` whose target is not a LightningModule is a closed-form estimator
(:class:`avlab.baselines.base.ClosedFormEstimator`: weighted product, SVR): it is fitted on the
arrays of a :class:`~avlab.datamodules.base.SupportsArrays` DataModule instead of by a Trainer,
and evaluates itself with its task's evaluation function into the same run directory. Nothing
here is specific to a task.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

import avlab
from avlab.baselines.base import ClosedFormEstimator
from avlab.callbacks.data_wait import METRIC, DataWait
from avlab.callbacks.nonfinite import MODES as NONFINITE_MODES
from avlab.callbacks.nonfinite import StopOnNonFinite
from avlab.callbacks.rng_state import RNGStateCheckpoint
from avlab.data_fingerprint import read_data_record, write_data_record
from avlab.datamodules.base import AvlabDataModule, SupportsArrays
from avlab.errors import ConfigError
from avlab.instantiate import instantiate, resolve_target
from avlab.lightningmodules.base import AvlabModule, EvalOutputs
from avlab.rundir import create_run_dir, is_rank_zero, recorded_status, write_config, write_metrics
from avlab.wandb_media import log_split_summary, split_group, write_summary

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- results
@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    per_split: list[dict[str, float]] = field(default_factory=list)
    summary_lines: list[str] = field(default_factory=list)
    #: Per fit, in fit order: the ``val/`` metrics of the epoch the best checkpoint comes from
    #: (``callbacks.checkpoint.monitor``/``mode``), i.e. of the weights that were tested. Sweeps
    #: read their objective here. Empty for closed-form estimators, which have no validation loop.
    val_metrics: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- trainer assembly
class ValidationHistory(Callback):
    """Every validation pass's logged metrics, so the caller can read those of the selected epoch.

    ``ModelCheckpoint`` keeps only the monitored value of its best epoch; a sweep whose objective is
    another metric (or the mean of several folds) needs the other values of that same epoch.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        from avlab.rundir import clean_metrics

        self.epochs.append(clean_metrics(dict(trainer.callback_metrics)))

    def selected(self, monitor: str, mode: str) -> dict[str, float]:
        """``val/`` metrics of the first epoch with the best ``monitor`` (the one ModelCheckpoint
        keeps, since it replaces its best only on a strict improvement); the last epoch if the
        monitor was never logged."""
        scored = [
            (m[monitor], i) for i, m in enumerate(self.epochs) if monitor in m and not math.isnan(m[monitor])
        ]
        if scored:
            sign = 1.0 if mode == "min" else -1.0
            chosen = self.epochs[min(scored, key=lambda t: (sign * t[0], t[1]))[1]]
        else:
            chosen = self.epochs[-1] if self.epochs else {}
        return {k: v for k, v in chosen.items() if k.startswith("val/")}


class ConfigInCheckpoint(Callback):
    """Stores the resolved config in each checkpoint so test/predict rebuild the same model."""

    def __init__(self, cfg: DictConfig) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["avlab"] = {"version": avlab.__version__, "config": self.config}


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, rewritten at the end of every epoch whatever the monitored metric does."""

    def __init__(self, dirpath: str) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
        )

    @property
    def state_key(self) -> str:
        return "LastCheckpoint"


def wandb_mode(cfg: DictConfig) -> str:
    mode = cfg.logger.wandb.mode or os.environ.get("WANDB_MODE")
    if mode:
        return "disabled" if mode == "dryrun" else mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.path.expanduser("~/.netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def build_loggers(
    cfg: DictConfig, run_dir: Path, tag: str | None, group: str | None = None, job_type: str = "train"
) -> list[Any]:
    """The config's loggers. ``group`` is the W&B group (default: ``logger.wandb.group`` or the
    experiment); ``train`` passes one per invocation for folds/repeats, with ``job_type`` ``fold``
    or ``repeat`` (see :func:`avlab.wandb_media.split_group`)."""
    loggers: list[Any] = []
    if cfg.logger.csv.enabled:
        from lightning.pytorch.loggers import CSVLogger

        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=tag or ""))
    mode = wandb_mode(cfg)
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        w = cfg.logger.wandb
        tags = list(dict.fromkeys([cfg.task, cfg.experiment, *w.tags]))
        name = w.name or f"{cfg.experiment}/{run_dir.name}" + (f"/{tag}" if tag else "")
        loggers.append(
            WandbLogger(
                save_dir=str(run_dir),
                project=w.project,
                entity=w.entity,
                group=group or w.group or cfg.experiment,
                tags=tags,
                name=name,
                mode=mode,
                log_model=w.log_model,
                job_type=job_type,
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


def build_callbacks(
    cfg: DictConfig, run_dir: Path, tag: str | None, has_logger: bool
) -> tuple[list[Callback], bool]:
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    c = cfg.callbacks
    ckpt_dir = run_dir / "checkpoints" / (tag or "")
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="best-epoch{epoch:03d}",
            monitor=c.checkpoint.monitor,
            mode=c.checkpoint.mode,
            save_top_k=c.checkpoint.save_top_k,
            save_last=False,
            auto_insert_metric_name=False,
        ),
        ConfigInCheckpoint(cfg),
        RNGStateCheckpoint(),
    ]
    if c.checkpoint.save_last:
        # Lightning 2.6's save_last refreshes last.ckpt only in epochs that also save a top-k
        # checkpoint, so a run whose monitor stops improving could only resume from an old epoch.
        # A second, monitor-free checkpoint overwrites last.ckpt after every epoch instead.
        callbacks.append(LastCheckpoint(dirpath=str(ckpt_dir)))
    if c.early_stopping.enabled:
        callbacks.append(
            EarlyStopping(
                monitor=c.early_stopping.monitor or c.checkpoint.monitor,
                mode=c.early_stopping.mode or c.checkpoint.mode,
                patience=c.early_stopping.patience,
                min_delta=c.early_stopping.min_delta,
            )
        )
    if c.data_wait:
        callbacks.append(DataWait())
    mode = str(c.stop_on_nonfinite)
    if mode not in NONFINITE_MODES:
        raise ConfigError(
            f"callbacks.stop_on_nonfinite must be one of {', '.join(NONFINITE_MODES)}, got {mode!r}"
        )
    if mode != "none":
        callbacks.append(StopOnNonFinite(gradients=mode == "gradients"))
    if c.lr_monitor and has_logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    bar = progress_bar_kind(c.progress_bar)
    if bar == "rich":
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    elif bar == "tqdm":
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar())
    for node in (c.extra or {}).values():
        callbacks.append(instantiate(node))
    return callbacks, bar != "none"


def progress_bar_kind(setting: str) -> str:
    """The Lightning progress bar that ``callbacks.progress_bar`` means here and now.

    ``auto``: Rich on a terminal, tqdm otherwise (a notebook gets its widget, a log file plain
    lines). Quiet (``avlab --quiet``, ``AVLAB_QUIET=1``) wins over any setting.
    """
    from avlab.progress import is_quiet

    if is_quiet():
        return "none"
    if setting == "auto":
        return "rich" if sys.stdout.isatty() else "tqdm"
    return setting


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    tag: str | None = None,
    extra_callbacks: Sequence[Callback] = (),
    *,
    wandb_group: str | None = None,
    wandb_job_type: str = "train",
    **overrides: Any,
) -> Trainer:
    loggers = build_loggers(cfg, run_dir, tag, group=wandb_group, job_type=wandb_job_type)
    callbacks, progress = build_callbacks(cfg, run_dir, tag, bool(loggers))
    callbacks.extend(extra_callbacks)
    kwargs = dict(OmegaConf.to_container(cfg.trainer, resolve=True))
    kwargs.update(overrides)
    return Trainer(
        **kwargs,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_progress_bar=progress,
    )


def finish_loggers(trainer: Trainer) -> None:
    """Finish and flush this Trainer's W&B run before ``train``/``test`` return.

    One W&B run per fit: without ``finish()``, folds and sweep trials merge into one run. And
    ``finish()`` alone may return while W&B's service process is still writing the offline run
    file, so a notebook user, ``wandb sync`` or a test reading ``wandb/`` right after ``train``
    could see a run file holding only its header; ``wandb.teardown()`` waits for the service to
    write and close everything.
    """
    finished = False
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            try:
                logger.experiment.finish()
                finished = True
            except Exception as exc:  # noqa: BLE001 - a logging hiccup must not lose the results
                log.warning("could not finish the W&B run in %s: %s", logger.save_dir, exc)
    if finished:
        import wandb

        wandb.teardown()


# --------------------------------------------------------------------------- protocols
def protocol(cfg: DictConfig) -> list[tuple[str | None, int, int]]:
    """The fits of a run as ``(kind, index, count)`` for ``DataModule.configure_split``.

    ``cv.protocol=rotate`` gives kind ``fold`` (the test fold rotates), ``holdout_cv`` gives
    ``holdout_fold`` (the test set stays the DataModule's hold-out; the validation fold rotates).
    """
    if cfg.cv.folds and cfg.cv.folds > 1:
        kind = "holdout_fold" if cfg.cv.get("protocol", "rotate") == "holdout_cv" else "fold"
        return [(kind, i, int(cfg.cv.folds)) for i in range(int(cfg.cv.folds))]
    if cfg.splits.repeats and cfg.splits.repeats > 1:
        return [("repeat", i, int(cfg.splits.repeats)) for i in range(int(cfg.splits.repeats))]
    return [(None, 0, 1)]


def aggregate(per_split: list[dict[str, float]]) -> dict[str, float]:
    if len(per_split) == 1:
        return dict(per_split[0])
    keys = sorted({k for m in per_split for k in m})
    out: dict[str, float] = {}
    for key in keys:
        values = np.array([m[key] for m in per_split if key in m and not math.isnan(m[key])], dtype=float)
        out[key] = float(values.mean()) if values.size else float("nan")
        out[f"{key}_std"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return out


def is_lightning_model(cfg: DictConfig) -> bool:
    target = resolve_target(cfg.model._target_, where="model._target_")
    return isinstance(target, type) and issubclass(target, LightningModule)


# --------------------------------------------------------------------------- train
def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> RunResult:
    """Fit and test (once, or per fold/split). ``extra_callbacks`` join every fit's Trainer, after
    the config's own; ``avlab sweep`` passes its Optuna pruning callback this way. The run
    directory's ``status.json`` says whether it finished or failed (and why, see ``error.txt``)."""
    run_dir = create_run_dir(cfg)
    write_config(run_dir, cfg)
    with recorded_status(run_dir):
        return _train(cfg, run_dir, extra_callbacks)


def _train(cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence[Callback]) -> RunResult:
    splits = protocol(cfg)
    per_split: list[dict[str, float]] = []
    val_metrics: list[dict[str, float]] = []
    summary: list[str] = []
    lightning_model = is_lightning_model(cfg)
    # Every fold/repeat of this invocation (and its summary run) in one W&B group of its own.
    group = split_group(cfg, run_dir, len(splits))
    for kind, index, count in splits:
        tag = None if kind is None else f"{kind}{index}"
        seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        datamodule.configure_split(kind, index, count)
        if lightning_model:
            metrics, lines, val = _fit_and_test(
                cfg,
                datamodule,
                run_dir,
                tag,
                extra_callbacks,
                wandb_group=group,
                wandb_job_type=kind or "train",
            )
            val_metrics.append(val)
        else:
            metrics, lines = _fit_estimator(cfg, datamodule, run_dir, tag)
        per_split.append(metrics)
        summary.extend(lines if kind is None else [f"[{tag}] {line}" for line in lines])
    metrics = aggregate(per_split)
    if is_rank_zero():
        if len(per_split) > 1:
            _write_splits_csv(run_dir, per_split)
        _record_data(run_dir, cfg, datamodule)
        metrics = write_metrics(run_dir, metrics)
        if len(per_split) > 1 and lightning_model:  # estimators log no W&B runs to summarise
            log_split_summary(
                cfg, run_dir, wandb_mode(cfg), group, splits[0][0] or "split", per_split, metrics
            )
    return RunResult(run_dir, metrics, per_split, summary, val_metrics)


def _record_data(run_dir: Path, cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """``data.json``: fingerprints of the dataset folders the run read (``avlab table`` reuses a
    run only while they hold), written once per run directory (the first fold writes it) and
    before ``metrics.json``, so every finished run has one."""
    existing = read_data_record(run_dir)
    if existing is not None:
        return existing
    roots = {}
    if isinstance(datamodule, AvlabDataModule):
        roots["data"] = datamodule.dataset_root()
    if cfg.get("test_data") is not None:
        other = instantiate(cfg.test_data)
        if isinstance(other, AvlabDataModule):
            roots["test_data"] = other.dataset_root()
    return write_data_record(run_dir, roots) if roots else {}


def _data_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The data fingerprints as W&B summary keys, so runs over different data tell apart there too."""
    out: dict[str, Any] = {}
    for name, fp in record.items():
        out[f"data/{name}/sha1"], out[f"data/{name}/files"] = fp.get("sha1"), fp.get("files")
    return out


def _attach(module: Any, run_dir: Path, cfg: DictConfig) -> None:
    if isinstance(module, AvlabModule):
        module.run_dir = run_dir if is_rank_zero() else None
        module.wandb_table_rows = int(cfg.logger.wandb.max_table_rows)


def _fit_and_test(
    cfg: DictConfig,
    datamodule: Any,
    run_dir: Path,
    tag: str | None,
    extra_callbacks: Sequence[Callback] = (),
    *,
    wandb_group: str | None = None,
    wandb_job_type: str = "train",
) -> tuple[dict[str, float], list[str], dict[str, float]]:
    model = instantiate(cfg.model)
    _attach(model, run_dir, cfg)
    history = ValidationHistory()
    trainer = build_trainer(
        cfg,
        run_dir,
        tag,
        extra_callbacks=[history, *extra_callbacks],
        wandb_group=wandb_group,
        wandb_job_type=wandb_job_type,
    )
    # ckpt_path resumes the interrupted first fit; later splits of a CV/repeats run start fresh.
    first_split = tag is None or re.fullmatch(r"[a-z_]+0", tag) is not None
    ckpt = cfg.ckpt_path if first_split else None
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = _test(trainer, model, datamodule, cfg, ckpt_path=best or None)
    val = history.selected(cfg.callbacks.checkpoint.monitor, cfg.callbacks.checkpoint.mode)
    lines = list(model.summary_lines) if isinstance(model, AvlabModule) else []
    wait = next((c for c in trainer.callbacks if isinstance(c, DataWait)), None)
    if wait is not None and wait.mean_fraction() is not None:
        results[METRIC] = wait.mean_fraction()
        lines.append(wait.summary_line())
    data = _data_summary(_record_data(run_dir, cfg, datamodule)) if is_rank_zero() else {}
    write_summary(trainer.loggers, {**results, **data})
    finish_loggers(trainer)
    return results, lines, val


def _dataset_name(datamodule: Any, default: str = "cross") -> str:
    name = datamodule.dataset_info().name if isinstance(datamodule, AvlabDataModule) else None
    return name or default


def _test(
    trainer: Trainer, model: Any, datamodule: Any, cfg: DictConfig, ckpt_path: str | None
) -> dict[str, float]:
    from avlab.rundir import clean_metrics

    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True)
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if cfg.get("test_data") is not None:
        # Cross-dataset evaluation: the same weights on a dataset never seen in training.
        other = instantiate(cfg.test_data)
        name = _dataset_name(other)
        trainer.test(model, datamodule=other, verbose=False)
        for k, v in trainer.callback_metrics.items():
            if k.startswith("test/"):
                metrics[f"test/{name}/{k[len('test/') :]}"] = v
    return clean_metrics(metrics)


def _estimator_parts(estimator: Any, datamodule: Any, where: str) -> None:
    if not isinstance(estimator, ClosedFormEstimator):
        raise ConfigError(
            f"`model._target_` builds {type(estimator).__name__}, which is neither a "
            "LightningModule nor an avlab.baselines.base.ClosedFormEstimator (fit/predict/evaluate)"
        )
    if not isinstance(datamodule, SupportsArrays):
        raise ConfigError(
            f"`{where}` ({type(datamodule).__name__}) does not serve arrays (SupportsArrays), "
            f"which the closed-form estimator {type(estimator).__name__} needs"
        )


def evaluate_estimator(
    estimator: ClosedFormEstimator, datamodule: Any, run_dir: Path | None, *, split: str = "test"
) -> dict[str, float]:
    """Predict ``split`` of a set-up DataModule and evaluate with the estimator's task evaluation;
    files go to ``run_dir`` (rank zero only), prefixed with the dataset's name if it has one."""
    part = datamodule.arrays(split)
    pred = np.asarray(estimator.predict(part.features), dtype=float)
    info = datamodule.dataset_info()
    outputs = EvalOutputs(run_dir if is_rank_zero() else None, prefix=f"{info.name}_" if info.name else "")
    samples = {"index": np.asarray(part.index), "pred": pred, "target": np.asarray(part.target, dtype=float)}
    try:
        table = datamodule.sample_table(split).loc[part.index]
    except NotImplementedError:
        table = None
    return estimator.evaluate(split, samples, table, outputs, info)


def _fit_estimator(
    cfg: DictConfig, datamodule: Any, run_dir: Path, tag: str | None
) -> tuple[dict[str, float], list[str]]:
    import joblib

    estimator = instantiate(cfg.model)
    _estimator_parts(estimator, datamodule, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    train_part = datamodule.arrays("train")
    estimator.fit(train_part.features, train_part.target)
    ckpt_dir = run_dir / "checkpoints" / (tag or "")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, ckpt_dir / "estimator.joblib")
    datamodule.setup("test")
    metrics = {f"test/{k}": v for k, v in evaluate_estimator(estimator, datamodule, run_dir).items()}
    lines = [line for line in [estimator.describe()] if line]
    if cfg.get("test_data") is not None:
        other = instantiate(cfg.test_data)
        _estimator_parts(estimator, other, "test_data")
        other.prepare_data()
        other.setup("test")
        name = _dataset_name(other)
        for k, v in evaluate_estimator(estimator, other, run_dir).items():
            metrics[f"test/{name}/{k}"] = v
    return metrics, lines


# --------------------------------------------------------------------------- test / predict
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path {path} does not exist; pass a checkpoint from a run directory's checkpoints/ folder"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling problem becomes an actionable message
        raise ConfigError(f"cannot load checkpoint {path}: {exc}") from exc


def model_from_checkpoint(cfg: DictConfig | None, ckpt_path: str | Path) -> Any:
    """Rebuild the trained model with the architecture stored in the checkpoint, then load weights.

    ``cfg`` (the current experiment) supplies the model config only for a checkpoint that holds
    none; ``None`` requires the stored one. ``AvlabModule.load_from_checkpoint`` calls this too, so
    ``avlab test``/``predict`` and a notebook rebuild a model the same way.
    """
    if str(ckpt_path).endswith(".joblib"):
        import joblib

        return joblib.load(ckpt_path)  # trusted local file written by avlab train
    ckpt = load_checkpoint(ckpt_path)
    stored = (ckpt.get("avlab") or {}).get("config")
    if stored:
        model_cfg = OmegaConf.create(stored["model"])
    elif cfg is not None:
        model_cfg = cfg.model
    else:
        raise ConfigError(
            f"checkpoint {ckpt_path} holds no avlab config (it was not written by `avlab train`): "
            "build the module yourself and load its state_dict, or test it with "
            "`avlab test EXPERIMENT ckpt_path=PATH`, which takes the model from the experiment"
        )
    model = instantiate(model_cfg)
    if isinstance(model, LightningModule):
        # Lightning's order: the module's own hook (unqa restores its training step) before the weights.
        model.on_load_checkpoint(ckpt)
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    # Only standardisation buffers may be missing (older checkpoints); anything else is a mismatch.
    if unexpected or [m for m in missing if not m.endswith(("_mean", "_std"))]:
        raise ConfigError(
            f"checkpoint {ckpt_path} does not fit `{model_cfg._target_}`: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model


def test(cfg: DictConfig) -> RunResult:
    if not cfg.ckpt_path:
        raise ConfigError("`avlab test` needs ckpt_path=PATH (a checkpoint from a run directory)")
    run_dir = create_run_dir(cfg, suffix="test")
    write_config(run_dir, cfg)
    with recorded_status(run_dir):
        return _test_checkpoint(cfg, run_dir)


def _test_checkpoint(cfg: DictConfig, run_dir: Path) -> RunResult:
    seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model = model_from_checkpoint(cfg, cfg.ckpt_path)
    if isinstance(model, LightningModule):
        _attach(model, run_dir, cfg)
        trainer = build_trainer(cfg, run_dir)
        metrics = _test(trainer, model, datamodule, cfg, ckpt_path=None)
        write_summary(trainer.loggers, metrics)
        finish_loggers(trainer)
        lines = list(model.summary_lines) if isinstance(model, AvlabModule) else []
    else:
        _estimator_parts(model, datamodule, "data")
        datamodule.prepare_data()
        datamodule.setup("test")
        metrics = {f"test/{k}": v for k, v in evaluate_estimator(model, datamodule, run_dir).items()}
        lines = []
    if is_rank_zero():
        metrics = write_metrics(run_dir, metrics)
    return RunResult(run_dir, metrics, [metrics], lines)


def predict(cfg: DictConfig, inputs: dict[str, str]) -> tuple[Path, dict[str, Any]]:
    if not cfg.ckpt_path:
        raise ConfigError("`avlab predict` needs ckpt_path=PATH (a checkpoint from a run directory)")
    run_dir = create_run_dir(cfg, suffix="predict")
    write_config(run_dir, cfg)
    datamodule = instantiate(cfg.data)
    model = model_from_checkpoint(cfg, cfg.ckpt_path)
    if isinstance(model, LightningModule):
        model.eval()
        _attach(model, run_dir, cfg)
    if not isinstance(model, AvlabModule):
        raise ConfigError(f"{type(model).__name__} cannot predict on media (only avlab LightningModules can)")
    with torch.no_grad():
        result = model.predict_media(inputs, datamodule, run_dir)
    return run_dir, result


def _write_splits_csv(run_dir: Path, per_split: list[dict[str, float]]) -> None:
    import pandas as pd

    frame = pd.DataFrame(per_split)
    frame.insert(0, "split", range(len(per_split)))
    frame.to_csv(run_dir / "folds.csv", index=False)
