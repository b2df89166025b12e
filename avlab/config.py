"""Experiment configs: compose, override, validate.

An experiment is a YAML file under ``experiments/`` (``avq/attentive_fusion``) or any YAML path.
Its optional ``defaults:`` list names other files (relative to ``experiments/``, or to the file's
own folder) that are merged first, in order; the file's own keys come next, then the command-line
overrides in OmegaConf dot-list syntax (``trainer.max_epochs=3``).

The merged tree is checked against two kinds of schema before anything runs:

* the fixed sections (``trainer``, ``logger``, ``callbacks``, ``run``, ``cv``, ``splits`` ...) are
  typed dataclasses below, and ``trainer`` is checked against ``lightning.Trainer``'s signature;
* every node with a ``_target_`` (``data``, ``model``, ``model.net`` ...) is checked against the
  target's constructor signature, so new modules need no schema edits.

Any unknown key fails with the closest valid key in the message.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from avlab.errors import ConfigError, closest
from avlab.instantiate import is_target_node, resolve_target, signature_params, validate_target_node


# --------------------------------------------------------------------------- schema
@dataclass
class WandbConfig:
    #: ``offline`` | ``online`` | ``disabled``; ``None`` picks online when logged in, else offline.
    mode: str | None = None
    project: str = "avlab"
    entity: str | None = None
    #: Runs of one group compare side by side in W&B; defaults to the experiment name.
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None
    log_model: bool = False
    #: Rows of each evaluation CSV also logged as a ``wandb.Table`` (longer files: their first
    #: rows, with a log line); 0 logs no tables. Figures are always logged as images.
    max_table_rows: int = 10_000


@dataclass
class CSVLoggerConfig:
    enabled: bool = True


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: CSVLoggerConfig = field(default_factory=CSVLoggerConfig)


@dataclass
class CheckpointConfig:
    monitor: str = "val/loss"
    mode: str = "min"
    save_top_k: int = 1
    save_last: bool = True


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    #: Defaults to ``callbacks.checkpoint.monitor`` / ``mode``.
    monitor: str | None = None
    mode: str | None = None
    patience: int = 10
    min_delta: float = 0.0


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    lr_monitor: bool = True
    #: Record the fraction of each training step spent waiting for the next batch
    #: (``train/data_wait_fraction`` in the loggers and metrics.json); off by default because a
    #: timing would make otherwise identical runs' metrics differ.
    data_wait: bool = False
    #: ``loss`` | ``gradients`` | ``none``: stop with a clear error at the first training step whose
    #: loss (or, with ``gradients``, a gradient) is NaN or infinite (``callbacks/nonfinite.py``).
    stop_on_nonfinite: str = "loss"
    #: ``rich`` | ``tqdm`` | ``none`` | ``auto`` (rich on a terminal, tqdm otherwise); quiet makes it none.
    progress_bar: str = "auto"
    #: Extra Lightning callbacks by name: ``{name: {_target_: ..., ...}}``.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    root: str = "runs"
    suffix: str | None = None
    plots: bool = True


@dataclass
class PaperConfig:
    """What the reproduced paper reports for this experiment (read by tests and tables that compare)."""

    #: Trainable parameters of the experiment's model in the paper, in millions.
    params_m: float | None = None
    #: Relative deviation from ``params_m`` a parameter-count check accepts; ``None``: reported only.
    params_tolerance: float | None = None


#: The cross-validation protocols ``cv.protocol`` may name (see :class:`CVConfig`).
CV_PROTOCOLS = ("rotate", "holdout_cv")


@dataclass
class CVConfig:
    #: K > 1 runs K-fold cross-validation grouped by source; each fold is reported, then mean ± std.
    folds: int = 0
    #: ``rotate``: the K folds take turns as the test set (every source is tested once), and each
    #: fold validates on a few sources of the others. ``holdout_cv`` (the Attentive AV-FusionNet
    #: protocol): the DataModule's fixed hold-out (avq: ``data.holdout_sources``) is the test set
    #: of every fold and is never trained or validated on; the other sources form the K folds,
    #: each fold validating on one of them and training on the rest. The K test results on the
    #: one held-out set are reported as mean ± std, like ``rotate``'s.
    protocol: str = "rotate"


@dataclass
class SplitsConfig:
    #: N > 1 repeats the experiment on N random splits and reports mean and std.
    repeats: int = 0


def _trainer_defaults() -> dict[str, Any]:
    return {
        "max_epochs": 20,
        "accelerator": "auto",
        "devices": 1,
        "strategy": "auto",
        "precision": "32-true",
        "deterministic": "warn",
        "log_every_n_steps": 10,
        "num_sanity_val_steps": 0,
    }


@dataclass
class ExperimentConfig:
    task: str = "???"
    #: Set by the loader: the experiment's name (``avq/attentive_fusion``).
    experiment: str = ""
    description: str = ""
    seed: int = 42
    #: LightningDataModule node (``_target_`` + arguments); ``data.root`` is the dataset folder.
    data: Any = None
    #: LightningModule node, or a closed-form estimator node for non-deep baselines.
    model: Any = None
    #: Optional second DataModule used only for testing (cross-dataset evaluation).
    test_data: Any = None
    trainer: dict[str, Any] = field(default_factory=_trainer_defaults)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    splits: SplitsConfig = field(default_factory=SplitsConfig)
    #: Figures the paper reports for this experiment (``paper.params_m`` ...); no effect on the run.
    paper: PaperConfig = field(default_factory=PaperConfig)
    #: Resume (train) or evaluate (test/predict) from this checkpoint.
    ckpt_path: str | None = None


# --------------------------------------------------------------------------- locating files
def package_root(package: str) -> Path:
    """Folder of a packaged config tree (``avlab.experiments``, ``avlab.sweeps``)."""
    return Path(str(importlib.resources.files(package)))


def experiments_root() -> Path:
    return package_root("avlab.experiments")


def list_yaml(root: Path) -> list[str]:
    """Names (``task/name``) of the YAML files under ``root``; ``_``-prefixed files are building blocks."""
    return sorted(
        str(p.relative_to(root).with_suffix(""))
        for p in root.rglob("*.yaml")
        if not any(part.startswith("_") for part in p.relative_to(root).parts)
    )


def list_experiments() -> list[str]:
    # experiments/<task>/tables/ holds paper-table configs (`avlab table`), not experiments.
    return [n for n in list_yaml(experiments_root()) if "/tables/" not in n]


def find_yaml(
    name: str, root: Path, *, kind: str, list_command: str, relative_to: Path | None = None
) -> tuple[Path, str]:
    """Path of a named YAML file under ``root`` (or a YAML path) and its display name."""
    as_path = Path(name).expanduser()
    if name.endswith((".yaml", ".yml")) and as_path.is_file():
        path = as_path.resolve()
        try:
            return path, str(path.relative_to(root).with_suffix(""))
        except ValueError:
            return path, path.stem
    candidates = [root / f"{name}.yaml"]
    if relative_to is not None:
        candidates += [relative_to / f"{name}.yaml", relative_to / name]
    for c in candidates:
        if c.is_file():
            return c, name
    hint = closest(name, list_yaml(root))
    raise ConfigError(
        f"unknown {kind} `{name}`."
        + (f" Did you mean `{hint[0]}`?" if hint else "")
        + f" Run `{list_command}` to see all {kind}s, or pass a path to a .yaml file."
    )


def find_experiment(name: str, *, relative_to: Path | None = None) -> tuple[Path, str]:
    """Path of an experiment and its display name (``task/name``)."""
    return find_yaml(
        name,
        experiments_root(),
        kind="experiment",
        list_command="avlab train --list",
        relative_to=relative_to,
    )


# --------------------------------------------------------------------------- loading
def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, found {type(data).__name__}")
    return data


def anchor_file_targets(node: Any, folder: Path) -> Any:
    """Make every relative ``file.py:Name`` target in ``node`` absolute, relative to ``folder``.

    A config names its student-written modules relative to itself, so it works from any
    working directory. For configs written when targets resolved against the working directory,
    a file that exists only there is left as it is.
    """
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            is_file_target = (
                isinstance(value, str) and value.split(":", 1)[0].endswith(".py") and ":" in value
            )
            if key == "_target_" and is_file_target:
                file_name, attr = value.split(":", 1)
                file_path = Path(file_name).expanduser()
                if not file_path.is_absolute():
                    anchored = (folder / file_path).resolve()
                    if anchored.is_file() or not file_path.is_file():
                        value = f"{anchored}:{attr}"
                out[key] = value
            else:
                out[key] = anchor_file_targets(value, folder)
        return out
    if isinstance(node, list):
        return [anchor_file_targets(v, folder) for v in node]
    return node


def _compose(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"circular `defaults:` chain: {chain}")
    data = anchor_file_targets(_read_yaml(path), path.parent)
    defaults = data.pop("defaults", []) or []
    if isinstance(defaults, str):
        defaults = [defaults]
    merged = OmegaConf.create({})
    for entry in defaults:
        dep, _ = find_experiment(str(entry), relative_to=path.parent)
        merged = _merge(merged, _compose(dep, (*seen, path)))
    try:
        return _merge(merged, OmegaConf.create(data))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def schema_defaults() -> DictConfig:
    # A plain (non-struct) copy: merges never fail on unknown keys, validate() reports them all at once.
    return OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(ExperimentConfig)))


def parse_overrides(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(
            f"override `{bad[0]}` is not of the form key=value (for example trainer.max_epochs=3)"
        )
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {overrides}: {exc}") from exc


def load_experiment(
    name: str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    validate_targets: bool = True,
    require: tuple[str, ...] = ("data", "model"),
    overlays: list[str] | tuple[str, ...] = (),
) -> DictConfig:
    """Compose, override and validate an experiment; the result is resolved.

    ``overlays`` are further config files (names or paths) merged after the experiment and before
    the overrides, like profiles: ``saliency/_cpu`` shrinks any saliency experiment to CPU scale.
    """
    path, display = find_experiment(name)
    cfg = OmegaConf.merge(schema_defaults(), _compose(path))
    for overlay in overlays:
        overlay_path, _ = find_experiment(overlay, relative_to=path.parent)
        cfg = _merge(cfg, _compose(overlay_path))
    cfg = _merge(cfg, parse_overrides(list(overrides)))
    # `callbacks.extra.NAME: null` (or the override callbacks.extra.NAME=null) switches off a callback
    # that a parent config adds, e.g. unqa/strategy_lrs drops the three-step schedule.
    extra = cfg.callbacks.get("extra")
    for key in [k for k, v in (extra or {}).items() if v is None]:
        del extra[key]
    cfg.experiment = display
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve an interpolation in {display}: {exc}") from exc
    problems = validate(cfg, validate_targets=validate_targets, require=require)
    if problems:
        raise ConfigError(
            f"invalid config for experiment `{display}` ({path}):\n  - " + "\n  - ".join(problems)
        )
    return cfg


def _merge(cfg: DictConfig, overrides: DictConfig) -> DictConfig:
    """``OmegaConf.merge``, except that replacing a node's ``_target_`` (in a child file or an
    override) drops the arguments that only the old target took."""
    for dotted in _leaf_paths(OmegaConf.to_container(overrides, resolve=False)):
        if dotted.endswith("._target_") or dotted == "_target_":
            parent = dotted.rpartition(".")[0]
            old = OmegaConf.select(cfg, parent) if parent else cfg
            new_target = OmegaConf.select(overrides, dotted)
            if isinstance(old, DictConfig) and old.get("_target_") != new_target:
                from avlab.instantiate import resolve_target

                params, var_kw = signature_params(resolve_target(new_target, where=dotted))
                if not var_kw:
                    for k in list(old.keys()):
                        if k != "_target_" and k not in params:
                            del old[k]
    return OmegaConf.merge(cfg, overrides)


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        out = []
        for k in node:
            out.extend(_leaf_paths(node[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [prefix]


# --------------------------------------------------------------------------- validation
def validate(
    cfg: DictConfig, *, validate_targets: bool = True, require: tuple[str, ...] = ("data", "model")
) -> list[str]:
    problems = _validate_dataclass(cfg, ExperimentConfig, "")
    if cfg.get("task") in (None, "???", ""):
        problems.append("`task` is not set: every experiment names its task (avq, yt8m, saliency, unqa)")
    for section in ("data", "model"):
        node = cfg.get(section)
        if node is None and section not in require:
            continue
        if not is_target_node(node):
            problems.append(f"`{section}` must be a node with a `_target_` (the class to build)")
        elif validate_targets:
            problems.extend(validate_target_node(node, section))
    if cfg.get("test_data") is not None and validate_targets:
        if not is_target_node(cfg.test_data):
            problems.append("`test_data` must be null or a DataModule node with a `_target_`")
        else:
            problems.extend(validate_target_node(cfg.test_data, "test_data"))
    problems.extend(_validate_trainer(cfg.get("trainer") or {}))
    for name, node in (cfg.callbacks.get("extra") or {}).items():
        if not is_target_node(node):
            problems.append(f"`callbacks.extra.{name}` needs a `_target_`")
        elif validate_targets:
            problems.extend(validate_target_node(node, f"callbacks.extra.{name}"))
    wandb_mode = cfg.logger.wandb.mode
    if wandb_mode not in (None, "offline", "online", "disabled"):
        problems.append(f"`logger.wandb.mode` must be offline, online or disabled, got {wandb_mode!r}")
    if cfg.callbacks.progress_bar not in ("auto", "rich", "tqdm", "none"):
        problems.append(
            f"`callbacks.progress_bar` must be auto, rich, tqdm or none, got {cfg.callbacks.progress_bar!r}"
        )
    if cfg.cv.folds > 1 and cfg.splits.repeats > 1:
        problems.append("`cv.folds` and `splits.repeats` cannot both be > 1; pick one protocol")
    problems.extend(_validate_cv(cfg, validate_targets))
    return problems


def _validate_cv(cfg: DictConfig, validate_targets: bool) -> list[str]:
    protocol = cfg.cv.protocol
    if protocol not in CV_PROTOCOLS:
        hint = closest(str(protocol), list(CV_PROTOCOLS))
        did = f" Did you mean `{hint[0]}`?" if hint else ""
        return [f"`cv.protocol` must be one of {', '.join(CV_PROTOCOLS)}, got {protocol!r}.{did}"]
    if protocol != "holdout_cv":
        return []
    if cfg.cv.folds <= 1:
        message = (
            "`cv.protocol=holdout_cv` cross-validates on the non-held-out sources and needs "
            f"`cv.folds` > 1 (the paper uses 5), got cv.folds={cfg.cv.folds}"
        )
        return [message]
    data = cfg.get("data")
    if not (validate_targets and is_target_node(data)):
        return []
    try:
        target = resolve_target(data._target_, where="data._target_")
    except ConfigError:
        return []  # the unresolvable target is reported with the `data` node's own problems
    supported = getattr(target, "supported_protocols", ())
    if "holdout_fold" in supported:
        return []
    message = (
        f"`cv.protocol=holdout_cv` needs a DataModule with a fixed hold-out set; {data._target_} does not "
        f"have one (its protocols: {', '.join(supported) or 'none'}). Use cv.protocol=rotate."
    )
    return [message]


_FREE_FORM = {"data", "model", "test_data", "trainer", "extra"}


def _validate_dataclass(node: Any, schema: type, path: str) -> list[str]:
    problems: list[str] = []
    if not isinstance(node, DictConfig):
        return [f"`{path}` must be a mapping, got {node!r}"]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node:
        key = str(key)
        full = f"{path}.{key}" if path else key
        if key not in fields:
            hint = closest(key, fields)
            problems.append(
                f"unknown key `{full}`."
                + (f" Did you mean `{(path + '.') if path else ''}{hint[0]}`?" if hint else "")
                + f" Valid keys here: {', '.join(fields)}."
            )
            continue
        ftype = fields[key].type
        sub = _dataclass_of(ftype)
        if sub is not None and key not in _FREE_FORM:
            problems.extend(_validate_dataclass(node[key], sub, full))
        elif key not in _FREE_FORM:
            problems.extend(_check_scalar(node, key, ftype, full))
    return problems


def _dataclass_of(ftype: Any) -> type | None:
    if isinstance(ftype, str):
        return (
            globals().get(ftype)
            if ftype in globals() and dataclasses.is_dataclass(globals()[ftype])
            else None
        )
    return ftype if dataclasses.is_dataclass(ftype) else None


def _check_scalar(node: DictConfig, key: str, ftype: Any, full: str) -> list[str]:
    value = node[key]
    # Annotations are strings here (postponed evaluation): "float", "str | None", ...
    scalar = str(ftype).replace("Optional[", "").rstrip("]").removesuffix(" | None")
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}.get(scalar)
    if expected is None or value is None:
        return []
    if isinstance(value, bool) and expected is str:
        # YAML 1.1 reads on/off/yes/no as booleans: `key=off` arrives here as False.
        return [f"`{full}` must be a string, got {value!r}; YAML reads on/off/yes/no/true/false as booleans"]
    if isinstance(value, bool) and expected is not bool:
        return [f"`{full}` must be a number, got {value!r}"]
    if not isinstance(value, expected):
        return [f"`{full}` has the wrong type: got {value!r}, expected {ftype}"]
    return []


def _validate_trainer(trainer: Any) -> list[str]:
    if not isinstance(trainer, (DictConfig, dict)):
        return [f"`trainer` must be a mapping of lightning.Trainer arguments, got {trainer!r}"]
    from lightning import Trainer

    params, _ = signature_params(Trainer.__init__)
    reserved = {"logger", "callbacks", "default_root_dir", "enable_checkpointing", "enable_progress_bar"}
    problems = []
    for key in trainer:
        if key in reserved:
            problems.append(
                f"`trainer.{key}` is set by avlab from the `logger`/`callbacks`/`run` sections; "
                "set those instead"
            )
        elif key not in params:
            hint = closest(str(key), params)
            problems.append(
                f"unknown key `trainer.{key}`: lightning.Trainer takes no `{key}`."
                + (f" Did you mean `trainer.{hint[0]}`?" if hint else "")
            )
    return problems


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def as_dict(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
