"""Score-file readers of the ``unqa`` databases, in their native formats.

The unqa-only formats register in the shared reader catalog (:mod:`avlab.datamodules.readers`),
which also holds the ``live_sjtu`` and ``manifest`` readers that avq uses. Every reader turns one
database folder into the catalog's table, one row per stimulus; unqa uses these columns:

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
koniq10k       image   1–5       ``koniq10k_scores_and_distributions.csv`` (``image_name``, ``MOS``); images
                                 in ``1024x768/``
spaq           image   0–100     ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``,
                                 ``MOS``); ``TestImage/``
clive          image   0–100     ``Data/AllImages_release.mat``, ``Data/AllMOS_release.mat``; ``Images/``;
                                 first 7 rows (training images) dropped
bid            image   0–5       ``DatabaseGrades.xlsx`` (col 1 image number → ``DatabaseImage%04d.JPG``, col
                                 2 MOS), images anywhere below
konvid1k       video   1–5       ``KoNViD_1k_mos.csv`` (``flickr_id``, ``mos``);
                                 ``KoNViD_1k_videos/<flickr_id>.mp4``
live_vqc       video   0–100     ``data.mat`` (``video_list``, ``mos``); ``Video/``
youtube_ugc    video   1–5       ``original_videos_MOS_for_YouTube_UGC_dataset.xlsx`` sheet ``MOS`` (``vid``,
                                 ``MOS full``); the video file whose name starts with ``<vid>`` anywhere below
live_sjtu      av      0–100     ``MOS.mat`` (``MOS``, ``disNames`` video .yuv + audio .wav, ``allNames``,
                                 ``frameRate``, ``resolution``); files anywhere below
sjtu_uav       av      0–100     ``MOS.mat`` (``videoName``, ``MOSz``); video anywhere below, audio
                                 ``wav/<stem>.wav`` when present
tcd_voip       audio   1–5       ``Subjective Test Scores.xlsx`` sheet ``Subjective Test Scores``
                                 (``Filename``, ``sample MOS``); wav anywhere below ``Test Set/``; grouped by
                                 reference recording
manifest       any     declared  ``manifest.csv``: ``media``, optional ``audio``, ``mos``, optional ``group``
                                 (paths relative to the CSV)
=============  ======  ========  ==========================================================================

``manifest`` is the documented generic format for databases without a public loader (ITU-T P.Sup23,
NOIZEUS): it needs ``modality`` and ``mos_range`` in the config entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avlab.datamodules.readers import ReadOptions, get_reader, register_reader
from avlab.datamodules.readers.common import cell_str, file_index, finish_rows, load_mat, need, read_excel
from avlab.errors import ConfigError, DataError

__all__ = ["FORMATS", "IMAGE_EXTENSIONS", "DatabaseSpec", "parse_databases", "read_database"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MODALITIES = ("audio", "image", "video", "av")


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
        raise ConfigError(
            "data.databases is empty: list at least one database (see datamodules/unqa_readers.py)"
        )
    specs = []
    for name, entry in dict(databases).items():
        if entry is None or (isinstance(entry, dict) and entry.get("enabled", True) is False):
            continue  # `data.databases.NAME=null` drops a database without touching code
        entry = dict(entry)
        where = f"data.databases.{name}"
        fmt = entry.get("format")
        info = get_reader(str(fmt), where=f"database `{name}` ({where}.format)", allowed=FORMATS)
        modality = entry.get("modality") or (info.modalities[0] if len(info.modalities) == 1 else None)
        if modality not in MODALITIES:
            raise ConfigError(
                f"database `{name}`: unsupported modality {modality!r}; use one of {', '.join(MODALITIES)}"
            )
        if modality not in info.modalities:
            raise ConfigError(
                f"database `{name}`: format {fmt} holds {'/'.join(info.modalities)} data, not {modality}"
            )
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

            raise ConfigError(
                f"{where}: unknown key `{unknown[0]}`.{did_you_mean(unknown[0], known)} "
                f"Keys: {', '.join(sorted(known))}"
            )
        specs.append(
            DatabaseSpec(
                name=str(name),
                format=fmt,
                path=str(entry.get("path") or name),
                modality=modality,
                mos_range=(lo, hi),
                role=role,
                score_file=entry.get("score_file"),
                score_column=entry.get("score_column"),
            )
        )
    if not specs:
        raise ConfigError("data.databases: every database is disabled")
    return specs


# --------------------------------------------------------------------------- readers (unqa-only formats)
def _records_table(records: list[dict[str, Any]], score_file: str) -> pd.DataFrame:
    return finish_rows(records, score_file)


def _columns(table: pd.DataFrame, needed: tuple[str, ...], label: str, where: str) -> None:
    for c in needed:
        if c not in table:
            raise DataError(
                f"{label}: {where} has no column `{c}` (columns: {', '.join(map(str, table.columns))})"
            )


@register_reader(
    "koniq10k",
    modalities=("image",),
    mos_range=(1.0, 5.0),
    score_file="koniq10k_scores_and_distributions.csv",
)
def read_koniq10k(folder: Path, options: ReadOptions) -> pd.DataFrame:
    name = options.score_file or "koniq10k_scores_and_distributions.csv"
    label = options.label("koniq10k")
    table = pd.read_csv(need(folder / name, label))
    col = options.score_column or "MOS"
    _columns(table, ("image_name", col), label, name)
    img_dir = next((folder / d for d in ("1024x768", "512x384") if (folder / d).is_dir()), folder)
    return _records_table(
        [{"media": str(img_dir / str(r["image_name"])), "mos": r[col]} for _, r in table.iterrows()], name
    )


@register_reader(
    "spaq",
    modalities=("image",),
    mos_range=(0.0, 100.0),
    score_file="Annotations/MOS and Image attribute scores.xlsx",
)
def read_spaq(folder: Path, options: ReadOptions) -> pd.DataFrame:
    name = options.score_file or "Annotations/MOS and Image attribute scores.xlsx"
    label = options.label("spaq")
    table = read_excel(need(folder / name, label), label)
    _columns(table, ("Image name", "MOS"), label, name)
    img_dir = folder / "TestImage"
    index = file_index(img_dir) if img_dir.is_dir() else {}
    records = []
    for _, r in table.iterrows():
        fname = str(r["Image name"])
        path = (
            index.get(fname)
            or index.get(Path(fname).stem + ".jpg")
            or index.get(Path(fname).stem + ".png")
            or img_dir / fname
        )
        records.append({"media": str(path), "mos": r["MOS"]})
    return _records_table(records, name)


@register_reader("clive", modalities=("image",), mos_range=(0.0, 100.0), score_file="Data/AllMOS_release.mat")
def read_clive(folder: Path, options: ReadOptions) -> pd.DataFrame:
    label = options.label("clive")
    names = load_mat(need(folder / "Data" / "AllImages_release.mat", label), label, ("AllImages_release",))[
        "AllImages_release"
    ]
    mos = load_mat(need(folder / "Data" / "AllMOS_release.mat", label), label, ("AllMOS_release",))[
        "AllMOS_release"
    ]
    names, mos = np.asarray(names, dtype=object).ravel(), np.asarray(mos, dtype=float).ravel()
    if len(names) != len(mos):
        raise DataError(f"{label}: AllImages_release has {len(names)} entries but AllMOS_release {len(mos)}")
    # The first 7 entries are CLIVE's training images (Images/trainingImages), not part of the 1162.
    records = [
        {
            "media": str(folder / "Images" / cell_str(names[i])),
            "mos": float(mos[i]),
            "where": f"AllMOS_release.mat entry {i + 1}",
        }
        for i in range(7, len(names))
    ]
    return _records_table(records, "AllMOS_release.mat")


@register_reader("bid", modalities=("image",), mos_range=(0.0, 5.0), score_file="DatabaseGrades.xlsx")
def read_bid(folder: Path, options: ReadOptions) -> pd.DataFrame:
    name = options.score_file or "DatabaseGrades.xlsx"
    label = options.label("bid")
    table = read_excel(need(folder / name, label), label)
    if table.shape[1] < 2:
        raise DataError(f"{label}: {name} needs two columns (image number, MOS)")
    index = {k.lower(): v for k, v in file_index(folder).items()}
    records = []
    for _, r in table.iterrows():
        num = pd.to_numeric(r.iloc[0], errors="coerce")
        fname = f"DatabaseImage{int(num):04d}.JPG" if not pd.isna(num) else str(r.iloc[0])
        records.append({"media": str(index.get(fname.lower(), folder / fname)), "mos": r.iloc[1]})
    return _records_table(records, name)


@register_reader("konvid1k", modalities=("video",), mos_range=(1.0, 5.0), score_file="KoNViD_1k_mos.csv")
def read_konvid1k(folder: Path, options: ReadOptions) -> pd.DataFrame:
    name = options.score_file or "KoNViD_1k_mos.csv"
    label = options.label("konvid1k")
    table = pd.read_csv(need(folder / name, label), dtype={0: str})  # flickr ids must not become floats
    if table.shape[1] < 2:
        raise DataError(f"{label}: {name} needs the columns flickr_id, mos")
    vid_dir = folder / "KoNViD_1k_videos"
    records = [
        {"media": str(vid_dir / f"{str(r.iloc[0]).strip()}.mp4"), "mos": r.iloc[1]}
        for _, r in table.iterrows()
    ]
    return _records_table(records, name)


@register_reader("live_vqc", modalities=("video",), mos_range=(0.0, 100.0), score_file="data.mat")
def read_live_vqc(folder: Path, options: ReadOptions) -> pd.DataFrame:
    name = options.score_file or "data.mat"
    label = options.label("live_vqc")
    mat = load_mat(need(folder / name, label), label, ("video_list", "mos"))
    names, mos = (
        np.asarray(mat["video_list"], dtype=object).ravel(),
        np.asarray(mat["mos"], dtype=float).ravel(),
    )
    records = [
        {"media": str(folder / "Video" / cell_str(n)), "mos": float(m), "where": f"{name} entry {i + 1}"}
        for i, (n, m) in enumerate(zip(names, mos))
    ]
    return _records_table(records, name)


@register_reader(
    "youtube_ugc",
    modalities=("video",),
    mos_range=(1.0, 5.0),
    score_file="original_videos_MOS_for_YouTube_UGC_dataset.xlsx",
)
def read_youtube_ugc(folder: Path, options: ReadOptions) -> pd.DataFrame:
    name = options.score_file or "original_videos_MOS_for_YouTube_UGC_dataset.xlsx"
    label = options.label("youtube_ugc")
    table = read_excel(need(folder / name, label), label, sheet_name="MOS")
    col = options.score_column or "MOS full"
    _columns(table, ("vid", col), label, f"sheet MOS of {name}")
    videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mp4", ".mkv", ".webm", ".mov"))
    records = []
    for _, r in table.iterrows():
        vid = str(r["vid"])
        match = next((p for p in videos if p.stem == vid or p.stem.startswith(vid + "_")), None)
        records.append({"media": str(match or folder / f"{vid}.mp4"), "mos": r[col]})
    return _records_table(records, name)


@register_reader("sjtu_uav", modalities=("av",), mos_range=(0.0, 100.0), score_file="MOS.mat")
def read_sjtu_uav(folder: Path, options: ReadOptions) -> pd.DataFrame:
    name = options.score_file or "MOS.mat"
    label = options.label("sjtu_uav")
    mat = load_mat(need(folder / name, label), label, ("videoName", "MOSz"))
    index = file_index(folder)
    names, mos = (
        np.asarray(mat["videoName"], dtype=object).ravel(),
        np.asarray(mat["MOSz"], dtype=float).ravel(),
    )
    records = []
    for i, (n, m) in enumerate(zip(names, mos)):
        video = cell_str(n)
        wav = folder / "wav" / f"{Path(video).stem}.wav"
        records.append(
            {
                "media": str(index.get(video, folder / video)),
                "audio": str(wav) if wav.is_file() else None,
                "mos": float(m),
                "where": f"{name} entry {i + 1}",
            }
        )
    return _records_table(records, name)


@register_reader(
    "tcd_voip", modalities=("audio",), mos_range=(1.0, 5.0), score_file="Subjective Test Scores.xlsx"
)
def read_tcd_voip(folder: Path, options: ReadOptions) -> pd.DataFrame:
    name = options.score_file or "Subjective Test Scores.xlsx"
    label = options.label("tcd_voip")
    table = read_excel(need(folder / name, label), label, sheet_name="Subjective Test Scores")
    col = options.score_column or "sample MOS"
    _columns(table, ("Filename", col), label, f"sheet `Subjective Test Scores` of {name}")
    test_set = folder / "Test Set"
    index = file_index(test_set if test_set.is_dir() else folder)
    records = []
    for _, r in table.iterrows():
        fname = str(r["Filename"])
        fname = fname if fname.lower().endswith(".wav") else fname + ".wav"
        media = index.get(fname, test_set / fname)
        records.append({"media": str(media), "mos": r[col], "group": _tcd_reference_group(media)})
    return _records_table(records, name)


def _tcd_reference_group(media: Path) -> str | None:
    """Content group of a TCD-VoIP stimulus: the SHA-1 of its clean reference recording.

    Every degraded file ``<cond>/C_<n>_<COND>_<spk>.wav`` has its reference
    ``<cond>/ref/R_<n>_<COND>_<spk>.wav``.
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


#: The formats a unqa database entry may name (the shared ``live_sjtu`` and ``manifest`` included).
FORMATS = (
    "koniq10k",
    "spaq",
    "clive",
    "bid",
    "konvid1k",
    "live_vqc",
    "youtube_ugc",
    "live_sjtu",
    "sjtu_uav",
    "tcd_voip",
    "manifest",
)


def read_database(spec: DatabaseSpec, root: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read one database and validate every row; returns the table and all problems found.

    Problems name the database and the row: missing media, MOS missing / outside ``mos_range``,
    duplicate rows, and (for AV databases) a missing separate audio file.
    """
    folder = spec.folder(root)
    if not folder.is_dir():
        return pd.DataFrame(), [
            f"database `{spec.name}`: folder {folder} does not exist (data.databases.{spec.name}.path)"
        ]
    try:
        options = ReadOptions(name=spec.name, score_file=spec.score_file, score_column=spec.score_column)
        table = get_reader(spec.format, allowed=FORMATS).read(folder, options)
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
            problems.append(
                f"{where}: MOS {float(mos):g} is outside the declared range [{lo:g}, {hi:g}] "
                f"(data.databases.{spec.name}.mos_range)"
            )
        media = r["media"]
        if not media or not Path(str(media)).is_file():
            problems.append(f"{where}: media file {media} does not exist")
        if isinstance(r["audio"], str) and r["audio"] and not Path(r["audio"]).is_file():
            problems.append(f"{where}: audio file {r['audio']} does not exist")
        key = (str(media), str(r["audio"]))
        if key in seen:
            problems.append(
                f"{where}: duplicate row, {Path(str(media)).name} is already listed at {seen[key]}"
            )
        else:
            seen[key] = str(r["where"])
        if spec.modality == "image" and media and Path(str(media)).suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(
                f"{where}: {Path(str(media)).name} is not an image file ({', '.join(IMAGE_EXTENSIONS)}) "
                f"but the database is declared `modality: image`"
            )
    table = table.copy()
    table["mos"] = pd.to_numeric(table["mos"], errors="coerce")
    return table.reset_index(drop=True), problems
