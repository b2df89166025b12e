"""The yt8m task end to end: configs, the runner, predict, data commands, DDP evaluation."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from media_helpers import YT8M_TINY
from torch import nn

from avlab import cli
from avlab.config import load_experiment
from avlab.datamodules.yt8m import YT8MDataModule, YT8MRecordDataset, resolve_split
from avlab.errors import ConfigError
from avlab.instantiate import instantiate
from avlab.lightningmodules.yt8m import YT8MModule, multilabel_bce
from avlab.metrics.yt8m import YT8MMetrics
from avlab.models.yt8m.fc_residual import FCResidualGatedLateFusion
from avlab.models.yt8m.params import yt8m_experiments

SMALL = YT8M_TINY


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return YT8MDataModule.build_demo(tmp_path_factory.mktemp("yt8m-tiny") / "data", size="tiny")


def _train(capsys, experiment: str, *overrides: str) -> tuple[Path, str]:
    assert cli.main(["train", experiment, *SMALL, *overrides]) == 0
    out = capsys.readouterr().out
    return Path(out.strip().splitlines()[-1].removeprefix("run directory: ")), out


def test_every_config_builds_with_the_papers_training_settings():
    names = yt8m_experiments()
    assert len(names) >= 18  # the paper's 15 models and 3 ablations (tests/test_yt8m_models.py)
    for name in names:
        heads = ["model.net.num_heads=2"] if "num_heads" in load_experiment(name).model.net else []
        cfg = load_experiment(name, ["model.net.hidden=16", *heads])
        module = instantiate(cfg.model)
        assert module.net.num_classes == cfg.data.num_classes == 3862
        assert module.lr == 1e-4 and module.net.dropout == 0.4 and cfg.trainer.max_epochs == 20


def test_loss_is_sum_over_classes_mean_over_batch():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    p = torch.sigmoid(logits)
    want = -(labels * p.log() + (1 - labels) * (1 - p).log()).sum(1).mean()  # eq. (10)
    assert torch.allclose(multilabel_bce(logits, labels), want)


def test_train_test_predict_attend_fusion(capsys, tiny: Path, tmp_path: Path):
    run_dir, _out = _train(
        capsys,
        "yt8m/attend_fusion",
        f"data.root={tiny}",
        f"run.root={tmp_path}",
        "model.net.num_heads=2",
        "model.lr=1e-3",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "test/gap",
        "test/hit_at_1",
        "test/perr",
        "test/map",
        "test/f1",
        "test/f1_macro",
        "test/loss",
    ):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
    assert 0.0 <= metrics["test/gap"] <= 1.0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    table = (run_dir / "per_class_ap.csv").read_text().splitlines()
    assert table[0] == "class,name,ap,positives" and len(table) > 1
    assert (run_dir / "plots" / "per_class_ap.png").stat().st_size > 0
    # Kaggle submission from the trained checkpoint
    sub = tmp_path / "submission.csv"
    assert (
        cli.main(
            [
                "predict",
                "yt8m/attend_fusion",
                *SMALL,
                "model.net.num_heads=2",
                f"data.root={tiny}",
                f"run.root={tmp_path}",
                f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                f"input={tiny / 'video' / 'test*.tfrecord'}",
                f"output={sub}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    rows = list(csv.reader(sub.open()))
    assert rows[0] == ["VideoId", "LabelConfidencePairs"]
    assert len(rows) == 1 + 64
    pairs = rows[1][1].split()
    assert len(pairs) == 40 and all(0 <= int(c) < 3862 for c in pairs[::2])
    scores = [float(s) for s in pairs[1::2]]
    assert scores == sorted(scores, reverse=True)


def test_train_baseline_on_frame_level_mf_std(capsys, tiny: Path, tmp_path: Path):
    run_dir, _ = _train(
        capsys,
        "yt8m/fc_late_fusion",
        f"data.root={tiny}",
        f"run.root={tmp_path}",
        "data.schema=frame",
        "data.features=mf_std",
        "model.net.visual_dim=2048",
        "model.net.audio_dim=256",
    )
    assert "test/gap" in json.loads((run_dir / "metrics.json").read_text())


def test_feature_width_mismatch_is_a_clear_error(capsys, tiny: Path, tmp_path: Path):
    code = cli.main(
        [
            "train",
            "yt8m/fc_audio",
            *SMALL,
            f"data.root={tiny}",
            f"run.root={tmp_path}",
            "data.schema=frame",
            "data.features=mf_std",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "model.net.visual_dim" in err and "2048" in err


def test_data_demo_and_check_commands(capsys, tiny: Path, tmp_path: Path):
    out = tmp_path / "demo"
    assert cli.main(["data", "demo", "yt8m", str(out), "--size", "tiny"]) == 0
    assert (out / "video" / "train0000.tfrecord").is_file() and (out / "vocabulary.csv").is_file()
    assert cli.main(["data", "check", "yt8m/attend_fusion", f"data.root={out}"]) == 0
    assert "no problems found" in capsys.readouterr().out
    # damage one shard and add a label beyond the vocabulary
    shard = out / "video" / "validate0001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert cli.main(["data", "check", "yt8m/attend_fusion", f"data.root={out}", "data.num_classes=100"]) == 1
    text = capsys.readouterr().out
    assert "validate0001.tfrecord: truncated record at byte offset" in text
    assert "outside 0..99" in text and "vocabulary.csv has class index 3861" in text


_DDP_WORKER = """
import json, os, sys
from pathlib import Path
import torch
from avlab.datamodules.yt8m import YT8MRecordDataset
from avlab.metrics.yt8m import YT8MMetrics

paths, out = json.loads(sys.argv[1]), sys.argv[2]
torch.distributed.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_* from the environment
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
torch.manual_seed(0)
weight = torch.randn(1024 + 128, 3862)  # a fixed "model", identical on both ranks
ds = YT8MRecordDataset(paths, num_classes=3862)  # rank/world come from torch.distributed
metric = YT8MMetrics(3862)
seen = []
for batch in torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2):
    x = torch.cat([batch["rgb"], batch["audio"]], 1)
    metric.update(torch.sigmoid(x @ weight * 0.1), batch["labels"])
    seen += batch["video_id"]
values = {k: float(v) for k, v in metric.compute().items()}  # torchmetrics syncs over gloo
gathered = [None] * world
torch.distributed.all_gather_object(gathered, seen)
if rank == 0:
    Path(out).write_text(json.dumps({"metrics": values, "ids": [i for ids in gathered for i in ids]}))
torch.distributed.destroy_process_group()
"""


@pytest.mark.ddp
def test_ddp_evaluation_reads_each_record_once_and_matches_single_process(tiny: Path, tmp_path: Path):
    paths = [str(p) for p in resolve_split(tiny, "video/validate*.tfrecord")] + [
        str(p) for p in resolve_split(tiny, "video/test*.tfrecord")
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.json"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DDP_WORKER, json.dumps(paths), str(out)],
            env={
                **os.environ,
                "RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
        )
        for r in range(2)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]  # an upper bound for a loaded CI box
    result = json.loads(out.read_text())
    # single process, same "model"
    torch.manual_seed(0)
    weight = torch.randn(1024 + 128, 3862)
    metric = YT8MMetrics(3862)
    ids = []
    for batch in torch.utils.data.DataLoader(YT8MRecordDataset(paths, num_classes=3862), batch_size=16):
        x = torch.cat([batch["rgb"], batch["audio"]], 1)
        metric.update(torch.sigmoid(x @ weight * 0.1), batch["labels"])
        ids += batch["video_id"]
    assert (
        sorted(result["ids"]) == sorted(ids) and len(set(ids)) == len(ids) == 128
    )  # 2 ranks x 2 workers, once each
    for key, value in metric.compute().items():
        assert result["metrics"][key] == pytest.approx(float(value), abs=1e-6), key


def test_attend_fusion_beats_both_single_modality_ablations_on_gap(capsys, tmp_path: Path):
    """On the (small) demo data some labels can only be seen and others only heard."""
    gap = {}
    for name in ("attend_fusion", "attend_fusion_audio_only", "attend_fusion_visual_only"):
        assert (
            cli.main(
                [
                    "train",
                    f"yt8m/{name}",
                    "--overlay",
                    "yt8m/_cpu",
                    "logger.wandb.mode=disabled",
                    f"run.root={tmp_path}",
                ]
            )
            == 0
        )
        run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
        gap[name] = json.loads((run_dir / "metrics.json").read_text())["test/gap"]
    assert gap["attend_fusion"] > gap["attend_fusion_audio_only"] + 0.05, gap
    assert gap["attend_fusion"] > gap["attend_fusion_visual_only"] + 0.05, gap


def test_module_requires_a_yt8m_model_and_sets_the_prior_bias_on_its_classifier():
    with pytest.raises(ConfigError, match="YT8MModel"):
        YT8MModule(nn.Linear(4, 3))
    net = FCResidualGatedLateFusion(num_classes=7, hidden=8, class_gate=True)
    YT8MModule(net, prior_bias=0.001)
    # the logits layer is `head`, not the class gate that is registered after it
    assert torch.allclose(net.head.bias, torch.full((7,), math.log(0.001 / 0.999)))
    assert not torch.allclose(net.class_gate.bias, net.head.bias)
    with pytest.raises(ConfigError, match="prior_bias"):
        YT8MModule(net, prior_bias=1.5)
