"""Build objects from config nodes that carry a ``_target_``.

A node ``{_target_: pkg.module.Class, a: 1, b: {...}}`` becomes ``pkg.module.Class(a=1, b=...)``.
Nested nodes with their own ``_target_`` are built first, so a LightningModule receives a ready
``nn.Module``.  A target is a dotted import path or ``path/to/file.py:Name``: a student can add a
fusion block in one file and point a config at it, with no registry to edit. In a YAML file, a
relative ``file.py`` is relative to that YAML file (:func:`avlab.config.anchor_file_targets`); on
the command line, to the working directory.

Keys of a target node are checked against the target's signature *before* anything runs, so a
typo fails at once with the closest valid key (see :func:`validate_target_node`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from avlab.errors import ConfigError, closest

TARGET_KEY = "_target_"
#: Keys a target node may carry that are not constructor arguments.
META_KEYS = frozenset({TARGET_KEY, "_recursive_", "_partial_"})


def resolve_target(target: str, *, where: str = "_target_") -> Any:
    """Import ``target`` (``pkg.mod.Name`` or ``file.py:Name``) and return the object."""
    if not isinstance(target, str) or not target:
        raise ConfigError(
            f"{where}: expected an import path like `avlab.models.avq.AttentiveAVFusionNet`, got {target!r}"
        )
    if ":" in target and target.split(":", 1)[0].endswith(".py"):
        file_name, attr = target.split(":", 1)
        path = Path(file_name).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: file {path} named in `{target}` does not exist")
        module_name = f"avlab_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        return _get_attr(module, attr, target, where)
    module_path, _, attr = target.rpartition(".")
    if not module_path:
        raise ConfigError(f"{where}: `{target}` is not a dotted path (module.Name)")
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        # Walk up to report the deepest importable parent, which is where the typo is.
        parent = module_path
        while "." in parent:
            parent = parent.rpartition(".")[0]
            try:
                mod = importlib.import_module(parent)
            except ModuleNotFoundError:
                continue
            missing = module_path[len(parent) + 1 :].split(".")[0]
            options = [n for n in dir(mod) if not n.startswith("_")]
            hint = closest(missing, options)
            raise ConfigError(
                f"{where}: cannot import `{target}`: `{parent}` has no module `{missing}`"
                + (f". Did you mean `{parent}.{hint[0]}`?" if hint else "")
            ) from exc
        raise ConfigError(f"{where}: cannot import `{target}`: {exc}") from exc
    return _get_attr(module, attr, target, where)


def _get_attr(module: Any, attr: str, target: str, where: str) -> Any:
    if not hasattr(module, attr):
        options = [n for n in dir(module) if not n.startswith("_")]
        hint = closest(attr, options)
        raise ConfigError(
            f"{where}: `{target}` does not exist: module has no `{attr}`"
            + (f". Did you mean `{hint[0]}`?" if hint else "")
        )
    return getattr(module, attr)


def signature_params(obj: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named parameters of a callable (a class's ``__init__``) and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}, True
    params = {}
    var_kw = False
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL and name != "self":
            params[name] = p
    return params, var_kw


def is_target_node(node: Any) -> bool:
    return isinstance(node, (Mapping, DictConfig)) and TARGET_KEY in node


def validate_target_node(node: Mapping | DictConfig, path: str, *, provided: Sequence[str] = ()) -> list[str]:
    """Problems with the keys of one ``_target_`` node (and, recursively, its children).

    ``provided`` lists arguments the framework passes itself, so they need not be in the config.
    """
    problems: list[str] = []
    target = node[TARGET_KEY]
    obj = resolve_target(target, where=f"{path}._target_" if path else "_target_")
    params, var_kw = signature_params(obj)
    for key in node:
        key = str(key)
        if key in META_KEYS:
            continue
        full = f"{path}.{key}" if path else key
        if key not in params and not var_kw:
            hint = closest(key, params)
            msg = f"unknown key `{full}`: `{target}` takes no argument `{key}`."
            msg += (
                f" Did you mean `{path}.{hint[0]}`?" if hint else f" Valid keys: {', '.join(sorted(params))}."
            )
            problems.append(msg)
            continue
        value = node[key] if not OmegaConf.is_config(node) else OmegaConf.select(node, key, default=None)
        problems.extend(_validate_value(value, full))
        if key in params:
            problems.extend(_check_type(params[key], value, full))
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in node
        and n not in provided
    ]
    if missing:
        problems.append(f"`{path or 'config'}` ({target}) is missing required key(s): {', '.join(missing)}")
    return problems


def _validate_value(value: Any, path: str) -> list[str]:
    if is_target_node(value):
        return validate_target_node(value, path)
    if isinstance(value, (Sequence, ListConfig)) and not isinstance(value, str):
        out: list[str] = []
        for i, item in enumerate(value):
            if is_target_node(item):
                out.extend(validate_target_node(item, f"{path}[{i}]"))
        return out
    if isinstance(value, (Mapping, DictConfig)):
        out = []
        for k in value:
            if is_target_node(value[k]):
                out.extend(validate_target_node(value[k], f"{path}.{k}"))
        return out
    return []


_SIMPLE = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _check_type(param: inspect.Parameter, value: Any, path: str) -> list[str]:
    """Catch the common mistake of a string where a number is expected (e.g. `lr=1e-4x`)."""
    ann = param.annotation
    if isinstance(ann, str):  # postponed annotations: only handle the plain builtins
        ann = {"int": int, "float": float, "bool": bool, "str": str}.get(ann, None)
    if ann not in _SIMPLE or value is None or OmegaConf.is_config(value):
        return []
    ok = _SIMPLE[ann]
    if isinstance(value, bool) and ann in (int, float):
        return [f"`{path}` must be a {ann.__name__}, got the boolean {value!r}"]
    if not isinstance(value, ok):
        return [f"`{path}` must be a {ann.__name__}, got {value!r} ({type(value).__name__})"]
    return []


def to_container(value: Any) -> Any:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def instantiate(node: Any, /, **extra: Any) -> Any:
    """Recursively build ``node``; ``extra`` keyword arguments override/add constructor args."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    return _build(node, extra)


def _build(node: Any, extra: dict[str, Any] | None = None) -> Any:
    if isinstance(node, dict):
        if TARGET_KEY in node:
            target = resolve_target(node[TARGET_KEY])
            recursive = node.get("_recursive_", True)
            kwargs = {k: (_build(v) if recursive else v) for k, v in node.items() if k not in META_KEYS}
            kwargs.update(extra or {})
            if node.get("_partial_", False):
                import functools

                return functools.partial(target, **kwargs)
            return target(**kwargs)
        return {k: _build(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_build(v) for v in node]
    return node
