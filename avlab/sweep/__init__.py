"""``avlab sweep``: Optuna hyper-parameter studies over an experiment's config keys.

A sweep is a YAML file under ``sweeps/`` (``avq/table2``) or any YAML path::

    experiment: avq/attentive_fusion          # the experiment every trial trains
    objective: {metric: val/loss, direction: minimize, aggregate: mean}
    overrides: [cv.folds=5]                   # fixed for every trial
    trials: 50                                # default for --trials
    sampler: {type: tpe, seed: 0}             # tpe | random, plus the Optuna sampler's arguments
    pruner: {type: median, n_startup_trials: 3, n_warmup_steps: 5}   # median | hyperband | percentile
                                              # | successive_halving | none, plus its arguments
    params:                                   # Optuna name -> distribution
      model.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.net.num_heads: {type: categorical, choices: [2, 4, 8]}
      lr: {type: float, low: 1.0e-6, high: 1.0e-3, log: true,
           keys: [model.lr, callbacks.extra.schedule.steps.0.lr]}   # one value, several keys
    first_trial: {model.net.num_heads: 4}     # the paper's values, enqueued once, when the study is new

A parameter's name is its config dot-key unless ``keys`` lists the keys it sets. Keys may index
lists (``model.loss_weights.1``). Every key is validated against the experiment before the first
trial; an unknown one fails with the closest valid key.

One module per job:

* :mod:`~avlab.sweep.spec`: the sweep file, its search space, sampler and pruner.
* :mod:`~avlab.sweep.space`: sampled values -> config overrides; the space checked against the experiment.
* :mod:`~avlab.sweep.storage`: RDB storage and the study.
* :mod:`~avlab.sweep.callbacks`: pruning across CV folds (DDP included) and the trial in W&B.
* :mod:`~avlab.sweep.ddp`: the file channel through which ranks > 0 follow rank 0's trials.
* :mod:`~avlab.sweep.loop`: the trial loop, :func:`run_sweep`.
* :mod:`~avlab.sweep.summary`: ``best_params.json``, ``trials.csv``, the plots and the printed table.

Design choices:

* Optuna is driven natively: ``study.optimize`` on RDB storage (SQLite under
  ``run.root/sweeps/<study>/study.db`` by default, ``--storage postgresql://...`` for several
  workers), so a study resumes by name and several processes share it. Storage heartbeats mark
  the trials of a killed worker failed, so they never stay "running".
* Objective: the ``objective.metric`` of each fit at the epoch its best checkpoint comes from
  (``RunResult.val_metrics``), aggregated over the CV folds / splits (``mean`` by default).
* Pruning: ``optuna_integration.PyTorchLightningPruningCallback`` reports ``objective.metric``
  after every validation. With ``cv.folds=K`` fold ``k``'s epoch ``e`` is reported at step
  ``k * max_epochs + e``, so the pruner compares each fold's epoch with the same fold's epoch of
  earlier trials (folds differ in difficulty; fold-level aggregates would wait a whole fold).
  Under DDP the callback only flags the decision, so ``check_pruned()`` runs when the fit ends.
* Failures: an exception in a trial marks it FAIL with the error text in its ``error`` user
  attribute, and the study goes on. Ctrl-C marks the running trial FAIL (``error: interrupted``),
  writes the summary and exits 130.
* DDP (``trainer.devices=2 trainer.strategy=ddp``): one trial at a time across ranks. Rank 0 owns
  the study and samples; Lightning's launcher starts the other ranks by re-running the command at
  the first fit, and they follow rank 0's trials, read from a private folder named by
  ``AVLAB_SWEEP_CHANNEL``, instead of sampling their own.
* W&B: each fit of a trial is a W&B run (the runner's logger) in group ``<study>``, tagged
  ``sweep``, whose config holds the resolved experiment config plus ``optuna: {study, trial, params}``.
* Outputs in the sweep directory: ``best_params.json``, ``trials.csv``, ``param_importances.png``,
  ``parallel_coordinate.png``, and one run directory per trial under ``trials/``.

Importing this package is cheap: Optuna, Lightning and matplotlib load when a sweep runs.
"""

from __future__ import annotations

from avlab.sweep.ddp import CHANNEL_ENV, DDP_STATUS_WAIT_S
from avlab.sweep.loop import SweepAborted, SweepResult, run_sweep
from avlab.sweep.space import check_space, param_overrides
from avlab.sweep.spec import (
    DEFAULT_TRIALS,
    ParamSpec,
    SweepSpec,
    build_pruner,
    build_sampler,
    find_sweep,
    list_sweeps,
    load_sweep,
    sweeps_root,
)
from avlab.sweep.storage import GRACE_S, HEARTBEAT_S, default_storage, open_storage, open_study
from avlab.sweep.summary import write_summary

__all__ = [
    "CHANNEL_ENV",
    "DDP_STATUS_WAIT_S",
    "DEFAULT_TRIALS",
    "GRACE_S",
    "HEARTBEAT_S",
    "ParamSpec",
    "SweepAborted",
    "SweepResult",
    "SweepSpec",
    "build_pruner",
    "build_sampler",
    "check_space",
    "default_storage",
    "find_sweep",
    "list_sweeps",
    "load_sweep",
    "open_storage",
    "open_study",
    "param_overrides",
    "run_sweep",
    "sweeps_root",
    "write_summary",
]
