"""Sampled parameter values -> ``key=value`` config overrides, and the check of a search space
against the experiment it trains (before any trial runs)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from avlab.errors import ConfigError, closest, did_you_mean
from avlab.sweep.spec import ParamSpec, SweepSpec


def yaml_value(value: Any) -> str:
    """``value`` as an override's right-hand side that parses back to exactly ``value``."""
    plain = isinstance(value, str) and value and not any(c in value for c in "[]{}:,'\"$#=")
    if plain and yaml.safe_load(value) == value:
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
                out.append(f"{key}={yaml_value(value)}")
                continue
            list_path, rest = split
            if list_path not in lists:
                lists[list_path] = copy.deepcopy(_get_in(base, list_path))
            _set_in(lists[list_path], rest, value, key)
    out.extend(f"{path}={yaml_value(value)}" for path, value in lists.items())
    return out


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [
            k for key, v in node.items() for k in _leaf_keys(v, f"{prefix}.{key}" if prefix else str(key))
        ]
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
                raise ConfigError(
                    f"{where} searches `{key}` (parameter `{p.name}`), so it cannot also be set"
                    " on the command line."
                    " Drop the override, or copy the sweep file and change its search space."
                )
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
