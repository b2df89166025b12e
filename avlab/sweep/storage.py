"""Where a study lives: Optuna RDB storage (SQLite by default, PostgreSQL for several workers),
opening or creating the study, and the identity of this worker."""

from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

from avlab.errors import ConfigError

#: How often a running trial proves its worker is alive, and after how long without a sign a
#: RUNNING trial counts as abandoned (its worker was killed) and is marked FAIL.
HEARTBEAT_S, GRACE_S = 20, 120


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def open_storage(url: str, *, heartbeat: bool = True) -> Any:
    """An RDB storage; retried because workers that start together race to create the tables."""
    import optuna
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # DDP ranks and the heartbeat thread read while a trial writes: wait for SQLite's lock.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S} if heartbeat else {}
    last: Exception | None = None
    for attempt in range(8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (
            sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.IntegrityError,
            sqlalchemy.exc.ProgrammingError,
        ) as exc:
            last = exc
            time.sleep(0.3 + random.random() * (attempt + 1) * 0.5)
        except (sqlalchemy.exc.ArgumentError, ImportError, ValueError) as exc:
            # Optuna re-raises a missing database driver as a plain ImportError. The PostgreSQL
            # driver is an optional extra, so say how to get it.
            hint = (
                " (PostgreSQL storage needs its driver: pip install 'avlab[postgres]')"
                if isinstance(exc, ImportError) and url.startswith("postgres")
                else ""
            )
            raise ConfigError(f"cannot use storage {redact(url)}: {exc}{hint}") from exc
    raise ConfigError(f"cannot open storage {redact(url)}: {last}")


def redact(url: str) -> str:
    """The URL without its password, for messages and files."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def open_study(storage: Any, name: str, direction: str, sampler: Any, pruner: Any) -> tuple[Any, bool]:
    """The study, and whether this process created it. Creation relies on the storage's unique
    study name, so of several workers starting together exactly one creates (and enqueues the
    paper's trial) and the others load."""
    import optuna

    try:
        return optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=False,
        ), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if len(study.directions) != 1 or study.direction.name.lower() != direction:
        raise ConfigError(
            f"study `{name}` exists and {study.direction.name.lower()}s its objective, but the sweep"
            f" says {direction}; use another --study name"
        )
    return study, False


def worker_id() -> str:
    """``host:pid``: which worker ran a trial (a trial's ``worker`` user attribute)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
