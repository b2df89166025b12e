"""Where avlab keeps caches and finds its packaged configs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of avlab's caches (demo data, features): ``$AVLAB_CACHE`` or ``~/.cache/avlab``."""
    root = os.environ.get("AVLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "avlab"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
