"""AVRSP Tables I and II (``saliency/table1``, ``saliency/table2``): per-dataset comparisons with other
methods, whose rows show the paper's values only, and the two AVRSP rows that avlab runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from avlab import cli
from avlab.config import load_experiment
from avlab.lightningmodules.saliency import SaliencyModule
from avlab.metrics.saliency import METRICS
from avlab.tables import list_tables, load_table
from avlab.tables.build import plan

#: Table -> (datasets in the paper's column order, as avlab's STAViS layout names them).
TABLES = {
    "saliency/table1": ("DIEM", "ETMD_av", "AVAD"),
    "saliency/table2": ("Coutrot_db1", "Coutrot_db2", "SumMe"),
}
OTHERS_V = ["TASED-Net(V)", "STAViS(V)", "ViNet(V)", "CASP-Net(V)", "TSFP-Net(V)"]
OTHERS_AV = ["STAViS(AV)", "ViNet(AV)", "CASP-Net(AV)", "TSFP-Net(AV)", "DAVS(AV)"]
OURS = {"AVRSP (Ours(V))": "saliency/avrsp_visual", "AVRSP (Ours(AV))": "saliency/avrsp_av"}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_published_value_is_parsed(name: str) -> None:
    table = load_table(name)
    assert name in list_tables() and table.source in ("Table I", "Table II")
    datasets = TABLES[name]
    # Columns: SIM, CC, NSS, AUC-J per dataset, the paper's order.
    assert [c.key for c in table.columns] == [
        f"test/{d}/{m}" for d in datasets for m in ("sim", "cc", "nss", "auc_j")
    ]
    assert [r.name for r in table.rows] == [*OTHERS_V, "AVRSP (Ours(V))", *OTHERS_AV, "AVRSP (Ours(AV))"]
    raw = yaml.safe_load(table.path.read_text())["rows"]
    ids = [c.id for c in table.columns]
    for row, node in zip(table.rows, raw):
        # Every cell of the row is published and read as a number (none dropped, none a string).
        assert list(node["paper"]) == ids and all(isinstance(v, float) for v in node["paper"].values())
        assert row.paper == node["paper"], row.name
        for col in table.columns:
            value = row.paper[col.id]
            limit = 10.0 if col.key.endswith("/nss") else 1.0
            assert 0.0 < value < limit, f"{row.name} {col.name} = {value}"
        printed = row.name.removeprefix("AVRSP (").removesuffix(")") if row.name in OURS else row.name
        assert row.source.startswith(f"{table.source}, row {printed}"), row.source
        assert row.experiment == OURS.get(row.name, ""), "only the AVRSP rows run"
        assert row.group == ("Visual-only" if "(V)" in row.name else "Audio-visual")


def test_spot_values_and_consistency_with_table3() -> None:
    t1, t2, t3 = (load_table(f"saliency/table{i}") for i in (1, 2, 3))
    rows1 = {r.name: r.paper for r in t1.rows}
    rows2 = {r.name: r.paper for r in t2.rows}
    assert rows1["ViNet(AV)"]["diem_nss"] == 2.53 and rows1["CASP-Net(AV)"]["etmd_auc_j"] == 0.940
    assert rows2["AVRSP (Ours(AV))"] == {
        **{f"coutrot1_{m}": v for m, v in zip(("sim", "cc", "nss", "auc_j"), (0.463, 0.595, 2.87, 0.899))},
        **{f"coutrot2_{m}": v for m, v in zip(("sim", "cc", "nss", "auc_j"), (0.617, 0.837, 6.47, 0.964))},
        **{f"summe_{m}": v for m, v in zip(("sim", "cc", "nss", "auc_j"), (0.381, 0.504, 2.72, 0.903))},
    }
    # The paper's own rows of Table I repeat Table III's full visual and audio-visual models on DIEM
    # and AVAD: two readings of the same paper that must agree.
    rows3 = {r.name: r.paper for r in t3.rows}
    for ours, ablation in (("AVRSP (Ours(V))", "MS + MRG"), ("AVRSP (Ours(AV))", "Audio + MS + MRG (AVRSP)")):
        for key, value in rows3[ablation].items():
            assert rows1[ours][key] == value, (ours, key)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_dry_run_lists_the_rows_and_runs_only_avrsp(capsys, tmp_path: Path, name: str) -> None:
    runs = tmp_path / "runs"
    assert cli.main(["table", name, "--runs", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for other in [*OTHERS_V, *OTHERS_AV]:
        assert f"{other}: no avlab experiment (the paper's values only)" in out
    for row, experiment in OURS.items():
        assert f"{row} [{experiment}] config " in out
    assert out.count(": run\n") == 2 and "would run" in out and not runs.exists()
    assert "paper values only" in out, "the footnote says the other methods are not run"


def test_tables_i_and_ii_share_the_avrsp_runs(tmp_path: Path) -> None:
    hashes = [
        {
            p.row.experiment: p.config_hash
            for p in plan(load_table(name), runs_root=tmp_path)
            if p.row.experiment
        }
        for name in sorted(TABLES)
    ]
    assert hashes[0] == hashes[1] and len(set(hashes[0].values())) == 2


@pytest.mark.parametrize("name", sorted(TABLES))
def test_column_keys_are_keys_the_saliency_module_logs(name: str) -> None:
    table = load_table(name)
    for experiment in OURS.values():
        cfg = load_experiment(experiment)
        datasets = list(cfg.data.datasets)
        assert set(TABLES[name]) <= set(datasets), f"{experiment} does not train/test on {TABLES[name]}"
        # What SaliencyModule.evaluate returns for a test set of these datasets; the base module logs
        # it as test/<key>.
        rng = np.random.default_rng(0)
        video = np.repeat(np.arange(2 * len(datasets)), 3)
        frames = {m: rng.uniform(0.1, 0.9, size=video.size) for m in METRICS}
        meta = pd.DataFrame({"dataset": [datasets[v // 2] for v in video]})
        logged = SaliencyModule.test_metrics({**frames, "video": video, "loss": np.zeros(video.size)}, meta)
        keys = {f"test/{k}" for k in logged}
        missing = [c.key for c in table.columns if c.key not in keys]
        assert not missing, f"{name}: column keys not logged by SaliencyModule: {missing}"
        for col in table.columns:
            assert np.isfinite(logged[col.key.removeprefix("test/")])
