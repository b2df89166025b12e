"""Shared behaviour of every avlab LightningModule.

Metric names are uniform across tasks so runs compare in W&B and with ``avlab compare``:
``train/loss``, ``val/loss``, ``val/<metric>``, ``test/<metric>`` and ``test/<dataset>/<metric>``.
Everything is logged with ``add_dataloader_idx=False`` so Lightning never appends
``/dataloader_idx_N``.

Metrics that need every prediction at once (SRCC, GAP, per-video saliency averages) are computed
from :meth:`AvlabModule.gather_samples`, which all-gathers per-sample tensors from every DDP rank
and removes the duplicates that ``DistributedSampler`` pads in, using each sample's dataset index.

The shared evaluation hook (the same for every task, see ``docs/architecture.md``):

1. ``validation_step``/``test_step`` call :meth:`AvlabModule.collect` with per-sample tensors
   (``index`` from the batch, predictions, targets, whatever evaluation needs);
2. at the epoch's end the base gathers them from every rank (:meth:`AvlabModule.gather_samples`),
   looks their metadata up in the DataModule's ``sample_table(stage)``, calls the task's
   :meth:`AvlabModule.evaluate` and logs what it returns as ``<stage>/<metric>``;
3. ``evaluate`` writes prediction CSVs and plots through :class:`EvalOutputs`, which writes only on
   rank zero of a run with a run directory, atomically.

Evaluation runs in full precision whatever ``trainer.precision`` says: every ``validation_step``,
``test_step`` and ``predict_step`` a subclass defines runs with autocast off (the weights of a
``*-mixed`` run are float32 already). Under ``bf16-mixed`` autocast, scores carry 8 bits of
mantissa: predicted MOS near 4 fall on a grid of 0.03, ties pile up, and rank correlations drop.
The same avq checkpoint tested at ``bf16-mixed`` gave SRCC 0.36 and at ``32-true`` 0.52. Training
keeps the trainer's precision, where the speed is. A subclass that wants its evaluation in the
trainer's precision sets ``full_precision_eval = False``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning import LightningModule

from avlab.datamodules.base import AvlabDataModule, DatasetInfo
from avlab.rundir import atomic_path, atomic_write
from avlab.wandb_media import DEFAULT_MAX_TABLE_ROWS, WandbMedia


class EvalOutputs:
    """Where evaluation writes its files: ``run_dir`` (CSVs) and ``run_dir/plots`` (figures).

    Disabled (every method returns ``None`` and writes nothing) when ``run_dir`` is ``None``, i.e.
    on ranks other than zero and outside ``avlab train``/``test``. ``prefix`` (``<dataset>_`` for a
    cross-dataset test) keeps the files of two test sets of one run apart. With ``media`` (the
    run's W&B logger(s), see :mod:`avlab.wandb_media`) every figure written is also logged as
    ``plots/<name>`` and every CSV as ``tables/<name>``.
    """

    def __init__(self, run_dir: Path | str | None, prefix: str = "", media: WandbMedia | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.prefix = prefix
        self.media = media if self.run_dir is not None else None

    @property
    def enabled(self) -> bool:
        return self.run_dir is not None

    def path(self, name: str) -> Path | None:
        return None if self.run_dir is None else self.run_dir / f"{self.prefix}{name}"

    def plot_path(self, name: str) -> Path | None:
        """Path of a figure under ``plots/`` (the folder is created)."""
        if self.run_dir is None:
            return None
        (self.run_dir / "plots").mkdir(parents=True, exist_ok=True)
        return self.run_dir / "plots" / f"{self.prefix}{name}"

    def write_csv(self, name: str, frame: pd.DataFrame, *, index: bool = False) -> Path | None:
        path = self.path(name)
        if path is not None:
            atomic_write(path, frame.to_csv(index=index))
            if self.media is not None:
                self.media.table(path, frame, index=index)
        return path

    def plot(self, name: str, draw: Any, *args: Any, **kwargs: Any) -> Path | None:
        """``draw(*args, path, **kwargs)`` (the signature of :mod:`avlab.plots`'s functions) into a
        temporary file that replaces ``plots/<prefix><name>`` when it is complete."""
        path = self.plot_path(name)
        if path is not None:
            with atomic_path(path) as tmp:
                draw(*args, tmp, **kwargs)
            if self.media is not None and path.suffix.lower() == ".png":
                self.media.image(path)
        return path


_EVAL_STEPS = ("validation_step", "test_step", "predict_step")


def _in_full_precision(step: Any) -> Any:
    """``step`` run with autocast off on the module's device (see the module docstring)."""

    @functools.wraps(step)
    def run(self: AvlabModule, *args: Any, **kwargs: Any) -> Any:
        device = self.device.type
        if not (self.full_precision_eval and torch.is_autocast_enabled(device)):
            return step(self, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return step(self, *args, **kwargs)

    run.full_precision = True
    return run


class AvlabModule(LightningModule):
    """Base LightningModule: run-directory access, uniform logging, DDP-safe sample gathering."""

    #: Run this module's evaluation steps with autocast off (see the module docstring).
    full_precision_eval: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _EVAL_STEPS:
            step = cls.__dict__.get(name)
            if step is not None and not getattr(step, "full_precision", False):
                setattr(cls, name, _in_full_precision(step))

    def __init__(self) -> None:
        super().__init__()
        #: Set by the runner; ``None`` when the module is used outside ``avlab train``.
        self.run_dir: Path | None = None
        #: Lines the runner prints after the metrics table (e.g. a modality-importance summary).
        self.summary_lines: list[str] = []
        #: Rows of each CSV mirrored to W&B as a table; the runner sets ``logger.wandb.max_table_rows``.
        self.wandb_table_rows: int = DEFAULT_MAX_TABLE_ROWS
        self._collected: dict[str, list[dict[str, torch.Tensor]]] = {}

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: str | torch.device | None = None,
        **kwargs: Any,
    ) -> AvlabModule:
        """The module of an ``avlab train`` checkpoint, rebuilt from the model config it stores.

        avlab modules take ``nn.Module`` arguments (the network), which ``save_hyperparameters``
        cannot store safely; every avlab checkpoint holds the resolved config instead, so this
        rebuilds the module from it and loads the weights with ``weights_only=True``, exactly as
        ``avlab test`` does. ``map_location`` moves the loaded module (e.g. ``"cuda"``).
        """
        if kwargs:
            raise TypeError(
                f"{cls.__name__}.load_from_checkpoint takes no hyper-parameter overrides "
                f"({', '.join(kwargs)}): the checkpoint's stored config defines the module; "
                "change the experiment and train again, or edit the loaded module"
            )
        from avlab.runner import model_from_checkpoint

        model = model_from_checkpoint(None, checkpoint_path)
        if not isinstance(model, cls):
            from avlab.errors import ConfigError

            raise ConfigError(
                f"checkpoint {checkpoint_path} holds a {type(model).__name__}, not a {cls.__name__}: "
                f"load it with {type(model).__name__}.load_from_checkpoint"
            )
        if map_location is not None:
            model = model.to(map_location)
        return model

    #: Key of the dataset index in collected samples (the index of ``sample_table``).
    index_key: str = "index"
    #: Metrics that ``evaluate`` returns and that also go to the progress bar.
    progress_metrics: tuple[str, ...] = ("loss",)

    # ------------------------------------------------------------------ outputs
    @property
    def plots_dir(self) -> Path | None:
        if self.run_dir is None:
            return None
        path = Path(self.run_dir) / "plots"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def is_main_process(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    def log_metrics(self, prefix: str, metrics: dict[str, float | torch.Tensor], **kwargs: Any) -> None:
        """Log ``{name: value}`` as ``prefix/name`` with avlab's naming rules."""
        kwargs.setdefault("add_dataloader_idx", False)
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value, **kwargs)

    # ------------------------------------------------------------------ DDP gathering
    def gather_samples(
        self, samples: dict[str, torch.Tensor], index_key: str = "index"
    ) -> dict[str, torch.Tensor]:
        """Concatenate per-sample tensors from all ranks, de-duplicated by ``samples[index_key]``.

        Every rank gets the same result, ordered by sample index, so metrics computed from it are
        identical on all ranks and equal to a single-process evaluation.
        """
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            gathered = {}
            for key, value in samples.items():
                value = value.contiguous()
                # all_gather needs equal sizes on every rank: pad to the largest, then cut back.
                n = torch.tensor([value.shape[0]], device=value.device)
                sizes = self.all_gather(n).view(-1)
                max_n = int(sizes.max())
                if value.shape[0] < max_n:
                    pad = value.new_zeros((max_n - value.shape[0], *value.shape[1:]))
                    value = torch.cat([value, pad])
                out = self.all_gather(value)  # [world, max_n, ...]
                gathered[key] = torch.cat([out[r, : int(sizes[r])] for r in range(world)])
            samples = gathered
        if index_key not in samples:
            return samples
        index = samples[index_key].long()
        order = torch.argsort(index, stable=True)
        index = index[order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return {k: v[order][keep] for k, v in samples.items()}

    # ------------------------------------------------------------------ the shared evaluation hook
    def collect(self, stage: str, **samples: torch.Tensor) -> None:
        """Keep per-sample tensors of one evaluation batch (first dimension = samples).

        Must include :attr:`index_key` (the batch's dataset indices). Tensors are detached; they
        stay on their device until the epoch's end.
        """
        if self.index_key not in samples:
            raise KeyError(
                f"{type(self).__name__}.collect({stage!r}) needs `{self.index_key}` "
                "(the batch's dataset indices)"
            )
        self._collected.setdefault(stage, []).append({k: v.detach() for k, v in samples.items()})

    def gathered(self, stage: str) -> dict[str, torch.Tensor]:
        """Everything collected in ``stage`` since the last call, from all ranks, de-duplicated and
        ordered by dataset index (empty when nothing was collected). Collective under DDP."""
        outs = self._collected.pop(stage, [])
        if not outs:
            return {}
        merged = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return self.gather_samples(merged, index_key=self.index_key)

    def evaluate(
        self, stage: str, samples: dict[str, torch.Tensor], table: pd.DataFrame | None
    ) -> dict[str, float]:
        """The task's metrics of one stage (``val``/``test``) from all gathered samples.

        ``table`` holds the DataModule's ``sample_table(stage)`` rows of the samples, in the same
        order (``None`` when the DataModule has no table). Write files through
        :meth:`eval_outputs`. Returns ``{metric: value}``, logged as ``<stage>/<metric>``.
        """
        return {}

    def frozen_in_eval(self) -> list[torch.nn.Module]:
        """Submodules kept in eval mode on purpose while training: frozen extractors whose BatchNorm
        statistics and dropout must stay as they are. None by default."""
        return []

    def on_fit_start(self) -> None:
        # Lightning warns that modules in eval mode "may lead to unexpected behavior". When they are
        # exactly the frozen extractors above, that is the design, and the warning only alarms; any
        # other module in eval mode changes the count, so the warning still shows for it.
        frozen = {id(m) for root in self.frozen_in_eval() for m in root.modules()}
        in_eval = [m for m in self.modules() if not m.training]
        if in_eval and all(id(m) in frozen for m in in_eval):
            warnings.filterwarnings(
                "ignore", message=rf"Found {len(in_eval)} module\(s\) in eval mode at the start of training"
            )

    def on_validation_epoch_end(self) -> None:
        self.finish_stage("val")

    def on_test_epoch_end(self) -> None:
        self.finish_stage("test")

    def finish_stage(self, stage: str) -> dict[str, float]:
        """Gather, look up, evaluate and log one stage; what the epoch-end hooks run."""
        samples = self.gathered(stage)
        # Lightning's sanity check runs a few validation batches only: no metric of them is meaningful.
        if not samples or (stage == "val" and self._trainer is not None and self.trainer.sanity_checking):
            return {}
        metrics = self.evaluate(stage, samples, self.sample_rows(stage, samples[self.index_key]))
        for name, value in metrics.items():
            self.log(
                f"{stage}/{name}",
                float(value),
                prog_bar=name in self.progress_metrics,
                add_dataloader_idx=False,
            )
        return metrics

    @property
    def eval_datamodule(self) -> AvlabDataModule | None:
        """The DataModule being evaluated (the cross-dataset one during its test), if an avlab one."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return dm if isinstance(dm, AvlabDataModule) else None

    @property
    def dataset_info(self) -> DatasetInfo:
        dm = self.eval_datamodule
        return dm.dataset_info() if dm is not None else DatasetInfo()

    def sample_rows(self, stage: str, index: torch.Tensor) -> pd.DataFrame | None:
        """Rows of ``sample_table(stage)`` for the given dataset indices, in their order."""
        dm = self.eval_datamodule
        if dm is None:
            return None
        try:
            table = dm.sample_table(stage)
        except NotImplementedError:
            return None
        return table.loc[np.asarray(index.cpu(), dtype=np.int64)]

    def eval_outputs(self) -> EvalOutputs:
        """Where :meth:`evaluate` writes: the run directory on rank zero, nothing elsewhere."""
        name = self.dataset_info.name
        if not self.is_main_process or self.run_dir is None:
            return EvalOutputs(None)
        media = WandbMedia.for_trainer(self._trainer, self.wandb_table_rows)
        return EvalOutputs(self.run_dir, prefix=f"{name}_" if name else "", media=media)

    # ------------------------------------------------------------------ inference on media
    def predict_media(self, inputs: dict[str, str], datamodule: Any, out_dir: Path) -> dict[str, Any]:
        """Apply the model to new media named on the command line (``avlab predict``)."""
        raise NotImplementedError(f"{type(self).__name__} does not support `avlab predict` on media")
