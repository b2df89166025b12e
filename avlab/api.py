"""The Python API: what ``avlab train|test|predict`` do, callable from a script or a notebook.

Same config names, keys and overlays as the command line; the CLI composes its configs with
:func:`experiment_config` too, so the two cannot drift apart::

    from avlab import load_experiment, train

    cfg = load_experiment("avq/simple_fusion", ["trainer.max_epochs=1"])
    result = train(cfg)  # or train("avq/simple_fusion", ["trainer.max_epochs=1"])
    result.metrics["test/plcc"], result.run_dir
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from avlab.errors import ConfigError

if TYPE_CHECKING:  # the runner pulls in Lightning: import it only when a run starts
    from lightning import Callback

    from avlab.runner import RunResult

#: key=value arguments of `predict` that name media rather than config keys.
PREDICT_INPUT_KEYS = ("input", "reference", "distorted", "output")


@dataclass
class Prediction:
    """What :func:`predict` returns: the run directory and the model's JSON-able output."""

    run_dir: Path
    outputs: dict[str, Any]


def split_inputs(overrides: Sequence[str], keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Separate ``key=value`` items whose key is in ``keys`` (media inputs) from config overrides."""
    rest, inputs = [], {}
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in keys and "=" in item:
            inputs[key] = item.split("=", 1)[1]
        else:
            rest.append(item)
    return rest, inputs


def _overlays(overlay: str | Sequence[str] | None) -> list[str]:
    if overlay is None:
        return []
    return [overlay] if isinstance(overlay, str) else list(overlay)


def experiment_config(
    command: str,
    experiment: str,
    overrides: Sequence[str] = (),
    overlays: Sequence[str] = (),
) -> tuple[DictConfig, dict[str, str]]:
    """The validated, resolved config of ``avlab COMMAND EXPERIMENT OVERRIDES --overlay ...``, and
    the media inputs (``predict`` only) taken out of the overrides. Shared by the CLI and the API."""
    from avlab import config as config_mod

    rest, inputs = split_inputs(list(overrides), PREDICT_INPUT_KEYS if command == "predict" else ())
    if command == "features" and "/" not in experiment and not experiment.endswith(".yaml"):
        experiment = f"{experiment}/_base"  # `avlab features avq` means the task's base config
    require = ("data",) if command == "features" else ("data", "model")
    cfg = config_mod.load_experiment(experiment, rest, require=require, overlays=list(overlays))
    return cfg, inputs


def load_experiment(
    name: str,
    overrides: Sequence[str] = (),
    overlay: str | Sequence[str] | None = None,
) -> DictConfig:
    """The validated, resolved config of an experiment (a name under ``experiments/`` such as
    ``avq/simple_fusion``, or a YAML path), with ``key=value`` overrides and overlays as on the
    command line (``overlay="saliency/_cpu"`` is ``--overlay saliency/_cpu``)."""
    cfg, _ = experiment_config("train", name, overrides, _overlays(overlay))
    return cfg


def _config(
    command: str,
    name_or_cfg: str | DictConfig,
    overrides: Sequence[str] | None,
    overlay: str | Sequence[str] | None,
) -> tuple[DictConfig, dict[str, str]]:
    if isinstance(name_or_cfg, DictConfig):
        if overrides or overlay:
            raise ConfigError(
                f"{command}() got a config and overrides/overlay: pass the overrides to "
                "load_experiment(name, overrides, overlay=...) or give the experiment's name instead"
            )
        return name_or_cfg, {}
    if not isinstance(name_or_cfg, str):
        raise ConfigError(
            f"{command}() needs an experiment name (e.g. 'avq/simple_fusion'), a YAML path or the "
            f"DictConfig from load_experiment, not {type(name_or_cfg).__name__}"
        )
    return experiment_config(command, name_or_cfg, overrides or (), _overlays(overlay))


def train(
    name_or_cfg: str | DictConfig,
    overrides: Sequence[str] | None = None,
    overlay: str | Sequence[str] | None = None,
    extra_callbacks: Sequence[Callback] = (),
) -> RunResult:
    """``avlab train``: fit, test the best checkpoint; ``.metrics`` and ``.run_dir`` of the run."""
    from avlab import runner

    cfg, _ = _config("train", name_or_cfg, overrides, overlay)
    return runner.train(cfg, extra_callbacks=extra_callbacks)


def test(
    name_or_cfg: str | DictConfig,
    overrides: Sequence[str] | None = None,
    overlay: str | Sequence[str] | None = None,
) -> RunResult:
    """``avlab test``: evaluate ``ckpt_path=PATH`` (an override or a key of the config)."""
    from avlab import runner

    cfg, _ = _config("test", name_or_cfg, overrides, overlay)
    return runner.test(cfg)


# pytest would collect a module-level `test` function of a test file that imports it.
test.__test__ = False  # type: ignore[attr-defined]


def predict(
    name_or_cfg: str | DictConfig,
    overrides: Sequence[str] | None = None,
    inputs: dict[str, str] | None = None,
    overlay: str | Sequence[str] | None = None,
) -> Prediction:
    """``avlab predict``: apply ``ckpt_path=PATH`` to media. ``inputs`` (or ``input=``,
    ``reference=``, ``distorted=``, ``output=`` items in ``overrides``) name the media."""
    from avlab import runner

    cfg, from_overrides = _config("predict", name_or_cfg, overrides, overlay)
    run_dir, outputs = runner.predict(cfg, {**from_overrides, **(inputs or {})})
    return Prediction(run_dir, outputs)
