"""``avlab sweep``: pruning, summary files, resume, failed and interrupted trials, DDP, the packaged spaces.

The toy task (tests/toy_task.py) trains in well under a second per fit, so these tests run real
Optuna studies on real SQLite storage end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from avlab import cli
from avlab.errors import ConfigError
from avlab.sweep import check_space, list_sweeps, load_sweep

TESTS = Path(__file__).resolve().parent
COMPLETE, PRUNED, FAIL, RUNNING = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.RUNNING,
)

# lr 0.05 learns the toy regression in a few epochs; 0.002 and 0.001 barely move, so once the
# first (paper) trial has completed the median pruner stops them after their first epoch.
TOY_SWEEP = """
experiment: toy.yaml
objective: {metric: val/loss, direction: minimize, aggregate: mean}
overrides: [cv.folds=2]
trials: 4
sampler: {type: tpe, seed: 0}
pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}
params:
  model.lr: {type: categorical, choices: [0.05, 0.002, 0.001]}
  data.batch_size: {type: categorical, choices: [8, 16]}
first_trial: {model.lr: 0.05, data.batch_size: 16}
"""


def write_sweep(folder: Path, text: str = TOY_SWEEP, name: str = "toy_sweep.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str, expect: int = 0) -> tuple[Path | None, str]:
    rc = cli.main(["sweep", *args])
    captured = capsys.readouterr()
    assert rc == expect, captured.out[-3000:] + captured.err[-3000:]
    last = captured.out.strip().splitlines()[-1] if captured.out.strip() else ""
    sweep_dir = Path(last.removeprefix("sweep directory: ")) if last.startswith("sweep directory: ") else None
    return sweep_dir, captured.out + captured.err


def load(sweep_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'study.db'}")


def test_sweep_prunes_writes_summary_and_resumes(capsys, toy_experiment: Path) -> None:
    sweep = write_sweep(toy_experiment.parent)
    sweep_dir, out = run(capsys, str(sweep), "--trials", "4")
    assert sweep_dir == toy_experiment.parent / "runs" / "sweeps" / "toy_sweep"  # run.root/sweeps/<study>
    study = load(sweep_dir, "toy_sweep")
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    # The paper's values come first, enqueued once.
    assert trials[0].params == {"model.lr": 0.05, "data.batch_size": 16}
    assert trials[0].state == COMPLETE and "first_trial" in trials[0].user_attrs["source"]
    states = [t.state for t in trials]
    assert PRUNED in states and set(states) <= {COMPLETE, PRUNED}
    pruned = next(t for t in trials if t.state == PRUNED)
    assert 0 in pruned.intermediate_values  # reported through optuna-integration's callback
    # The objective: val/loss at the best-checkpoint epoch of each fold, averaged over the folds.
    done = trials[0]
    assert len(done.user_attrs["fold_values"]) == 2
    assert done.value == pytest.approx(sum(done.user_attrs["fold_values"]) / 2)
    # Fold k's epoch e is reported at step k * max_epochs + e (max_epochs=3 in the toy experiment).
    assert sorted(done.intermediate_values) == [0, 1, 2, 3, 4, 5]
    assert (Path(done.user_attrs["run_dir"]) / "folds.csv").is_file()
    assert Path(done.user_attrs["run_dir"]).parent == sweep_dir / "trials"

    best = json.loads((sweep_dir / "best_params.json").read_text())
    assert best["best_trial"] == study.best_trial.number and best["params"] == study.best_trial.params
    assert best["best_value"] == pytest.approx(study.best_value)
    assert best["overrides"] == [
        f"model.lr={best['params']['model.lr']}",
        f"data.batch_size={best['params']['data.batch_size']}",
    ]
    csv_lines = (sweep_dir / "trials.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and "state" in csv_lines[0] and "params_model.lr" in csv_lines[0]
    for png in ("param_importances.png", "parallel_coordinate.png"):
        data = (sweep_dir / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, png
    assert "PRUNED" in out and f"sweep directory: {sweep_dir}" in out

    # Re-running with --trials N continues the same study with N more trials.
    sweep_dir2, out = run(capsys, str(sweep), "--trials", "2")
    assert sweep_dir2 == sweep_dir and "resumed, 4 trial(s) so far" in out
    study = load(sweep_dir, "toy_sweep")
    assert [t.number for t in study.trials] == list(range(6))
    assert sum("source" in t.user_attrs for t in study.trials) == 1  # no second paper trial
    assert all(t.state in (COMPLETE, PRUNED) for t in study.trials)
    assert len((sweep_dir / "trials.csv").read_text().splitlines()) == 7
    assert optuna.get_all_study_names(f"sqlite:///{sweep_dir / 'study.db'}") == ["toy_sweep"]


def test_a_crashing_trial_is_recorded_with_its_error_and_the_study_goes_on(
    capsys, toy_experiment: Path
) -> None:
    # A negative learning rate makes torch.optim.SGD raise inside trainer.fit.
    sweep = write_sweep(
        toy_experiment.parent,
        """
experiment: toy.yaml
objective: {metric: val/loss}
pruner: {type: none}
sampler: {type: random, seed: 3}
params:
  model.lr: {type: categorical, choices: [-1.0, 0.05]}
first_trial: {model.lr: -1.0}
""",
        name="crash.yaml",
    )
    sweep_dir, out = run(capsys, str(sweep), "--trials", "3", "--study", "crashy")
    study = load(sweep_dir, "crashy")
    assert len(study.trials) == 3 and all(t.state != RUNNING for t in study.trials)
    failed = study.trials[0]
    assert failed.state == FAIL and "Invalid learning rate" in failed.user_attrs["error"]
    assert any(t.state == COMPLETE for t in study.trials[1:])
    assert "trial 0 failed: ValueError: Invalid learning rate" in out
    assert "Invalid learning rate" in (sweep_dir / "trials.csv").read_text()
    assert json.loads((sweep_dir / "best_params.json").read_text())["trials"]["fail"] >= 1


def test_each_trial_is_a_wandb_run_grouped_by_study_with_its_parameters(capsys, toy_experiment: Path) -> None:
    sweep = write_sweep(toy_experiment.parent)
    sweep_dir, _ = run(
        capsys, str(sweep), "--trials", "2", "--study", "wb-study", "cv.folds=0", "logger.wandb.mode=offline"
    )
    study = load(sweep_dir, "wb-study")
    assert [t.state for t in study.trials] == [COMPLETE, PRUNED]
    records = []
    for t in study.trials:
        runs = list((Path(t.user_attrs["run_dir"]) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, "one W&B run per fit of each trial"
        records.append(next(runs[0].glob("*.wandb")).read_bytes())
    for t, record in zip(study.trials, records, strict=True):
        # The offline record holds the run's config and metadata as JSON strings; `wandb sync` uploads it.
        assert b'"group":"wb-study"' in record and b'"sweep"' in record
        assert b"optuna" in record and str(t.params["model.lr"]).encode() in record
    assert b"pruned" in records[1] and b"pruned" not in records[0]


def test_bad_sweeps_fail_with_the_closest_name(capsys, toy_experiment: Path) -> None:
    folder = toy_experiment.parent
    bad_key = write_sweep(
        folder,
        TOY_SWEEP.replace("model.lr:", "model.lrr:").replace("{model.lr: 0.05,", "{model.lrr: 0.05,"),
        name="bad_key.yaml",
    )
    _, out = run(capsys, str(bad_key), expect=2)
    assert "Did you mean `model.lr`" in out
    _, out = run(capsys, "avq/tabel2", expect=2)
    assert "Did you mean `avq/table2`" in out
    _, out = run(capsys, str(write_sweep(folder)), "model.lr=0.1", expect=2)
    assert "searches `model.lr`" in out
    with pytest.raises(ConfigError, match="outside its search space"):
        load_sweep(
            str(
                write_sweep(
                    folder, TOY_SWEEP.replace("{model.lr: 0.05,", "{model.lr: 0.3,"), name="bad_first.yaml"
                )
            )
        )
    with pytest.raises(ConfigError, match=r"Did you mean `n_startup_trials`"):
        load_sweep(
            str(
                write_sweep(
                    folder,
                    TOY_SWEEP.replace("n_startup_trials: 1", "n_startup_trial: 1"),
                    name="bad_pruner.yaml",
                )
            )
        )
    with pytest.raises(ConfigError, match=r"`first_trial\.seed` is not a searched parameter"):
        load_sweep(
            str(
                write_sweep(
                    folder,
                    TOY_SWEEP.replace("data.batch_size: 16}", "data.batch_size: 16, seed: 1}"),
                    name="bad_first_key.yaml",
                )
            )
        )


def test_keys_inside_lists_and_shared_values(toy_experiment: Path) -> None:
    from omegaconf import OmegaConf

    from avlab.sweep import param_overrides

    spec = load_sweep(
        str(
            write_sweep(
                toy_experiment.parent,
                """
experiment: toy.yaml
objective: {metric: val/loss}
overrides: ["logger.wandb.tags=[a, b]"]
params:
  tag: {type: categorical, choices: [x, y], keys: [logger.wandb.tags.1]}
  lr: {type: float, low: 0.01, high: 0.1, log: true, keys: [model.lr]}
""",
                name="lists.yaml",
            )
        )
    )
    base = check_space(spec, [])
    overrides = param_overrides(OmegaConf.to_container(base), spec.params, {"tag": "y", "lr": 0.02})
    assert overrides == ["model.lr=0.02", 'logger.wandb.tags=["a", "y"]']
    bad = spec.params["tag"]
    bad.keys = ["logger.wandb.tags.5"]
    with pytest.raises(ConfigError, match="out of range"):
        check_space(spec, [])


def test_postgres_storage_without_its_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from avlab.sweep import open_storage

    # psycopg is the optional `postgres` extra; None in sys.modules makes `import psycopg` fail as
    # if it were not installed. SQLAlchemy imports the driver when the engine is created, before
    # any connection, so no server is needed.
    for name in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r"pip install 'avlab\[postgres\]'"):
        open_storage("postgresql://user:secret@127.0.0.1:9/db", heartbeat=False)
    try:
        open_storage("postgresql://user:secret@127.0.0.1:9/db", heartbeat=False)
    except ConfigError as exc:
        assert "secret" not in str(exc)  # the password never reaches a message


def test_every_packaged_sweep_fits_its_experiment() -> None:
    names = list_sweeps()
    assert {"avq/table2", "yt8m/attend_fusion", "saliency/avrsp", "unqa/unqa"} <= set(names)
    for name in names:
        spec = load_sweep(name)
        check_space(spec, [])  # every key exists in the experiment, and every value type fits
        if name != "avq/table2":
            assert set(spec.first_trial) == set(spec.params), (
                f"{name}: the paper's values are the first trial"
            )


def test_table2_is_the_papers_search_space() -> None:
    spec = load_sweep("avq/table2")
    assert (
        spec.experiment == "avq/attentive_fusion"
        and spec.metric == "val/loss"
        and spec.direction == "minimize"
    )
    assert spec.aggregate == "mean" and "cv.folds=5" in spec.overrides
    space = {name: (p.type, p.args) for name, p in spec.params.items()}
    assert space == {
        "model.net.n_layers": ("int", {"low": 1, "high": 5}),
        "model.lam": ("categorical", {"choices": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}),
        "model.net.activation": ("categorical", {"choices": ["gelu", "relu"]}),
        "model.net.dropout": ("categorical", {"choices": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}),
        "model.lr": ("categorical", {"choices": [1e-4, 1e-3, 1e-2]}),
        "model.weight_decay": ("categorical", {"choices": [1e-3, 1e-2, 1e-1]}),
        "model.net.num_heads": ("categorical", {"choices": [2, 4, 8]}),
        "model.net.d_ff": ("categorical", {"choices": [256, 512, 1024]}),
        "model.net.n_layers_a2v": ("int", {"low": 1, "high": 5}),
        "model.net.n_layers_v2a": ("int", {"low": 1, "high": 5}),
    }
    assert spec.first_trial == {
        "model.net.n_layers": 1,
        "model.lam": 0.6,
        "model.net.activation": "gelu",
        "model.net.num_heads": 4,
        "model.net.d_ff": 512,
        "model.net.n_layers_a2v": 1,
        "model.net.n_layers_v2a": 1,
    }


# --------------------------------------------------------------------------- subprocesses
def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("AVLAB_RUN_DIR", None)
    return env


def test_ctrl_c_leaves_the_study_consistent_and_exits_130(toy_experiment: Path, tmp_path: Path) -> None:
    sweep = write_sweep(
        toy_experiment.parent,
        TOY_SWEEP.replace("overrides: [cv.folds=2]", "overrides: [trainer.max_epochs=5000]"),
    )
    # A child inherits an ignored SIGINT (a handler is reset to the default): whatever an earlier
    # test left in this worker, the sweep starts with Ctrl-C working.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "avlab.cli", "sweep", str(sweep), "--trials", "3", "--pruner", "none"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
            env=_env(),
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    lines = []
    # Upper bounds, not timings: a passing run takes ~15 s.
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("trial 0:"):
            break
    time.sleep(1.0)  # inside trial 0's fit (5000 epochs); 0-6 s all leave the study consistent
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output[-3000:]
    sweep_dir = toy_experiment.parent / "runs" / "sweeps" / "toy_sweep"
    study = load(sweep_dir, "toy_sweep")
    assert len(study.trials) == 1
    assert study.trials[0].state == FAIL and study.trials[0].user_attrs["error"] == "interrupted"
    assert (sweep_dir / "trials.csv").is_file() and (sweep_dir / "best_params.json").is_file()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_whose_keyboard_interrupt_is_lost_still_stops_the_trial() -> None:
    from avlab.sweep.callbacks import CTRL_C, ctrl_c_recorded, pruning_callback_class

    class DiesOnCtrlC:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs in here: Python drops its KeyboardInterrupt
                pass

    # Start from Python's default Ctrl-C handling, whatever an earlier test left in this worker.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with ctrl_c_recorded():
            victim = DiesOnCtrlC()
            del victim  # no KeyboardInterrupt reaches this frame...
            assert CTRL_C.is_set()  # ...but the Ctrl-C is on record
            pruning = pruning_callback_class()(optuna.create_study().ask(), "val/loss")
            with pytest.raises(KeyboardInterrupt):  # and the trial's next batch ends the fit
                pruning.on_train_batch_end(None, None, None, None, 0)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not CTRL_C.is_set()
        # An ignored SIGINT (a script's background job) stays ignored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with ctrl_c_recorded():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.ddp
def test_sweep_under_ddp_runs_one_trial_at_a_time_sampled_on_rank_0(
    toy_experiment: Path, tmp_path: Path
) -> None:
    # Data built beforehand: both ranks would otherwise write the toy demo file at once.
    sys.path.insert(0, str(TESTS))
    from toy_task import ToyDataModule

    data = ToyDataModule.build_demo(tmp_path / "toy-data")
    sweep = write_sweep(
        toy_experiment.parent,
        TOY_SWEEP.replace("choices: [0.05, 0.002, 0.001]", "choices: [0.05, 0.002, -1.0]"),
    )
    ddp = [
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"data.root={data}",
        "trainer.max_epochs=2",
        "cv.folds=0",
    ]
    # The study exists already, with three queued trials, so the outcomes are known: the good
    # learning rate completes, a negative one crashes on both ranks, a slow one is pruned.
    sweep_dir = toy_experiment.parent / "runs" / "sweeps" / "ddp"
    sweep_dir.mkdir(parents=True)
    storage = f"sqlite:///{sweep_dir / 'study.db'}"
    study = optuna.create_study(study_name="ddp", storage=storage)
    for lr in (0.05, -1.0, 0.002):
        study.enqueue_trial({"model.lr": lr, "data.batch_size": 16})
    proc = subprocess.run(
        [sys.executable, "-m", "avlab.cli", "sweep", str(sweep), "--study", "ddp", "--trials", "3", *ddp],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = load(sweep_dir, "ddp").trials
    assert [t.state for t in trials] == [COMPLETE, FAIL, PRUNED], [
        (t.state, t.user_attrs.get("error")) for t in trials
    ]
    assert "Invalid learning rate" in trials[1].user_attrs["error"]
    # The pruning decision reached both ranks: rank 0 reported per-epoch values and check_pruned() raised.
    assert trials[2].intermediate_values == {0: pytest.approx(trials[2].value)}
    assert sorted(trials[0].intermediate_values) == [0, 1]
    # Both ranks wrote into the trial's run directory under the sweep, none into one of its own.
    assert sorted(p.name for p in (sweep_dir / "trials").iterdir()) == [
        "trial-0000",
        "trial-0001",
        "trial-0002",
    ]
    assert not list((toy_experiment.parent / "runs").glob("toy/*")), (
        "a rank made a run directory outside the sweep"
    )


def test_the_objective_is_read_at_the_epoch_of_the_best_checkpoint() -> None:
    from avlab.runner import ValidationHistory

    history = ValidationHistory()
    history.epochs = [
        {"val/loss": 0.9, "val/cc": 0.1, "train/loss": 1.0},
        {"val/loss": 0.4, "val/cc": 0.3},
        {"val/loss": 0.4, "val/cc": 0.5},
        {"val/loss": 0.7, "val/cc": 0.6},
    ]
    # The first epoch with the best monitored value, as ModelCheckpoint keeps it; val/ keys only.
    assert history.selected("val/loss", "min") == {"val/loss": 0.4, "val/cc": 0.3}
    assert history.selected("val/cc", "max") == {"val/loss": 0.7, "val/cc": 0.6}
    assert history.selected("val/missing", "min") == {
        "val/loss": 0.7,
        "val/cc": 0.6,
    }  # not logged: last epoch
