"""A table's outputs: the console table, ``table.md``, ``table.csv``, ``table.png`` and a W&B Table.

Every output has, per column, the paper's value, avlab's and the difference (avlab − paper), and
says which data the avlab numbers come from; demo data is named as such, with the table's note on
what the demo data is, because demo numbers are not comparable with the paper's.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from avlab.rundir import atomic_path, atomic_write
from avlab.tables.build import RowResult
from avlab.tables.spec import Column, TableSpec


def fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "—"
    value = round(value, digits) + 0.0  # + 0.0: no "-0.00" for a difference that rounds to zero
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def cells(col: Column, res: RowResult) -> tuple[str, str, str]:
    """(paper, avlab, Δ) of one column of one row, as text."""
    paper = res.row.paper.get(col.id)
    ours = res.value(col)
    delta = None if paper is None or ours is None else ours - paper
    return fmt(paper, col.digits), fmt(ours, col.digits), fmt(delta, col.digits, signed=True)


def status(res: RowResult, dry_run: bool = False) -> str:
    if res.action == "reuse":
        return "reused" + (f" {res.run_dir.name}" if res.run_dir else "")
    if res.action == "failed":
        return "FAILED"
    if res.action == "none":
        return "computed"
    if res.action == "missing":
        return "no experiment"
    return "would run" if dry_run else (f"ran {res.seconds:.0f} s" if res.run_dir else "not run")


def data_lines(table: TableSpec, results: list[RowResult]) -> list[str]:
    """Which data the avlab numbers come from; demo data is flagged as not the paper's."""
    lines = []
    for desc in dict.fromkeys(r.data.describe() for r in results if r.data):
        lines.append(f"avlab data: {desc}")
    if any(r.data and r.data.demo for r in results):
        note = f" ({table.demo_note})" if table.demo_note else ""
        lines.append(
            "The avlab numbers come from DEMO data, not the paper's data: they test that the "
            f"pipeline runs and compare models with each other, not with the paper{note}."
        )
    return lines


def header(table: TableSpec) -> list[str]:
    out = [f"{table.name}: {table.title}"]
    if table.paper:
        out.append(f"paper: {table.paper}" + (f", {table.source}" if table.source else ""))
    if table.protocol:
        out.append(f"protocol: {' '.join(table.protocol.split())}")
    return out


def footer(table: TableSpec, results: list[RowResult]) -> list[str]:
    lines = data_lines(table, results)
    lines += [f"[{i}] {' '.join(note.split())}" for i, note in enumerate(table.footnotes, 1)]
    for res in results:
        if res.error:
            lines.append(f"row `{res.row.name}` failed: {res.error}")
    return lines


def _has_groups(table: TableSpec) -> bool:
    return any(r.group for r in table.rows)


def flat_rows(
    table: TableSpec, results: list[RowResult], dry_run: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the wide table (one line per row, paper/avlab/Δ per column)."""
    head = (["group"] if _has_groups(table) else []) + ["model"]
    for col in table.columns:
        head += [f"{col.name} paper", f"{col.name} avlab", f"{col.name} Δ"]
    head += ["run", "paper source"]
    body = []
    for res in results:
        line = ([res.row.group] if _has_groups(table) else []) + [res.row.name]
        for col in table.columns:
            line += list(cells(col, res))
        line += [status(res, dry_run), res.row.source]
        body.append(line)
    return head, body


def print_table(table: TableSpec, results: list[RowResult], dry_run: bool = False) -> str:
    """Print the table to the console (and return the text printed, for tests and logs)."""
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    # As wide as the table needs (a paper's table is wide): wrapped names would break its layout.
    names = max(len(r.row.name) for r in results)
    groups = max(len(r.row.group) for r in results)
    digits = max(len(c.name) + 2 for c in table.columns)
    width = names + groups + 3 * len(table.columns) * (digits + 3) + 40
    console = Console(file=buf, width=width, force_terminal=False, highlight=False)
    for line in header(table):
        console.print(line, soft_wrap=True)
    grid = Table(show_lines=False)
    if _has_groups(table):
        grid.add_column("group", no_wrap=True)
    grid.add_column("model", no_wrap=True)
    for col in table.columns:
        arrow = "↑" if col.better == "higher" else "↓"
        grid.add_column(f"{col.name}{arrow}\npaper", justify="right")
        grid.add_column(f"{col.name}{arrow}\navlab", justify="right")
        grid.add_column("Δ", justify="right")
    grid.add_column("run")
    previous = None
    for res in results:
        line = []
        if _has_groups(table):
            line.append(res.row.group if res.row.group != previous else "")
            previous = res.row.group
        line.append(res.row.name)
        for col in table.columns:
            line += list(cells(col, res))
        line.append(status(res, dry_run))
        grid.add_row(*line)
    console.print(grid)
    for line in footer(table, results):
        console.print(line, soft_wrap=True)
    text = buf.getvalue()
    print(text, end="")
    return text


def markdown(table: TableSpec, results: list[RowResult]) -> str:
    head, body = flat_rows(table, results)
    esc = [[c.replace("|", "\\|") for c in line] for line in [head, *body]]
    lines = [f"# {table.name}: {table.title}", ""]
    lines += [f"- {line}" for line in header(table)[1:]]
    lines += ["", "| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(line) + " |" for line in esc[1:]]
    lines += [""] + [f"{line}  " for line in footer(table, results)]
    return "\n".join(lines) + "\n"


def csv_text(table: TableSpec, results: list[RowResult]) -> str:
    """One line per row: the published and avlab values as numbers, the source, the run and the data."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    head = ["group", "model", "experiment", "overrides"]
    for col in table.columns:
        head += [f"{col.id}_paper", f"{col.id}_avlab", f"{col.id}_delta"]
    head += ["paper_source", "status", "run_dir", "config_hash", "data", "demo_data"]
    writer.writerow(head)
    for res in results:
        line: list[Any] = [res.row.group, res.row.name, res.row.experiment, " ".join(res.row.overrides)]
        for col in table.columns:
            paper, ours = res.row.paper.get(col.id), res.value(col)
            line += [_num(paper), _num(ours), _num(None if paper is None or ours is None else ours - paper)]
        data = [res.data.root, res.data.demo] if res.data else ["", ""]
        line += [res.row.source, res.action, res.run_dir or "", res.config_hash, *data]
        writer.writerow(line)
    return buf.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(round(value, 10))


def plot(table: TableSpec, results: list[RowResult], path: Path) -> None:
    """Paper against avlab per column, one panel each, horizontal bars in the table's row order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(table.columns)
    height = 1.2 + 0.32 * len(results)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 2.5, height), sharey=True, squeeze=False)
    y = np.arange(len(results))
    for ax, col in zip(axes[0], table.columns):
        paper = [r.row.paper.get(col.id, np.nan) for r in results]
        ours = [np.nan if r.value(col) is None else r.value(col) for r in results]
        ax.barh(y - 0.2, paper, height=0.4, label="paper", color="#999999")
        ax.barh(y + 0.2, ours, height=0.4, label="avlab", color="#1f77b4")
        ax.set_title(f"{col.name} ({'↑' if col.better == 'higher' else '↓'})", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([r.row.name for r in results], fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=8, loc="lower right")
    demo = any(r.data and r.data.demo for r in results)
    fig.suptitle(
        f"{table.name}: paper vs avlab" + (" (avlab on DEMO data, not the paper's)" if demo else ""),
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_outputs(table: TableSpec, results: list[RowResult], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "table.md", "csv": out_dir / "table.csv", "png": out_dir / "table.png"}
    atomic_write(paths["md"], markdown(table, results))
    atomic_write(paths["csv"], csv_text(table, results))
    plot(table, results, paths["png"])
    return paths


def log_wandb(table: TableSpec, results: list[RowResult], out_dir: Path, mode: str) -> Path | None:
    """Log the table as a ``wandb.Table`` (and the PNG) in a run of its own, job type ``table``;
    returns the W&B run folder, or ``None`` when W&B is disabled."""
    if mode == "disabled":
        return None
    import wandb

    first = next((r.cfg for r in results if r.cfg is not None), None)
    cfg = first.logger.wandb if first is not None else None
    head, body = flat_rows(table, results)
    run = wandb.init(
        project=cfg.project if cfg else "avlab",
        entity=cfg.entity if cfg else None,
        mode=mode,
        dir=str(out_dir),
        job_type="table",
        group=f"table/{table.name}",
        name=f"table/{table.name}",
        tags=[table.task, "table"],
        reinit="finish_previous",
        config={
            "table": table.name,
            "rows": {r.row.name: r.config_hash for r in results},
            "data": sorted({r.data.root for r in results if r.data}),
        },
    )
    try:
        run.log(
            {
                "table": wandb.Table(columns=head, data=body),
                "table_plot": wandb.Image(str(out_dir / "table.png")),
            }
        )
        return Path(run.dir).parent
    finally:
        run.finish()
