"""Several nodes, simulated on one machine: torchrun's c10d rendezvous and the SLURM launch line.

Two processes play two nodes of one process each (gloo, CPU). Every rank must write into the one
run directory named after the job, only rank 0 may write ``metrics.json``, and the gathered test
metrics must equal a single-process evaluation of the same checkpoint.

The ranks run a small wrapper around ``avlab`` that records every ``metrics.json`` write with the
writing process's rank, so "written once" is observed, not inferred from the file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ddp
REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "avq/simple_fusion"
COMMON = ["data.demo_size=tiny", "data.holdout_sources=1", "logger.wandb.mode=disabled"]
TIMEOUT = 300

WRAPPER = """\
import os
import sys
from pathlib import Path

import avlab.rundir as rundir

_write = rundir.atomic_write


def _recorded(path, data):
    if Path(path).name == "metrics.json":
        with open(os.environ["AVLAB_TEST_WRITES"], "a") as fh:
            fh.write(f"{os.environ.get('RANK', os.environ.get('SLURM_PROCID'))} {path}\\n")
    _write(path, data)


rundir.atomic_write = _recorded
from avlab.cli import main  # noqa: E402 - after the patch

sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_", "MASTER_", "AVLAB_RUN_DIR"))
        and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    }
    wrapper = tmp_path / "bin"
    wrapper.mkdir(exist_ok=True)
    (wrapper / "avlab_recorded.py").write_text(WRAPPER)
    # `avlab` on PATH is the recorder, run by this interpreter (the SLURM script calls `avlab`).
    launcher = wrapper / "avlab"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{wrapper / "avlab_recorded.py"}" "$@"\n')
    launcher.chmod(0o755)
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        AVLAB_TEST_WRITES=str(tmp_path / "writes.txt"),
        PATH=f"{wrapper}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def run_all(commands: list[list[str]], envs: list[dict[str, str]], cwd: Path) -> list[str]:
    """Start every command at once (they rendezvous with each other); the stdout of each."""
    procs = [
        subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for cmd, env in zip(commands, envs)
    ]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT)
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:  # a rank left waiting for a peer that failed: end its group
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-6000:]
    return outputs


def prepare_data(tmp_path: Path) -> None:
    # Each simulated node prepares its data (prepare_data runs once per node); building the demo
    # set and its VMAF features first means both find the cache instead of racing to write it.
    subprocess.run(
        [sys.executable, "-m", "avlab.cli", "features", EXPERIMENT, *COMMON],
        env=base_env(tmp_path),
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )


def single_process_test(tmp_path: Path, ckpt: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "avlab.cli",
            "test",
            EXPERIMENT,
            *COMMON,
            f"ckpt_path={ckpt}",
            f"run.root={tmp_path / 'single'}",
        ],
        check=False,
        env=base_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1].removeprefix("run directory: "))
    return json.loads((run_dir / "metrics.json").read_text())


def check_one_run(tmp_path: Path, runs: Path, name: str, outputs: list[str]) -> None:
    """One run directory named after the job, metrics.json written once by rank 0, and test
    metrics equal to one process evaluating the same (best) checkpoint."""
    run_dirs = list((runs / EXPERIMENT).iterdir())
    assert [d.name for d in run_dirs] == [name]
    run_dir = run_dirs[0]
    # Rank 0 alone reports the run, naming that directory.
    reports = [out for out in outputs if "run directory: " in out]
    assert len(reports) == 1 and f"run directory: {run_dir}" in reports[0], [o[-2000:] for o in outputs]
    writes = (tmp_path / "writes.txt").read_text().splitlines()
    assert writes == [f"0 {run_dir / 'metrics.json'}"], writes
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = sorted((run_dir / "checkpoints").glob("best-epoch*.ckpt"))
    assert len(best) == 1, list((run_dir / "checkpoints").iterdir())
    single = single_process_test(tmp_path, best[0])
    # 9 test stimuli over 2 ranks: one padded duplicate that must not count; SRCC and PLCC need
    # every prediction, so a lost or doubled one would change them.
    for key in ("test/plcc", "test/srcc", "test/rmse"):
        assert metrics[key] == pytest.approx(single[key], abs=1e-5), key


def test_torchrun_two_nodes_share_one_run_directory(tmp_path: Path) -> None:
    prepare_data(tmp_path)
    port, run_id = free_port(), f"mn{os.getpid()}"
    runs = tmp_path / "runs"
    agent = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        run_id,
        "--rdzv-conf",
        "join_timeout=120",
        "--local-addr",
        "127.0.0.1",
        "--max-restarts",
        "0",
        str(tmp_path / "bin" / "avlab_recorded.py"),
        "train",
        EXPERIMENT,
        *COMMON,
        "trainer.max_epochs=2",
        f"run.root={runs}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.strategy=ddp",
    ]
    env = base_env(tmp_path)
    outputs = run_all([agent, agent], [env, env], tmp_path)
    check_one_run(tmp_path, runs, f"torchrun-{run_id}", outputs)


def test_slurm_launch_line_names_the_run_after_the_job(tmp_path: Path) -> None:
    prepare_data(tmp_path)
    job_id, port = str(90000 + os.getpid() % 10000), free_port()
    runs = tmp_path / "runs"
    script = REPO / "scripts" / "slurm_ddp.sbatch"
    envs = []
    for rank in range(2):
        # What srun gives each task of `--nodes=2 --ntasks-per-node=1`; SRUN="" runs the launch
        # line in this process, and no venv is activated so the recorder on PATH is the `avlab`.
        env = base_env(tmp_path)
        env.update(
            SLURM_JOB_ID=job_id,
            SLURM_JOB_NAME="avlab",
            SLURM_NTASKS="2",
            SLURM_NNODES="2",
            SLURM_NTASKS_PER_NODE="1",
            SLURM_PROCID=str(rank),
            SLURM_NODEID=str(rank),
            SLURM_LOCALID="0",
            SLURM_NODELIST="127.0.0.1",
            MASTER_PORT=str(port),
            SRUN="",
            AVLAB_VENV=str(tmp_path / "no-venv"),
        )
        envs.append(env)
    command = [
        "bash",
        str(script),
        EXPERIMENT,
        *COMMON,
        "trainer.max_epochs=2",
        f"run.root={runs}",
        "trainer.accelerator=cpu",
    ]
    outputs = run_all([command, command], envs, tmp_path)
    check_one_run(tmp_path, runs, f"slurm-{job_id}", outputs)
