"""Resolve a table's rows to configs, reuse finished runs with the same resolved config, run the rest.

A finished run is a run directory with ``config.yaml`` (the resolved config the runner wrote) and
``metrics.json``. Its config hash is computed from ``config.yaml`` itself, so any run of the same
resolved config is reused, whether ``avlab table`` or ``avlab train`` made it, as long as the dataset
folders it read still hold the data it fingerprinted (``data.json``, :mod:`avlab.data_fingerprint`):
a corrected score file or an added video makes the row run again. The hash leaves out
what cannot change a result: where runs and logs go (``run``, ``logger``), the progress bar, the
description, and the avlab version and commit stamped into ``config.yaml`` (so a code change does
not by itself invalidate a table; delete the run directories to recompute).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from avlab.data_fingerprint import stale_data
from avlab.errors import ConfigError
from avlab.tables.spec import Column, Row, TableSpec

#: Top-level config keys (dotted for nested ones) that the hash ignores (see the module docstring).
HASH_IGNORES = ("run", "logger", "avlab", "description", "callbacks.progress_bar")


@dataclass
class DataUsed:
    """The dataset folder a row reads, and whether it is a demo dataset (not the paper's data)."""

    root: str
    demo: bool
    #: ``size`` of a demo dataset, from its ``demo_info.json`` (``small``, ``tiny``).
    demo_size: str = ""

    def describe(self) -> str:
        if self.demo:
            return f"demo data ({self.demo_size or 'demo'}) at {self.root}"
        return str(self.root)


@dataclass
class RowResult:
    row: Row
    #: The resolved config; ``None`` for a row without an experiment.
    cfg: DictConfig | None
    config_hash: str
    data: DataUsed | None
    #: ``reuse`` (a finished run with the same config hash exists), ``run`` (to run / was run),
    #: ``failed`` (the run raised), ``none`` (no metric column: nothing to run) or ``missing``
    #: (the row has no avlab experiment; the paper's values only).
    action: str = "run"
    run_dir: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: Values computed without a run, by column id (``kind: params``).
    computed: dict[str, float] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    #: Why a run with the same config was not reused (its data changed), for the dry run and log.
    note: str = ""

    def value(self, col: Column) -> float | None:
        """avlab's value in the paper's unit, or ``None`` when there is none."""
        raw = self.computed.get(col.id) if col.kind == "params" else self.metrics.get(col.key)
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            return None
        return float(raw) * col.scale


def _drop(data: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if isinstance(data.get(head), dict):
            _drop(data[head], rest)
    else:
        data.pop(head, None)


def config_hash(config: dict[str, Any] | DictConfig) -> str:
    """Hash of a resolved config, without :data:`HASH_IGNORES`.

    Both sides go through one YAML round trip (what ``config.yaml`` stores), so a config in
    memory and the same config read back from a run directory hash alike.
    """
    if isinstance(config, DictConfig):
        config = yaml.safe_load(OmegaConf.to_yaml(config, resolve=True))
    else:
        config = yaml.safe_load(yaml.safe_dump(config))
    for key in HASH_IGNORES:
        _drop(config, key)
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_finished_run(runs_root: Path, experiment: str, wanted: str) -> Path | None:
    """The newest finished run directory of ``experiment`` under ``runs_root`` whose config hash
    is ``wanted``; ``None`` when there is none."""
    folder = runs_root / experiment
    if not folder.is_dir():
        return None
    for run_dir in sorted(folder.iterdir(), reverse=True):  # timestamped names: newest first
        cfg_file, metrics = run_dir / "config.yaml", run_dir / "metrics.json"
        if not (cfg_file.is_file() and metrics.is_file()):
            continue  # running, crashed or a test/predict run without results
        try:
            stored = yaml.safe_load(cfg_file.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(stored, dict) and config_hash(stored) == wanted:
            return run_dir
    return None


def data_used(cfg: DictConfig) -> DataUsed:
    """Which dataset a config reads; the task's demo data when ``data.root`` is unset, and any
    folder holding a demo builder's ``demo_info.json`` counts as demo data too."""
    from avlab.paths import cache_dir

    data = cfg.get("data") or {}
    root = data.get("root")
    size = str(data.get("demo_size") or "small")
    if root in (None, ""):
        return DataUsed(root=str(cache_dir() / "demo" / str(cfg.task) / size), demo=True, demo_size=size)
    path = Path(str(root)).expanduser()
    # A demo builder writes demo_info.json at the top of what it built; data.root may name a
    # layout folder inside it (saliency's DIR/stavis).
    info = next((p / "demo_info.json" for p in (path, path.parent) if (p / "demo_info.json").is_file()), None)
    if info is not None:
        try:
            size = str(json.loads(info.read_text()).get("size") or "")
        except (OSError, json.JSONDecodeError):
            size = ""
        return DataUsed(root=str(path), demo=True, demo_size=size)
    return DataUsed(root=str(path), demo=False)


def _overlay_paths(table: TableSpec, names: list[str]) -> list[str]:
    # An overlay next to the table (`_live_sjtu`) is found there; others as `--overlay` finds them.
    out = []
    for name in names:
        local = table.path.parent / (name if name.endswith(".yaml") else f"{name}.yaml")
        out.append(str(local) if local.is_file() else name)
    return out


def resolve_row(
    table: TableSpec, row: Row, overrides: list[str], overlays: list[str], runs_root: Path | None
) -> tuple[DictConfig, DataUsed, Path]:
    """The row's resolved config: the table's overlays and overrides, the row's, then the
    command line's; the demo overlay/overrides join when the row reads demo data."""
    from avlab.config import load_experiment

    def load(demo: bool) -> DictConfig:
        ov = [*table.overlay, *(table.demo_overlay + row.demo_overlay if demo else []), *overlays]
        items = [
            *table.overrides,
            *(table.demo_overrides if demo else []),
            *row.overrides,
            *(row.demo_overrides if demo else []),
            *overrides,
        ]
        if runs_root is not None:
            items.append(f"run.root={runs_root}")
        return load_experiment(row.experiment, items, overlays=_overlay_paths(table, ov))

    cfg = load(False)
    used = data_used(cfg)
    if used.demo and (table.demo_overlay or table.demo_overrides or row.demo_overlay or row.demo_overrides):
        cfg = load(True)
        used = data_used(cfg)
    return cfg, used, Path(str(cfg.run.root))


def count_params(table: TableSpec, row: Row, col: Column, overrides: list[str]) -> float | None:
    """Trainable parameters of the row's ``model.net`` as the paper's setup configures it (no
    demo overlay; the column's ``params_overrides`` last), built on the ``meta`` device so that
    even the largest models cost no memory; ``None`` for a model without a ``net``."""
    import torch

    from avlab.config import load_experiment
    from avlab.instantiate import instantiate
    from avlab.models.blocks import count_trainable_parameters

    items = [*table.overrides, *row.overrides, *overrides, *col.params_overrides]
    cfg = load_experiment(row.experiment, items, overlays=_overlay_paths(table, table.overlay))
    node = cfg.model.get("net") if isinstance(cfg.model, DictConfig) else None
    if node is None:
        return None
    with torch.device("meta"):
        net = instantiate(node)
    return float(count_trainable_parameters(net))


def plan(
    table: TableSpec, overrides: list[str] = (), overlays: list[str] = (), runs_root: Path | None = None
) -> list[RowResult]:
    """Every row resolved and validated (a bad row fails before anything runs), with the finished
    run it would reuse and the values that need no run."""
    results = []
    needs_run = any(c.kind == "metric" for c in table.columns)
    fingerprints: dict[str, dict[str, Any]] = {}  # each dataset folder is walked once per table
    problems = []
    for row in table.rows:
        if not row.experiment:
            results.append(RowResult(row=row, cfg=None, config_hash="", data=None, action="missing"))
            continue
        try:
            cfg, used, root = resolve_row(table, row, list(overrides), list(overlays), runs_root)
        except ConfigError as exc:
            problems.append(f"row `{row.name}` ({row.experiment}): {exc}")
            continue
        res = RowResult(row=row, cfg=cfg, config_hash=config_hash(cfg), data=used)
        for col in table.columns:
            if col.kind == "params":
                value = count_params(table, row, col, list(overrides))
                if value is not None:
                    res.computed[col.id] = value
        if not needs_run:
            res.action = "none"
        else:
            found = find_finished_run(root, str(cfg.experiment), res.config_hash)
            why_not = stale_data(found, fingerprints) if found is not None else None
            if found is not None and why_not is None:
                res.action, res.run_dir = "reuse", found
                res.metrics = json.loads((found / "metrics.json").read_text())
            elif found is not None:
                res.note = f"not reusing {found.name}: {why_not}"
        results.append(res)
    if problems:
        raise ConfigError(
            f"table `{table.name}` has rows that do not resolve:\n  - " + "\n  - ".join(problems)
        )
    return results


def run_missing(results: list[RowResult], log: Any = print) -> None:
    """Train every row that has no finished run; a failing row is recorded and the others go on
    (its error is shown in the table; the finished rows are reused by the next call)."""
    from avlab import runner

    todo = [r for r in results if r.action == "run"]
    for i, res in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] avlab train {res.row.experiment} ({res.row.name}) ...")
        if res.note:
            log(f"    {res.note}")
        start = time.perf_counter()
        try:
            out = runner.train(res.cfg)
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
            res.action, res.error = "failed", f"{type(exc).__name__}: {exc}"
            log(f"    failed: {res.error}")
        else:
            res.run_dir, res.metrics = out.run_dir, dict(out.metrics)
            log(f"    done in {time.perf_counter() - start:.1f} s: {out.run_dir}")
        res.seconds = time.perf_counter() - start
