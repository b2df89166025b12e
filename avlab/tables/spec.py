"""A paper table as a config: ``experiments/<task>/tables/<name>.yaml``.

A table names its rows (an experiment plus overrides each), its columns (metric keys of
``metrics.json``, or ``params`` for a count the model gives without training), the values the
paper publishes with their source (table and row), the evaluation protocol, optional overlays and
overrides for every row (``demo_overlay``/``demo_overrides`` only when a row runs on demo data;
a row may add its own after the table's),
and footnotes saying where avlab's setup differs from the paper's. Example::

    title: Comparison on the internal dataset
    paper: "Attentive AV-FusionNet: ... (Table 1)"
    source: Table 1
    protocol: 5 source clips held out as the test set ...
    demo_note: the demo MOS is a pseudo-MOS computed from objective measures
    footnotes: [GML audio features are replaced by ...]
    columns:
      - {id: plcc, name: R_p, key: test/plcc, better: higher}
    rows:
      - {name: Q-Random, experiment: avq/weighted_product, group: Baseline,
         source: "Table 1, row Q-Random", paper: {plcc: 0.84}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avlab.config import experiments_root
from avlab.errors import ConfigError, closest

#: Sub-folder of each task's experiments folder that holds its table configs.
TABLES_DIR = "tables"


@dataclass
class Column:
    #: Short name the rows' ``paper:`` mappings use.
    id: str
    #: Header, as the paper prints it (``R_p``, ``GAP%``).
    name: str
    #: ``metrics.json`` key (``test/plcc``); unused for ``kind: params``.
    key: str = ""
    #: ``metric`` (read from the run) or ``params`` (trainable parameters of ``model.net``,
    #: counted without training on the ``meta`` device, so it needs no run at all).
    kind: str = "metric"
    #: avlab's value is multiplied by this before it is shown (``100`` for a percentage,
    #: ``1e-6`` for millions of parameters), so it reads in the paper's unit.
    scale: float = 1.0
    digits: int = 2
    #: ``higher`` or ``lower``: which way is better (for the reader; the table marks nothing).
    better: str = "higher"
    #: Overrides applied only to count parameters (the setup in which the paper counted them).
    params_overrides: list[str] = field(default_factory=list)


@dataclass
class Row:
    name: str
    #: The experiment config that reproduces the row; empty (``experiment: null``) for a row the
    #: paper reports and avlab has no experiment for: it is shown with the paper's values only.
    experiment: str
    overrides: list[str] = field(default_factory=list)
    #: The paper's grouping of rows (``Baseline``, ``SVR``, ``Deep Learning``).
    group: str = ""
    #: Where the published values are: table and row of the paper.
    source: str = ""
    #: Published values by column id; a column the paper leaves empty is simply absent.
    paper: dict[str, float] = field(default_factory=dict)
    #: This row's demo-scale overlays/overrides, after the table's (only on demo data): for a row
    #: whose own settings the table's demo overlay would replace, e.g. a shortened step list.
    demo_overlay: list[str] = field(default_factory=list)
    demo_overrides: list[str] = field(default_factory=list)


@dataclass
class TableSpec:
    task: str
    #: ``<task>/<name>`` (or the file's stem for a YAML path outside the package).
    name: str
    path: Path
    title: str
    #: The paper (title) the published values come from.
    paper: str
    #: The paper's table the values come from (``Table 1``).
    source: str
    #: The evaluation protocol, as the paper states it and as avlab runs it.
    protocol: str
    columns: list[Column]
    rows: list[Row]
    overlay: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    demo_overlay: list[str] = field(default_factory=list)
    demo_overrides: list[str] = field(default_factory=list)
    #: What the demo data is (printed whenever a row ran on demo data).
    demo_note: str = ""
    footnotes: list[str] = field(default_factory=list)
    #: What reproducing the table at the paper's scale needs: data, weights, compute.
    needs: str = ""


_TOP_KEYS = {
    "task",
    "title",
    "paper",
    "source",
    "protocol",
    "columns",
    "rows",
    "overlay",
    "overrides",
    "demo_overlay",
    "demo_overrides",
    "demo_note",
    "footnotes",
    "needs",
}
_COLUMN_KEYS = {"id", "name", "key", "kind", "scale", "digits", "better", "params_overrides"}
_ROW_KEYS = {"name", "experiment", "overrides", "group", "source", "paper", "demo_overlay", "demo_overrides"}


def tables_root() -> Path:
    return experiments_root()


def list_tables() -> list[str]:
    """Every packaged table as ``<task>/<name>``; ``_``-prefixed files are building blocks."""
    root = tables_root()
    return sorted(
        f"{p.parent.parent.name}/{p.stem}"
        for p in root.glob(f"*/{TABLES_DIR}/*.yaml")
        if not p.stem.startswith("_")
    )


def find_table(name: str) -> tuple[Path, str]:
    """Path and display name of a table: ``<task>/<name>`` or a path to a YAML file."""
    as_path = Path(name).expanduser()
    if name.endswith((".yaml", ".yml")) and as_path.is_file():
        return as_path.resolve(), as_path.stem
    task, _, stem = name.partition("/")
    path = tables_root() / task / TABLES_DIR / f"{stem}.yaml"
    if stem and path.is_file():
        return path, name
    hint = closest(name, list_tables())
    raise ConfigError(
        f"unknown table `{name}`."
        + (f" Did you mean `{hint[0]}`?" if hint else "")
        + " Run `avlab table --list` to see all tables, or pass a path to a .yaml file."
    )


def _unknown(where: str, keys: Any, allowed: set[str]) -> list[str]:
    out = []
    for key in keys:
        if key not in allowed:
            hint = closest(str(key), sorted(allowed))
            did = f" Did you mean `{where}{hint[0]}`?" if hint else ""
            out.append(f"unknown key `{where}{key}`.{did}")
    return out


def _str_list(value: Any, where: str, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"`{where}` must be a list of strings, got {value!r}")
        return []
    return list(value)


def load_table(name: str) -> TableSpec:
    """Read and check a table config; every problem is reported at once, before anything runs."""
    path, display = find_table(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    problems = _unknown("", data, _TOP_KEYS)
    in_package = path.parent.name == TABLES_DIR and path.parent.parent.parent == tables_root()
    task = data.get("task") or (path.parent.parent.name if in_package else "")
    if not task:
        problems.append("`task` is not set (a table outside experiments/<task>/tables/ must name its task)")
    columns: list[Column] = []
    for i, node in enumerate(data.get("columns") or []):
        where = f"columns[{i}]."
        if not isinstance(node, dict) or "id" not in node or "name" not in node:
            problems.append(f"`{where[:-1]}` needs at least `id` and `name`")
            continue
        problems += _unknown(where, node, _COLUMN_KEYS)
        col = Column(
            id=str(node["id"]),
            name=str(node["name"]),
            key=str(node.get("key", "")),
            kind=str(node.get("kind", "metric")),
            scale=float(node.get("scale", 1.0)),
            digits=int(node.get("digits", 2)),
            better=str(node.get("better", "higher")),
            params_overrides=_str_list(node.get("params_overrides"), where + "params_overrides", problems),
        )
        if col.kind not in ("metric", "params"):
            problems.append(f"`{where}kind` must be metric or params, got {col.kind!r}")
        if col.kind == "metric" and not col.key:
            problems.append(f"`{where}key` (the metrics.json key) is required for a metric column")
        if col.better not in ("higher", "lower"):
            problems.append(f"`{where}better` must be higher or lower, got {col.better!r}")
        columns.append(col)
    if not columns:
        problems.append("`columns` is empty: a table needs at least one column")
    ids = {c.id for c in columns}
    rows: list[Row] = []
    for i, node in enumerate(data.get("rows") or []):
        where = f"rows[{i}]."
        if not isinstance(node, dict) or "name" not in node or "experiment" not in node:
            problems.append(f"`{where[:-1]}` needs at least `name` and `experiment`")
            continue
        problems += _unknown(where, node, _ROW_KEYS)
        paper = node.get("paper") or {}
        for key in paper:
            if key not in ids:
                hint = closest(str(key), sorted(ids))
                did = f" Did you mean `{hint[0]}`?" if hint else ""
                problems.append(f"`{where}paper.{key}` is not a column id.{did}")
        rows.append(
            Row(
                name=str(node["name"]),
                experiment=str(node["experiment"] or ""),
                overrides=_str_list(node.get("overrides"), where + "overrides", problems),
                group=str(node.get("group", "")),
                source=str(node.get("source", "")),
                paper={str(k): float(v) for k, v in paper.items() if v is not None},
                demo_overlay=_str_list(node.get("demo_overlay"), where + "demo_overlay", problems),
                demo_overrides=_str_list(node.get("demo_overrides"), where + "demo_overrides", problems),
            )
        )
    if not rows:
        problems.append("`rows` is empty: a table needs at least one row")
    names = ("overlay", "overrides", "demo_overlay", "demo_overrides", "footnotes")
    lists = {k: _str_list(data.get(k), k, problems) for k in names}
    if problems:
        raise ConfigError(f"invalid table `{display}` ({path}):\n  - " + "\n  - ".join(problems))
    return TableSpec(
        task=str(task),
        name=display,
        path=path,
        title=str(data.get("title", display)),
        paper=str(data.get("paper", "")),
        source=str(data.get("source", "")),
        protocol=str(data.get("protocol", "")).strip(),
        columns=columns,
        rows=rows,
        overlay=lists["overlay"],
        overrides=lists["overrides"],
        demo_overlay=lists["demo_overlay"],
        demo_overrides=lists["demo_overrides"],
        demo_note=str(data.get("demo_note", "")).strip(),
        footnotes=lists["footnotes"],
        needs=str(data.get("needs", "")).strip(),
    )
