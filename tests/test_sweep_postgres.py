"""Two ``avlab sweep`` workers share one study on a real PostgreSQL server.

The server is PostgreSQL from Debian's packages: ``.ci/run`` installs it, starts a cluster and
exports ``AVLAB_TEST_POSTGRES_URL``; without that variable this module starts its own throw-away
cluster (``initdb``/``pg_ctl`` as the ``postgres`` user when running as root). Without PostgreSQL
the test is skipped locally but fails under CI (``CI`` set), so CI can never skip it silently.
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

URL_ENV = "AVLAB_TEST_POSTGRES_URL"


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(
            f"PostgreSQL is required in CI: {reason}. `.ci/run` installs it (apt-get install -y postgresql)."
        )
    pytest.skip(f"PostgreSQL not available: {reason} (apt-get install -y postgresql)")


def _pg_bin() -> Path | None:
    """Folder of initdb/pg_ctl: Debian keeps them off PATH, under /usr/lib/postgresql/VERSION/bin."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "postgresql-15"], check=False, capture_output=True, text=True, timeout=30
        ).stdout
        for line in listing.splitlines():
            if line.endswith("/bin/initdb"):
                return Path(line).parent
    except (OSError, subprocess.TimeoutExpired):
        pass
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; as another user it runs as that user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _create_database(server_url: str) -> str:
    import psycopg

    name = f"avlab_sweep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty database on a running PostgreSQL server."""
    given = os.environ.get(URL_ENV)
    if given:
        yield _create_database(given)
        return
    bin_dir = _pg_bin()
    if bin_dir is None:
        _missing("no initdb found (dpkg -L postgresql-15, /usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _missing("running as root without runuser to switch to the postgres user")
    # Directly under /tmp (not pytest's 0700 per-user folder), so the postgres user can reach it.
    root = Path(tempfile.mkdtemp(prefix="avlab-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres", group="postgres")
    port = _free_port()
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield _create_database(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


SWEEP = """
experiment: toy.yaml
objective: {metric: val/loss, direction: minimize}
pruner: {type: none}
sampler: {type: tpe, seed: 0}
params:
  model.lr: {type: float, low: 0.005, high: 0.1, log: true}
  data.batch_size: {type: categorical, choices: [8, 16]}
first_trial: {model.lr: 0.05, data.batch_size: 16}
"""


def test_two_workers_share_one_study_without_losing_or_duplicating_trials(
    postgres_url: str, toy_experiment: Path, tmp_path: Path
) -> None:
    sweep = toy_experiment.parent / "pg_sweep.yaml"
    sweep.write_text(SWEEP)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("AVLAB_RUN_DIR", None)
    cmd = [
        sys.executable,
        "-m",
        "avlab.cli",
        "sweep",
        str(sweep),
        "--storage",
        postgres_url,
        "--study",
        "shared",
        "--trials",
        "3",
    ]
    workers = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for w, out in zip(workers, outputs, strict=True):
        assert w.returncode == 0, out[-4000:]

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.trials
    assert len(trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert sorted(t.number for t in trials) == list(range(6))  # none lost, none counted twice
    assert len({t._trial_id for t in trials}) == 6
    # Each worker ran its three trials, each in its own run directory.
    per_worker = collections.Counter(t.user_attrs["worker"] for t in trials)
    assert sorted(per_worker.values()) == [3, 3], per_worker
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(run_dirs) == 6 and all((Path(d) / "metrics.json").is_file() for d in run_dirs)
    # Exactly one worker created the study, so the paper's trial was queued exactly once.
    assert sum("source" in t.user_attrs for t in trials) == 1
    assert sum("(new)" in out for out in outputs) == 1
    # The two parameter sets the workers sampled are not copies of each other.
    assert len({tuple(sorted(t.params.items())) for t in trials}) >= 5
