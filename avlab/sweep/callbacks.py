"""Lightning callbacks that a trial's fits get from the sweep: Optuna pruning across CV folds (DDP
included) and the trial's identity in its W&B runs."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

#: Set by the sweep's Ctrl-C handler. The KeyboardInterrupt a signal raises can be lost: raised
#: inside a ``__del__`` or a weakref callback, Python prints "Exception ignored" and goes on, and a
#: 5000-epoch trial then trains on. The trial's fits check this flag after every batch and raise it
#: again, so one Ctrl-C always ends the sweep.
CTRL_C = threading.Event()


@contextlib.contextmanager
def ctrl_c_recorded() -> Iterator[None]:
    """Within the block, Ctrl-C sets :data:`CTRL_C` and raises KeyboardInterrupt; the previous handler
    comes back after it. An ignored SIGINT stays ignored (a background job of a script is meant to
    be immune to the terminal's Ctrl-C), as does any handler outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or previous is None:
        yield
        return

    def on_ctrl_c(signum: int, frame: Any) -> None:
        CTRL_C.set()
        raise KeyboardInterrupt

    CTRL_C.clear()
    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        CTRL_C.clear()


@functools.cache
def pruning_callback_class() -> type:
    from optuna_integration import PyTorchLightningPruningCallback

    class _StepOffsetTrial:
        """The trial as the pruning callback sees it: epoch ``e`` of fit ``k`` is reported at step
        ``offset + e``, so the folds of one trial do not overwrite each other's steps."""

        def __init__(self, trial: Any) -> None:
            self._wrapped = trial
            self.offset = 0

        def report(self, value: float, step: int) -> None:
            self._wrapped.report(value, step=self.offset + int(step))

        def __getattr__(self, name: str) -> Any:
            return getattr(self._wrapped, name)

    class TrialPruning(PyTorchLightningPruningCallback):
        """Optuna-integration's pruning callback across the folds of one trial, DDP included.

        Without DDP the parent raises ``TrialPruned`` at the validation that decides it. Under
        DDP it only stops every rank (a broadcast decision), so this callback notes that the stop
        was the pruner's and raises at the end of the fit, on every rank alike: rank 0 through
        ``check_pruned()``, the others directly (they cannot rely on rank 0's storage write
        having landed yet).
        """

        def __init__(self, trial: Any, monitor: str) -> None:
            super().__init__(_StepOffsetTrial(trial), monitor)
            self._fits = 0
            self._ddp_pruned = False

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 100_000
            self._trial.offset = self._fits * epochs
            self._fits += 1
            self._ddp_pruned, self._pruned_epoch = False, 0
            super().on_fit_start(trainer, pl_module)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if CTRL_C.is_set():  # a Ctrl-C whose KeyboardInterrupt was lost (see CTRL_C)
                raise KeyboardInterrupt

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            import optuna

            stopping = trainer.should_stop
            try:
                super().on_validation_end(trainer, pl_module)
            except optuna.TrialPruned:
                raise optuna.TrialPruned(self._where(trainer.current_epoch)) from None
            if self.is_ddp_backend and trainer.should_stop and not stopping and not trainer.sanity_checking:
                self._ddp_pruned = True
                self._pruned_epoch = trainer.current_epoch

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            import optuna

            if not self._ddp_pruned:
                return
            if trainer.is_global_zero:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # it re-reports steps rank 0 already reported
                    try:
                        self.check_pruned()
                    except optuna.TrialPruned:
                        pass
            raise optuna.TrialPruned(self._where(self._pruned_epoch))

        def _where(self, epoch: int) -> str:
            fold = f"fit {self._fits - 1}, " if self._fits > 1 else ""
            return f"pruned at {fold}epoch {epoch} (step {self._trial.offset + epoch})"

    return TrialPruning


def trial_wandb_callback(study_name: str, number: int, params: dict[str, Any]) -> Any:
    from lightning import Callback

    class TrialWandb(Callback):
        """Adds the trial to each W&B run's config and closes the run when the fit ends early: the
        runner finishes W&B runs only after a successful test, and an open run would swallow the
        next trial's."""

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            for logger in _wandb_loggers(trainer):
                logger.experiment.config.update(
                    {"optuna": {"study": study_name, "trial": number, "params": params}},
                    allow_val_change=True,
                )

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            import optuna

            pruned = isinstance(exception, optuna.TrialPruned)
            for logger in _wandb_loggers(trainer):
                # Logging must not mask the trial's own outcome.
                with contextlib.suppress(Exception):
                    logger.experiment.summary["optuna/state"] = "pruned" if pruned else "failed"
                    logger.experiment.finish(exit_code=0 if pruned else 1)

    return TrialWandb()


def _wandb_loggers(trainer: Any) -> list[Any]:
    if not trainer.is_global_zero:
        return []
    return [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]


def finish_stray_wandb_run() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        with contextlib.suppress(Exception):
            wandb.finish(exit_code=1)
