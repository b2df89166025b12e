"""`avlab table`: a paper table from its config, paper vs avlab, with finished runs reused by config hash."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import yaml

from avlab import cli
from avlab.config import find_experiment, list_experiments, load_experiment
from avlab.datamodules.yt8m import YT8MDataModule
from avlab.tables import config_hash, list_tables, load_table
from avlab.tables.build import find_finished_run, plan

#: Tiny and fast: one epoch of 32-wide models on the tiny demo (the test table adds data.root).
SMALL = [
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "data.batch_size=32",
    "model.net.hidden=32",
    "callbacks.progress_bar=none",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return YT8MDataModule.build_demo(tmp_path_factory.mktemp("yt8m-tiny") / "data", size="tiny")


@pytest.fixture
def small_table(tmp_path: Path, tiny: Path) -> Path:
    """Two rows of the yt8m Table 1 config, with its published values, at test scale."""
    spec = yaml.safe_load((Path(load_table("yt8m/table1").path)).read_text())
    spec["task"] = "yt8m"
    spec["rows"] = [r for r in spec["rows"] if r["experiment"] in ("yt8m/fc_audio", "yt8m/attend_fusion")]
    spec["rows"].append(
        {
            "name": "Paper only",
            "experiment": None,
            "source": "Table 1, row X",
            "paper": {"gap": 12.5, "f1": 10.0, "params": 1.0},
        }
    )
    spec["overrides"] = [*SMALL, f"data.root={tiny}"]
    spec["columns"][2]["params_overrides"] = ["model.net.hidden=64"]  # counted at a width of its own
    path = tmp_path / "small_table.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run_dirs(runs: Path) -> list[Path]:
    return sorted(p.parent for p in runs.glob("yt8m/*/*/config.yaml"))


def test_list_names_every_packaged_table_and_experiments_do_not_include_them(capsys) -> None:
    assert cli.main(["table", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"avq/table1", "yt8m/table1"} <= set(listed) and listed == list_tables()
    assert not [name for name in list_experiments() if "/tables/" in name]


@pytest.mark.parametrize("name", list_tables())
def test_every_packaged_table_is_complete(name: str, tmp_path: Path) -> None:
    table = load_table(name)
    assert table.paper and table.source and table.protocol and table.needs and table.footnotes
    # Every row resolves to a valid config (its overrides exist), and no two rows are the same run.
    planned = plan(table, runs_root=tmp_path)
    hashes = [r.config_hash for r in planned if r.action == "run"]
    assert len(set(hashes)) == len(hashes) == sum(1 for r in table.rows if r.experiment)
    for row in table.rows:
        if row.experiment:  # rows without one show the paper's values only
            find_experiment(row.experiment)
        assert row.source.startswith(table.source), f"{row.name}: the source names the paper's table and row"
        # The paper leaves a cell empty only where the row cannot have a value (unqa Tables VII and X's
        # "-", Table III's methods of one modality) or where its text cannot be read (footnoted).
        assert len(row.paper) == len(table.columns) or table.name in PARTIAL_ROWS, row.name


PARTIAL_ROWS = ("unqa/table3", "unqa/table7", "unqa/table10")


def test_yt8m_table1_holds_the_papers_fifteen_rows() -> None:
    table = load_table("yt8m/table1")
    assert len(table.rows) == 15 and len({r.experiment for r in table.rows}) == 15
    attend = next(r for r in table.rows if r.experiment == "yt8m/attend_fusion")
    assert attend.paper == {"gap": 80.55, "f1": 75.64, "params": 72.0}
    # Each row's published parameter count is the one its experiment config states.
    for row in table.rows:
        assert load_experiment(row.experiment).paper.params_m == row.paper["params"], row.name


def test_tables_share_a_run_when_rows_resolve_to_the_same_config(tmp_path: Path) -> None:
    # AVRSP's full model is the last row of Table III and of Table V: one run serves both.
    full = [
        next(r for r in plan(load_table(name), runs_root=tmp_path) if r.row.experiment == experiment)
        for name, experiment in (
            ("saliency/table3", "saliency/ablation_fusion_ravf"),
            ("saliency/table5", "saliency/ablation_fusion_ravf"),
        )
    ]
    assert full[0].config_hash == full[1].config_hash


def test_avq_table1_rows_and_columns() -> None:
    table = load_table("avq/table1")
    assert [r.experiment.removeprefix("avq/") for r in table.rows] == [
        "weighted_product",
        "weighted_product_fitted",
        "",
        "svr_2f",
        "svr_3f",
        "svr_7f",
        "svr_8f",
        "simple_fusion",
        "ca_fusion",
        "recursive_fusion",
        "attentive_fusion",
    ]
    assert [c.key for c in table.columns][:3] == ["test/plcc", "test/srcc", "test/rmse"]
    assert table.rows[-1].paper == {
        "plcc": 0.97,
        "srcc": 0.96,
        "rmse": 0.22,
        "sjtu_plcc": 0.92,
        "sjtu_srcc": 0.92,
        "sjtu_rmse": 0.44,
    }


def test_unknown_table_and_bad_keys_fail_before_running(capsys, tmp_path: Path) -> None:
    assert cli.main(["table", "avq/tabel1"]) == 2
    assert "Did you mean `avq/table1`" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: yt8m\ncolums: []\nrows: [{name: a, experiment: yt8m/fc_audio, paper: {gap: 1}}]\n")
    assert cli.main(["table", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Did you mean `columns`" in err and "`rows[0].paper.gap` is not a column id" in err


def test_dry_run_then_run_then_reuse(capsys, monkeypatch, small_table: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # --dry-run: what would run, nothing trained, nothing written; parameter counts need no run.
    assert cli.main(["table", str(small_table), "--runs", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(": run\n") == 2 and "would run" in out and not runs.exists()

    # First call: both rows train; the table shows paper and avlab values side by side.
    assert cli.main(["table", str(small_table), "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    first = _run_dirs(runs)
    assert len(first) == 2
    out_dir = runs / "tables" / "yt8m" / "small_table"
    assert out.strip().endswith(f"table directory: {out_dir}")
    assert "paper" in out and "avlab" in out and "50.32" in out and "80.55" in out
    assert "DEMO data" in out and "no experiment" in out and "12.50" in out
    for name in ("table.md", "table.csv", "table.png"):
        assert (out_dir / name).stat().st_size > 0
    with open(out_dir / "table.csv") as fh:
        rows = {r["experiment"]: r for r in csv.DictReader(fh)}
    for run_dir in first:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        row = rows[f"yt8m/{run_dir.parent.name}"]
        assert float(row["gap_avlab"]) == pytest.approx(100 * metrics["test/gap"])
        assert float(row["gap_delta"]) == pytest.approx(100 * metrics["test/gap"] - float(row["gap_paper"]))
        assert row["run_dir"] == str(run_dir) and row["demo_data"] == "True" and row["status"] == "run"
        assert f"{100 * metrics['test/gap']:.2f}" in out
    # The parameter column is the model's own count at the configured width, not a copied number.
    from avlab.instantiate import instantiate
    from avlab.models.blocks import count_trainable_parameters

    cfg = load_experiment("yt8m/fc_audio", [*SMALL, "model.net.hidden=64"])
    assert float(rows["yt8m/fc_audio"]["params_avlab"]) == pytest.approx(
        count_trainable_parameters(instantiate(cfg.model.net)) * 1e-6
    )
    assert "| FC Audio |" in (out_dir / "table.md").read_text().replace("Baseline Models | ", "")

    # Second call: every row is reused, nothing is trained, and it takes seconds. With W&B on
    # (offline), the table is logged as a wandb.Table in a run of its own next to the files.
    from avlab import runner

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(runner, "train", no_training)
    start = time.perf_counter()
    assert cli.main(["table", str(small_table), "--runs", str(runs), "logger.wandb.mode=offline"]) == 0
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert _run_dirs(runs) == first and out.count("reused") == 2 and elapsed < 40
    logged = list((out_dir / "wandb").glob("offline-run-*/files/media/table/table_*.table.json"))
    assert len(logged) == 1
    wandb_table = json.loads(logged[0].read_text())
    assert "GAP% paper" in wandb_table["columns"] and len(wandb_table["data"]) == 3
    with open(out_dir / "table.csv") as fh:
        assert {r["status"] for r in csv.DictReader(fh)} == {"reuse", "missing"}

    # A different resolved config is not reused; where runs and logs go does not count.
    assert (
        cli.main(
            [
                "table",
                str(small_table),
                "--runs",
                str(runs),
                "--dry-run",
                "seed=7",
                "logger.wandb.mode=offline",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.count(": run\n") == 2


def test_config_hash_reads_run_directories_and_ignores_where_output_goes(
    toy_experiment: Path, tmp_path: Path, capsys
) -> None:
    cfg = load_experiment(str(toy_experiment))
    moved = load_experiment(
        str(toy_experiment), [f"run.root={tmp_path / 'elsewhere'}", "logger.wandb.mode=offline"]
    )
    assert config_hash(cfg) == config_hash(moved)
    assert config_hash(cfg) != config_hash(load_experiment(str(toy_experiment), ["model.lr=0.01"]))
    assert cli.main(["train", str(toy_experiment)]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
    # A run made by `avlab train` is found from its config.yaml; one without metrics.json is not.
    assert find_finished_run(Path(cfg.run.root), cfg.experiment, config_hash(cfg)) == run_dir
    (run_dir / "metrics.json").unlink()
    assert find_finished_run(Path(cfg.run.root), cfg.experiment, config_hash(cfg)) is None


def test_demo_data_is_recognised_wherever_data_root_points(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from avlab.tables.build import data_used

    def used(root: object) -> tuple[bool, str]:
        got = data_used(OmegaConf.create({"task": "saliency", "data": {"root": root, "demo_size": "tiny"}}))
        return got.demo, got.demo_size

    built = tmp_path / "demo"
    (built / "stavis").mkdir(parents=True)
    (built / "demo_info.json").write_text(json.dumps({"size": "small"}))
    real = tmp_path / "real"
    real.mkdir()
    assert used(None) == (True, "tiny")  # unset: the task's demo data
    assert used(str(built)) == (True, "small") and used(str(built / "stavis")) == (True, "small")
    assert used(str(real)) == (False, "")


def test_a_failing_row_is_reported_and_the_others_are_kept(capsys, small_table: Path, tmp_path: Path) -> None:
    spec = yaml.safe_load(small_table.read_text())
    spec["rows"] = spec["rows"][:1] + [
        dict(spec["rows"][1], name="Broken", overrides=["data.train_pattern=video/nothing*.tfrecord"])
    ]
    path = tmp_path / "broken_table.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = tmp_path / "runs"
    assert cli.main(["table", str(path), "--runs", str(runs)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "row `Broken` failed" in out and len(_run_dirs(runs)) >= 1
    md = (runs / "tables" / "yt8m" / "broken_table" / "table.md").read_text()
    assert "row `Broken` failed" in md
    # The finished row is reused; the failed one is tried again.
    assert cli.main(["table", str(path), "--runs", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "FC Audio [" in out and ": reuse " in out and out.count(": run\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "experiment", "overrides"),
    [
        ("avq/table1", "avq/simple_fusion", ["data.holdout_sources=1", "trainer.max_epochs=2"]),
        ("saliency/table5", "saliency/ablation_fusion_ravf", ["trainer.max_epochs=1"]),
        ("unqa/table9", "unqa/regressor_mlp", []),
    ],
)
def test_one_row_of_each_task_table_on_tiny_demo_data(
    capsys, tmp_path: Path, name: str, experiment: str, overrides: list[str]
) -> None:
    """The packaged table's demo overlay, columns and metric keys work for every task, end to end."""
    table = load_table(name)
    spec = yaml.safe_load(table.path.read_text())
    spec["task"] = table.task
    spec["rows"] = [r for r in spec["rows"] if r["experiment"] == experiment]
    local = table.path.parent
    spec["demo_overlay"] = [
        str(local / f"{o}.yaml") if (local / f"{o}.yaml").is_file() else o
        for o in spec.get("demo_overlay") or []
    ]
    path = tmp_path / "one_row.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    args = [
        "table",
        str(path),
        "--runs",
        str(tmp_path / "runs"),
        "data.demo_size=tiny",
        "callbacks.progress_bar=none",
        *overrides,
    ]
    assert cli.main(args) == 0
    with open(tmp_path / "runs" / "tables" / table.task / "one_row" / "table.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    filled = [c.id for c in table.columns if row[f"{c.id}_avlab"]]
    assert filled and row["demo_data"] == "True", "no column of the table got a value from the run"
    capsys.readouterr()
    assert cli.main([*args, "--dry-run"]) == 0 and ": reuse " in capsys.readouterr().out
