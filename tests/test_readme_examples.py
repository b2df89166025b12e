"""The README's examples are tests. "Adding a fusion module", copied as a student would, trains
and tests end to end from a directory other than the one holding the files; "From Python / a
notebook" runs as written."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

from avlab import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_section(title: str) -> str:
    """The text of the README section whose heading ends with ``title``, up to the next heading
    of the same or a higher level."""
    lines = README.read_text().splitlines()
    # Headings outside fenced code only: a `# my_fusion.py` comment in a block is not one.
    fenced, headings = False, []
    for i, line in enumerate(lines):
        fenced ^= line.startswith("```")
        m = None if fenced else re.match(r"^(#+)\s+(.*)$", line)
        if m:
            headings.append((i, len(m.group(1)), m.group(2).strip()))
    for k, (i, level, text) in enumerate(headings):
        if text.startswith(title):
            end = next((j for j, lv, _ in headings[k + 1 :] if lv <= level), len(lines))
            return "\n".join(lines[i + 1 : end])
    raise AssertionError(f"README.md has no section {title!r}")


def code_blocks(text: str) -> dict[str, tuple[str, str]]:
    """``{file name: (language, code)}`` of the fenced blocks whose first line is ``# NAME``."""
    out = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, flags=re.DOTALL):
        first = body.splitlines()[0] if body.strip() else ""
        m = re.match(r"#\s*(\S+\.(?:py|yaml))\s*$", first)
        if m:
            out[m.group(1)] = (lang, body)
    return out


def test_the_section_has_one_python_and_one_yaml_file() -> None:
    blocks = code_blocks(readme_section("Adding a fusion module"))
    assert sorted(lang for lang, _ in blocks.values()) == ["python", "yaml"], blocks.keys()


def test_readme_fusion_module_trains_and_tests_from_another_directory(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    student = tmp_path / "student"
    student.mkdir()
    blocks = code_blocks(readme_section("Adding a fusion module"))
    for name, (_, code) in blocks.items():
        (student / name).write_text(code)
    config = next(name for name in blocks if name.endswith(".yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the config's `my_fusion.py:...` must resolve next to the YAML file
    caplog.set_level("INFO", logger="avlab.lightningmodules.avq")
    args = [
        "train",
        str(student / config),
        "data.demo_size=tiny",
        "data.holdout_sources=1",
        "trainer.max_epochs=2",
        "logger.wandb.mode=disabled",
        f"run.root={tmp_path / 'runs'}",
    ]
    assert cli.main(args) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/plcc", "test/srcc", "test/rmse", "test/loss"):
        assert key in metrics and metrics[key] is not None, key
    assert (run_dir / "predictions_test.csv").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    # GatedFusion has no intermediates(): modality importance is skipped with one log line, not a crash.
    assert not (run_dir / "modality_importance.csv").exists()
    skipped = [r for r in caplog.records if "modality importance skipped" in r.getMessage()]
    assert len(skipped) == 1 and "GatedFusion" in skipped[0].getMessage()
    # The tested (best) checkpoint rebuilds the student's module and scores the same, still from elsewhere.
    best = next((run_dir / "checkpoints").glob("best-epoch*.ckpt"))
    assert (
        cli.main(
            [
                "test",
                str(student / config),
                f"ckpt_path={best}",
                "data.demo_size=tiny",
                "data.holdout_sources=1",
                "logger.wandb.mode=disabled",
                f"run.root={tmp_path / 'runs'}",
            ]
        )
        == 0
    )
    test_dir = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run directory: "))
    again = json.loads((test_dir / "metrics.json").read_text())
    assert again["test/plcc"] == pytest.approx(metrics["test/plcc"], abs=1e-6)
    assert again["test/rmse"] == pytest.approx(metrics["test/rmse"], abs=1e-6)


def test_readme_notebook_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = code_blocks(readme_section("From Python / a notebook"))
    assert list(blocks) == ["notebook.py"], blocks.keys()
    script = tmp_path / "notebook.py"
    script.write_text(blocks["notebook.py"][1])
    monkeypatch.chdir(tmp_path)  # the example's runs/ (run.root's default) lands here
    run_dir = runpy.run_path(str(script))["result"].run_dir
    assert run_dir.is_relative_to(tmp_path.resolve()) and (run_dir / "metrics.json").is_file()
