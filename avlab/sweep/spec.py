"""The sweep file: its search space (:class:`ParamSpec`), its settings (:class:`SweepSpec`), and the
Optuna sampler and pruner it names. Reading a file checks everything that does not need the
experiment; :func:`avlab.sweep.space.check_space` then checks the keys against the experiment."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avlab.config import find_yaml, list_yaml, package_root
from avlab.errors import ConfigError, did_you_mean

#: Default number of trials per invocation when neither the sweep file nor --trials says.
DEFAULT_TRIALS = 20

_TOP_KEYS = (
    "experiment",
    "description",
    "objective",
    "overrides",
    "trials",
    "sampler",
    "pruner",
    "params",
    "first_trial",
)
_AGGREGATES = ("mean", "median", "min", "max")


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
            raise ConfigError(
                f"{where}: unknown key `{key}`.{did_you_mean(str(key), _TOP_KEYS)}"
                f" Keys: {', '.join(_TOP_KEYS)}"
            )
    if not raw.get("experiment"):
        raise ConfigError(
            f"{where}: `experiment` is missing (the experiment every trial trains, e.g. avq/attentive_fusion)"
        )
    experiment = str(raw["experiment"])
    if experiment.endswith((".yaml", ".yml")) and not Path(experiment).is_absolute():
        # A file next to the sweep, so a sweep and its experiment can live outside the package.
        experiment = str((path.parent / experiment).resolve())
    objective = raw.get("objective") or {}
    if not isinstance(objective, dict) or not objective.get("metric"):
        raise ConfigError(f"{where}: `objective.metric` is missing (for example val/loss)")
    unknown = set(objective) - {"metric", "direction", "aggregate"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)} in `objective`; keys: metric, direction, aggregate"
        )
    direction = str(objective.get("direction", "minimize"))
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"{where}: `objective.direction` must be minimize or maximize, got {direction!r}")
    aggregate = str(objective.get("aggregate", "mean"))
    if aggregate not in _AGGREGATES:
        raise ConfigError(
            f"{where}: `objective.aggregate` must be one of {', '.join(_AGGREGATES)}, got {aggregate!r}"
        )
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
            raise ConfigError(
                f"{where}: `first_trial.{key}` is not a searched parameter.{did_you_mean(key, params)}"
            )
        if not _contains(params[key], value):
            raise ConfigError(
                f"{where}: `first_trial.{key}` = {value!r} lies outside its search space"
                f" {_describe(params[key])}"
            )
    spec = SweepSpec(
        name=display,
        path=path,
        experiment=experiment,
        metric=str(objective["metric"]),
        direction=direction,
        aggregate=aggregate,
        description=str(raw.get("description") or ""),
        overrides=list(overrides),
        trials=int(raw.get("trials") or DEFAULT_TRIALS),
        params=params,
        first_trial=first,
    )
    if raw.get("sampler") is not None:
        spec.sampler = dict(raw["sampler"])
    if raw.get("pruner") is not None:
        spec.pruner = dict(raw["pruner"])
    build_sampler(spec.sampler, where=where)  # fail on a bad sampler/pruner now, not after a trial
    build_pruner(spec.pruner, where=where)
    return spec


def _param_spec(name: str, node: Any, where: str) -> ParamSpec:
    if not isinstance(node, dict):
        raise ConfigError(
            f"{where}: `params.{name}` must be a mapping such as"
            " {type: float, low: 1e-4, high: 1e-2, log: true}"
        )
    node = dict(node)
    kind = node.pop("type", "categorical" if "choices" in node else None)
    keys = node.pop("keys", None) or [name]
    if isinstance(keys, str):
        keys = [keys]
    allowed = {
        "categorical": {"choices"},
        "int": {"low", "high", "step", "log"},
        "float": {"low", "high", "step", "log"},
    }
    if kind not in allowed:
        raise ConfigError(f"{where}: `params.{name}.type` must be int, float or categorical, got {kind!r}")
    bad = set(node) - allowed[kind]
    if bad:
        raise ConfigError(
            f"{where}: `params.{name}` ({kind}) takes {', '.join(sorted(allowed[kind]))}"
            f" (and keys), not {', '.join(sorted(bad))}"
        )
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if p.type == "int" and not float(value).is_integer():
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
            raise ConfigError(
                f"{where}: `{what}.{key}` is not an argument of optuna's {cls.__name__}."
                f"{did_you_mean(key, params)} Arguments: {', '.join(params)}"
            )
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
        raise ConfigError(
            f"{where}: `sampler.type` must be one of {', '.join(classes)}, got {kind!r}."
            f"{did_you_mean(kind, classes)}"
        )
    if node.get("seed") is not None and salt is not None:
        digest = hashlib.sha256(f"{int(node['seed'])}:{salt}".encode()).digest()
        node["seed"] = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    return _construct(classes[kind], node, where, "sampler")


def build_pruner(node: dict[str, Any], *, where: str = "sweep") -> Any:
    """``{type: median|hyperband|percentile|successive_halving|none, ...}``."""
    import optuna

    node = dict(node)
    kind = str(node.pop("type", "median"))
    classes = {
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "none": optuna.pruners.NopPruner,
    }
    if kind not in classes:
        raise ConfigError(
            f"{where}: `pruner.type` must be one of {', '.join(classes)}, got {kind!r}."
            f"{did_you_mean(kind, classes)}"
        )
    return _construct(classes[kind], node, where, "pruner")
