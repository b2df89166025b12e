"""DDP: rank 0 owns the study and samples; the other ranks follow its trials through a private
folder (the channel) instead of sampling their own."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avlab.rundir import atomic_write, launch_rank
from avlab.sweep.callbacks import pruning_callback_class
from avlab.sweep.storage import open_storage

#: Set by rank 0 before its first fit; Lightning's DDP launcher copies it into the other ranks.
CHANNEL_ENV = "AVLAB_SWEEP_CHANNEL"
#: Under DDP, how long a rank whose trial failed waits to hear that the other ranks failed too
#: (then the study goes on) before concluding they are blocked in a collective (then it stops).
DDP_STATUS_WAIT_S = 90


def is_follower() -> bool:
    """A rank > 0 that Lightning's launcher started by re-running rank 0's ``avlab sweep`` command
    (the same test as the runner's rank-zero check, without importing Lightning)."""
    return bool(os.environ.get(CHANNEL_ENV)) and launch_rank() != 0


class Channel:
    """Rank 0 tells the other ranks of the same machine which trial comes next.

    A private folder (mode 0700, outside the sweep directory because its header holds the storage
    URL): ``header.json`` (study and storage), then ``NNNNNN.json`` per trial in order, then
    ``end.json``. After each trial every rank writes ``NNNNNN.rR.status`` (ok, pruned, failed).
    Files are written atomically, so a reader never sees half a message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, header: dict[str, Any]) -> Channel:
        channel = cls(Path(tempfile.mkdtemp(prefix="avlab-sweep-ddp-")))
        channel._write("header.json", header)
        return channel

    def _write(self, name: str, payload: dict[str, Any]) -> None:
        atomic_write(self.path / name, json.dumps(payload))

    def announce(self, seq: int, message: dict[str, Any]) -> None:
        self._write(f"{seq:06d}.json", message)

    def close(self) -> None:
        if self.path.is_dir():
            self._write("end.json", {})

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def report(self, seq: int, rank: int, outcome: str) -> None:
        if self.path.is_dir():
            self._write(f"{seq:06d}.r{rank}.status", {"outcome": outcome})

    def await_reports(self, seq: int, ranks: Sequence[int], timeout: float) -> bool:
        """Whether every rank in ``ranks`` finished trial ``seq`` (its way) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all((self.path / f"{seq:06d}.r{r}.status").is_file() for r in ranks):
                return True
            time.sleep(0.2)
        return False

    def receive(self, name: str) -> dict[str, Any] | None:
        """Waits for ``name``; ``None`` once rank 0 has ended the sweep or has died."""
        parent = os.getppid()
        while True:
            target = self.path / name
            if target.is_file():
                return json.loads(target.read_text())
            if (self.path / "end.json").is_file() or not self.path.is_dir() or os.getppid() != parent:
                return None
            time.sleep(0.2)


def follow(channel: Channel) -> int:
    """Ranks > 0: run rank 0's trials in lock-step (same overrides, run directory and trial)."""
    import optuna

    from avlab.config import load_experiment
    from avlab.rundir import RUN_DIR_ENV
    from avlab.runner import train

    header = channel.receive("header.json")
    if header is None:
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=header["study"], storage=open_storage(header["storage"], heartbeat=False)
    )
    rank = int(os.environ.get("LOCAL_RANK", "1"))
    seq = 0
    while (message := channel.receive(f"{seq:06d}.json")) is not None:
        os.environ[RUN_DIR_ENV] = message["run_dir"]
        try:
            cfg = load_experiment(header["experiment"], message["overrides"])
            trial = optuna.trial.Trial(study, message["trial_id"])
            train(cfg, extra_callbacks=[pruning_callback_class()(trial, header["metric"])])
            channel.report(seq, rank, "ok")
        except optuna.TrialPruned:
            channel.report(seq, rank, "pruned")
        except Exception as exc:  # noqa: BLE001 - the study goes on if rank 0 failed the same way
            traceback.print_exc()
            channel.report(seq, rank, "failed")
            if not channel.await_reports(seq, [0], DDP_STATUS_WAIT_S):
                # Rank 0 is still inside this trial, so it waits in a collective for this rank: it
                # can never finish. Record the trial as failed, then exit non-zero, which makes
                # Lightning's launcher stop rank 0; re-running the command resumes the study.
                try:
                    error = f"rank {rank} only: {type(exc).__name__}: {exc}"
                    study._storage.set_trial_user_attr(message["trial_id"], "error", error[:4000])
                    study._storage.set_trial_state_values(message["trial_id"], optuna.trial.TrialState.FAIL)
                finally:
                    print(
                        f"avlab sweep: rank {rank} failed alone in trial {message['number']};"
                        " stopping the sweep"
                        " (re-run the command to resume the study)",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(1)
        seq += 1
    return 0
