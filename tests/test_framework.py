"""The framework itself: config validation, run directory, seeding, resume, protocols, compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from avlab import cli
from avlab.config import list_experiments, load_experiment
from avlab.errors import ConfigError


def _train(capsys, experiment: Path, *overrides: str) -> tuple[Path, str]:
    assert cli.main(["train", str(experiment), *overrides]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("run directory: ")
    return Path(last.removeprefix("run directory: ")), out


def test_unknown_top_level_key_names_closest(toy_experiment: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key `sed`.*Did you mean `seed`"):
        load_experiment(str(toy_experiment), ["sed=3"])


def test_unknown_nested_key_is_checked_against_the_target_signature(toy_experiment: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.net.in_feature.*Did you mean `model.net.in_features`"):
        load_experiment(str(toy_experiment), ["model.net.in_feature=3"])


def test_unknown_trainer_key_and_reserved_key(toy_experiment: Path) -> None:
    with pytest.raises(ConfigError, match=r"trainer.max_epoch`.*Did you mean `trainer.max_epochs`"):
        load_experiment(str(toy_experiment), ["trainer.max_epoch=1"])
    with pytest.raises(ConfigError, match=r"trainer.logger.*set by avlab"):
        load_experiment(str(toy_experiment), ["trainer.logger=false"])


def test_wrong_type_and_bad_override_syntax(toy_experiment: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.lr` must be a float"):
        load_experiment(str(toy_experiment), ["model.lr=fast"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_experiment(str(toy_experiment), ["trainer.max_epochs"])


def test_unknown_experiment_and_target_suggest(toy_experiment: Path) -> None:
    with pytest.raises(ConfigError, match=r"Did you mean `avq/attentive_fusion`"):
        load_experiment("avq/attentive_fusio")
    with pytest.raises(ConfigError, match=r"Did you mean `Linear`"):
        load_experiment(str(toy_experiment), ["model.net._target_=torch.nn.Linaer"])


def test_replacing_a_target_drops_arguments_it_does_not_take(toy_experiment: Path) -> None:
    cfg = load_experiment(
        str(toy_experiment),
        ["model.net._target_=torch.nn.Bilinear", "model.net.in1_features=4", "model.net.in2_features=4"],
    )
    assert "in_features" not in cfg.model.net and cfg.model.net.out_features == 1


def test_every_packaged_experiment_validates() -> None:
    names = list_experiments()
    assert names, "no experiments found"
    for name in names:
        cfg = load_experiment(name)
        assert cfg.task and cfg.experiment == name


def test_cli_errors_are_one_line_and_exit_2(capsys, toy_experiment: Path) -> None:
    assert cli.main(["train", str(toy_experiment), "sed=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Did you mean `seed`" in err


def test_train_writes_the_run_directory(capsys, toy_experiment: Path) -> None:
    run_dir, out = _train(capsys, toy_experiment)
    assert run_dir.parent.name == toy_experiment.stem
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["avlab"]["version"] and config["trainer"]["max_epochs"] == 3
    assert "git_commit" in config["avlab"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"test/rmse", "test/n"} and metrics["test/n"] == 24.0
    assert all(isinstance(v, float) for v in metrics.values())
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts)
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert "toy: 24 test samples" in out and "test/rmse" in out
    # Checkpoints carry the resolved config and load with weights_only=True.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["avlab"]["config"]["model"]["net"]["in_features"] == 4


def test_same_seed_same_metrics_and_no_overwrite(capsys, toy_experiment: Path) -> None:
    a, _ = _train(capsys, toy_experiment, "seed=7")
    b, _ = _train(capsys, toy_experiment, "seed=7")
    assert a != b, "a second run must get its own directory"
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def test_resume_from_checkpoint_matches_uninterrupted_run(capsys, toy_experiment: Path) -> None:
    full, _ = _train(
        capsys, toy_experiment, "trainer.max_epochs=4", "callbacks.checkpoint.monitor=train/loss"
    )
    part, _ = _train(
        capsys, toy_experiment, "trainer.max_epochs=2", "callbacks.checkpoint.monitor=train/loss"
    )
    resumed, _ = _train(
        capsys,
        toy_experiment,
        "trainer.max_epochs=4",
        "callbacks.checkpoint.monitor=train/loss",
        f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}",
    )
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_cross_validation_reports_each_fold_and_mean_std(capsys, toy_experiment: Path) -> None:
    run_dir, out = _train(capsys, toy_experiment, "cv.folds=3", "trainer.max_epochs=1")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/rmse", "test/rmse_std"} <= set(metrics)
    folds = (run_dir / "folds.csv").read_text().splitlines()
    assert len(folds) == 4  # header + 3 folds
    assert "mean ± std" in out
    assert (run_dir / "checkpoints" / "fold2" / "last.ckpt").is_file()


def test_test_command_and_compare(capsys, toy_experiment: Path) -> None:
    run_dir, _ = _train(capsys, toy_experiment)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert cli.main(["test", str(toy_experiment), f"ckpt_path={ckpt}"]) == 0
    out = capsys.readouterr().out
    test_dir = Path(out.strip().splitlines()[-1].removeprefix("run directory: "))
    assert test_dir.name.endswith("-test")
    assert json.loads((test_dir / "metrics.json").read_text())["test/n"] == 24.0
    assert cli.main(["compare", str(run_dir), str(test_dir)]) == 0
    table = capsys.readouterr().out
    assert "test/rmse" in table and "ckpt_path" in table  # the config difference is listed


def test_missing_checkpoint_is_a_clear_error(capsys, toy_experiment: Path, tmp_path: Path) -> None:
    assert cli.main(["test", str(toy_experiment), f"ckpt_path={tmp_path / 'nope.ckpt'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_last_checkpoint_follows_every_epoch_even_when_the_monitor_stalls(
    capsys, toy_experiment: Path
) -> None:
    # mode=max on a falling loss: the best checkpoint stays at epoch 0, last.ckpt must still move on.
    run_dir, _ = _train(capsys, toy_experiment, "trainer.max_epochs=3", "callbacks.checkpoint.mode=max")
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2
    assert (run_dir / "checkpoints" / "best-epoch000.ckpt").is_file()


def test_overlay_profiles_merge_between_experiment_and_overrides(capsys) -> None:
    cfg = load_experiment("saliency/avrsp_av", ["trainer.max_epochs=2"], overlays=["saliency/_cpu"])
    assert cfg.data.clip_len == 8 and cfg.model.visual.width_mult == 0.125
    assert cfg.trainer.max_epochs == 2  # the command line still wins
    assert cli.main(["train", "saliency/avrsp_av", "--overlay", "saliency/_cpu", "--print-config"]) == 0
    assert "clip_len: 8" in capsys.readouterr().out


def test_file_targets_resolve_next_to_the_yaml_that_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avlab.config import load_experiment
    from avlab.instantiate import instantiate

    exp_dir, overlay_dir, cwd = tmp_path / "exp", tmp_path / "overlay", tmp_path / "cwd"
    for d in (exp_dir, overlay_dir, cwd):
        d.mkdir()
    (exp_dir / "parts.py").write_text(
        "class Data:\n    def __init__(self, n: int = 1):\n        self.n = n\n\n"
        "class Model:\n    def __init__(self, k: int = 2):\n        self.k = k\n"
    )
    (overlay_dir / "other.py").write_text(
        "class Model:\n    def __init__(self, k: int = 3, extra: str = 'x'):\n"
        "        self.k, self.extra = k, extra\n"
    )
    (exp_dir / "exp.yaml").write_text(
        "task: toy\ndata:\n  _target_: parts.py:Data\n  n: 5\nmodel:\n  _target_: parts.py:Model\n"
    )
    (overlay_dir / "ov.yaml").write_text("model:\n  _target_: other.py:Model\n  extra: y\n")
    (cwd / "parts.py").write_text("raise RuntimeError('the working directory must not be searched first')\n")
    monkeypatch.chdir(cwd)
    cfg = load_experiment(str(exp_dir / "exp.yaml"))
    assert cfg.data._target_ == f"{exp_dir.resolve() / 'parts.py'}:Data"
    assert instantiate(cfg.data).n == 5
    cfg = load_experiment(str(exp_dir / "exp.yaml"), overlays=[str(overlay_dir / "ov.yaml")])
    model = instantiate(cfg.model)
    assert type(model).__module__.startswith("avlab_user_other") and (model.k, model.extra) == (3, "y")


def test_features_command_works_for_a_datamodule_with_nothing_to_extract(
    capsys, toy_experiment: Path
) -> None:
    # The base DataModule's extract_features: builds the (demo) dataset folder and says so.
    assert cli.main(["features", str(toy_experiment)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert Path(summary["root"]).is_dir() and summary["features"].startswith("none: ToyDataModule")
