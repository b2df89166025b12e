"""The documented generic format (``manifest``): a ``manifest.csv`` with one row per sample.

Paths are relative to the CSV. Columns (the names in brackets are accepted aliases, so that a
full-reference and a no-reference manifest read the same way):

=====================================  =============================================================
column                                 meaning
=====================================  =============================================================
media [distorted]                      required: the (distorted) media file
mos                                    required: the score, on the dataset's scale
audio [distorted_audio]                optional: separate audio file of ``media``
reference                              optional (full-reference tasks: required): reference media
reference_audio                        optional: separate reference audio file
stimulus                               optional: unique name (default: the media file's stem)
group [source]                         optional: content id; splits keep a group on one side
mos_scale                              optional: ``LOW-HIGH``, the score's nominal scale
audio_bitrate_kbps, video_bitrate_kbps optional: bitrates (features of some baselines)
=====================================  =============================================================

Other columns are kept as they are. ``table.attrs["columns"]`` lists the columns the file provides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from avlab.datamodules.readers import ReadOptions, register_reader
from avlab.datamodules.readers.common import finish_rows, need
from avlab.errors import DataError

#: alias in a file → catalog column
ALIASES = {"distorted": "media", "distorted_audio": "audio", "source": "group"}
PATH_COLUMNS = ("media", "audio", "reference", "reference_audio")


@register_reader("manifest", modalities=("audio", "image", "video", "av"), score_file="manifest.csv")
def read_manifest(folder: Path, options: ReadOptions) -> pd.DataFrame:
    """``manifest.csv`` → the catalog table (see the module doc); paths become absolute."""
    name = options.score_file or "manifest.csv"
    label = options.label("manifest")
    path = need(folder / name, label)
    try:
        raw = pd.read_csv(path)
    except Exception as exc:  # any parse error becomes an actionable message
        raise DataError(f"{label}: cannot read {path}: {exc}") from exc
    both = [f"{a}/{c}" for a, c in ALIASES.items() if a in raw and c in raw]
    if both:
        raise DataError(f"{label}: {path} has both spellings of column(s) {', '.join(both)}; keep one")
    raw = raw.rename(columns=ALIASES)
    missing = [c for c in ("media", "mos") if c not in raw]
    if missing:
        raise DataError(
            f"{label}: {path} has no column(s) {', '.join(missing)} "
            "(needs media or distorted, and mos; "
            f"found {', '.join(map(str, raw.columns))})"
        )
    records: list[dict[str, Any]] = []
    for _, row in raw.iterrows():
        rec = {str(k): v for k, v in row.items()}
        for col in PATH_COLUMNS:
            value = rec.get(col)
            rec[col] = str((folder / value).resolve()) if isinstance(value, str) and value else None
        for col in ("stimulus", "group"):
            value = rec.get(col)
            rec[col] = None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
        records.append(rec)
    table = finish_rows(records, name)
    # Which columns the file itself provides (after the aliases): a task that needs, say, a real
    # source column must not mistake finish_rows' defaults for data.
    table.attrs["columns"] = [str(c) for c in raw.columns]
    return table
