"""Data of the ``saliency`` task (AVRSP): the six AV eye-tracking datasets and DHF1K.

The on-disk layouts (``data.layout``: ``stavis``, the STAViS release layout, or ``dhf1k``) and the
bad-input policies are read by :mod:`avlab.datamodules.saliency_readers`; this module turns the
video records they return into clips, batches and per-sample metadata.

Sampling. Training: ``clips_per_video`` random clips of ``clip_len`` consecutive frames per
training video and epoch (ViNet's "one random clip per video"), target = the continuous map of the
clip's last frame, resized to ``frame_size``; a target with no fixation is re-drawn (up to 10
times). Validation: ``val_clips_per_video`` evenly spaced clips of held-out training videos
(``val_fraction`` of each dataset's training list; the paper only says "validation loss").
Test: every ``test_stride``-th frame of every test video with the reverse-window rule of
:func:`avlab.media.clips.window_indices`; ground truth at native resolution.

Frames are resized to ``frame_size`` (bilinear, antialiased) and normalised with ``normalize``
(``imagenet`` mean/std as ViNet, or ``pm1``: ``2x − 1`` as kylemin/S3D and TASED). Audio follows
the SoundNet convention (:mod:`avlab.media.clips`).

Bad input is reported by ``avlab data check`` (every case) and by ``setup`` (an error naming the
files): the policies ``short_videos``, ``count_mismatch`` and ``missing_audio`` are documented in
:mod:`avlab.datamodules.saliency_readers`.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from avlab.datamodules.base import AvlabDataModule
from avlab.datamodules.readers import ReadOptions, get_reader
from avlab.datamodules.saliency_readers import (
    AV_DATASETS,
    RecordPolicy,
    VideoRecord,
    check_annotations,
    fold_list_path,
    load_fixation,
    load_map,
    parse_fold_list,
    video_records,
)
from avlab.errors import ConfigError, DataError
from avlab.media.clips import (
    VideoFrames,
    audio_buffer_len,
    clip_audio,
    frame_audio_bounds,
    load_wav,
    read_image,
    window_indices,
)
from avlab.progress import progress

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# parse_fold_list and load_fixation are re-exported: they are part of this task's public data API.
__all__ = [
    "AV_DATASETS",
    "SaliencyClips",
    "SaliencyDataModule",
    "VideoRecord",
    "collate_saliency",
    "load_fixation",
    "load_map",
    "parse_fold_list",
    "preprocess_frames",
]

#: The reader-catalog formats ``data.layout`` may name (registered in saliency_readers).
LAYOUTS = ("stavis", "dhf1k")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- torch datasets
class _FrameSource:
    """Decoded, resized and normalised frames of the videos, with a small LRU cache.

    The cache makes sliding test windows (which share all but one frame) decode each frame once.
    """

    def __init__(
        self, videos: list[VideoRecord], frame_size: tuple[int, int], normalize: str, cache: int = 96
    ) -> None:
        self.videos, self.frame_size, self.normalize = videos, tuple(frame_size), normalize
        self.cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.capacity = cache
        self.readers: dict[int, VideoFrames] = {}

    def raw(self, vid: int, indices: list[int]) -> np.ndarray:
        rec = self.videos[vid]
        if isinstance(rec.frames, Path):
            reader = self.readers.get(vid)
            if reader is None:
                reader = self.readers[vid] = VideoFrames(rec.frames)
            return reader.get(indices)
        return np.stack([read_image(rec.frames[i]) for i in indices])

    def get(self, vid: int, indices: list[int] | tuple[int, ...]) -> torch.Tensor:
        """``[3, T, H, W]`` float clip of the frames ``indices`` (in that order)."""
        missing = sorted({i for i in indices if (vid, i) not in self.cache})
        if missing:
            raw = torch.from_numpy(self.raw(vid, missing))
            frames = preprocess_frames(raw, self.frame_size, self.normalize)
            for i, f in zip(missing, frames):
                self.cache[(vid, i)] = f
        for i in indices:
            self.cache.move_to_end((vid, i))
        out = torch.stack([self.cache[(vid, i)] for i in indices], dim=1)
        while len(self.cache) > max(self.capacity, len(indices)):
            self.cache.popitem(last=False)
        return out


def preprocess_frames(frames: torch.Tensor, frame_size: tuple[int, int], normalize: str) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → float ``[N, 3, h, w]``: bilinear resize (antialiased), normalise."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != tuple(frame_size):
        x = F.interpolate(x, size=tuple(frame_size), mode="bilinear", align_corners=False, antialias=True)
    if normalize == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std
    if normalize == "pm1":
        return x * 2 - 1
    raise ConfigError(f"data.normalize must be imagenet or pm1, got {normalize!r}")


class _AudioSource:
    """Per-video waveforms (loaded once) and SoundNet clip excerpts."""

    def __init__(self, videos: list[VideoRecord], clip_len: int, missing_audio: str) -> None:
        self.videos, self.clip_len, self.missing_audio = videos, clip_len, missing_audio
        self.buffer = audio_buffer_len(clip_len)
        self.loaded: dict[int, tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]] = {}

    def get(self, vid: int, frames: tuple[int, ...] | list[int], reverse: bool) -> torch.Tensor:
        if vid not in self.loaded:
            rec = self.videos[vid]
            if rec.wav is None or not rec.wav.is_file():
                if self.missing_audio == "silence":
                    wav = np.zeros(0, np.float32)
                else:
                    raise DataError(
                        f"{rec.dataset}/{rec.name}: audio file {rec.wav} does not exist; "
                        "add it, or set data.missing_audio=silence to use silence"
                    )
            else:
                wav = load_wav(rec.wav)
            self.loaded[vid] = (wav, frame_audio_bounds(rec.n_frames, rec.fps, len(wav)))
        wav, bounds = self.loaded[vid]
        return torch.from_numpy(clip_audio(wav, bounds, list(frames), self.buffer, reverse=reverse))


class SaliencyClips(Dataset):
    """Clips of a list of videos: random training clips, fixed validation clips, or test windows."""

    def __init__(
        self,
        videos: list[VideoRecord],
        *,
        mode: str,
        clip_len: int,
        frame_size: tuple[int, int],
        normalize: str,
        audio: bool,
        missing_audio: str = "error",
        clips_per_video: int = 1,
        val_clips_per_video: int = 2,
        test_stride: int = 1,
        dataset_ids: dict[str, int] | None = None,
        video_offset: int = 0,
    ) -> None:
        self.videos, self.mode, self.clip_len = videos, mode, clip_len
        self.frame_size = tuple(frame_size)
        self.frames = _FrameSource(videos, self.frame_size, normalize, cache=3 * clip_len)
        self.audio = _AudioSource(videos, clip_len, missing_audio) if audio else None
        self.clips_per_video = clips_per_video
        self.dataset_ids = dataset_ids or {}
        self.video_offset = video_offset
        self.items: list[tuple[int, int]] = []  # (video, start or target)
        if mode == "val":
            for v, rec in enumerate(videos):
                last = rec.n_frames - clip_len
                for s in np.unique(np.linspace(0, last, max(1, val_clips_per_video)).round().astype(int)):
                    self.items.append((v, int(s)))
        elif mode == "test":
            for v, rec in enumerate(videos):
                for t in range(0, rec.n_frames, max(1, test_stride)):
                    self.items.append((v, t))
        elif mode != "train":
            raise ValueError(f"mode must be train, val or test, got {mode}")
        self._windows: dict[int, list] = {}

    def __len__(self) -> int:
        return len(self.videos) * self.clips_per_video if self.mode == "train" else len(self.items)

    def _target(self, vid: int, t: int) -> torch.Tensor:
        gt = torch.from_numpy(load_map(self.videos[vid].maps[t]))[None, None]
        if tuple(gt.shape[-2:]) != self.frame_size:
            gt = F.interpolate(gt, size=self.frame_size, mode="bilinear", align_corners=False, antialias=True)
        return gt[0, 0].clamp_min(0)

    def _clip(self, vid: int, frames: tuple[int, ...], reverse: bool) -> dict[str, torch.Tensor]:
        out = {"clip": self.frames.get(vid, frames)}
        if self.audio is not None:
            out["audio"] = self.audio.get(vid, frames, reverse)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.mode == "train":
            vid = i // self.clips_per_video
            rec = self.videos[vid]
            # torch's global generator: seeded by seed_everything (and per worker), so runs repeat.
            for _ in range(10):
                start = int(torch.randint(0, rec.n_frames - self.clip_len + 1, (1,)))
                target = self._target(vid, start + self.clip_len - 1)
                if float(target.max()) > 0:  # a target with no fixation teaches nothing: re-draw
                    break
            out = self._clip(vid, tuple(range(start, start + self.clip_len)), False)
            out.update(target=target, index=torch.tensor(i))
            return out
        vid, pos = self.items[i]
        rec = self.videos[vid]
        if self.mode == "val":
            out = self._clip(vid, tuple(range(pos, pos + self.clip_len)), False)
            out.update(target=self._target(vid, pos + self.clip_len - 1), index=torch.tensor(i))
            return out
        if vid not in self._windows:
            self._windows[vid] = window_indices(rec.n_frames, self.clip_len)
        w = self._windows[vid][pos]
        out = self._clip(vid, w.frames, w.reversed)
        gt = load_map(rec.maps[pos])
        out.update(
            target=self._target(vid, pos),
            gt=torch.from_numpy(gt),
            fix=torch.from_numpy(load_fixation(rec.fixations[pos], gt.shape)),
            index=torch.tensor(i),
            video=torch.tensor(self.video_offset + vid),
            dataset=torch.tensor(self.dataset_ids.get(rec.dataset, 0)),
            frame=torch.tensor(pos),
        )
        return out


def collate_saliency(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-shaped tensors; native-resolution ``gt``/``fix`` (sizes differ per video) stay lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = values if key in ("gt", "fix") else torch.stack(values)
    return out


# --------------------------------------------------------------------------- datamodule
#: From this many fixation files on, ``check`` opens them in several processes; below it the
#: process start-up costs more than the files (the tiny demo has a few hundred).
CHECK_PARALLEL_MIN_FILES = 2000


def _check_videos(videos: list[VideoRecord]) -> list[list[str]]:
    """:func:`check_annotations` of every video, in order, with progress (:mod:`avlab.progress`)."""
    workers = min(os.cpu_count() or 1, 8, len(videos))
    if workers < 2 or sum(len(r.fixations) for r in videos) < CHECK_PARALLEL_MIN_FILES:
        return [check_annotations(r) for r in progress(videos, desc="checking fixations", unit="video")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check_annotations, videos)
        return list(progress(results, total=len(videos), desc="checking fixations", unit="video"))


class SaliencyDataModule(AvlabDataModule):
    """STAViS AV datasets (``layout=stavis``) or DHF1K (``layout=dhf1k``) → clips for AVRSP.

    Args:
        root: dataset folder (see the module docstring); unset ⇒ the demo data (its ``stavis/`` or
            ``DHF1K/`` part).
        layout: ``stavis`` or ``dhf1k``.
        datasets: STAViS datasets to use (default all six).
        fold: STAViS fold 1–3 (DIEM's fixed split is used in every fold). ``cv.folds=3`` runs all three.
        clip_len: frames per clip (paper: 32).
        frame_size: ``[height, width]`` of the model input (paper: 224×384).
        audio: load audio clips (off for visual-only models, which saves the WAV reads).
        normalize: ``imagenet`` or ``pm1``.
        clips_per_video: random training clips per video and epoch.
        val_fraction: share of each dataset's training videos held out for validation.
        val_clips_per_video: evenly spaced validation clips per held-out video.
        test_stride: evaluate every k-th frame (1 = every frame, the paper's protocol).
        short_videos, count_mismatch, missing_audio: policies for bad input (module docstring).
        split_seed: seed of the validation hold-out.
    """

    task = "saliency"
    supported_protocols = ("fold",)

    def __init__(
        self,
        root: str | None = None,
        layout: str = "stavis",
        datasets: list[str] | None = None,
        fold: int = 1,
        clip_len: int = 32,
        frame_size: list[int] | tuple[int, int] = (224, 384),
        audio: bool = True,
        normalize: str = "imagenet",
        clips_per_video: int = 1,
        val_fraction: float = 0.2,
        val_clips_per_video: int = 2,
        test_stride: int = 1,
        short_videos: str = "error",
        count_mismatch: str = "truncate",
        missing_audio: str = "error",
        split_seed: int = 0,
        demo_size: str = "small",
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__(root=root, demo_size=demo_size, batch_size=batch_size, num_workers=num_workers)
        get_reader(layout, where="data.layout", allowed=LAYOUTS)  # an unknown layout fails here
        self.layout = layout
        self.datasets = list(datasets) if datasets else list(AV_DATASETS)
        unknown = [d for d in self.datasets if d not in AV_DATASETS]
        if unknown and layout == "stavis":
            from avlab.errors import did_you_mean

            hint = did_you_mean(unknown[0], AV_DATASETS)
            raise ConfigError(
                f"data.datasets: unknown dataset {unknown[0]!r}.{hint} Known: {', '.join(AV_DATASETS)}"
            )
        if fold not in (1, 2, 3):
            raise ConfigError(f"data.fold must be 1, 2 or 3 (the STAViS folds), got {fold}")
        for name, value, allowed in (
            ("short_videos", short_videos, ("error", "skip")),
            ("count_mismatch", count_mismatch, ("truncate", "error")),
            ("missing_audio", missing_audio, ("error", "silence")),
            ("normalize", normalize, ("imagenet", "pm1")),
        ):
            if value not in allowed:
                raise ConfigError(f"data.{name} must be one of {', '.join(allowed)}, got {value!r}")
        if clip_len < 1:
            raise ConfigError(f"data.clip_len must be ≥ 1, got {clip_len}")
        self.fold, self.clip_len = fold, int(clip_len)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.audio, self.normalize = bool(audio), normalize
        self.clips_per_video, self.val_fraction = int(clips_per_video), float(val_fraction)
        self.val_clips_per_video, self.test_stride = int(val_clips_per_video), int(test_stride)
        self.short_videos, self.count_mismatch = short_videos, count_mismatch
        self.missing_audio = missing_audio
        self.split_seed = split_seed
        self.splits: dict[str, list[VideoRecord]] = {}
        self.dataset_names: list[str] = list(self.datasets) if layout == "stavis" else ["DHF1K"]

    # ------------------------------------------------------------------ folders
    @staticmethod
    def build_demo(out_dir: Path, size: str = "small") -> Path:
        from avlab.demo.saliency import build_saliency_demo

        return build_saliency_demo(Path(out_dir), size=size)

    def dataset_root(self, *, build: bool = False) -> Path:
        root = super().dataset_root(build=build)
        if self.uses_demo:
            return root / ("stavis" if self.layout == "stavis" else "DHF1K")
        return root

    def configure_split(self, kind: str | None, index: int = 0, count: int = 1) -> None:
        super().configure_split(kind, index, count)
        if kind == "fold":
            if self.layout != "stavis" or count != 3:
                raise ConfigError(
                    "cv.folds for saliency must be 3 (the STAViS folds) with data.layout=stavis"
                )
            self.fold = index + 1

    def policy(self) -> RecordPolicy:
        return RecordPolicy(
            self.clip_len,
            self.short_videos,
            self.count_mismatch,
            self.audio and self.layout == "stavis",
            self.missing_audio,
        )

    def index(self) -> tuple[dict[str, list[VideoRecord]], list[str]]:
        """Train/test video records and every problem found (no exception)."""
        root = self.dataset_root(build=self.uses_demo)
        empty: dict[str, list[VideoRecord]] = {"train": [], "test": []}
        if not root.is_dir():
            return empty, [f"dataset folder {root} does not exist"]
        problems: list[str] = []
        try:
            reader = get_reader(self.layout, where="data.layout", allowed=LAYOUTS)
            table = reader.read(root, ReadOptions(self.layout))
        except DataError as exc:
            return empty, [str(exc)]
        if self.layout == "stavis":
            for db in self.datasets:
                for split in ("train", "test"):
                    path = fold_list_path(root, db, split, self.fold)
                    if not path.is_file():
                        problems.append(f"fold list {path} does not exist")
        return video_records(table, self.dataset_names, self.fold, self.policy(), problems), problems

    def _hold_out(self, train: list[VideoRecord]) -> tuple[list[VideoRecord], list[VideoRecord]]:
        rng = np.random.default_rng(self.split_seed)
        keep, val = [], []
        for db in dict.fromkeys(r.dataset for r in train):
            recs = [r for r in train if r.dataset == db]
            n_val = round(self.val_fraction * len(recs))
            n_val = min(max(n_val, 1 if self.val_fraction > 0 else 0), len(recs) - 1)
            chosen = set(rng.permutation(len(recs))[:n_val].tolist())
            for i, r in enumerate(recs):
                (val if i in chosen else keep).append(r)
        return keep, val

    # ------------------------------------------------------------------ lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        found, problems = self.index()
        if problems:
            listed = "\n  - ".join(problems[:15])
            raise DataError(
                f"{self.dataset_root()} has {len(problems)} problem(s) "
                f"(run `avlab data check` for all):\n  - {listed}"
            )
        for rec in found["train"] + found["test"]:
            for note in rec.notes:
                log.warning(note)
        if not found["train"] or not found["test"]:
            which = "training" if not found["train"] else "test"
            raise DataError(
                f"{self.dataset_root()}: no {which} videos for "
                f"fold {self.fold} of {', '.join(self.dataset_names)}"
            )
        train, val = self._hold_out(found["train"])
        if not val:
            log.warning("no training video can be held out for validation; validating on training videos")
            val = train
        self.splits = {"train": train, "val": val, "test": found["test"]}

    def _dataset(self, split: str) -> SaliencyClips:
        if not self.splits:
            self.setup()
        mode = {"train": "train", "val": "val", "test": "test"}[split]
        return SaliencyClips(
            self.splits[split],
            mode=mode,
            clip_len=self.clip_len,
            frame_size=self.frame_size,
            normalize=self.normalize,
            audio=self.audio,
            missing_audio=self.missing_audio,
            clips_per_video=self.clips_per_video,
            val_clips_per_video=self.val_clips_per_video,
            test_stride=self.test_stride,
            dataset_ids={d: i for i, d in enumerate(self.dataset_names)},
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_saliency,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def sample_table(self, split: str) -> pd.DataFrame:
        """One row per sample of ``split``, indexed by the ``index`` its batches carry.

        Columns: ``video`` (the id batches carry: position in the split's video list), ``dataset``
        (name), ``dataset_id`` (the id batches carry), ``name`` (video name), and ``frame``: the
        target frame of a test or validation sample, −1 for training samples (drawn at random).
        """
        import pandas as pd

        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        if not self.splits:
            self.setup()
        ids = {d: i for i, d in enumerate(self.dataset_names)}
        videos = self.splits[split]
        if split == "train":
            rows = [(v, -1) for v in range(len(videos)) for _ in range(self.clips_per_video)]
        else:
            ds = self._dataset(split)
            # validation items hold the clip's first frame; its target is the last one
            shift = self.clip_len - 1 if split == "val" else 0
            rows = [(v, pos + shift) for v, pos in ds.items]
        return pd.DataFrame(
            {
                "video": [v for v, _ in rows],
                "dataset": [videos[v].dataset for v, _ in rows],
                "dataset_id": [ids.get(videos[v].dataset, 0) for v, _ in rows],
                "name": [videos[v].name for v, _ in rows],
                "frame": [f for _, f in rows],
            }
        ).rename_axis("index")

    # ------------------------------------------------------------------ predict helpers
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, H, W, 3]`` → model input frames ``[N, 3, h, w]``."""
        return preprocess_frames(frames, self.frame_size, self.normalize)

    # ------------------------------------------------------------------ checks
    def check(self) -> list[str]:
        """Every problem found: layout and fold lists, counts, each fixation file, the audio.

        Every fixation file is opened (variable ``eyeMap``/``I``, shape of its saliency map), as
        the test stage would, so a bad one is reported here rather than after training. Videos
        are checked by several processes when there are many fixation files.
        """
        found, problems = self.index()
        videos = found["train"] + found["test"]
        for rec, lines in zip(videos, _check_videos(videos), strict=True):
            problems.extend(rec.notes)
            problems.extend(lines)
            where = f"{rec.dataset}/{rec.name}"
            if self.audio and self.layout == "stavis" and rec.wav is not None and rec.wav.is_file():
                try:
                    import soundfile as sf

                    info = sf.info(str(rec.wav))
                    if info.duration + 1.0 / rec.fps < rec.n_frames / rec.fps * 0.9:
                        problems.append(
                            f"{where}: {rec.wav.name} lasts {info.duration:.2f} s but the video "
                            f"{rec.n_frames / rec.fps:.2f} s; missing audio is silence"
                        )
                except Exception as exc:  # noqa: BLE001 - any unreadable WAV is a problem to report
                    problems.append(f"{where}: {rec.wav} cannot be read ({exc})")
        return problems

    def describe(self) -> dict[str, Any]:
        found, _ = self.index()
        return {
            "root": str(self.dataset_root()),
            "layout": self.layout,
            "fold": self.fold,
            "train videos": len(found["train"]),
            "test videos": len(found["test"]),
            "datasets": ", ".join(self.dataset_names),
        }
