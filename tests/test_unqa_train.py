"""UNQA end to end on the tiny demo: three steps with explicit transitions, resume in step two,
repeated splits, cross-database role, and ``avlab predict`` on each modality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from lightning import Callback

from avlab import cli
from avlab.callbacks.unqa_schedule import PAPER_STEPS, ThreeStepSchedule, normalise_steps
from avlab.errors import ConfigError

HERE = Path(__file__).resolve()


def _steps(e1: int, e2: int, e3: int, lr: float = 1e-3) -> str:
    return (
        "callbacks.extra.schedule.steps=["
        f"{{name: database_heads, epochs: {e1}, heads: database, loss: mae_rank, "
        f"train: [spatial, audio, database_heads], lr: {lr}}},"
        f"{{name: modality_heads, epochs: {e2}, heads: modality, loss: srcc, "
        f"train: [spatial, audio, modality_heads], lr: {lr}}},"
        f"{{name: finetune, epochs: {e3}, heads: modality, loss: srcc, train: [modality_heads], lr: {lr}}}]"
    )


def fast(tmp: Path, *extra: str) -> list[str]:
    """One database per modality, 32-px inputs: each epoch takes a couple of seconds on 2 cores."""
    return [
        "data.demo_size=tiny",
        "data.databases.clive=null",
        "data.databases.tcd_voip=null",
        "data.image_size=32",
        "data.resize_short=32",
        "data.frames=1",
        "data.motion_size=32",
        "data.audio_seconds=1.0",
        "logger.wandb.mode=disabled",
        f"run.root={tmp / 'runs'}",
        *extra,
    ]


class StepRecorder(Callback):
    """Records, at each epoch start (after the schedule callback), the step and the optimiser."""

    def __init__(self, path: str) -> None:
        self.path, self.rows = path, []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        opt = trainer.optimizers[0]
        net = pl_module.net
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "step": pl_module.step_index,
                "heads": int(pl_module.heads_mode),
                "loss": pl_module.step_spec["loss"],
                "optimizer": id(opt),
                "adam_state": len(opt.state),
                "n_params": sum(p.numel() for g in opt.param_groups for p in g["params"]),
                "spatial_trainable": all(p.requires_grad for p in net.spatial.parameters()),
                "db_heads_trainable": all(p.requires_grad for p in net.database_heads.parameters()),
                "modality_heads_trainable": all(p.requires_grad for p in net.modality_heads.parameters()),
                "motion_trainable": any(p.requires_grad for p in net.motion.parameters()),
                "spatial_in_train_mode": net.spatial.training,
            }
        )
        Path(self.path).write_text(json.dumps(self.rows))


def _train(capsys, *overrides: str, experiment: str = "unqa/unqa_demo") -> Path:
    assert cli.main(["train", experiment, *overrides]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("run directory: ")
    return Path(last.removeprefix("run directory: "))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("unqa")
    rec = tmp / "steps.json"
    recorder = f"callbacks.extra.recorder={{_target_: '{HERE}:StepRecorder', path: '{rec}'}}"
    assert (
        cli.main(["train", "unqa/unqa_demo", *fast(tmp, _steps(1, 1, 1), "trainer.max_epochs=3", recorder)])
        == 0
    )
    run = max((tmp / "runs" / "unqa" / "unqa_demo").iterdir())
    return {"run": run, "steps": json.loads(rec.read_text()), "tmp": tmp}


def test_three_steps_transitions_and_metrics(trained: dict[str, Any]) -> None:
    rows = trained["steps"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["heads"] for r in rows] == [0, 1, 1] and [r["loss"] for r in rows] == [
        "mae_rank",
        "srcc",
        "srcc",
    ]
    # Every step starts with a fresh optimiser over exactly its trainable parts.
    assert len({r["optimizer"] for r in rows}) == 3 and all(r["adam_state"] == 0 for r in rows)
    assert (
        rows[0]["spatial_trainable"]
        and rows[0]["db_heads_trainable"]
        and not rows[0]["modality_heads_trainable"]
    )
    assert (
        rows[1]["spatial_trainable"]
        and rows[1]["modality_heads_trainable"]
        and not rows[1]["db_heads_trainable"]
    )
    assert (
        not rows[2]["spatial_trainable"]
        and rows[2]["modality_heads_trainable"]
        and not rows[2]["spatial_in_train_mode"]
    )
    assert rows[2]["n_params"] < rows[1]["n_params"]
    assert not any(r["motion_trainable"] for r in rows), "SlowFast is always frozen"

    run = trained["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    for db in ("koniq", "konvid", "noizeus", "live_sjtu"):
        for key in ("srcc", "plcc", "plcc_logistic"):
            assert -1.0 <= metrics[f"test/{db}/{key}"] <= 1.0
    assert "test/srcc_mean" in metrics
    seq = pd.read_csv(run / "task_sequence.csv")
    assert sorted(seq["schedule_step"].unique()) == [1, 2, 3]
    assert set(seq["database"]) == {"koniq", "konvid", "noizeus", "live_sjtu"}
    # Audio steps are repeated x4, so noizeus (an audio database) dominates the mix.
    assert seq["database"].value_counts().idxmax() == "noizeus"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["unqa_step"]["index"] == 2 and "WeightedTaskSampling" in ckpt["callbacks"]
    assert (run / "plots" / "task_sampling.png").is_file()


def test_resume_in_step_two_matches_uninterrupted_run(capsys, tmp_path: Path) -> None:
    common = fast(tmp_path, _steps(1, 2, 1))
    full = _train(capsys, *common, "trainer.max_epochs=4")
    with pytest.warns(UserWarning, match="training stops early"):
        part = _train(capsys, *common, "trainer.max_epochs=2")  # "killed" after the first epoch of step two
    assert torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)["unqa_step"]["index"] == 1
    resumed = _train(
        capsys, *common, "trainer.max_epochs=4", f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}"
    )
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], msg=key)
    assert json.loads((full / "metrics.json").read_text()) == json.loads(
        (resumed / "metrics.json").read_text()
    )
    seq_full = pd.read_csv(full / "task_sequence.csv")
    seq_resumed = pd.read_csv(resumed / "task_sequence.csv")
    tail = seq_full[seq_full["epoch"] >= 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(tail, seq_resumed.reset_index(drop=True))


def test_repeated_splits_report_mean_and_std(capsys, tmp_path: Path) -> None:
    run = _train(
        capsys,
        *fast(
            tmp_path,
            _steps(1, 1, 1),
            "trainer.max_epochs=3",
            "splits.repeats=2",
            "data.databases.konvid=null",
            "data.databases.live_sjtu=null",
        ),
    )
    metrics = json.loads((run / "metrics.json").read_text())
    for db in ("koniq", "noizeus"):
        assert {f"test/{db}/srcc", f"test/{db}/srcc_std", f"test/{db}/plcc", f"test/{db}/plcc_std"} <= set(
            metrics
        )
    assert len(pd.read_csv(run / "folds.csv")) == 2


def test_cross_database_role_tests_an_unseen_database(capsys, tmp_path: Path) -> None:
    run = _train(
        capsys,
        *fast(
            tmp_path,
            _steps(1, 1, 1),
            "trainer.max_epochs=3",
            "data.databases.konvid=null",
            "data.databases.live_sjtu=null",
            "data.databases.clive={format: clive, path: CLIVE, role: test}",
        ),
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert (
        "test/clive/srcc" in metrics
    )  # all 21 CLIVE stimuli, never trained on, scored by the image regressor
    pred = pd.read_csv(run / "predictions_test.csv")
    assert (pred["database"] == "clive").sum() == 21
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("net.database_heads.clive") for k in ckpt["state_dict"])


def test_predict_each_modality(trained: dict[str, Any], capsys) -> None:
    from media_helpers import mux_av

    from avlab.datamodules.unqa import UNQADataModule
    from avlab.paths import cache_dir

    root = UNQADataModule.build_demo(cache_dir() / "demo" / "unqa" / "tiny", size="tiny")
    video = next((root / "KoNViD-1k" / "KoNViD_1k_videos").iterdir())
    wav = next((root / "NOIZEUS" / "wav").iterdir())
    av = trained["tmp"] / "av.mp4"
    mux_av(video, wav, av)
    inputs = {
        "image": next((root / "KonIQ-10k" / "1024x768").iterdir()),
        "video": video,
        "audio": wav,
        "av": av,
    }
    ckpt = trained["run"] / "checkpoints" / "last.ckpt"
    for modality, path in inputs.items():
        assert (
            cli.main(
                ["predict", "unqa/unqa_demo", *fast(trained["tmp"]), f"ckpt_path={ckpt}", f"input={path}"]
            )
            == 0
        )
        out = capsys.readouterr().out
        result = json.loads(out[: out.rindex("}") + 1])
        assert result["modality"] == modality and result["regressor"] == modality
        assert isinstance(result["score"], float)


def test_schedule_specs_are_validated() -> None:
    assert ThreeStepSchedule().total_epochs == 40 and [s["epochs"] for s in normalise_steps(None)] == [
        20,
        10,
        10,
    ]
    sched = ThreeStepSchedule(PAPER_STEPS)
    assert [sched.step_for_epoch(e) for e in (0, 19, 20, 29, 30, 39, 45)] == [0, 0, 1, 1, 2, 2, 2]
    with pytest.raises(ConfigError, match="train must list"):
        normalise_steps([{"name": "x", "train": ["motion"]}])
    with pytest.raises(ConfigError, match="heads must be"):
        normalise_steps([{"heads": "shared"}])
