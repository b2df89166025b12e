"""Per-database 7:1:2 splits of the ``unqa`` task (paper §V-A), by content group where possible."""

from __future__ import annotations

import numpy as np

from avlab.errors import DataError


def split_groups(name: str, groups: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Content groups to split ``name`` by, and a note when they had to change.

    Paper §V-A splits each database "randomly 7:1:2". avlab splits by content group (no source
    on two sides) when a database has at least 3 groups; with fewer, a group-level split cannot
    give every part an item, so the split falls back to item level (the paper's random split) and
    says so. Fewer than 3 items cannot be split at all.
    """
    n_groups = len(set(groups.tolist()))
    if n_groups >= 3:
        return groups, None
    if len(items) < 3:
        raise DataError(
            f"database `{name}` has only {len(items)} stimuli; a 7:1:2 split needs at least 3 "
            f"(drop it with data.databases.{name}=null or give it role: test)"
        )
    return items, (
        f"database `{name}` has only {n_groups} content group(s), too few for a 7:1:2 split by group: "
        f"splitting its {len(items)} stimuli at item level instead (the paper's random split)"
    )


def assign_splits(groups: np.ndarray, ratios: list[float], rng: np.random.Generator) -> np.ndarray:
    """``train``/``val``/``test`` per row: groups permuted by ``rng``, then cut by ``ratios``.

    Needs at least 3 distinct groups; each part gets at least one group, the test and validation
    parts ``round(ratio · groups)`` of them.
    """
    unique = rng.permutation(np.array(sorted(set(groups.tolist()))))
    g = len(unique)
    if g < 3:
        raise DataError(f"a 7:1:2 split needs at least 3 content groups, got {g}")
    n_test = max(1, round(ratios[2] * g))
    n_val = max(1, round(ratios[1] * g))
    n_train = g - n_test - n_val
    if n_train < 1:
        raise DataError(
            f"data.split_ratios {list(ratios)} leave no training group out of {g}; "
            "lower the val/test fractions"
        )
    part_of = {
        grp: ("train" if i < n_train else "val" if i < n_train + n_val else "test")
        for i, grp in enumerate(unique)
    }
    return np.array([part_of[grp] for grp in groups.tolist()])
