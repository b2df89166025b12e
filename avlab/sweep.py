"""``avlab sweep``: Optuna hyper-parameter studies over an experiment's config keys (handbook §2).

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

Design choices (``reference/frameworks.md`` §0 items 1-2, §7 item 5):

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
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from avlab.config import find_yaml, list_yaml, package_root
from avlab.errors import AvlabError, ConfigError, closest, did_you_mean


class SweepAborted(AvlabError):
    """The sweep stopped early for a reason the message explains; the study is consistent and resumes."""

#: Set by rank 0 before its first fit; Lightning's DDP launcher copies it into the other ranks.
CHANNEL_ENV = "AVLAB_SWEEP_CHANNEL"
#: How often a running trial proves its worker is alive, and after how long without a sign a
#: RUNNING trial counts as abandoned (its worker was killed) and is marked FAIL.
HEARTBEAT_S, GRACE_S = 20, 120
#: Under DDP, how long a rank whose trial failed waits to hear that the other ranks failed too
#: (then the study goes on) before concluding they are blocked in a collective (then it stops).
DDP_STATUS_WAIT_S = 90
#: Default number of trials per invocation when neither the sweep file nor --trials says.
DEFAULT_TRIALS = 20

_TOP_KEYS = ("experiment", "description", "objective", "overrides", "trials", "sampler", "pruner", "params", "first_trial")
_AGGREGATES = ("mean", "median", "min", "max")


# --------------------------------------------------------------------------- the sweep file
@dataclass
class ParamSpec:
    """One searched hyper-parameter: an Optuna distribution and the config keys it sets."""

    name: str
    type: str
    keys: list[str]
    args: dict[str, Any]

    def distribution(self) -> Any:
        import optuna.distributions as d

        if self.type == "categorical":
            return d.CategoricalDistribution(self.args["choices"])
        cls = d.IntDistribution if self.type == "int" else d.FloatDistribution
        return cls(**self.args)

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.args["choices"])
        if self.type == "int":
            return trial.suggest_int(self.name, **self.args)
        return trial.suggest_float(self.name, **self.args)

    def representative(self) -> Any:
        """A value of the right type, used to validate the keys before any trial runs."""
        return self.args["choices"][0] if self.type == "categorical" else self.args["low"]


@dataclass
class SweepSpec:
    name: str
    path: Path
    experiment: str
    metric: str
    direction: str = "minimize"
    aggregate: str = "mean"
    description: str = ""
    overrides: list[str] = field(default_factory=list)
    trials: int = DEFAULT_TRIALS
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    params: dict[str, ParamSpec] = field(default_factory=dict)
    first_trial: dict[str, Any] = field(default_factory=dict)


def sweeps_root() -> Path:
    return package_root("avlab.sweeps")


def list_sweeps() -> list[str]:
    return list_yaml(sweeps_root())


def find_sweep(name: str) -> tuple[Path, str]:
    """Path of a sweep file and its display name (``avq/table2``)."""
    return find_yaml(name, sweeps_root(), kind="sweep", list_command="avlab sweep --list")


def load_sweep(name: str) -> SweepSpec:
    """Read and check a sweep file (its keys against the experiment are checked by :func:`check_space`)."""
    path, display = find_sweep(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    where = f"sweep `{display}` ({path})"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a mapping")
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where}: unknown key `{key}`.{did_you_mean(str(key), _TOP_KEYS)} Keys: {', '.join(_TOP_KEYS)}")
    if not raw.get("experiment"):
        raise ConfigError(f"{where}: `experiment` is missing (the experiment every trial trains, e.g. avq/attentive_fusion)")
    experiment = str(raw["experiment"])
    if experiment.endswith((".yaml", ".yml")) and not Path(experiment).is_absolute():
        # A file next to the sweep, so a sweep and its experiment can live outside the package.
        experiment = str((path.parent / experiment).resolve())
    objective = raw.get("objective") or {}
    if not isinstance(objective, dict) or not objective.get("metric"):
        raise ConfigError(f"{where}: `objective.metric` is missing (for example val/loss)")
    unknown = set(objective) - {"metric", "direction", "aggregate"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} in `objective`; keys: metric, direction, aggregate")
    direction = str(objective.get("direction", "minimize"))
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"{where}: `objective.direction` must be minimize or maximize, got {direction!r}")
    aggregate = str(objective.get("aggregate", "mean"))
    if aggregate not in _AGGREGATES:
        raise ConfigError(f"{where}: `objective.aggregate` must be one of {', '.join(_AGGREGATES)}, got {aggregate!r}")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"{where}: `overrides` must be a list of key=value strings")
    params = {str(k): _param_spec(str(k), v, where) for k, v in (raw.get("params") or {}).items()}
    if not params:
        raise ConfigError(f"{where}: `params` is empty; name at least one hyper-parameter to search")
    seen: dict[str, str] = {}
    for p in params.values():
        for key in p.keys:
            if key in seen:
                raise ConfigError(f"{where}: key `{key}` is set by both `{seen[key]}` and `{p.name}`")
            seen[key] = p.name
    first = {str(k): v for k, v in (raw.get("first_trial") or {}).items()}
    for key, value in first.items():
        if key not in params:
            raise ConfigError(f"{where}: `first_trial.{key}` is not a searched parameter.{did_you_mean(key, params)}")
        if not _contains(params[key], value):
            raise ConfigError(f"{where}: `first_trial.{key}` = {value!r} lies outside its search space {_describe(params[key])}")
    spec = SweepSpec(name=display, path=path, experiment=experiment, metric=str(objective["metric"]), direction=direction,
                     aggregate=aggregate, description=str(raw.get("description") or ""), overrides=list(overrides),
                     trials=int(raw.get("trials") or DEFAULT_TRIALS), params=params, first_trial=first)
    if raw.get("sampler") is not None:
        spec.sampler = dict(raw["sampler"])
    if raw.get("pruner") is not None:
        spec.pruner = dict(raw["pruner"])
    build_sampler(spec.sampler, where=where)  # fail on a bad sampler/pruner now, not after a trial
    build_pruner(spec.pruner, where=where)
    return spec


def _param_spec(name: str, node: Any, where: str) -> ParamSpec:
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: `params.{name}` must be a mapping such as {{type: float, low: 1e-4, high: 1e-2, log: true}}")
    node = dict(node)
    kind = node.pop("type", "categorical" if "choices" in node else None)
    keys = node.pop("keys", None) or [name]
    if isinstance(keys, str):
        keys = [keys]
    allowed = {"categorical": {"choices"}, "int": {"low", "high", "step", "log"}, "float": {"low", "high", "step", "log"}}
    if kind not in allowed:
        raise ConfigError(f"{where}: `params.{name}.type` must be int, float or categorical, got {kind!r}")
    bad = set(node) - allowed[kind]
    if bad:
        raise ConfigError(f"{where}: `params.{name}` ({kind}) takes {', '.join(sorted(allowed[kind]))} (and keys), not {', '.join(sorted(bad))}")
    if kind == "categorical" and not (isinstance(node.get("choices"), list) and node["choices"]):
        raise ConfigError(f"{where}: `params.{name}.choices` must be a non-empty list")
    if kind != "categorical" and ("low" not in node or "high" not in node):
        raise ConfigError(f"{where}: `params.{name}` needs `low` and `high`")
    spec = ParamSpec(name=name, type=kind, keys=[str(k) for k in keys], args=node)
    try:
        spec.distribution()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: `params.{name}`: {exc}") from exc
    return spec


def _contains(p: ParamSpec, value: Any) -> bool:
    if p.type == "categorical":
        return value in p.args["choices"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (p.type == "int" and not float(value).is_integer()):
        return False
    return p.args["low"] <= value <= p.args["high"]


def _describe(p: ParamSpec) -> str:
    if p.type == "categorical":
        return "{" + ", ".join(map(str, p.args["choices"])) + "}"
    extra = "".join(f", {k}={p.args[k]}" for k in ("step", "log") if p.args.get(k))
    return f"[{p.args['low']}, {p.args['high']}{extra}]"


# --------------------------------------------------------------------------- samplers and pruners
def _construct(cls: type, kwargs: dict[str, Any], where: str, what: str) -> Any:
    params = [n for n in inspect.signature(cls).parameters if n not in ("self", "args", "kwargs")]
    for key in kwargs:
        if key not in params:
            raise ConfigError(f"{where}: `{what}.{key}` is not an argument of optuna's {cls.__name__}."
                              f"{did_you_mean(key, params)} Arguments: {', '.join(params)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot build {cls.__name__}: {exc}") from exc


def build_sampler(node: dict[str, Any], *, where: str = "sweep", salt: str | None = None) -> Any:
    """``{type: tpe|random, seed: S, ...}``. A ``salt`` mixes into the seed (by hashing: seeds that
    are merely offset collide, e.g. trial count + pid) so that resumed and parallel workers do not
    replay the exact samples of the first one."""
    import optuna

    node = dict(node)
    kind = str(node.pop("type", "tpe"))
    classes = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    if kind not in classes:
        raise ConfigError(f"{where}: `sampler.type` must be one of {', '.join(classes)}, got {kind!r}.{did_you_mean(kind, classes)}")
    if node.get("seed") is not None and salt is not None:
        digest = hashlib.sha256(f"{int(node['seed'])}:{salt}".encode()).digest()
        node["seed"] = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    return _construct(classes[kind], node, where, "sampler")


def build_pruner(node: dict[str, Any], *, where: str = "sweep") -> Any:
    """``{type: median|hyperband|percentile|successive_halving|none, ...}``."""
    import optuna

    node = dict(node)
    kind = str(node.pop("type", "median"))
    classes = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
               "percentile": optuna.pruners.PercentilePruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "none": optuna.pruners.NopPruner}
    if kind not in classes:
        raise ConfigError(f"{where}: `pruner.type` must be one of {', '.join(classes)}, got {kind!r}.{did_you_mean(kind, classes)}")
    return _construct(classes[kind], node, where, "pruner")


# --------------------------------------------------------------------------- params -> config overrides
def _yaml_value(value: Any) -> str:
    """``value`` as an override's right-hand side that parses back to exactly ``value``."""
    if isinstance(value, str) and value and not any(c in value for c in "[]{}:,'\"$#=") and yaml.safe_load(value) == value:
        return value  # plain words (gelu) stay readable
    # JSON is valid YAML flow syntax: other strings stay strings ("1e-3" quoted), lists/dicts survive.
    return json.dumps(value)


def _list_split(tree: Any, key: str) -> tuple[str, list[str]] | None:
    """For a key that indexes a list (``a.steps.0.lr``): the list's path and the rest of the key."""
    node, parts = tree, key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, list):
            return ".".join(parts[:i]), parts[i:]
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return None


def _get_in(tree: Any, path: str) -> Any:
    for part in path.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def _set_in(node: Any, parts: list[str], value: Any, key: str) -> None:
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"`{key}`: index {part} is out of range; the list has {len(node)} item(s)")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node:
                    raise ConfigError(f"unknown key `{key}`.{did_you_mean(part, [str(k) for k in node])}")
                node = node[part]
        else:
            raise ConfigError(f"`{key}`: `{'.'.join(parts[:i])}` is a value, not a mapping or list")


def param_overrides(base: dict[str, Any], params: dict[str, ParamSpec], values: dict[str, Any]) -> list[str]:
    """``key=value`` overrides for one trial. Keys inside lists rewrite the whole list, because
    OmegaConf's dot-list syntax cannot address a list item."""
    out: list[str] = []
    lists: dict[str, Any] = {}
    for name, value in values.items():
        for key in params[name].keys:
            split = _list_split(base, key)
            if split is None:
                out.append(f"{key}={_yaml_value(value)}")
                continue
            list_path, rest = split
            if list_path not in lists:
                lists[list_path] = copy.deepcopy(_get_in(base, list_path))
            _set_in(lists[list_path], rest, value, key)
    out.extend(f"{path}={_yaml_value(value)}" for path, value in lists.items())
    return out


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _leaf_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in _leaf_keys(v, f"{prefix}.{i}")] or [prefix]
    return [prefix]


def check_space(spec: SweepSpec, overrides: Sequence[str]) -> DictConfig:
    """Validate every searched key against the experiment; returns the trial-independent config.

    Composes the experiment once with every parameter at a representative value, so
    ``load_experiment`` reports unknown keys (with the closest valid key) and wrong types."""
    from avlab.config import load_experiment, parse_overrides

    where = f"sweep `{spec.name}`"
    fixed = [*spec.overrides, *overrides]
    cli_keys = set(_leaf_keys(OmegaConf.to_container(parse_overrides(list(overrides)))))
    for p in spec.params.values():
        for key in p.keys:
            # A parent on the command line is fine (steps=[...] then steps.0.lr searched within it).
            if key in cli_keys or any(c.startswith(key + ".") for c in cli_keys):
                raise ConfigError(f"{where} searches `{key}` (parameter `{p.name}`), so it cannot also be set on the command line."
                                  " Drop the override, or copy the sweep file and change its search space.")
    base = load_experiment(spec.experiment, fixed)
    tree = OmegaConf.to_container(base, resolve=True)
    sample = {p.name: spec.first_trial.get(p.name, p.representative()) for p in spec.params.values()}
    try:
        # Keys inside lists are checked here (index range, item keys); the rest by load_experiment.
        trial_overrides = param_overrides(tree, spec.params, sample)
    except ConfigError as exc:
        hint = closest(str(exc).split("`")[1] if "`" in str(exc) else "", _leaf_keys(tree))
        raise ConfigError(f"{where}: {exc}" + (f" Closest valid key: `{hint[0]}`." if hint else "")) from exc
    try:
        load_experiment(spec.experiment, [*fixed, *trial_overrides])
    except ConfigError as exc:
        raise ConfigError(f"{where}: its search space does not fit {spec.experiment}: {exc}") from exc
    return base


# --------------------------------------------------------------------------- storage and study
def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def open_storage(url: str, *, heartbeat: bool = True) -> Any:
    """An RDB storage; retried because workers that start together race to create the tables."""
    import optuna
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # DDP ranks and the heartbeat thread read while a trial writes: wait for SQLite's lock.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S} if heartbeat else {}
    last: Exception | None = None
    for attempt in range(8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            last = exc
            time.sleep(0.3 + random.random() * (attempt + 1) * 0.5)
        except (sqlalchemy.exc.ArgumentError, ModuleNotFoundError, ValueError) as exc:
            raise ConfigError(f"cannot use storage {_redact(url)}: {exc}") from exc
    raise ConfigError(f"cannot open storage {_redact(url)}: {last}")


def _redact(url: str) -> str:
    """The URL without its password, for messages and files."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def open_study(storage: Any, name: str, direction: str, sampler: Any, pruner: Any) -> tuple[Any, bool]:
    """The study, and whether this process created it. Creation relies on the storage's unique
    study name, so of several workers starting together exactly one creates (and enqueues the
    paper's trial) and the others load."""
    import optuna

    try:
        return optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                   pruner=pruner, load_if_exists=False), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if len(study.directions) != 1 or study.direction.name.lower() != direction:
        raise ConfigError(f"study `{name}` exists and {study.direction.name.lower()}s its objective, but the sweep"
                          f" says {direction}; use another --study name")
    return study, False


# --------------------------------------------------------------------------- Lightning callbacks
@functools.cache
def _pruning_callback_class() -> type:
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


def _wandb_callback(study_name: str, number: int, params: dict[str, Any]) -> Any:
    from lightning import Callback

    class TrialWandb(Callback):
        """Adds the trial to each W&B run's config and closes the run when the fit ends early: the
        runner finishes W&B runs only after a successful test, and an open run would swallow the
        next trial's."""

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            for logger in _wandb_loggers(trainer):
                logger.experiment.config.update({"optuna": {"study": study_name, "trial": number, "params": params}},
                                                allow_val_change=True)

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            import optuna

            pruned = isinstance(exception, optuna.TrialPruned)
            for logger in _wandb_loggers(trainer):
                try:
                    logger.experiment.summary["optuna/state"] = "pruned" if pruned else "failed"
                    logger.experiment.finish(exit_code=0 if pruned else 1)
                except Exception:  # noqa: BLE001 - logging must not mask the trial's own outcome
                    pass

    return TrialWandb()


def _wandb_loggers(trainer: Any) -> list[Any]:
    if not trainer.is_global_zero:
        return []
    return [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]


def _finish_stray_wandb_run() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=1)
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------- DDP: rank 0 -> other ranks
class _Channel:
    """Rank 0 tells the other ranks of the same machine which trial comes next.

    A private folder (mode 0700, outside the sweep directory because its header holds the storage
    URL): ``header.json`` (study and storage), then ``NNNNNN.json`` per trial in order, then
    ``end.json``. After each trial every rank writes ``NNNNNN.rR.status`` (ok, pruned, failed).
    Files are written atomically, so a reader never sees half a message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, header: dict[str, Any]) -> _Channel:
        channel = cls(Path(tempfile.mkdtemp(prefix="avlab-sweep-ddp-")))
        channel._write("header.json", header)
        return channel

    def _write(self, name: str, payload: dict[str, Any]) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self.path / name)

    def announce(self, seq: int, message: dict[str, Any]) -> None:
        self._write(f"{seq:06d}.json", message)

    def close(self) -> None:
        if self.path.is_dir():
            self._write("end.json", {})

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def report(self, seq: int, rank: int, outcome: str) -> None:
        if self.path.is_dir():
            self._write(f"{seq:06d}.r{rank}.status", {"outcome": outcome})

    def await_reports(self, seq: int, ranks: Sequence[int], timeout: float) -> bool:
        """Whether every rank in ``ranks`` finished trial ``seq`` (its way) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all((self.path / f"{seq:06d}.r{r}.status").is_file() for r in ranks):
                return True
            time.sleep(0.2)
        return False

    def receive(self, name: str) -> dict[str, Any] | None:
        """Waits for ``name``; ``None`` once rank 0 has ended the sweep or has died."""
        parent = os.getppid()
        while True:
            target = self.path / name
            if target.is_file():
                return json.loads(target.read_text())
            if (self.path / "end.json").is_file() or not self.path.is_dir() or os.getppid() != parent:
                return None
            time.sleep(0.2)


def _follow(channel: _Channel) -> int:
    """Ranks > 0: run rank 0's trials in lock-step (same overrides, run directory and trial)."""
    import optuna

    from avlab.config import load_experiment
    from avlab.rundir import RUN_DIR_ENV
    from avlab.runner import train

    header = channel.receive("header.json")
    if header is None:
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=header["study"], storage=open_storage(header["storage"], heartbeat=False))
    rank = int(os.environ.get("LOCAL_RANK", "1"))
    seq = 0
    while (message := channel.receive(f"{seq:06d}.json")) is not None:
        os.environ[RUN_DIR_ENV] = message["run_dir"]
        try:
            cfg = load_experiment(header["experiment"], message["overrides"])
            trial = optuna.trial.Trial(study, message["trial_id"])
            train(cfg, extra_callbacks=[_pruning_callback_class()(trial, header["metric"])])
            channel.report(seq, rank, "ok")
        except optuna.TrialPruned:
            channel.report(seq, rank, "pruned")
        except Exception as exc:  # noqa: BLE001 - the study goes on if rank 0 failed the same way
            traceback.print_exc()
            channel.report(seq, rank, "failed")
            if not channel.await_reports(seq, [0], DDP_STATUS_WAIT_S):
                # Rank 0 is still inside this trial, so it waits in a collective for this rank: it
                # can never finish. Record the trial as failed, then exit non-zero, which makes
                # Lightning's launcher stop rank 0; re-running the command resumes the study.
                try:
                    study._storage.set_trial_user_attr(message["trial_id"], "error", f"rank {rank} only: {type(exc).__name__}: {exc}"[:4000])
                    study._storage.set_trial_state_values(message["trial_id"], optuna.trial.TrialState.FAIL)
                finally:
                    print(f"avlab sweep: rank {rank} failed alone in trial {message['number']}; stopping the sweep"
                          " (re-run the command to resume the study)",
                          file=sys.stderr, flush=True)
                    os._exit(1)
        seq += 1
    return 0


# --------------------------------------------------------------------------- the sweep
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


def _is_follower() -> bool:
    """A rank > 0 that Lightning's launcher started by re-running rank 0's ``avlab sweep`` command
    (the same test as the runner's rank-zero check, without importing Lightning)."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    return bool(os.environ.get(CHANNEL_ENV)) and rank != 0


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


def run_sweep(sweep: str, *, trials: int | None = None, storage: str | None = None, study_name: str | None = None,
              overrides: Sequence[str] = (), pruner: str | None = None, out: Any = None) -> SweepResult | None:
    """Run ``trials`` more trials of the study (created or resumed); ``None`` on ranks > 0."""
    if _is_follower():
        _follow(_Channel(Path(os.environ[CHANNEL_ENV])))
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
        raise ConfigError(f"--study {name!r} must be a plain name (it becomes a folder under run.root/sweeps/)")
    sweep_dir = (Path(base.run.root) / "sweeps" / name).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(sweep_dir)
    rdb = open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.INFO)
    study, created = open_study(rdb, name, spec.direction, build_sampler(spec.sampler), build_pruner(spec.pruner))
    # A resumed or parallel worker gets its own sampler seed: the same seed would replay the
    # first worker's random start-up samples. A lone worker on a new study keeps the file's seed.
    salt = None if created and not storage else f"{len(study.trials)}" + (f":{_owner_id()}" if storage else "")
    study.sampler = build_sampler(spec.sampler, salt=salt)
    if created:
        study.set_user_attr("sweep", spec.name)
        study.set_user_attr("experiment", spec.experiment)
        study.set_user_attr("objective", {"metric": spec.metric, "direction": spec.direction, "aggregate": spec.aggregate})
        if spec.first_trial:
            study.enqueue_trial(spec.first_trial, user_attrs={"source": "first_trial (paper values)"})
    print(f"study `{name}` ({'new' if created else f'resumed, {len(study.trials)} trial(s) so far'}) in "
          f"{_redact(url)}: {n_trials} trial(s) of {spec.experiment}, {spec.direction} {spec.metric} "
          f"({spec.aggregate} over folds), pruner {spec.pruner.get('type', 'median')}", file=out, flush=True)

    tree = OmegaConf.to_container(base, resolve=True)
    fixed = [*spec.overrides, *overrides]
    tags = list(dict.fromkeys([*(base.logger.wandb.tags or []), "sweep"]))
    plumbing = [f"logger.wandb.group={_yaml_value(name)}", f"logger.wandb.tags={_yaml_value(tags)}"]
    channel = _Channel.create({"study": name, "storage": url, "experiment": spec.experiment, "metric": spec.metric})
    previous_channel = os.environ.get(CHANNEL_ENV)
    os.environ[CHANNEL_ENV] = str(channel.path)
    seq = 0
    announced: dict[int, int] = {}  # trial number -> its message number for the other ranks

    def objective(trial: optuna.Trial) -> float:
        nonlocal seq
        values = {p.name: p.suggest(trial) for p in spec.params.values()}
        chosen = param_overrides(tree, spec.params, values)
        trial.set_user_attr("overrides", chosen)
        trial.set_user_attr("worker", _owner_id())
        run_dir = _trial_dir(sweep_dir, trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = load_experiment(spec.experiment, [*fixed, *chosen, *plumbing])
        all_overrides = [*fixed, *chosen, *plumbing]
        channel.announce(seq, {"trial_id": trial._trial_id, "number": trial.number, "overrides": all_overrides,
                               "run_dir": str(run_dir)})
        announced[trial.number] = seq
        seq += 1
        print(f"trial {trial.number}: {' '.join(chosen)}", file=out, flush=True)
        saved = os.environ.get(RUN_DIR_ENV)
        # The runner reuses an inherited run directory (that is how DDP ranks share one), so
        # exporting it puts this trial's run, on every rank, in the sweep's trials/ folder.
        os.environ[RUN_DIR_ENV] = str(run_dir)
        try:
            result = train(cfg, extra_callbacks=[_pruning_callback_class()(trial, spec.metric),
                                                 _wandb_callback(name, trial.number, values)])
        finally:
            if saved is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = saved
            _finish_stray_wandb_run()
        if not result.val_metrics:
            raise ConfigError(f"{spec.experiment} has no validation loop (a closed-form estimator?): nothing to optimise")
        per_fit = [m.get(spec.metric) for m in result.val_metrics]
        if any(v is None for v in per_fit):
            logged = sorted({k for m in result.val_metrics for k in m})
            raise ConfigError(f"objective metric `{spec.metric}` was not logged.{did_you_mean(spec.metric, logged)}"
                              f" Logged: {', '.join(logged) or 'nothing'}")
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

    def _check_ranks_in_step(trial: optuna.Trial, message: str) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1 or trial.number not in announced:
            return  # no other ranks, or the trial failed before they were told about it
        if not channel.await_reports(announced[trial.number], range(1, world), DDP_STATUS_WAIT_S):
            raise _OutOfStep(f"trial {trial.number} failed on rank 0 only ({message}); the other ranks are blocked in"
                             " a collective, so the sweep stops. Re-run the same command to resume the study.")

    interrupted, error = False, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(guarded, n_trials=n_trials, catch=(Exception,))
    except _OutOfStep as exc:
        error = str(exc)
    except KeyboardInterrupt:
        interrupted = True
        # Lightning ignores SIGINT after its own Ctrl-C handling; the rest of this process should not.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    finally:
        # Other ranks waiting for a next trial see the end marker, or the folder gone, and exit 0.
        channel.close()
        channel.remove()
        if previous_channel is None:
            os.environ.pop(CHANNEL_ENV, None)
        else:
            os.environ[CHANNEL_ENV] = previous_channel
    _fail_own_running_trials(study, interrupted)
    all_trials = study.get_trials(deepcopy=False)
    best = _best_trial(study)
    write_summary(study, sweep_dir, spec)
    _print_summary(study, spec, best, sweep_dir, out)
    if error:
        raise SweepAborted(error)
    return SweepResult(name, sweep_dir, _redact(url), all_trials, best, interrupted)


def _fail_own_running_trials(study: Any, interrupted: bool) -> None:
    """A second Ctrl-C can land while Optuna is telling the storage; nothing this process started
    may stay RUNNING. Trials of other workers are theirs to finish (heartbeats catch dead ones)."""
    import optuna

    if not interrupted:
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == _owner_id():
            try:
                study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted")
                study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            except Exception:  # noqa: BLE001
                pass


def _owner_id() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _best_trial(study: Any) -> Any | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


# --------------------------------------------------------------------------- summary files
def write_summary(study: Any, sweep_dir: Path, spec: SweepSpec) -> None:
    """``best_params.json``, ``trials.csv``, ``param_importances.png``, ``parallel_coordinate.png``."""
    import optuna

    from avlab.rundir import atomic_write

    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    best = _best_trial(study)
    summary: dict[str, Any] = {
        "study": study.study_name, "sweep": spec.name, "experiment": spec.experiment,
        "objective": {"metric": spec.metric, "direction": spec.direction, "aggregate": spec.aggregate},
        "trials": {k.lower(): v for k, v in states.items() if v},
        "best_trial": None, "best_value": None, "params": None, "overrides": None,
    }
    if best is not None:
        summary.update(best_trial=best.number, best_value=best.value, params=best.params,
                       overrides=best.user_attrs.get("overrides"),
                       run_dir=best.user_attrs.get("run_dir"),
                       test_metrics={k: v for k, v in best.user_attrs.items() if k.startswith("test/")})
    atomic_write(sweep_dir / "best_params.json", json.dumps(summary, indent=2, default=str) + "\n")
    frame = study.trials_dataframe(attrs=("number", "state", "value", "datetime_start", "datetime_complete", "duration",
                                          "params", "user_attrs"))
    if "duration" in frame:
        frame["duration"] = frame["duration"].dt.total_seconds()
    tmp = sweep_dir / f".trials.csv.tmp{os.getpid()}"
    frame.to_csv(tmp, index=False)
    os.replace(tmp, sweep_dir / "trials.csv")
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
        tmp = sweep_dir / f".{filename}.tmp{os.getpid()}.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, sweep_dir / filename)

    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    save("param_importances.png", lambda: ovm.plot_param_importances(study, evaluator=evaluator, target_name=target), 2,
         f"hyper-parameter importance (fANOVA) of study {study.study_name}")
    save("parallel_coordinate.png", lambda: ovm.plot_parallel_coordinate(study, target_name=target), 1,
         f"parallel coordinates of study {study.study_name}")


def _print_summary(study: Any, spec: SweepSpec, best: Any | None, sweep_dir: Path, out: Any) -> None:
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
