"""A sweep's SQLite storage opens in optuna-dashboard: the server reads the study that ``avlab sweep``
wrote, with its trials, states and parameters, as a user would browse it.

The server runs in a child process on a free loopback port. The child stops itself after a bounded
time even if this test dies, and the test stops it as soon as it has read what it needs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from avlab import cli

# The server's own deadline: the whole test takes a few seconds, so this only matters if the test
# process is killed before its `finally` runs.
CHILD_LIFETIME_S = 120
SERVER = """
import os, sys, threading
threading.Timer(float(sys.argv[3]), os._exit, args=(0,)).start()
from optuna_dashboard import run_server
run_server(sys.argv[1], host="127.0.0.1", port=int(sys.argv[2]))
"""

SWEEP = """
experiment: toy.yaml
objective: {metric: val/loss, direction: minimize}
pruner: {type: none}
sampler: {type: random, seed: 0}
params:
  model.lr: {type: categorical, choices: [0.05, 0.01]}
first_trial: {model.lr: 0.05}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _start_dashboard(storage: str, deadline: float) -> tuple[subprocess.Popen, str]:
    """The running server and its base URL. A port taken between choosing and binding it makes the
    child exit at once; then another port is tried."""
    last = ""
    for _ in range(5):
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, storage, str(port), str(CHILD_LIFETIME_S)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                _get_json(f"{base}/api/meta")
                return proc, base
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        if proc.poll() is None:  # still starting at the deadline
            proc.kill()
        last = proc.communicate(timeout=30)[0]
        if time.monotonic() >= deadline:
            break
    pytest.fail(f"optuna-dashboard did not start: {last[-2000:]}")


def test_a_sweeps_storage_opens_in_optuna_dashboard(capsys, toy_experiment: Path) -> None:
    sweep = toy_experiment.parent / "dash.yaml"
    sweep.write_text(SWEEP)
    assert (
        cli.main(
            ["sweep", str(sweep), "--trials", "2", "--study", "dash", "cv.folds=0", "trainer.max_epochs=2"]
        )
        == 0
    )
    capsys.readouterr()
    sweep_dir = toy_experiment.parent / "runs" / "sweeps" / "dash"
    storage = f"sqlite:///{sweep_dir / 'study.db'}"
    study = optuna.load_study(study_name="dash", storage=storage)
    assert len(study.trials) == 2

    started = time.monotonic()
    proc, base = _start_dashboard(storage, started + 60)
    print(f"dashboard up after {time.monotonic() - started:.1f} s")
    try:
        summaries = _get_json(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["dash"]
        detail = _get_json(f"{base}/api/studies/{summaries[0]['study_id']}")
        served = sorted(detail["trials"], key=lambda t: t["number"])
        assert [t["number"] for t in served] == [t.number for t in study.trials]
        assert [t["state"] for t in served] == [t.state.name.capitalize() for t in study.trials]
        for ours, theirs in zip(study.trials, served, strict=True):
            assert {p["name"]: float(p["param_external_value"]) for p in theirs["params"]} == ours.params
            assert theirs["values"] == [pytest.approx(ours.value)]
        # The user attributes avlab stores (run directory, per-fold values) are visible too.
        attrs = {a["key"] for a in served[0]["user_attrs"]}
        assert {"run_dir", "fold_values", "overrides"} <= attrs
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=30)
