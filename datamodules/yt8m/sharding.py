"""Exactly-once sharding of a record stream over DDP ranks and DataLoader workers.

An epoch's records are split over ``P = world_size × num_workers`` *consumers* (DDP rank ×
DataLoader worker), so that each record is read by exactly one consumer. Both YouTube-8M datasets
(:mod:`.records`, :mod:`.feature_cache`) use these helpers; how they deal records to consumers is
described in their own modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["buffer_shuffle", "equal_batches_quota", "resolve_dist", "take"]


def resolve_dist(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world)``: explicit values, else ``torch.distributed`` when initialised, else ``(0, 1)``."""
    if world_size is not None:
        r, w = int(rank or 0), int(world_size)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = 0, 1
    if not 0 <= r < w:
        raise ValueError(f"rank {r} is outside world_size {w}")
    return r, w


def equal_batches_quota(
    records: Callable[[int, int], int], rank: int, world: int, worker: int, workers: int, batch_size: int
) -> int:
    """Records consumer ``(rank, worker)`` may yield so that every rank yields the same number
    of *full* batches (``records(r, w)`` = records available to consumer ``(r, w)``).

    DataLoader workers batch separately, so quotas are whole batches per worker; a rank's
    surplus batches are trimmed from its fullest workers first (deterministic, so every process
    computes the same plan without communicating).
    """
    per_rank = [[records(r, w) // batch_size for w in range(workers)] for r in range(world)]
    target = min(sum(batches) for batches in per_rank)
    mine = per_rank[rank]
    surplus = sum(mine) - target
    while surplus > 0:
        w = max(range(workers), key=lambda i: (mine[i], -i))
        mine[w] -= 1
        surplus -= 1
    if target == 0:
        log.warning("YT8M: fewer than one batch of %d per rank; this epoch yields nothing", batch_size)
    return mine[worker] * batch_size


def take(it: Iterator[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    """The first ``n`` items of ``it`` (without reading the ``n+1``-th, unlike ``zip``-based takes)."""
    for i, item in enumerate(it):
        if i >= n:
            return
        yield item


def buffer_shuffle(
    it: Iterator[dict[str, Any]], size: int, rng: np.random.Generator
) -> Iterator[dict[str, Any]]:
    """Approximate shuffle with a fixed-size buffer (streams cannot be shuffled globally)."""
    buf: list[dict[str, Any]] = []
    for item in it:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)  # type: ignore[arg-type]
    yield from buf
