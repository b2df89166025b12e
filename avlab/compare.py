"""``avlab compare``: several runs side by side, for teams working without W&B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from avlab.data_fingerprint import describe_record
from avlab.errors import DataError

#: Config sections that differ between any two runs and say nothing about the model.
_IGNORED = {"avlab", "experiment", "run", "logger", "description"}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def load_run(run_dir: Path) -> tuple[dict[str, float], dict[str, Any]]:
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise DataError(f"{run_dir} has no metrics.json: is it a finished avlab run directory?")
    metrics = json.loads(metrics_path.read_text())
    config = {}
    if (run_dir / "config.yaml").is_file():
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return metrics, config


def _selected(key: str, patterns: list[str]) -> bool:
    return any(key == p or (p.endswith("/") and key.startswith(p)) for p in patterns)


def compare_runs(run_dirs: list[Path], metrics: str = "test/", config_diff: bool = True) -> str:
    """One row per run, one column per metric (``metrics``: comma-separated names or prefixes ending
    in ``/``), then the config keys whose values differ between the runs."""
    from rich.console import Console
    from rich.table import Table

    from avlab.rundir import read_status

    patterns = [m.strip() for m in metrics.split(",") if m.strip()]
    # A failed run has no (or partial) metrics: one line names it instead of a misleading row.
    skipped, kept = [], []
    for d in run_dirs:
        status = read_status(d)
        if status.get("status") == "failed":
            skipped.append(f"skipped {d}: the run failed ({status.get('error', 'see error.txt')})")
        else:
            kept.append(d)
    if not kept:
        raise DataError(
            "every run given to `avlab compare` failed:\n  " + "\n  ".join(skipped) + "\n"
            "see each run directory's error.txt"
        )
    runs = [(d, *load_run(d)) for d in kept]
    keys: list[str] = []
    for _, m, _ in runs:
        for k in m:
            if _selected(k, patterns) and not k.endswith("_std") and k not in keys:
                keys.append(k)
    if all(not p.endswith("/") for p in patterns):
        keys = [p for p in patterns if p in keys]  # keep the order the user asked for
    table = Table(title="metrics")
    table.add_column("run")
    for key in keys:
        table.add_column(key, justify="right")
    for d, m, cfg in runs:
        cells = []
        for key in keys:
            v, std = m.get(key), m.get(f"{key}_std")
            cells.append("—" if v is None else (f"{v:.4f} ± {std:.4f}" if std is not None else f"{v:.4f}"))
        table.add_row(f"{cfg.get('description') or cfg.get('experiment', d.parent.name)}", *cells)
    flat = [{k: v for k, v in _flatten(cfg).items() if k.split(".")[0] not in _IGNORED} for _, _, cfg in runs]
    for f, (d, _, _) in zip(flat, runs, strict=True):
        f.update(describe_record(d))  # the same config over changed data is a difference too
    diff_keys = sorted(
        k for k in set().union(*flat) if len({json.dumps(f.get(k), default=str) for f in flat}) > 1
    )
    console = Console(width=220, record=True)
    with console.capture() as cap:
        for line in skipped:
            console.print(line, highlight=False, markup=False)
        console.print(table)
        if diff_keys and config_diff:
            diff = Table(title="config differences")
            diff.add_column("key")
            for d, _, cfg in runs:
                diff.add_column(str(cfg.get("experiment", d.parent.name)))
            for key in diff_keys:
                diff.add_row(key, *[str(f.get(key, "—")) for f in flat])
            console.print(diff)
        elif config_diff:
            console.print("configs are identical apart from run bookkeeping")
    return cap.get()
