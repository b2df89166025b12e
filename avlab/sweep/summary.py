"""What a sweep leaves in its directory (``best_params.json``, ``trials.csv``, the importance and
parallel-coordinate plots) and the table it prints."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from avlab.rundir import atomic_path, atomic_write
from avlab.sweep.spec import SweepSpec


def best_trial(study: Any) -> Any | None:
    """The study's best trial, or ``None`` before any trial has completed."""
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def write_summary(study: Any, sweep_dir: Path, spec: SweepSpec) -> None:
    """``best_params.json``, ``trials.csv``, ``param_importances.png``, ``parallel_coordinate.png``."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    best = best_trial(study)
    summary: dict[str, Any] = {
        "study": study.study_name,
        "sweep": spec.name,
        "experiment": spec.experiment,
        "objective": {"metric": spec.metric, "direction": spec.direction, "aggregate": spec.aggregate},
        "trials": {k.lower(): v for k, v in states.items() if v},
        "best_trial": None,
        "best_value": None,
        "params": None,
        "overrides": None,
    }
    if best is not None:
        summary.update(
            best_trial=best.number,
            best_value=best.value,
            params=best.params,
            overrides=best.user_attrs.get("overrides"),
            run_dir=best.user_attrs.get("run_dir"),
            test_metrics={k: v for k, v in best.user_attrs.items() if k.startswith("test/")},
        )
    atomic_write(sweep_dir / "best_params.json", json.dumps(summary, indent=2, default=str) + "\n")
    frame = study.trials_dataframe(
        attrs=(
            "number",
            "state",
            "value",
            "datetime_start",
            "datetime_complete",
            "duration",
            "params",
            "user_attrs",
        )
    )
    if "duration" in frame:
        frame["duration"] = frame["duration"].dt.total_seconds()
    atomic_write(sweep_dir / "trials.csv", frame.to_csv(index=False))
    _plots(study, sweep_dir, spec.metric)


def _plots(study: Any, sweep_dir: Path, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    n_params = len({name for t in complete for name in t.params})

    def save(filename: str, draw: Any, need: int, why: str) -> None:
        fig = None
        try:
            if len(complete) < need:
                raise ValueError(f"needs {need} complete trials, the study has {len(complete)}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            # One axis (or bar) per parameter: widen with the search space so labels stay legible.
            fig.set_size_inches(max(9.0, 1.3 * (n_params + 1)), max(fig.get_size_inches()[1], 5.0))
        except Exception as exc:  # noqa: BLE001 - a plot that cannot be drawn says why, in the PNG itself
            if fig is not None:
                plt.close(fig)
            fig, ax = plt.subplots(figsize=(8, 3))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{why}\nnot available yet: {exc}", ha="center", va="center", wrap=True)
        with atomic_path(sweep_dir / filename) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)

    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    save(
        "param_importances.png",
        lambda: ovm.plot_param_importances(study, evaluator=evaluator, target_name=target),
        2,
        f"hyper-parameter importance (fANOVA) of study {study.study_name}",
    )
    save(
        "parallel_coordinate.png",
        lambda: ovm.plot_parallel_coordinate(study, target_name=target),
        1,
        f"parallel coordinates of study {study.study_name}",
    )


def print_summary(study: Any, spec: SweepSpec, best: Any | None, sweep_dir: Path, out: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    table = Table(title=f"study {study.study_name}: {spec.direction} {spec.metric}")
    for col in ("trial", "state", "value", "seconds", "params / error"):
        table.add_column(col, justify="right" if col in ("trial", "value", "seconds") else "left")
    for t in trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        secs = "" if t.duration is None else f"{t.duration.total_seconds():.1f}"
        detail = t.user_attrs.get("error") or " ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        table.add_row(str(t.number), t.state.name, value, secs, detail)
    Console(file=out, width=160).print(table)
    if best is not None:
        print(f"best trial {best.number}: {spec.metric} = {best.value:.4f}", file=out)
        print("best parameters: " + " ".join(best.user_attrs.get("overrides") or []), file=out)
    else:
        print("no trial has completed yet", file=out)
    print(f"sweep directory: {sweep_dir}", file=out, flush=True)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if len(repr(value)) <= 8 else f"{value:.4g}"
    return str(value)
