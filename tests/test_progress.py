"""Progress of long steps (avlab.progress): tqdm off a terminal, Rich on one, nothing when quiet."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from avlab import cli
from avlab.progress import QUIET_ENV, backend, is_quiet, progress, progress_task, set_quiet


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _not_quiet_rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # setenv (rather than delenv) makes monkeypatch restore the variable after a test, including
    # what set_quiet() and `avlab --quiet` write into os.environ.
    monkeypatch.setenv(QUIET_ENV, "0")
    for var in ("RANK", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)


def test_off_a_terminal_tqdm_shows_counts_on_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    assert backend() == "tqdm"
    assert list(progress(range(7), desc="counting things")) == list(range(7))
    err = capfd.readouterr().err
    assert "counting things" in err and "7/7" in err


def test_task_api_counts_and_takes_a_late_total(capfd: pytest.CaptureFixture[str]) -> None:
    with progress_task("late total", unit="file") as task:
        task.set_total(4)
        for _ in range(4):
            task.advance()
    assert task.done == 4
    assert "late total" in capfd.readouterr().err.replace("\r", "\n").splitlines()[-1]


def test_line_mode_prints_count_elapsed_and_eta(capfd: pytest.CaptureFixture[str]) -> None:
    with progress_task("sweep toy", total=3, unit="trial(s) done", lines=True) as task:
        for _ in range(3):
            task.advance()
    lines = capfd.readouterr().err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"sweep toy: {i}/3 trial(s) done" for i in (1, 2, 3)]
    assert "eta" in lines[0] and "eta" not in lines[-1]  # nothing left to estimate at the end


def test_on_a_terminal_rich_shows_counts_and_nests(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert backend() == "rich"
    for _ in progress(range(2), desc="outer step"):
        list(progress(range(3), desc="inner step"))  # a second live display would raise
    assert "outer step" in term.getvalue() and "2/2" in term.getvalue()


@pytest.mark.parametrize("how", ["set_quiet", "env", "rank1", "disable"])
def test_quiet_other_ranks_and_disable_show_nothing(
    how: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    if how == "set_quiet":
        set_quiet(True)
    elif how == "env":
        monkeypatch.setenv(QUIET_ENV, "1")
    elif how == "rank1":
        monkeypatch.setenv("LOCAL_RANK", "1")
    assert backend(disable=how == "disable") == "none"
    assert list(progress(range(5), desc="hidden", disable=how == "disable")) == list(range(5))
    with progress_task("hidden too", total=2, lines=True, disable=how == "disable") as task:
        task.advance(2)
    assert capfd.readouterr().err == ""
    set_quiet(False)
    assert not is_quiet()


def test_avlab_demo_shows_progress_and_quiet_silences_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from avlab.demo.yt8m import DEMO_SIZES

    few = {"videos": {"train": 8, "validate": 4, "test": 4}, "shards": {"train": 1, "validate": 1, "test": 1}}
    monkeypatch.setitem(DEMO_SIZES, "tiny", {**DEMO_SIZES["tiny"], **few})  # seconds, not tens of them
    assert cli.main(["data", "demo", "yt8m", str(tmp_path / "loud"), "--size", "tiny"]) == 0
    err = capfd.readouterr().err
    assert "yt8m demo: train" in err and "yt8m demo: test" in err
    assert cli.main(["--quiet", "data", "demo", "yt8m", str(tmp_path / "quiet"), "--size", "tiny"]) == 0
    out, err = capfd.readouterr()
    assert err == "" and "written to" in out
    assert is_quiet()  # process-wide: DDP ranks and sweep trials started from here inherit it


def test_quiet_after_the_subcommand_too() -> None:
    args = cli._parser().parse_args(["data", "demo", "avq", "x", "--quiet"])
    assert args.quiet is True
    assert cli._parser().parse_args(["data", "demo", "avq", "x"]).quiet is False


def test_feature_cache_build_shows_progress_unless_quiet(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from avlab.datamodules.yt8m import YT8MRecordDataset, build_feature_cache
    from avlab.io.tf_example import encode_example
    from avlab.io.tfrecord import TFRecordWriter

    shard = tmp_path / "train0000.tfrecord"
    rng = np.random.default_rng(0)
    with TFRecordWriter(shard) as w:
        for i in range(6):
            w.write(
                encode_example(
                    {
                        "id": [f"v{i}".encode()],
                        "labels": ("int64", [i]),
                        "mean_rgb": rng.normal(size=1024).astype(np.float32),
                        "mean_audio": rng.normal(size=128).astype(np.float32),
                    }
                )
            )
    records = YT8MRecordDataset([shard], num_classes=10)
    build_feature_cache(records, tmp_path / "loud")
    err = capfd.readouterr().err
    assert "yt8m feature cache" in err and "6/6" in err
    set_quiet(True)
    build_feature_cache(records, tmp_path / "quiet")
    assert capfd.readouterr().err == ""
    assert (tmp_path / "quiet" / "meta.json").is_file()


def test_lightning_bar_auto_is_tqdm_off_a_terminal_rich_on_one_none_when_quiet(
    toy_experiment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from avlab.config import load_experiment
    from avlab.runner import build_callbacks, progress_bar_kind

    cfg = load_experiment(str(toy_experiment))
    assert cfg.callbacks.progress_bar == "auto"

    def bars() -> tuple[list[type], bool]:
        callbacks, enabled = build_callbacks(cfg, tmp_path, None, False)
        kinds = [type(c) for c in callbacks if isinstance(c, (RichProgressBar, TQDMProgressBar))]
        return kinds, enabled

    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a log file, CI, a notebook's stream
    assert bars() == ([TQDMProgressBar], True)
    monkeypatch.setattr(sys, "stdout", _Terminal())
    assert bars() == ([RichProgressBar], True)
    assert progress_bar_kind("none") == "none" and progress_bar_kind("tqdm") == "tqdm"
    set_quiet(True)
    assert bars() == ([], False)
    assert progress_bar_kind("rich") == "none"  # quiet wins over an explicit choice
