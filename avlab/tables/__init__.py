"""Paper tables in one command: ``avlab table avq/table1 [key=value ...] [--runs DIR] [--dry-run]``.

A table config (:mod:`avlab.tables.spec`) names rows (experiments plus overrides), columns (metric
keys) and the paper's published values. :func:`make_table` resolves every row, reuses finished
runs of the same resolved config (:mod:`avlab.tables.build`), trains the missing ones with the
ordinary runner, and prints and writes the table beside the paper's numbers
(:mod:`avlab.tables.render`) to ``RUNS/tables/<task>/<name>/``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from avlab.tables.build import RowResult, config_hash, find_finished_run, plan, run_missing
from avlab.tables.spec import Column, Row, TableSpec, list_tables, load_table

__all__ = [
    "Column",
    "Row",
    "RowResult",
    "TableResult",
    "TableSpec",
    "add_parser",
    "config_hash",
    "find_finished_run",
    "list_tables",
    "load_table",
    "main",
    "make_table",
]


@dataclass
class TableResult:
    table: TableSpec
    rows: list[RowResult]
    #: Folder of table.md/csv/png; ``None`` on a dry run.
    out_dir: Path | None = None
    text: str = ""
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[RowResult]:
        return [r for r in self.rows if r.action == "failed"]


def make_table(
    name: str,
    overrides: list[str] = (),
    *,
    runs: Path | str | None = None,
    dry_run: bool = False,
    overlays: list[str] = (),
) -> TableResult:
    """Run (or reuse) a table's rows, print it, and write its files; on ``dry_run`` only print what
    each row would do (reuse which run, or run) and the values that need no run."""
    from avlab.runner import wandb_mode
    from avlab.tables import render

    table = load_table(name)
    runs_root = Path(runs).expanduser().resolve() if runs is not None else None
    rows = plan(table, list(overrides), list(overlays), runs_root)
    if dry_run:
        for res in rows:
            what = {
                "reuse": f"reuse {res.run_dir}",
                "run": "run",
                "none": "nothing to run",
                "missing": "no avlab experiment (the paper's values only)",
            }[res.action]
            ran = f"{res.row.experiment} {' '.join(res.row.overrides)}".strip()
            where = f" [{ran}] config {res.config_hash}" if ran else ""
            print(f"{res.row.name}{where}: {what}" + (f" ({res.note})" if res.note else ""))
        return TableResult(table, rows, None, render.print_table(table, rows, dry_run=True))
    run_missing(rows)
    cfg = next((r.cfg for r in rows if r.cfg is not None), None)
    if runs_root is not None or cfg is None:
        root = runs_root or Path("runs").resolve()
    else:
        root = Path(str(cfg.run.root)).expanduser().resolve()
    out_dir = root / "tables" / table.name if "/" in table.name else root / "tables" / table.task / table.name
    text = render.print_table(table, rows)
    files = render.write_outputs(table, rows, out_dir)
    wandb_dir = render.log_wandb(table, rows, out_dir, wandb_mode(cfg) if cfg is not None else "disabled")
    if wandb_dir is not None:
        files["wandb"] = wandb_dir
    print(f"table directory: {out_dir}")
    return TableResult(table, rows, out_dir, text, files)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``avlab table`` sub-command (registered by :mod:`avlab.cli`)."""
    p = sub.add_parser(
        "table",
        help="Reproduce a paper table: run or reuse its rows, print paper vs avlab: avlab table avq/table1.",
        description="Run the missing rows of a paper table (reusing finished runs with the same resolved "
        "config), then print it with the paper's values, avlab's and the difference, and write "
        "table.md, table.csv and table.png to RUNS/tables/<task>/<name>/.",
        epilog="Example: avlab table avq/table1 data.root=/data/avq --runs runs   "
        "(key=value overrides apply to every row)",
    )
    p.add_argument("table", nargs="?", help="<task>/<name> (see --list) or a path to a table YAML")
    p.add_argument("overrides", nargs="*", help="key=value config overrides applied to every row")
    p.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="run root to reuse runs from and write new ones to (default: the rows' run.root, runs/)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list what would run and what would be reused, then exit"
    )
    p.add_argument(
        "--overlay",
        action="append",
        default=[],
        metavar="NAME",
        help="merge another config file into every row (repeatable), e.g. yt8m/_cpu",
    )
    p.add_argument("--list", action="store_true", help="list every table as <task>/<name> and exit")
    return p


def main(args: argparse.Namespace) -> int:
    """Run ``avlab table`` for parsed arguments; 1 when a row failed."""
    if args.list:
        print("\n".join(list_tables()))
        return 0
    if not args.table:
        from avlab.errors import ConfigError

        raise ConfigError("table needs a TABLE (see `avlab table --list`)")
    result = make_table(
        args.table, args.overrides, runs=args.runs, dry_run=args.dry_run, overlays=args.overlay
    )
    return 1 if result.failed else 0
