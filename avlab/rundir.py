"""The run directory: ``run.root/EXPERIMENT/TIMESTAMP[-suffix]/``, and atomic file writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import avlab

#: Set by the launching process so that DDP workers, which re-run the command, share its run directory.
RUN_DIR_ENV = "AVLAB_RUN_DIR"


def git_commit() -> str | None:
    src = Path(avlab.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


#: The run directory this process exported; a later run in the same process (a sweep trial, a
#: test) must get a new directory rather than reuse it.
_exported: str | None = None


def _launcher_run_id() -> str | None:
    if os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"  # torchrun --rdzv-id
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    return None


def launch_rank() -> int:
    """This process's global rank as its launcher set it, before any process group exists.

    torchrun sets RANK; srun's tasks (when it starts more than one) carry only SLURM_PROCID, so
    without it every node's first task would count as rank 0; the workers of Lightning's own
    one-node launcher carry LOCAL_RANK.
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank_zero() -> bool:
    """Whether this process writes the run directory's shared files (metrics.json, tables)."""
    return launch_rank() == 0


def create_run_dir(cfg: DictConfig, *, suffix: str | None = None) -> Path:
    """A new, never reused run directory; DDP workers reuse the one their launcher created."""
    global _exported
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and inherited != _exported:
        # A worker process that Lightning's launcher started by re-running the command.
        path = Path(inherited)
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    launcher_id = _launcher_run_id()
    if launcher_id:
        # torchrun and srun start every rank at once, so none can tell the others a timestamp:
        # the launcher's job id names the directory on all ranks and nodes alike.
        stamp = launcher_id
        path = (
            Path(cfg.run.root)
            / cfg.experiment
            / "-".join([stamp, *[p for p in (suffix, cfg.run.suffix) if p]])
        )
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()
    parts = [p for p in (suffix, cfg.run.suffix) if p]
    base = Path(cfg.run.root) / cfg.experiment / "-".join([stamp, *parts])
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:
            # Never reuse a directory: an earlier run's results must not be overwritten.
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    path = path.resolve()
    os.environ[RUN_DIR_ENV] = _exported = str(path)
    return path


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    data = OmegaConf.to_container(cfg, resolve=True)
    data["avlab"] = {"version": avlab.__version__, "git_commit": git_commit()}
    atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(data)))


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a
    part (a killed run, or another rank reading, must not find a truncated file)."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)


@contextmanager
def atomic_path(path: Path | str, *, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path next to ``path``; on a clean exit it replaces ``path`` in one step.

    For writers that need a file name (``np.save``, ``DataFrame.to_csv``, ffmpeg, ``savefig``).
    ``suffix`` keeps the extension a tool reads the format from (``.mkv``, ``.npy``); it defaults
    to ``path``'s own. On an exception the partial file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix if suffix is None else suffix
    # Unique per process and thread, in the same folder (so os.replace is a rename, never a copy).
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}-{threading.get_ident()}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return dict(sorted(out.items()))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> dict[str, float]:
    clean = clean_metrics(metrics)
    # JSON has no NaN: write null so every reader can parse the file.
    serialisable = {k: (None if math.isnan(v) else v) for k, v in clean.items()}
    atomic_write(run_dir / "metrics.json", json.dumps(serialisable, indent=2) + "\n")
    return clean


#: Whether a run directory's run finished or failed; ``avlab compare`` reads it.
STATUS_FILE = "status.json"


def write_status(run_dir: Path, status: str, error: str | None = None) -> None:
    data: dict[str, Any] = {"status": status}
    if error is not None:
        data["error"] = error
    atomic_write(Path(run_dir) / STATUS_FILE, json.dumps(data, indent=2) + "\n")


def read_status(run_dir: Path) -> dict[str, Any]:
    """``status.json`` of a run directory; ``{}`` for runs written before avlab recorded it."""
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


@contextmanager
def recorded_status(run_dir: Path) -> Iterator[None]:
    """Mark ``run_dir`` finished, or failed with the error (traceback in ``error.txt``) and re-raise.

    Without the mark, a run that died on bad data leaves a directory that looks like one still
    running or one whose results were lost; rank zero alone writes it, like ``metrics.json``.
    """
    try:
        yield
    except BaseException as exc:
        if is_rank_zero():
            import traceback

            atomic_write(Path(run_dir) / "error.txt", traceback.format_exc())
            write_status(run_dir, "failed", f"{type(exc).__name__}: {exc}")
        raise
    if is_rank_zero():
        write_status(run_dir, "finished")
