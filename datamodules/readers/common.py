"""Helpers that readers share: MATLAB files (v5 and v7.3), spreadsheets, file lookup, rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avlab.errors import DataError

__all__ = ["cell_str", "file_index", "finish_rows", "load_mat", "need", "read_excel"]


def need(path: Path, label: str) -> Path:
    """``path`` if it is a file, else a DataError naming it and the dataset."""
    if not path.is_file():
        raise DataError(
            f"{label}: score file {path} does not exist; check the dataset folder (data.root / path)"
        )
    return path


def file_index(folder: Path, suffixes: tuple[str, ...] | None = None) -> dict[str, Path]:
    """``{file name: path}`` of every file below ``folder`` (first in sorted order wins).

    Hidden folders (``.features`` caches, ``.git``) are skipped: files that avlab derived from the
    dataset must never shadow the dataset's own files.
    """
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(folder).parts) or not p.is_file():
            continue
        if suffixes is None or p.suffix.lower() in suffixes:
            out.setdefault(p.name, p)
    return out


def read_excel(path: Path, label: str, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_excel(path, **kwargs)
    except ImportError as exc:
        raise DataError(f"{label}: reading {path.name} needs openpyxl (`pip install openpyxl`)") from exc
    except Exception as exc:  # any parse error becomes one actionable message
        raise DataError(f"{label}: cannot read {path}: {exc}") from exc


def load_mat(path: Path, label: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A MATLAB file as a dict; v7.3 files (HDF5) are read with h5py. Missing ``keys`` fail."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        import h5py

        with h5py.File(path, "r") as fh:
            mat = {k: _h5_value(fh, fh[k]) for k in fh if not k.startswith("#")}
    except Exception as exc:  # any damaged file becomes one actionable message
        raise DataError(f"{label}: cannot read {path}: {exc}") from exc
    missing = [k for k in keys if k not in mat]
    if missing:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise DataError(f"{label}: {path} lacks field(s) {', '.join(missing)} (found {found})")
    return mat


def _h5_value(fh: Any, ds: Any) -> Any:
    data = ds[()]
    if data.dtype == object:  # cell array of references to char arrays
        strings = [["".join(chr(c) for c in np.asarray(fh[r]).ravel())] for r in data.ravel()]
        return np.array(strings, dtype=object)
    return np.asarray(data).T  # HDF5 stores MATLAB arrays transposed


def cell_str(cell: Any) -> str:
    """The string in a (possibly nested) MATLAB cell; '' for an empty cell."""
    arr = np.asarray(cell, dtype=object).ravel()
    while arr.size == 1 and isinstance(arr[0], np.ndarray):
        arr = np.asarray(arr[0], dtype=object).ravel()
    return str(arr[0]).strip() if arr.size else ""


COLUMNS = ("stimulus", "media", "audio", "reference", "reference_audio", "mos", "group", "where")


def finish_rows(records: list[dict[str, Any]], score_file: str, *, first_row: int = 2) -> pd.DataFrame:
    """Records → the catalog table: every standard column present, ``where`` and ``group`` and
    ``stimulus`` filled in (group defaults to the media path, stimulus to the media file's stem)."""
    for i, r in enumerate(records):
        r.setdefault("where", f"{score_file} row {i + first_row}")
    table = pd.DataFrame.from_records(records)
    for col in COLUMNS:
        if col not in table:
            table[col] = None
    table["group"] = [
        g if isinstance(g, str) and g else str(m) for g, m in zip(table["group"], table["media"], strict=True)
    ]
    table["stimulus"] = [
        s if isinstance(s, str) and s else Path(str(m)).stem
        for s, m in zip(table["stimulus"], table["media"])
    ]
    return table
