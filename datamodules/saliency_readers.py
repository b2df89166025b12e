"""On-disk layouts of the ``saliency`` task, registered in the shared reader catalog.

Each layout is one function registered with :func:`avlab.datamodules.readers.register_reader`
(``data.layout`` names it). It reads a dataset folder into a table with one row per video and the
columns ``dataset``, ``name``, ``fps`` (0: read from the video file), ``n_listed`` (frame count its
list gives, or −1), ``frames`` (image files, one video file, or None when nothing is found),
``maps``, ``fixations``, ``wav`` (or None), ``fold1``–``fold3`` (``train``, ``test`` or empty: the
video's side in each fold) and ``where``. :func:`video_records` then selects the datasets and fold
of a run and applies the bad-input policies, collecting every problem instead of stopping at the
first.

``stavis`` — the STAViS release layout of AVAD, Coutrot_db1/2, DIEM, ETMD_av and SumMe::

    video_frames/<DB>/<video>/img_00001.jpg ...        frames (any image type; or <video>.mp4 there)
    video_audio/<DB>/<video>/<video>.wav               one WAV per video
    annotations/<DB>/<video>/maps/eyeMap_00001.jpg     continuous ground truth
    annotations/<DB>/<video>/fixMap_00001.mat          binary fixations, MATLAB variable `eyeMap`
    fold_lists/<DB>_list_{train,test}_{1,2,3}_fps.txt  lines `name nframes fps`
    fold_lists/DIEM_list_{train,test}_fps.txt          DIEM's single fixed split (used for every fold)

``dhf1k`` — DHF1K, for the visual pretraining stage::

    annotation/<id>/maps/0001.png                      continuous ground truth
    annotation/<id>/fixation/0001.png                  binary fixations (or fixation/maps/0001.mat, `I`)
    frames in video/<id>/0001.png, <id>/images/0001.png, or a video file video/<id>.{mp4,avi,...}
    (also the official 3-digit names, video/001.avi), decoded by the `data.decoder` backend

    ids ≤ 600 are training videos; 601–700 (the official validation set, whose ground truth is
    public) are the test set, as in papers that evaluate DHF1K locally; > 700 have no ground truth.

Policies for bad input (:class:`RecordPolicy`, from the DataModule's config):

* a video shorter than ``clip_len`` frames: ``short_videos=error`` reports it; ``skip`` leaves it
  out with a warning;
* frame / map / fixation counts that disagree: ``count_mismatch=truncate`` uses the first ``min``
  frames with a note (ViNet trusts the map count); ``error`` reports it;
* a missing WAV (when audio is read): ``missing_audio=error`` reports it; ``silence`` notes it;
* fold-list lines with fewer than 3 fields (blank lines, as in the real lists) are skipped; a
  non-numeric count or fps is a DataError naming the file and line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avlab.datamodules.readers import ReadOptions, register_reader
from avlab.errors import DataError, MediaError
from avlab.media.clips import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoFrames, read_image

__all__ = [
    "AV_DATASETS",
    "RecordPolicy",
    "VideoRecord",
    "check_annotations",
    "fold_list_path",
    "load_fixation",
    "load_map",
    "map_shape",
    "parse_fold_list",
    "read_dhf1k",
    "read_stavis",
    "video_records",
]

log = logging.getLogger(__name__)

AV_DATASETS = ("AVAD", "Coutrot_db1", "Coutrot_db2", "DIEM", "ETMD_av", "SumMe")


@dataclass
class VideoRecord:
    """One video of a dataset: where its frames, maps, fixations and audio are."""

    dataset: str
    name: str
    n_frames: int
    fps: float
    frames: list[Path] | Path  # image files, or one video file
    maps: list[Path]
    fixations: list[Path]
    wav: Path | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordPolicy:
    """How a reader treats short videos, count mismatches and missing audio (module docstring)."""

    clip_len: int
    short_videos: str = "error"
    count_mismatch: str = "truncate"
    audio: bool = True
    missing_audio: str = "error"
    #: backend that opens video files (``data.decoder``, :mod:`avlab.media.decoders`)
    decoder: str = "auto"


# --------------------------------------------------------------------------- files
def parse_fold_list(path: Path) -> list[tuple[str, int, float]]:
    """``name nframes fps`` lines; lines with fewer than 3 fields (blank lines) are skipped."""
    if not path.is_file():
        raise DataError(f"fold list {path} does not exist")
    out = []
    for no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if len(parts) < 3:
            continue  # the real lists contain blank lines (e.g. ETMD_av_list_test_2_fps.txt)
        try:
            out.append((parts[0], int(float(parts[1])), float(parts[2])))
        except ValueError as exc:
            raise DataError(f"{path}:{no}: expected `name nframes fps`, got {line.strip()!r}") from exc
    return out


def fold_list_path(root: Path, db: str, split: str, fold: int) -> Path:
    """STAViS fold-list file; DIEM has one fixed split used for every fold."""
    if db == "DIEM":
        return root / "fold_lists" / f"DIEM_list_{split}_fps.txt"
    return root / "fold_lists" / f"{db}_list_{split}_{fold}_fps.txt"


def _read_mat(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        keys = [k for k in mat if not k.startswith("__")]
        return {k: mat[k] for k in keys}, keys
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        import h5py

        with h5py.File(path, "r") as h5:
            keys = list(h5.keys())
            return {k: np.asarray(h5[k]).T for k in keys}, keys
    except Exception as exc:
        raise DataError(f"fixation file {path} cannot be read as MATLAB .mat ({exc})") from exc


def load_fixation(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A binary fixation map ``uint8 [H, W]`` from ``.mat`` (``eyeMap`` or ``I``) or an image."""
    if path.suffix.lower() == ".mat":
        if not path.is_file():
            raise DataError(f"fixation file {path} does not exist")
        data, keys = _read_mat(path)
        key = next((k for k in ("eyeMap", "I") if k in data), None)
        if key is None:
            raise DataError(
                f"fixation file {path} has no variable `eyeMap` (STAViS) or `I` (DHF1K); "
                f"it holds {', '.join(keys) or 'nothing'}"
            )
        fix = np.asarray(data[key])
    else:
        fix = read_image(path, gray=True)
    if fix.ndim != 2:
        raise DataError(f"fixation map {path} must be a 2-D matrix, got shape {fix.shape}")
    if shape is not None and tuple(fix.shape) != tuple(shape):
        raise DataError(
            f"fixation map {path} has shape {fix.shape[0]}×{fix.shape[1]} but its saliency map "
            f"is {shape[0]}×{shape[1]}; fixations are never resized, so the two must match"
        )
    return (fix > 0).astype(np.uint8)


def load_map(path: Path) -> np.ndarray:
    """A continuous saliency map as float32 [H, W] in [0, 1] (``im2double``)."""
    return read_image(path, gray=True).astype(np.float32) / 255.0


def map_shape(path: Path) -> tuple[int, int]:
    """``(H, W)`` of a saliency map image from its header alone (no pixel decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError as exc:
        raise DataError(f"saliency map {path} does not exist") from exc
    except OSError as exc:
        raise MediaError(f"saliency map {path} cannot be read as an image ({exc})") from exc
    return height, width


#: Problems listed per video by :func:`check_annotations` before the rest are only counted: a
#: video whose every fixation file is wrong would otherwise print thousands of near-equal lines.
CHECK_LINES_PER_VIDEO = 10


def check_annotations(rec: VideoRecord) -> list[str]:
    """Open every fixation file of ``rec`` the way the test stage does; one line per bad file.

    Each fixation must hold ``eyeMap``/``I`` (or be an image) and match its own saliency map's
    shape, which is what :func:`load_fixation` enforces when test metrics are computed. Every
    pair is checked (no early exit); past :data:`CHECK_LINES_PER_VIDEO` lines the rest are
    counted in one closing line.
    """
    where = f"{rec.dataset}/{rec.name}"
    found: list[str] = []
    for gt_path, fix_path in zip(rec.maps, rec.fixations, strict=False):
        try:
            load_fixation(fix_path, map_shape(gt_path))
        except (DataError, MediaError) as exc:
            found.append(f"{where}: {exc}")
    if len(found) > CHECK_LINES_PER_VIDEO:
        extra = len(found) - CHECK_LINES_PER_VIDEO
        found = found[:CHECK_LINES_PER_VIDEO]
        found.append(f"{where}: {extra} more fixation/map problem(s) in this video")
    return found


def sorted_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files of ``folder`` with one of ``suffixes``, ordered by the last number in their name."""
    if not folder.is_dir():
        return []

    def key(p: Path) -> tuple[int, str]:
        digits = re.findall(r"\d+", p.stem)
        return (int(digits[-1]) if digits else -1, p.name)

    return sorted((p for p in folder.iterdir() if p.suffix.lower() in suffixes), key=key)


def finish_record(
    rec: VideoRecord, n_list: int | None, policy: RecordPolicy, problems: list[str]
) -> VideoRecord | None:
    """Apply the bad-input policies to one record; ``None`` (with a problem or warning) drops it."""
    where = f"{rec.dataset}/{rec.name}"
    if not rec.maps:
        problems.append(f"{where}: no continuous saliency maps found")
        return None
    counts = {"frames": rec.n_frames, "maps": len(rec.maps), "fixations": len(rec.fixations)}
    n = min(counts.values())
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in counts.items())
        msg = f"{where}: frame/map/fixation counts differ ({listed})"
        if policy.count_mismatch == "error":
            problems.append(msg + "; fix the files, or set data.count_mismatch=truncate")
            return None
        rec.notes.append(msg + f"; using the first {n} (data.count_mismatch=truncate)")
    if n_list is not None and n_list != n:
        rec.notes.append(f"{where}: the fold list says {n_list} frames, {n} found; using {n}")
    rec.n_frames = n
    rec.frames = rec.frames[:n] if isinstance(rec.frames, list) else rec.frames
    rec.maps, rec.fixations = rec.maps[:n], rec.fixations[:n]
    if rec.n_frames < policy.clip_len:
        msg = f"{where}: {rec.n_frames} frames, shorter than the {policy.clip_len}-frame window"
        if policy.short_videos == "error":
            problems.append(
                msg + "; remove it from the fold lists, lower data.clip_len, or set data.short_videos=skip"
            )
        else:
            log.warning("%s; skipped (data.short_videos=skip)", msg)
        return None
    if policy.audio and rec.wav is not None and not rec.wav.is_file():
        msg = f"{where}: audio file {rec.wav} does not exist"
        if policy.missing_audio == "error":
            problems.append(msg + "; add it, or set data.missing_audio=silence")
            return None
        rec.notes.append(msg + "; using silence (data.missing_audio=silence)")
    return rec


# --------------------------------------------------------------------------- layouts
FOLDS = (1, 2, 3)


def _row(
    dataset: str,
    name: str,
    fps: float,
    n_listed: int,
    frames: list[Path] | Path | None,
    maps: list[Path],
    fixations: list[Path],
    wav: Path | None,
    folds: dict[int, str],
    where: str,
) -> dict[str, Any]:
    sides = {f"fold{f}": folds.get(f, "") for f in FOLDS}
    return {
        "dataset": dataset,
        "name": name,
        "fps": fps,
        "n_listed": n_listed,
        "frames": frames,
        "maps": maps,
        "fixations": fixations,
        "wav": wav,
        **sides,
        "where": where,
    }


def _stavis_frames(root: Path, db: str, name: str) -> list[Path] | Path | None:
    fdir = root / "video_frames" / db / name
    files = sorted_files(fdir, IMAGE_SUFFIXES)
    if files:
        return files
    videos = [fdir.with_suffix(s) for s in VIDEO_SUFFIXES] + [fdir / f"{name}{s}" for s in VIDEO_SUFFIXES]
    return next((v for v in videos if v.is_file()), None)


@register_reader("stavis", modalities=("av",))
def read_stavis(folder: Path, options: ReadOptions) -> pd.DataFrame:
    """The STAViS release layout (module docstring): every video named by a fold list."""
    root = Path(folder)
    sides: dict[tuple[str, str], dict[int, str]] = {}
    listed: dict[tuple[str, str], tuple[int, float, str]] = {}
    for db in AV_DATASETS:
        for fold in FOLDS:
            for split in ("train", "test"):
                path = fold_list_path(root, db, split, fold)
                if not path.is_file():
                    continue  # a missing list is reported for the datasets a run selects
                for name, n_list, fps in parse_fold_list(path):
                    sides.setdefault((db, name), {})[fold] = split
                    listed.setdefault((db, name), (n_list, fps, str(path.relative_to(root))))
    rows = []
    for (db, name), folds in sides.items():
        n_list, fps, where = listed[(db, name)]
        adir = root / "annotations" / db / name
        rows.append(
            _row(
                db,
                name,
                fps,
                n_list,
                _stavis_frames(root, db, name),
                sorted_files(adir / "maps", IMAGE_SUFFIXES),
                sorted_files(adir, (".mat",)),
                root / "video_audio" / db / name / f"{name}.wav",
                folds,
                where,
            )
        )
    return pd.DataFrame(rows, columns=list(_row("", "", 0, 0, None, [], [], None, {}, "")))


#: DHF1K's frame rate when frames come as images (the videos are 30 fps).
DHF1K_FPS = 30.0


def _dhf1k_frames(root: Path, vid: str) -> list[Path] | Path | None:
    for folder in (root / "video" / vid, root / vid / "images", root / "frames" / vid):
        files = sorted_files(folder, IMAGE_SUFFIXES)
        if files:
            return files
    for name in {vid, f"{int(vid):03d}" if vid.isdigit() else vid}:
        for suffix in VIDEO_SUFFIXES:
            path = root / "video" / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


@register_reader("dhf1k", modalities=("video",))
def read_dhf1k(folder: Path, options: ReadOptions) -> pd.DataFrame:
    """DHF1K (module docstring): ids ≤ 600 train, 601–700 test (the same in every fold), no audio."""
    root = Path(folder)
    ann = root / "annotation"
    if not ann.is_dir():
        raise DataError(f"{root} has no annotation/ folder; is it the DHF1K dataset root?")
    rows = []
    for vdir in sorted(p for p in ann.iterdir() if p.is_dir()):
        vid = vdir.name
        if not vid.isdigit() or int(vid) > 700:
            continue  # ids above 700 are the withheld test set (no ground truth)
        frames = _dhf1k_frames(root, vid)
        # 0 for a video file: video_records reads its own rate, opening it with data.decoder.
        fps = 0.0 if isinstance(frames, Path) else DHF1K_FPS
        fix = sorted_files(vdir / "fixation", IMAGE_SUFFIXES) or sorted_files(
            vdir / "fixation" / "maps", (".mat",)
        )
        side = "train" if int(vid) <= 600 else "test"
        maps = sorted_files(vdir / "maps", IMAGE_SUFFIXES)
        rows.append(
            _row(
                "DHF1K",
                vid,
                fps,
                -1,
                frames,
                maps,
                fix,
                None,
                dict.fromkeys(FOLDS, side),
                f"annotation/{vid}",
            )
        )
    return pd.DataFrame(rows, columns=list(_row("", "", 0, 0, None, [], [], None, {}, "")))


def video_records(
    table: pd.DataFrame, datasets: list[str], fold: int, policy: RecordPolicy, problems: list[str]
) -> dict[str, list[VideoRecord]]:
    """Train/test records of ``datasets`` in ``fold`` from a layout's table, with the policies applied
    (dropped videos are explained in ``problems`` or a warning; kept ones carry ``notes``)."""
    out: dict[str, list[VideoRecord]] = {"train": [], "test": []}
    for row in table.itertuples(index=False):
        side = getattr(row, f"fold{fold}")
        if row.dataset not in datasets or side not in out:
            continue
        if not isinstance(row.frames, (list, Path)):  # None (or NaN, should pandas infer a dtype): not found
            problems.append(
                f"{row.dataset}/{row.name}: no frames found (image files or a video file; "
                f"listed in {row.where})"
            )
            continue
        fps = float(row.fps)
        if isinstance(row.frames, list):
            n_frames = len(row.frames)
        else:
            video = VideoFrames(row.frames, decoder=policy.decoder)
            n_frames, fps = len(video), fps or video.fps or DHF1K_FPS
        rec = VideoRecord(
            row.dataset,
            row.name,
            n_frames,
            fps,
            row.frames,
            list(row.maps),
            list(row.fixations),
            row.wav if isinstance(row.wav, Path) else None,
        )
        rec = finish_record(rec, None if row.n_listed < 0 else int(row.n_listed), policy, problems)
        if rec is not None:
            out[side].append(rec)
    return out
