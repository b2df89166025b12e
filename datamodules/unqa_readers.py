"""Score-file readers of the ``unqa`` databases, in their native formats.

Every reader turns one database folder into the same table, one row per stimulus:

==========  ======================================================================================
column      meaning
==========  ======================================================================================
media       absolute path of the image / video / audio file (for AV: the video, or the muxed file)
audio       absolute path of a separate audio file (LIVE-SJTU ``.wav``, SJTU-UAV ``wav/``), or None
mos         score as written in the score file (the database's native scale)
group       content id; splits never put one group on two sides (LIVE-SJTU: the source clip)
where       ``<score file> row N`` — used in every error message
width/height/fps  only for raw ``.yuv`` video (LIVE-SJTU): frame geometry from ``MOS.mat``
==========  ======================================================================================

Formats (``format:`` of a database entry) and what they read:

=============  ======  ========  ==========================================================================
format         modal.  MOS       files
=============  ======  ========  ==========================================================================
koniq10k       image   1–5       ``koniq10k_scores_and_distributions.csv`` (``image_name``, ``MOS``); images in ``1024x768/``
spaq           image   0–100     ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``, ``MOS``); ``TestImage/``
clive          image   0–100     ``Data/AllImages_release.mat``, ``Data/AllMOS_release.mat``; ``Images/``; first 7 rows (training images) dropped
bid            image   0–5       ``DatabaseGrades.xlsx`` (col 1 image number → ``DatabaseImage%04d.JPG``, col 2 MOS), images anywhere below
konvid1k       video   1–5       ``KoNViD_1k_mos.csv`` (``flickr_id``, ``mos``); ``KoNViD_1k_videos/<flickr_id>.mp4``
live_vqc       video   0–100     ``data.mat`` (``video_list``, ``mos``); ``Video/``
youtube_ugc    video   1–5       ``original_videos_MOS_for_YouTube_UGC_dataset.xlsx`` sheet ``MOS`` (``vid``, ``MOS full``); the video file whose name starts with ``<vid>`` anywhere below
live_sjtu      av      0–100     ``MOS.mat`` (``MOS``, ``disNames`` video .yuv + audio .wav, ``allNames``, ``frameRate``, ``resolution``); files anywhere below
sjtu_uav       av      0–100     ``MOS.mat`` (``videoName``, ``MOSz``); video anywhere below, audio ``wav/<stem>.wav`` when present
tcd_voip       audio   1–5       ``Subjective Test Scores.xlsx`` sheet ``Subjective Test Scores`` (``Filename``, ``sample MOS``); wav anywhere below ``Test Set/``; grouped by reference recording
manifest       any     declared  ``manifest.csv``: ``media``, optional ``audio``, ``mos``, optional ``group`` (paths relative to the CSV)
=============  ======  ========  ==========================================================================

``manifest`` is the documented generic format for databases without a public loader (ITU-T P.Sup23,
NOIZEUS): it needs ``modality`` and ``mos_range`` in the config entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avlab.errors import ConfigError, DataError

__all__ = ["DatabaseSpec", "FORMATS", "IMAGE_EXTENSIONS", "parse_databases", "read_database"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MODALITIES = ("audio", "image", "video", "av")


@dataclass(frozen=True)
class FormatInfo:
    modalities: tuple[str, ...]
    mos_range: tuple[float, float] | None
    reader: Callable[["DatabaseSpec", Path], pd.DataFrame]
    score_file: str


@dataclass
class DatabaseSpec:
    """One entry of ``data.databases`` (the key is the database's name).

    Keys: ``format`` (table above), ``path`` (folder, relative to ``data.root`` or absolute),
    ``modality`` (audio, image, video or av; default the format's), ``mos_range`` ``[low, high]``
    (default the format's nominal scale), ``role`` (``train``: split 7:1:2; ``test``: never
    trained, all items tested — cross-database evaluation), ``score_file`` (override the file name),
    ``score_column`` (koniq10k: ``MOS`` or ``MOS_zscore``).
    """

    name: str
    format: str
    path: str
    modality: str
    mos_range: tuple[float, float]
    role: str = "train"
    score_file: str | None = None
    score_column: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def folder(self, root: Path) -> Path:
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else root / p


def parse_databases(databases: Any) -> list[DatabaseSpec]:
    """Validate ``data.databases`` (``{name: {format, path, modality, mos_range, role}}``)."""
    if not databases:
        raise ConfigError("data.databases is empty: list at least one database (see datamodules/unqa_readers.py)")
    specs = []
    for name, entry in dict(databases).items():
        if entry is None or (isinstance(entry, dict) and entry.get("enabled", True) is False):
            continue  # `data.databases.NAME=null` drops a database without touching code
        entry = dict(entry)
        where = f"data.databases.{name}"
        fmt = entry.get("format")
        if fmt not in FORMATS:
            from avlab.errors import did_you_mean

            raise ConfigError(f"database `{name}`: unknown format {fmt!r}.{did_you_mean(str(fmt), FORMATS)} Formats: {', '.join(FORMATS)}")
        info = FORMATS[fmt]
        modality = entry.get("modality") or (info.modalities[0] if len(info.modalities) == 1 else None)
        if modality not in MODALITIES:
            raise ConfigError(f"database `{name}`: unsupported modality {modality!r}; use one of {', '.join(MODALITIES)}")
        if modality not in info.modalities:
            raise ConfigError(f"database `{name}`: format {fmt} holds {'/'.join(info.modalities)} data, not {modality}")
        rng = entry.get("mos_range") or info.mos_range
        if rng is None:
            raise ConfigError(f"database `{name}`: format {fmt} needs `mos_range: [low, high]` in {where}")
        lo, hi = (float(v) for v in rng)
        if not hi > lo:
            raise ConfigError(f"database `{name}`: mos_range {list(rng)} must have high > low")
        role = entry.get("role", "train")
        if role not in ("train", "test"):
            raise ConfigError(f"database `{name}`: role must be train or test, got {role!r}")
        known = {"format", "path", "modality", "mos_range", "role", "score_file", "score_column", "enabled"}
        unknown = sorted(set(entry) - known)
        if unknown:
            from avlab.errors import did_you_mean

            raise ConfigError(f"{where}: unknown key `{unknown[0]}`.{did_you_mean(unknown[0], known)} Keys: {', '.join(sorted(known))}")
        specs.append(DatabaseSpec(name=str(name), format=fmt, path=str(entry.get("path") or name), modality=modality,
                                  mos_range=(lo, hi), role=role, score_file=entry.get("score_file"),
                                  score_column=entry.get("score_column")))
    if not specs:
        raise ConfigError("data.databases: every database is disabled")
    return specs


# --------------------------------------------------------------------------- helpers
def _need(path: Path, spec: DatabaseSpec) -> Path:
    if not path.is_file():
        raise DataError(f"database `{spec.name}` ({spec.format}): score file {path} does not exist; "
                        f"check data.databases.{spec.name}.path (and data.root)")
    return path


def _file_index(folder: Path) -> dict[str, Path]:
    """``{file name: path}`` of every file below ``folder`` (first one wins)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            out.setdefault(p.name, p)
    return out


def _read_excel(path: Path, spec: DatabaseSpec, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_excel(path, **kwargs)
    except ImportError as exc:
        raise DataError(f"database `{spec.name}`: reading {path.name} needs openpyxl (`pip install openpyxl`)") from exc
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one actionable message
        raise DataError(f"database `{spec.name}`: cannot read {path}: {exc}") from exc


def _mat(path: Path, spec: DatabaseSpec, keys: tuple[str, ...]) -> dict[str, Any]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        import h5py

        with h5py.File(path, "r") as fh:
            mat = {k: _h5_value(fh, fh[k]) for k in fh.keys() if not k.startswith("#")}
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"database `{spec.name}`: cannot read {path}: {exc}") from exc
    missing = [k for k in keys if k not in mat]
    if missing:
        raise DataError(f"database `{spec.name}`: {path} lacks field(s) {', '.join(missing)} (found {', '.join(k for k in mat if not k.startswith('__'))})")
    return mat


def _h5_value(fh: Any, ds: Any) -> Any:
    data = ds[()]
    if data.dtype == object:  # cell array of references to char arrays
        return np.array([["".join(chr(c) for c in np.asarray(fh[r]).ravel())] for r in data.ravel()], dtype=object)
    return np.asarray(data).T


def _cell_str(cell: Any) -> str:
    arr = np.asarray(cell, dtype=object).ravel()
    while arr.size == 1 and isinstance(arr[0], np.ndarray):
        arr = np.asarray(arr[0], dtype=object).ravel()
    return str(arr[0]).strip() if arr.size else ""


def _rows(spec: DatabaseSpec, file_name: str, records: list[dict[str, Any]], *, first_row: int = 2) -> pd.DataFrame:
    for i, r in enumerate(records):
        r.setdefault("audio", None)
        r.setdefault("group", None)
        r.setdefault("where", f"{file_name} row {i + first_row}")
    table = pd.DataFrame.from_records(records, columns=None)
    for col in ("media", "audio", "mos", "group", "where"):
        if col not in table:
            table[col] = None
    table["group"] = [g if g not in (None, "") and not (isinstance(g, float) and np.isnan(g)) else str(m)
                      for g, m in zip(table["group"], table["media"])]
    return table


# --------------------------------------------------------------------------- readers
def read_koniq10k(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "koniq10k_scores_and_distributions.csv"
    table = pd.read_csv(_need(folder / name, spec))
    col = spec.score_column or "MOS"
    for c in ("image_name", col):
        if c not in table:
            raise DataError(f"database `{spec.name}`: {name} has no column `{c}` (columns: {', '.join(map(str, table.columns))})")
    img_dir = next((folder / d for d in ("1024x768", "512x384") if (folder / d).is_dir()), folder)
    return _rows(spec, name, [{"media": str(img_dir / str(r["image_name"])), "mos": r[col]} for _, r in table.iterrows()])


def read_spaq(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "Annotations/MOS and Image attribute scores.xlsx"
    table = _read_excel(_need(folder / name, spec), spec)
    for c in ("Image name", "MOS"):
        if c not in table:
            raise DataError(f"database `{spec.name}`: {name} has no column `{c}`")
    img_dir = folder / "TestImage"
    index = _file_index(img_dir) if img_dir.is_dir() else {}
    records = []
    for _, r in table.iterrows():
        fname = str(r["Image name"])
        path = index.get(fname) or index.get(Path(fname).stem + ".jpg") or index.get(Path(fname).stem + ".png") or img_dir / fname
        records.append({"media": str(path), "mos": r["MOS"]})
    return _rows(spec, name, records)


def read_clive(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    names = _mat(_need(folder / "Data" / "AllImages_release.mat", spec), spec, ("AllImages_release",))["AllImages_release"]
    mos = _mat(_need(folder / "Data" / "AllMOS_release.mat", spec), spec, ("AllMOS_release",))["AllMOS_release"]
    names, mos = np.asarray(names, dtype=object).ravel(), np.asarray(mos, dtype=float).ravel()
    if len(names) != len(mos):
        raise DataError(f"database `{spec.name}`: AllImages_release has {len(names)} entries but AllMOS_release {len(mos)}")
    # The first 7 entries are CLIVE's training images (Images/trainingImages), not part of the 1162.
    records = [{"media": str(folder / "Images" / _cell_str(names[i])), "mos": float(mos[i]),
                "where": f"AllMOS_release.mat entry {i + 1}"} for i in range(7, len(names))]
    return _rows(spec, "AllMOS_release.mat", records)


def read_bid(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "DatabaseGrades.xlsx"
    table = _read_excel(_need(folder / name, spec), spec)
    if table.shape[1] < 2:
        raise DataError(f"database `{spec.name}`: {name} needs two columns (image number, MOS)")
    index = {k.lower(): v for k, v in _file_index(folder).items()}
    records = []
    for _, r in table.iterrows():
        num = pd.to_numeric(r.iloc[0], errors="coerce")
        fname = f"DatabaseImage{int(num):04d}.JPG" if not pd.isna(num) else str(r.iloc[0])
        records.append({"media": str(index.get(fname.lower(), folder / fname)), "mos": r.iloc[1]})
    return _rows(spec, name, records)


def read_konvid1k(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "KoNViD_1k_mos.csv"
    table = pd.read_csv(_need(folder / name, spec), dtype={0: str})  # flickr ids must not become floats
    if table.shape[1] < 2:
        raise DataError(f"database `{spec.name}`: {name} needs the columns flickr_id, mos")
    vid_dir = folder / "KoNViD_1k_videos"
    records = [{"media": str(vid_dir / f"{str(r.iloc[0]).strip()}.mp4"), "mos": r.iloc[1]} for _, r in table.iterrows()]
    return _rows(spec, name, records)


def read_live_vqc(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "data.mat"
    mat = _mat(_need(folder / name, spec), spec, ("video_list", "mos"))
    names, mos = np.asarray(mat["video_list"], dtype=object).ravel(), np.asarray(mat["mos"], dtype=float).ravel()
    records = [{"media": str(folder / "Video" / _cell_str(n)), "mos": float(m), "where": f"{name} entry {i + 1}"}
               for i, (n, m) in enumerate(zip(names, mos))]
    return _rows(spec, name, records)


def read_youtube_ugc(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "original_videos_MOS_for_YouTube_UGC_dataset.xlsx"
    table = _read_excel(_need(folder / name, spec), spec, sheet_name="MOS")
    col = spec.score_column or "MOS full"
    for c in ("vid", col):
        if c not in table:
            raise DataError(f"database `{spec.name}`: sheet MOS of {name} has no column `{c}`")
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mp4", ".mkv", ".webm", ".mov"))
    records = []
    for _, r in table.iterrows():
        vid = str(r["vid"])
        match = next((p for p in videos if p.stem == vid or p.stem.startswith(vid + "_")), None)
        records.append({"media": str(match or folder / f"{vid}.mp4"), "mos": r[col]})
    return _rows(spec, name, records)


def read_live_sjtu(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "MOS.mat"
    mat = _mat(_need(folder / name, spec), spec, ("MOS", "disNames"))
    index = _file_index(folder)
    mos = np.asarray(mat["MOS"], dtype=float).ravel()
    dis = np.asarray(mat["disNames"], dtype=object)
    fps = np.asarray(mat.get("frameRate", np.full(len(mos), 25.0)), dtype=float).ravel()
    res = np.asarray(mat.get("resolution", [[1080, 1920]]), dtype=float).ravel()
    all_names = np.asarray(mat["allNames"], dtype=object) if "allNames" in mat else None
    records = []
    for i in range(len(mos)):
        video, audio = _cell_str(dis[i][0]), _cell_str(dis[i][1]) if dis.shape[1] > 1 else ""
        source = _cell_str(all_names[i][0]) if all_names is not None else video.split("_")[0]
        records.append({"media": str(index.get(video, folder / video)), "audio": str(index.get(audio, folder / audio)) if audio else None,
                        "mos": float(mos[i]), "group": source, "where": f"{name} entry {i + 1}",
                        "height": int(res[0]), "width": int(res[1]), "fps": float(fps[i] if i < len(fps) else 25.0)})
    return _rows(spec, name, records)


def read_sjtu_uav(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "MOS.mat"
    mat = _mat(_need(folder / name, spec), spec, ("videoName", "MOSz"))
    index = _file_index(folder)
    names, mos = np.asarray(mat["videoName"], dtype=object).ravel(), np.asarray(mat["MOSz"], dtype=float).ravel()
    records = []
    for i, (n, m) in enumerate(zip(names, mos)):
        video = _cell_str(n)
        wav = folder / "wav" / f"{Path(video).stem}.wav"
        records.append({"media": str(index.get(video, folder / video)), "audio": str(wav) if wav.is_file() else None,
                        "mos": float(m), "where": f"{name} entry {i + 1}"})
    return _rows(spec, name, records)


def read_tcd_voip(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "Subjective Test Scores.xlsx"
    table = _read_excel(_need(folder / name, spec), spec, sheet_name="Subjective Test Scores")
    col = spec.score_column or "sample MOS"
    for c in ("Filename", col):
        if c not in table:
            raise DataError(f"database `{spec.name}`: sheet `Subjective Test Scores` of {name} has no column `{c}`")
    test_set = folder / "Test Set"
    index = _file_index(test_set if test_set.is_dir() else folder)
    records = []
    for _, r in table.iterrows():
        fname = str(r["Filename"])
        fname = fname if fname.lower().endswith(".wav") else fname + ".wav"
        media = index.get(fname, test_set / fname)
        records.append({"media": str(media), "mos": r[col], "group": _tcd_reference_group(media)})
    return _rows(spec, name, records)


def _tcd_reference_group(media: Path) -> str | None:
    """Content group of a TCD-VoIP stimulus: the SHA-1 of its clean reference recording.

    Every degraded file ``<cond>/C_<n>_<COND>_<spk>.wav`` has its reference ``<cond>/ref/R_<n>_<COND>_<spk>.wav``.
    Stimuli degraded from the same clean sentence share that recording's bytes, so grouping by the
    reference's content keeps one sentence on one side of a split. Grouping by speaker instead would
    leave the 4-speaker database with a single test speaker. Without a reference file the stimulus is
    its own group (item-level split, the paper's "random 7:1:2").
    """
    import hashlib

    ref = media.parent / "ref" / ("R_" + media.name[2:] if media.name.startswith("C_") else media.name)
    if not ref.is_file():
        return None
    return "ref:" + hashlib.sha1(ref.read_bytes()).hexdigest()[:16]


def read_manifest(spec: DatabaseSpec, folder: Path) -> pd.DataFrame:
    name = spec.score_file or "manifest.csv"
    table = pd.read_csv(_need(folder / name, spec))
    for c in ("media", "mos"):
        if c not in table:
            raise DataError(f"database `{spec.name}`: {name} has no column `{c}` (needs media, mos; optional audio, group)")
    records = []
    for _, r in table.iterrows():
        audio = r.get("audio")
        records.append({"media": str((folder / str(r["media"])).resolve()) if isinstance(r["media"], str) else None,
                        "audio": str((folder / audio).resolve()) if isinstance(audio, str) and audio else None,
                        "mos": r["mos"], "group": r.get("group") if isinstance(r.get("group"), str) else None})
    return _rows(spec, name, records)


FORMATS: dict[str, FormatInfo] = {
    "koniq10k": FormatInfo(("image",), (1.0, 5.0), read_koniq10k, "koniq10k_scores_and_distributions.csv"),
    "spaq": FormatInfo(("image",), (0.0, 100.0), read_spaq, "Annotations/MOS and Image attribute scores.xlsx"),
    "clive": FormatInfo(("image",), (0.0, 100.0), read_clive, "Data/AllMOS_release.mat"),
    "bid": FormatInfo(("image",), (0.0, 5.0), read_bid, "DatabaseGrades.xlsx"),
    "konvid1k": FormatInfo(("video",), (1.0, 5.0), read_konvid1k, "KoNViD_1k_mos.csv"),
    "live_vqc": FormatInfo(("video",), (0.0, 100.0), read_live_vqc, "data.mat"),
    "youtube_ugc": FormatInfo(("video",), (1.0, 5.0), read_youtube_ugc, "original_videos_MOS_for_YouTube_UGC_dataset.xlsx"),
    "live_sjtu": FormatInfo(("av",), (0.0, 100.0), read_live_sjtu, "MOS.mat"),
    "sjtu_uav": FormatInfo(("av",), (0.0, 100.0), read_sjtu_uav, "MOS.mat"),
    "tcd_voip": FormatInfo(("audio",), (1.0, 5.0), read_tcd_voip, "Subjective Test Scores.xlsx"),
    "manifest": FormatInfo(MODALITIES, None, read_manifest, "manifest.csv"),
}


def read_database(spec: DatabaseSpec, root: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read one database and validate every row; returns the table and all problems found.

    Problems name the database and the row: missing media, MOS missing / outside ``mos_range``,
    duplicate rows, and (for AV databases) a missing separate audio file.
    """
    folder = spec.folder(root)
    if not folder.is_dir():
        return pd.DataFrame(), [f"database `{spec.name}`: folder {folder} does not exist (data.databases.{spec.name}.path)"]
    try:
        table = FORMATS[spec.format].reader(spec, folder)
    except DataError as exc:
        return pd.DataFrame(), [str(exc)]
    problems = []
    lo, hi = spec.mos_range
    seen: dict[tuple[str, str], str] = {}
    for _, r in table.iterrows():
        where = f"database `{spec.name}` ({r['where']})"
        mos = pd.to_numeric(r["mos"], errors="coerce")
        if pd.isna(mos):
            problems.append(f"{where}: MOS is missing or not a number ({r['mos']!r})")
        elif not lo <= float(mos) <= hi:
            problems.append(f"{where}: MOS {float(mos):g} is outside the declared range [{lo:g}, {hi:g}] "
                            f"(data.databases.{spec.name}.mos_range)")
        media = r["media"]
        if not media or not Path(str(media)).is_file():
            problems.append(f"{where}: media file {media} does not exist")
        if isinstance(r["audio"], str) and r["audio"] and not Path(r["audio"]).is_file():
            problems.append(f"{where}: audio file {r['audio']} does not exist")
        key = (str(media), str(r["audio"]))
        if key in seen:
            problems.append(f"{where}: duplicate row, {Path(str(media)).name} is already listed at {seen[key]}")
        else:
            seen[key] = str(r["where"])
        if spec.modality == "image" and media and Path(str(media)).suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(f"{where}: {Path(str(media)).name} is not an image file ({', '.join(IMAGE_EXTENSIONS)}) "
                            f"but the database is declared `modality: image`")
    table = table.copy()
    table["mos"] = pd.to_numeric(table["mos"], errors="coerce")
    return table.reset_index(drop=True), problems
