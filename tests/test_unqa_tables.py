"""UNQA Tables III, VI and X (``unqa/table3``, ``unqa/table6``, ``unqa/table10``): the published
values, which rows avlab runs, and that the columns read keys the unqa module logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from avlab import cli
from avlab.datamodules.base import DatasetInfo
from avlab.tables import list_tables, load_table
from avlab.tables.build import plan

#: The databases in table5's column order, by modality block of the paper's Table III.
BLOCKS = {
    "IQA": ("bid", "clive", "koniq", "spaq"),
    "VQA": ("youtube_ugc", "konvid", "live_vqc"),
    "AQA": ("itu", "noizeus", "tcd_voip"),
    "AVQA": ("sjtu_uav", "live_sjtu"),
}
DATABASES = [db for dbs in BLOCKS.values() for db in dbs]
NEW = {"unqa/table3": "Table III", "unqa/table6": "Table VI", "unqa/table10": "Table X"}
#: Rows avlab runs: name -> (experiment, overrides).
RUNS = {
    "unqa/table3": {"UNQA": ("unqa/unqa", [])},
    "unqa/table6": {
        "w/o FS": ("unqa/wo_fs", []),
        "w/o SS": ("unqa/wo_ss", []),
        "w/o TS": ("unqa/wo_ts", []),
        "UNQA": ("unqa/unqa", []),
    },
    "unqa/table10": {
        **{
            f"w/o {block}": ("unqa/unqa", [f"data.databases.{db}=null" for db in dbs])
            for block, dbs in BLOCKS.items()
        },
        "UNQA": ("unqa/unqa", []),
    },
}


@pytest.mark.parametrize("name", sorted(NEW))
def test_every_published_value_is_a_plausible_number(name: str) -> None:
    table = load_table(name)
    assert name in list_tables() and table.source == NEW[name]
    # The same columns as Table V: SRCC then PLCC (after the logistic fit) of the twelve databases.
    assert [c.key for c in table.columns] == [f"test/{db}/srcc" for db in DATABASES] + [
        f"test/{db}/plcc_logistic" for db in DATABASES
    ]
    assert [c.key for c in table.columns] == [c.key for c in load_table("unqa/table5").columns]
    raw = yaml.safe_load(table.path.read_text())["rows"]
    for row, node in zip(table.rows, raw, strict=True):
        # YAML read every cell as a number (a stray "0.7366*" would be a string), none was dropped.
        assert all(isinstance(v, float) for v in node["paper"].values()), row.name
        assert row.paper == node["paper"] and row.paper, row.name
        for cid, value in row.paper.items():
            # The lowest value the paper prints in these tables is w/o SS's ITU PLCC, 0.3074.
            assert 0.3 < value < 1.0, f"{name} {row.name} {cid} = {value}"
        assert row.source.startswith(f"{table.source}, "), row.source


def test_unqa_row_is_the_same_in_every_table_of_the_paper() -> None:
    # UNQA's per-database results are printed in Tables III and V-X: every reading must agree.
    unqa = {
        name: next(r for r in load_table(name).rows if r.name == "UNQA")
        for name in ("unqa/table3", "unqa/table5", "unqa/table6", "unqa/table7", "unqa/table10")
    }
    reference = unqa["unqa/table5"].paper
    assert len(reference) == 24 and reference["noizeus_plcc"] == 0.9269
    for name, row in unqa.items():
        assert row.paper == reference, name
        assert (row.experiment, row.overrides) == ("unqa/unqa", []), name


def test_table3_other_methods_fill_only_their_modality_block() -> None:
    table = load_table("unqa/table3")
    rows = {r.name: r for r in table.rows}
    assert list(rows)[-2:] == ["UNQA-Single", "UNQA"]
    assert len(rows["UNQA-Single"].paper) == 24 and not rows["UNQA-Single"].experiment
    for row in table.rows[:-2]:
        assert not row.experiment, f"{row.name}: avlab has no implementation, paper values only"
        block = row.group.split(",")[0]
        cells = {cid.rsplit("_", 1)[0] for cid in row.paper}
        assert cells <= set(BLOCKS[block]), f"{row.name} has a value outside the {block} block"
    assert len(table.rows) == 26  # 24 other methods + UNQA-Single + UNQA
    # Spot values, one per block, and the cells left empty because they are not legible.
    assert rows["StairIQA"].paper["bid_plcc"] == 0.9066
    assert rows["FastVQA"].paper["konvid_srcc"] == 0.8473
    assert rows["ARN-50"].paper["tcd_voip_plcc"] == 0.8453
    assert rows["DNN-RNT"].paper["live_sjtu_srcc"] == 0.9363
    assert "spaq_srcc" not in rows["HyperIQA"].paper and "live_vqc_plcc" not in rows["VSFA"].paper
    assert any("not legible" in f for f in table.footnotes)


def test_table10_empty_cells_are_the_databases_each_row_drops() -> None:
    # The paper's "-" cells of a "w/o" row are exactly the databases its overrides drop.
    for row in load_table("unqa/table10").rows:
        dropped = {o.split("=")[0].removeprefix("data.databases.") for o in row.overrides}
        assert all(o.endswith("=null") for o in row.overrides)
        published = {cid.rsplit("_", 1)[0] for cid in row.paper}
        assert published == set(DATABASES) - dropped, row.name
        if row.name != "UNQA":
            assert dropped == set(BLOCKS[row.name.removeprefix("w/o ")])


@pytest.mark.parametrize("name", sorted(NEW))
def test_dry_run_lists_the_avlab_rows_and_resolves_their_experiments(
    capsys, tmp_path: Path, name: str
) -> None:
    runs = tmp_path / "runs"
    assert cli.main(["table", name, "--runs", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    table = load_table(name)
    for row in table.rows:
        if row.name in RUNS[name]:
            experiment, overrides = RUNS[name][row.name]
            assert (row.experiment, row.overrides) == (experiment, overrides), row.name
            assert f"{row.name} [{' '.join([experiment, *overrides])}] config " in out
        else:
            assert f"{row.name}: no avlab experiment (the paper's values only)" in out
    assert out.count(": run\n") == len(RUNS[name]) and "would run" in out and not runs.exists()
    # Each avlab row is a run of its own (on the demo data too, where the demo overlay applies).
    hashes = [r.config_hash for r in plan(table, runs_root=tmp_path) if r.row.experiment]
    assert len(set(hashes)) == len(hashes) == len(RUNS[name])


def test_demo_rows_share_runs_and_table6_keeps_each_rows_steps(tmp_path: Path) -> None:
    def resolved(name: str) -> dict[str, object]:
        return {r.row.name: r for r in plan(load_table(name), runs_root=tmp_path) if r.row.experiment}

    t3, t5, t6, t10 = (resolved(f"unqa/table{i}") for i in (3, 5, 6, 10))
    # Tables III, VI and X use Table V's demo overlay, so their UNQA row is Table V's run.
    assert t3["UNQA"].config_hash == t5["UNQA"].config_hash == t6["UNQA"].config_hash
    assert t10["UNQA"].config_hash == t5["UNQA"].config_hash
    # The overlay's step list would replace the ablations' own: each Table VI row's own demo
    # overlay puts back its two steps, at the demo lengths (database 10, modality 3, finetune 2).
    steps = {
        n: [(s["name"], s["epochs"], s["lr"]) for s in r.cfg.callbacks.extra.schedule.steps]
        for n, r in t6.items()
    }
    db, mod, ft = ("database_heads", 10, 1e-3), ("modality_heads", 3, 1e-3), ("finetune", 2, 1e-3)
    assert steps == {"w/o FS": [mod, ft], "w/o SS": [db, ft], "w/o TS": [db, mod], "UNQA": [db, mod, ft]}
    for r in t6.values():
        epochs = sum(s["epochs"] for s in r.cfg.callbacks.extra.schedule.steps)
        assert r.cfg.trainer.max_epochs == epochs, r.row.name
    # Off the demo data a row's own demo overlay does not apply: the paper's 20/10/10 lengths.
    real = plan(load_table("unqa/table6"), ["data.root=/nonexistent/unqa"], runs_root=tmp_path)
    wo_fs = next(r for r in real if r.row.name == "w/o FS")
    assert [s["epochs"] for s in wo_fs.cfg.callbacks.extra.schedule.steps] == [10, 10]


def test_column_keys_are_keys_the_unqa_module_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    from avlab.lightningmodules.unqa import UNQAModule
    from avlab.models.unqa import AudioExtractor, UNQANet

    # One entry per paper database; evaluate() only reads their names (the modality is irrelevant).
    dbs = {
        db: {"format": "manifest", "path": db, "modality": "audio", "mos_range": [1, 5]} for db in DATABASES
    }
    module = UNQAModule(UNQANet(audio=AudioExtractor(dim=16, num_heads=2)), databases=dbs)
    # unqa/_base sets data.logistic: "4", which the DataModule hands over as dataset_info.
    monkeypatch.setattr(UNQAModule, "dataset_info", property(lambda self: DatasetInfo(logistic="4")))
    per_db = 6
    names = [db for db in DATABASES for _ in range(per_db)]
    table = pd.DataFrame(
        {"database": names, "modality": "audio", "media": [f"{i}.wav" for i in range(len(names))]}
    )
    rng = np.random.default_rng(0)
    mos = torch.tensor(rng.uniform(1, 5, len(names)), dtype=torch.float32)
    pred = mos + torch.tensor(rng.normal(0, 0.5, len(names)), dtype=torch.float32)
    metrics = module.evaluate("test", {"index": torch.arange(len(names)), "pred": pred, "mos": mos}, table)
    logged = {f"test/{k}": v for k, v in metrics.items()}  # the base module logs them as test/<key>
    for name in sorted(NEW):
        missing = [c.key for c in load_table(name).columns if c.key not in logged]
        assert not missing, f"{name}: column keys the unqa module does not log: {missing}"
    assert all(np.isfinite(logged[f"test/{db}/plcc_logistic"]) for db in DATABASES)
