"""The trial loop: :func:`run_sweep` creates or resumes the study, runs each trial as an
``avlab train`` of the experiment with the sampled overrides, and writes the summary at the end."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from avlab.errors import AvlabError, ConfigError, did_you_mean
from avlab.progress import progress_task
from avlab.sweep.callbacks import (
    ctrl_c_recorded,
    finish_stray_wandb_run,
    pruning_callback_class,
    trial_wandb_callback,
)
from avlab.sweep.ddp import CHANNEL_ENV, DDP_STATUS_WAIT_S, Channel, follow, is_follower
from avlab.sweep.space import check_space, param_overrides, yaml_value
from avlab.sweep.spec import build_pruner, build_sampler, load_sweep
from avlab.sweep.storage import default_storage, open_storage, open_study, redact, worker_id
from avlab.sweep.summary import best_trial, print_summary, write_summary


class SweepAborted(AvlabError):
    """The sweep stopped early for a reason the message explains; the study is consistent and resumes."""


class _OutOfStep(KeyboardInterrupt):
    """A trial failed on rank 0 only: the other ranks are blocked and the sweep must stop.
    (A KeyboardInterrupt, so that Optuna records the trial as FAIL and then lets it through.)"""


@dataclass
class SweepResult:
    study_name: str
    sweep_dir: Path
    storage: str
    trials: list[Any]
    best: Any | None
    interrupted: bool = False
    error: str | None = None


def _aggregate(values: list[float], how: str) -> float:
    import numpy as np

    return float({"mean": np.mean, "median": np.median, "min": np.min, "max": np.max}[how](values))


def _trial_dir(sweep_dir: Path, number: int) -> Path:
    base = sweep_dir / "trials" / f"trial-{number:04d}"
    path, n = base, 1
    while path.exists():  # a study recreated under the same name must not overwrite old trials
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run_sweep(
    sweep: str,
    *,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    overrides: Sequence[str] = (),
    pruner: str | None = None,
    out: Any = None,
) -> SweepResult | None:
    """Run ``trials`` more trials of the study (created or resumed); ``None`` on ranks > 0."""
    if is_follower():
        follow(Channel(Path(os.environ[CHANNEL_ENV])))
        return None
    import optuna

    from avlab.config import load_experiment
    from avlab.rundir import RUN_DIR_ENV
    from avlab.runner import train

    out = out or sys.stdout
    spec = load_sweep(sweep)
    if pruner is not None:
        spec.pruner = {"type": pruner}
    base = check_space(spec, overrides)
    n_trials = int(trials if trials is not None else spec.trials)
    if n_trials < 0:
        raise ConfigError("--trials must be >= 0")
    name = study_name or spec.name
    if not name or ".." in Path(name).parts or Path(name).is_absolute():
        raise ConfigError(
            f"--study {name!r} must be a plain name (it becomes a folder under run.root/sweeps/)"
        )
    sweep_dir = (Path(base.run.root) / "sweeps" / name).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(sweep_dir)
    rdb = open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.INFO)
    study, created = open_study(
        rdb, name, spec.direction, build_sampler(spec.sampler), build_pruner(spec.pruner)
    )
    # A resumed or parallel worker gets its own sampler seed: the same seed would replay the
    # first worker's random start-up samples. A lone worker on a new study keeps the file's seed.
    salt = (
        None if created and not storage else f"{len(study.trials)}" + (f":{worker_id()}" if storage else "")
    )
    study.sampler = build_sampler(spec.sampler, salt=salt)
    if created:
        study.set_user_attr("sweep", spec.name)
        study.set_user_attr("experiment", spec.experiment)
        study.set_user_attr(
            "objective", {"metric": spec.metric, "direction": spec.direction, "aggregate": spec.aggregate}
        )
        if spec.first_trial:
            study.enqueue_trial(spec.first_trial, user_attrs={"source": "first_trial (paper values)"})
    print(
        f"study `{name}` ({'new' if created else f'resumed, {len(study.trials)} trial(s) so far'}) in "
        f"{redact(url)}: {n_trials} trial(s) of {spec.experiment}, {spec.direction} {spec.metric} "
        f"({spec.aggregate} over folds), pruner {spec.pruner.get('type', 'median')}",
        file=out,
        flush=True,
    )

    tree = OmegaConf.to_container(base, resolve=True)
    fixed = [*spec.overrides, *overrides]
    tags = list(dict.fromkeys([*(base.logger.wandb.tags or []), "sweep"]))
    plumbing = [f"logger.wandb.group={yaml_value(name)}", f"logger.wandb.tags={yaml_value(tags)}"]
    channel = Channel.create(
        {"study": name, "storage": url, "experiment": spec.experiment, "metric": spec.metric}
    )
    previous_channel = os.environ.get(CHANNEL_ENV)
    os.environ[CHANNEL_ENV] = str(channel.path)
    seq = 0
    announced: dict[int, int] = {}  # trial number -> its message number for the other ranks
    # One line per finished trial (count, elapsed, time left), not a live bar: every trial runs
    # Lightning's own progress bar, and two live displays on one terminal overwrite each other.
    trials_done = progress_task(f"sweep {name}", total=n_trials, unit="trial(s) done", lines=True)

    def objective(trial: optuna.Trial) -> float:
        nonlocal seq
        values = {p.name: p.suggest(trial) for p in spec.params.values()}
        chosen = param_overrides(tree, spec.params, values)
        trial.set_user_attr("overrides", chosen)
        trial.set_user_attr("worker", worker_id())
        run_dir = _trial_dir(sweep_dir, trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = load_experiment(spec.experiment, [*fixed, *chosen, *plumbing])
        all_overrides = [*fixed, *chosen, *plumbing]
        channel.announce(
            seq,
            {
                "trial_id": trial._trial_id,
                "number": trial.number,
                "overrides": all_overrides,
                "run_dir": str(run_dir),
            },
        )
        announced[trial.number] = seq
        seq += 1
        print(f"trial {trial.number}: {' '.join(chosen)}", file=out, flush=True)
        saved = os.environ.get(RUN_DIR_ENV)
        # The runner reuses an inherited run directory (that is how DDP ranks share one), so
        # exporting it puts this trial's run, on every rank, in the sweep's trials/ folder.
        os.environ[RUN_DIR_ENV] = str(run_dir)
        try:
            result = train(
                cfg,
                extra_callbacks=[
                    pruning_callback_class()(trial, spec.metric),
                    trial_wandb_callback(name, trial.number, values),
                ],
            )
        finally:
            if saved is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = saved
            finish_stray_wandb_run()
        if not result.val_metrics:
            raise ConfigError(
                f"{spec.experiment} has no validation loop (a closed-form estimator?): nothing to optimise"
            )
        per_fit = [m.get(spec.metric) for m in result.val_metrics]
        if any(v is None for v in per_fit):
            logged = sorted({k for m in result.val_metrics for k in m})
            raise ConfigError(
                f"objective metric `{spec.metric}` was not logged."
                f"{did_you_mean(spec.metric, logged)}"
                f" Logged: {', '.join(logged) or 'nothing'}"
            )
        trial.set_user_attr("fold_values", per_fit)
        for key, value in result.metrics.items():
            if not key.endswith("_std") and not math.isnan(value):
                trial.set_user_attr(key, value)
        value = _aggregate(per_fit, spec.aggregate)
        if math.isnan(value):
            raise FloatingPointError(f"objective `{spec.metric}` is NaN (per fit: {per_fit})")
        return value

    def guarded(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            # Lightning turns Ctrl-C during fit/test into SystemExit(1); Optuna marks a trial
            # FAIL only for Exception/KeyboardInterrupt, so hand it the latter.
            trial.set_user_attr("error", "interrupted")
            raise KeyboardInterrupt from exc
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", message[:4000])
            print(f"trial {trial.number} failed: {message}", file=out, flush=True)
            _check_ranks_in_step(trial, message)
            raise
        finally:
            if trial.number in announced:
                channel.report(announced[trial.number], 0, "done")
            trials_done.advance()

    def _check_ranks_in_step(trial: optuna.Trial, message: str) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or trial.number not in announced:
            return  # no other ranks, or the trial failed before they were told about it
        if not channel.await_reports(announced[trial.number], range(1, world), DDP_STATUS_WAIT_S):
            raise _OutOfStep(
                f"trial {trial.number} failed on rank 0 only ({message}); the other ranks are"
                " blocked in a collective, so the sweep stops. Re-run the same command to resume"
                " the study."
            )

    interrupted, error = False, None
    try:
        with warnings.catch_warnings(), ctrl_c_recorded():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(guarded, n_trials=n_trials, catch=(Exception,))
    except _OutOfStep as exc:
        error = str(exc)
    except KeyboardInterrupt:
        interrupted = True  # ctrl_c_recorded has put the previous SIGINT handler back
    finally:
        trials_done.close()
        # Other ranks waiting for a next trial see the end marker, or the folder gone, and exit 0.
        channel.close()
        channel.remove()
        if previous_channel is None:
            os.environ.pop(CHANNEL_ENV, None)
        else:
            os.environ[CHANNEL_ENV] = previous_channel
    _fail_own_running_trials(study, interrupted)
    all_trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    write_summary(study, sweep_dir, spec)
    print_summary(study, spec, best, sweep_dir, out)
    if error:
        raise SweepAborted(error)
    return SweepResult(name, sweep_dir, redact(url), all_trials, best, interrupted)


def _fail_own_running_trials(study: Any, interrupted: bool) -> None:
    """A second Ctrl-C can land while Optuna is telling the storage; nothing this process started
    may stay RUNNING. Trials of other workers are theirs to finish (heartbeats catch dead ones)."""
    import optuna

    if not interrupted:
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == worker_id():
            with contextlib.suppress(Exception):
                study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted")
                study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
