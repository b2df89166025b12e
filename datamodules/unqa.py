"""Data of the ``unqa`` task: several quality databases of four modalities, trained jointly.

``data.databases`` is a mapping ``{name: {format, path, modality, mos_range, role}}``; each entry is
one database in its native score-file format (:mod:`avlab.datamodules.unqa_readers`). Adding or
dropping a database is a config edit (``data.databases.NAME=null`` drops one).

Splits (paper §V-A): each training database is split at random 7:1:2 into train/val/test by content
group (LIVE-SJTU by source clip); ``splits.repeats=N`` draws N such splits (seed
``[split_seed, i]``). A ``role: test`` database is never trained on and fully tested
(cross-database evaluation, Table XII).

Training batches come from one database at a time, in the order drawn by
:class:`avlab.callbacks.task_sampling.WeightedTaskSampling` (adaptive weighted task sampling); the
training set is an ``IterableDataset`` of ready batches so Lightning never injects a
``DistributedSampler`` (each rank already gets its own rank-strided items). Validation and test
have one loader per database, and metrics are computed per database on predictions gathered from
every rank.

Media preprocessing (paper §V-A, scaled by config): images and video frames are resized so their
short side is ``resize_short`` and centre-cropped to ``image_size`` (paper 520 → 384); videos give
``frames`` frames to the spatial extractor and ``motion_chunks`` clips of ``motion_frames`` frames at
``motion_size`` (paper 224) to the frozen SlowFast; audio is mono at ``audio_sr`` Hz, the first
``audio_seconds`` seconds (zero-padded).

Decoded stimuli (``data.frame_cache: auto``) are kept on disk once, as the uint8 frames the spatial
extractor reads and the float32 audio, in the memory-mapped store of
:mod:`avlab.features.frame_cache` (one entry per stimulus and view, keyed by the source file's
content, the preprocessing and the decoder); training and testing then read batches from it. Random
training crops are still drawn per step, from the whole native image kept for that purpose.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from avlab.datamodules.base import AvlabDataModule, DatasetInfo, SupportsTaskSampling
from avlab.datamodules.unqa_media import MediaLoader, detect_modality
from avlab.datamodules.unqa_readers import DatabaseSpec, parse_databases, read_database
from avlab.datamodules.unqa_splits import assign_splits, split_groups
from avlab.errors import ConfigError, DataError, MediaError
from avlab.features.cache import cached, dataset_feature_cache, file_fingerprint
from avlab.features.frame_cache import FrameStore, frame_cache_root, frame_key
from avlab.models.unqa import MotionExtractor
from avlab.progress import progress as progress_iter
from avlab.progress import progress as with_progress

log = logging.getLogger(__name__)

__all__ = ["MediaLoader", "UNQADataModule", "detect_modality"]

#: Version of the cached SlowFast features (bump when the extraction changes).
MOTION_CACHE_VERSION = "1"
#: ``data.frame_cache``: ``auto`` stores decoded stimuli on first use (or ``avlab features``) and
#: reads them from the store; ``off`` decodes every stimulus every time.
FRAME_CACHE_MODES = ("auto", "off")


def _to_uint8(x: Tensor) -> np.ndarray:
    """Float pixels in [0, 1] → uint8 ``round(255 x)`` (exact for pixels that were decoded as uint8)."""
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


# --------------------------------------------------------------------------- datasets
class _Items(Dataset):
    """Map-style view of some stimuli (by global id); used for validation and testing."""

    def __init__(self, dm: UNQADataModule, uids: np.ndarray) -> None:
        self.dm, self.uids = dm, np.asarray(uids, dtype=int)

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dm.load_item(int(self.uids[i]))

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        # The DataLoader hands a batch's indices here and passes the result to its collate_fn
        # (UNQADataModule._collate_list), which lets a ready batch through: one batched read.
        return self.dm.load_batch(self.uids[np.asarray(indices, dtype=int)])


class _PlannedBatches(IterableDataset):
    """Yields the collated batches of the current epoch plan (one database per batch)."""

    def __init__(self, dm: UNQADataModule) -> None:
        self.dm = dm

    def __len__(self) -> int:
        return self.dm.steps_per_epoch()

    def __iter__(self):
        plan = self.dm.current_plan()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        # Worker w decodes steps w, w + nw, ...; the DataLoader interleaves workers round-robin,
        # so batches still come out in plan order.
        for step in range(wid, len(plan), nw):
            _, uids = plan[step]
            epoch = self.dm.trainer.current_epoch if self.dm.trainer is not None else 0
            yield self.dm.load_batch(uids, augment=(epoch, step))


# --------------------------------------------------------------------------- datamodule
class UNQADataModule(AvlabDataModule, SupportsTaskSampling):
    """Joint audio/image/video/AV quality databases (UNQA).

    Args:
        root: folder holding the database folders; unset ⇒ the demo databases.
        databases: ``{name: {format, path, modality, mos_range, role}}`` (see module docstring);
            ``None`` = the demo databases.
        split_ratios: train/val/test fractions per database (paper 7:1:2).
        split_seed: base seed of the random splits.
        image_size, resize_short, frames, motion_frames, motion_size, motion_chunks, audio_sr,
            audio_seconds: preprocessing (see module docstring).
        motion: the frozen :class:`~avlab.models.unqa.MotionExtractor` (eq. 7) whose features the
            batches carry under ``motion`` (``None``: no motion features, the "w/o motion" ablation).
        motion_batch: clips per SlowFast forward when extracting.
        spatial_sampling: ``resize`` (paper), ``native`` or ``fragments`` (see :meth:`MediaLoader.spatial`);
            fragment_grid: cells per side for ``fragments``. image_crops: native crops per image
            (a square number; their spatial features are averaged, as a video's frames are).
            train_crops: ``centre`` (training images are cropped as at test) or ``random`` (with
            ``spatial_sampling: native``, each training draw of an image takes its native crops at
            random positions, seeded by split seed, stimulus, epoch and step, so a resumed run
            draws the same crops; validation and test keep the fixed crops).
        logistic: ``"4"``/``"5"`` also reports PLCC after a logistic fit (``plcc_logistic``);
            ``None`` reports raw PLCC only.
        frame_cache: ``auto`` (decoded frames and audio are stored once on disk, built by ``avlab
            features`` or on first use, and read memory-mapped) or ``off`` (decode every time).
        cache_decoded: deprecated, replaced by ``frame_cache`` (``true`` reads as ``auto``,
            ``false`` as ``off``).
        dataset_name: prefix for cross-dataset test metrics (``test_data``).
        decoder: video decoder: ``auto``, ``decord``, ``torchcodec`` or ``pyav`` (avlab.media.decoders).
    """

    task = "unqa"
    supported_protocols = ("repeat",)

    def __init__(
        self,
        root: str | None = None,
        databases: dict[str, Any] | None = None,
        split_ratios: list[float] | tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        image_size: int = 64,
        resize_short: int | None = None,
        frames: int = 4,
        motion_frames: int = 8,
        motion_size: int = 64,
        motion_chunks: int = 1,
        audio_sr: int = 16000,
        audio_seconds: float = 2.0,
        spatial_sampling: str = "resize",
        fragment_grid: int = 4,
        image_crops: int = 1,
        train_crops: str = "centre",
        logistic: str | None = "4",
        frame_cache: str | bool = "auto",
        cache_decoded: bool | None = None,
        dataset_name: str | None = None,
        demo_size: str = "small",
        batch_size: int = 8,
        num_workers: int | str = 0,
        motion: MotionExtractor | None = None,
        motion_batch: int = 4,
        decoder: str = "auto",
    ) -> None:
        super().__init__(root=root, demo_size=demo_size, batch_size=batch_size, num_workers=num_workers)
        if databases is None:
            from avlab.demo.unqa import DEMO_DATABASES

            databases = DEMO_DATABASES
        self.specs: list[DatabaseSpec] = parse_databases(databases)
        ratios = [float(r) for r in split_ratios]
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise DataError(
                "data.split_ratios must be three fractions summing to 1 (train, val, test), "
                f"got {list(split_ratios)}"
            )
        if batch_size < 2:
            raise DataError("data.batch_size must be >= 2: the rank losses compare items within a batch")
        self.split_ratios = ratios
        self.split_seed = int(split_seed)
        self.media = MediaLoader(
            image_size,
            resize_short,
            frames,
            motion_frames,
            motion_size,
            motion_chunks,
            audio_sr,
            audio_seconds,
            spatial_sampling=spatial_sampling,
            fragment_grid=fragment_grid,
            image_crops=image_crops,
            decoder=decoder,
        )
        self.logistic = logistic
        if cache_decoded is not None:
            frame_cache = "auto" if cache_decoded else "off"
            warnings.warn(
                f"data.cache_decoded is replaced by data.frame_cache (auto|off), which keeps decoded "
                f"stimuli on disk; reading cache_decoded: {cache_decoded} as frame_cache: {frame_cache}. "
                "Remove data.cache_decoded from the config.",
                DeprecationWarning,
                stacklevel=2,
            )
        if isinstance(frame_cache, bool):  # YAML 1.1 reads an unquoted `off` as false
            frame_cache = "auto" if frame_cache else "off"
        if frame_cache not in FRAME_CACHE_MODES:
            raise ConfigError(
                f"data.frame_cache must be one of {', '.join(FRAME_CACHE_MODES)}, got {frame_cache!r}"
            )
        self.frame_cache = frame_cache
        self._store: FrameStore | None = None
        # (uid, view) -> ((size, mtime_ns) of its source, .npy path) of entries seen complete in this
        # process: a hit then costs a stat and a memory map, no hashing and no meta.json.
        self._complete: dict[tuple[int, str], tuple[tuple[int, int], Path]] = {}
        self._labels: dict[str, Any] | None = None
        if train_crops not in ("centre", "random") or (
            train_crops == "random" and spatial_sampling != "native"
        ):
            raise DataError(
                f"data.train_crops must be centre or random (random needs spatial_sampling: "
                f"native), got {train_crops!r} with {spatial_sampling!r}"
            )
        self.train_crops = train_crops
        self.dataset_name = dataset_name
        self.table: pd.DataFrame | None = None
        self.parts: dict[str, dict[int, np.ndarray]] = {}
        #: database name -> why its split differs from the group split (fewer than 3 groups)
        self.split_notes: dict[str, str] = {}
        self._check_table: pd.DataFrame | None = None  # what check() read, for describe()
        # The frozen SlowFast of eq. 7 (the config passes ${model.net.motion}); its features are data:
        # computed once per stimulus, cached under the dataset with provenance, served in batches.
        self.motion_extractor = motion
        self.motion_batch = max(1, int(motion_batch))
        self.motion: np.ndarray | None = None
        self.task_sampler: Any = None
        self._plan: list[tuple[int, np.ndarray]] | None = None

    @staticmethod
    def build_demo(out_dir: Path, size: str = "small") -> Path:
        from avlab.demo.unqa import build_unqa_demo

        return build_unqa_demo(Path(out_dir), size=size)

    # ------------------------------------------------------------------ names
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def modalities(self) -> list[str]:
        return [s.modality for s in self.specs]

    def database_modalities(self, role: str | None = "train") -> dict[str, str]:
        return {s.name: s.modality for s in self.specs if role is None or s.role == role}

    # ------------------------------------------------------------------ reading
    def read_all(self) -> tuple[pd.DataFrame, list[str]]:
        root = self.dataset_root(build=False)
        frames, problems = [], []
        for d, spec in enumerate(self.specs):
            table, probs = read_database(spec, root)
            problems.extend(probs)
            if len(table):
                table = table.assign(
                    db=d,
                    db_name=spec.name,
                    modality=spec.modality,
                    mos_lo=spec.mos_range[0],
                    mos_hi=spec.mos_range[1],
                )
                frames.append(table)
            elif not probs:
                problems.append(f"database `{spec.name}`: its score file lists no stimuli")
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return table, problems

    def setup(self, stage: str | None = None) -> None:
        self._read_table()
        if self.frame_cache == "auto":
            # Every entry is resolved here (built if missing): DataLoader workers, forked later and
            # anew each epoch, inherit the resolved paths instead of re-hashing every source.
            self._build_frame_cache(progress=False)
        if self.motion is None and self.motion_extractor is not None:
            self.motion, _ = self._motion_features()
        self._make_splits()

    def _make_splits(self) -> None:
        index = self.split_index if self.split_kind == "repeat" else 0
        parts: dict[str, dict[int, np.ndarray]] = {"train": {}, "val": {}, "test": {}}
        self.split_notes = {}
        for d, spec in enumerate(self.specs):
            rows = self.table[self.table["db"] == d]
            uids = rows["uid"].to_numpy()
            if spec.role == "test":
                parts["test"][d] = uids
                continue
            groups, note = split_groups(
                spec.name, rows["group"].astype(str).to_numpy(), rows["media"].astype(str).to_numpy()
            )
            if note:
                warnings.warn(note, UserWarning, stacklevel=2)
                self.split_notes[spec.name] = note
            which = assign_splits(
                groups, self.split_ratios, np.random.default_rng([self.split_seed, index, d])
            )
            for part in ("train", "val", "test"):
                parts[part][d] = uids[which == part]
        self.parts = parts

    # ------------------------------------------------------------------ items
    def row(self, uid: int) -> pd.Series:
        return self.table.iloc[uid]

    def _yuv(self, row: pd.Series) -> tuple[int, int] | None:
        if str(row["media"]).lower().endswith(".yuv"):
            return int(row["width"]), int(row["height"])
        return None

    def load_item(self, uid: int, augment: tuple[int, int] | None = None) -> dict[str, Any]:
        """One stimulus ready for batching; ``augment`` = (epoch, step) of a training draw, which
        takes random image crops with ``train_crops: random``."""
        if self.frame_cache == "auto":
            return self._stored_item(uid, augment)
        if augment is not None and self.train_crops == "random" and self.row(uid)["modality"] == "image":
            return self._random_crops(uid, augment)
        r = self.row(uid)
        item = self._label_item(uid)
        try:
            if r["modality"] == "image":
                item["frames"] = self.media.image(r["media"])
            elif r["modality"] in ("video", "av"):
                item["frames"] = self.media.video_frames(r["media"], self._yuv(r))
            if r["modality"] in ("audio", "av"):
                src = r["audio"] if isinstance(r["audio"], str) and r["audio"] else r["media"]
                item["wave"], item["wave_len"], item["has_audio"] = self.media.audio(src)
        except MediaError as exc:
            raise MediaError(f"database `{r['db_name']}` ({r['where']}): {exc}") from exc
        return item

    def _random_crops(self, uid: int, augment: tuple[int, int]) -> dict[str, Any]:
        item = self.load_item(uid)
        full = self.media.decode_image(self.row(uid)["media"])
        rng = np.random.default_rng([self.split_seed, uid, *augment])
        item["frames"] = torch.cat([self.media.random_crop(full, rng) for _ in range(self.media.image_crops)])
        return item

    def load_batch(self, uids: Any, augment: tuple[int, int] | None = None) -> dict[str, Any]:
        """The collated batch of ``uids`` (one database); equal to ``collate`` of their items.

        With ``frame_cache: auto`` the batch is read from the store at once: labels from arrays,
        the stored uint8 frames stacked and converted to float in one step."""
        uids = [int(u) for u in uids]
        if self.frame_cache == "off":
            return self.collate([self.load_item(u, augment) for u in uids])
        lab = self._label_arrays()
        self._check_one_database(lab["database"][uids].tolist())
        modality = lab["modality"][uids[0]]
        out: dict[str, Any] = {
            "index": torch.tensor(uids),
            "db": torch.from_numpy(lab["db"][uids]),
            "database": lab["database"][uids[0]],
            "mos": torch.from_numpy(lab["mos"][uids].astype(np.float32)),
            "mos_norm": torch.from_numpy(lab["mos_norm"][uids].astype(np.float32)),
            "modality": modality,
        }
        if modality in ("image", "video", "av"):
            frames = np.stack([self._stored_frames(u, augment) for u in uids])
            out["frames"] = torch.from_numpy(frames).float().div_(255.0)
        if modality in ("audio", "av"):
            waves = [self._stored(u, "wave")[0] for u in uids]
            wave = np.zeros((len(uids), self.media.audio_len), dtype=np.float32)
            for i, w in enumerate(waves):
                wave[i, : len(w)] = w
            out["wave"] = torch.from_numpy(wave)
            out["wave_len"] = torch.tensor([len(w) for w in waves])
            out["has_audio"] = torch.tensor([len(w) > 0 for w in waves])
        return self._add_motion(out)

    @staticmethod
    def _check_one_database(names: list[str]) -> None:
        if len(set(names)) != 1:
            raise DataError(
                "a unqa batch must hold stimuli of one database (the heads and losses are per database)"
            )

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack items of one database into a batch; adds cached motion features when available."""
        self._check_one_database([it["database"] for it in items])
        out: dict[str, Any] = {
            "index": torch.tensor([it["index"] for it in items]),
            "db": torch.tensor([it["db"] for it in items]),
            "database": items[0]["database"],
            "mos": torch.tensor([it["mos"] for it in items], dtype=torch.float32),
            "mos_norm": torch.tensor([it["mos_norm"] for it in items], dtype=torch.float32),
            "modality": items[0]["modality"],
        }
        if "frames" in items[0]:
            out["frames"] = torch.stack([it["frames"] for it in items])
        if "wave" in items[0]:
            out["wave"] = torch.stack([it["wave"] for it in items])
            out["wave_len"] = torch.tensor([it["wave_len"] for it in items])
            out["has_audio"] = torch.tensor([bool(it["has_audio"]) for it in items])
        return self._add_motion(out)

    def _add_motion(self, out: dict[str, Any]) -> dict[str, Any]:
        if self.motion is not None and out["modality"] in ("video", "av"):
            out["motion"] = torch.from_numpy(self.motion[out["index"].numpy()])
        return out

    def _collate_list(self, items: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
        # _Items.__getitems__ already returns the collated batch.
        return items if isinstance(items, dict) else self.collate(items)

    # ------------------------------------------------------------------ the decoded-stimulus store
    def _label_arrays(self) -> dict[str, Any]:
        """Per-stimulus labels and sources as arrays, so reading a cached batch touches no pandas row."""
        if self._labels is None:
            t = self._read_table()
            media = t["media"].astype(str)
            audio = t["audio"] if "audio" in t else pd.Series([None] * len(t))
            yuv = [
                (int(w), int(h)) if m.lower().endswith(".yuv") else None
                for m, w, h in zip(media, t["width"], t["height"], strict=True)
            ]
            self._labels = {
                "db": t["db"].to_numpy(dtype=np.int64),
                "database": t["db_name"].to_numpy(dtype=object),
                "mos": t["mos"].to_numpy(dtype=np.float64),
                "mos_norm": t["mos_norm"].to_numpy(dtype=np.float64),
                "modality": t["modality"].to_numpy(dtype=object),
                "where": t["where"].astype(str).to_numpy(dtype=object),
                "media": media.to_numpy(dtype=object),
                "audio_src": np.array(
                    [a if isinstance(a, str) and a else m for a, m in zip(audio, media, strict=True)],
                    dtype=object,
                ),
                "yuv": yuv,
            }
        return self._labels

    def _label_item(self, uid: int) -> dict[str, Any]:
        lab = self._label_arrays()
        return {
            "index": uid,
            "db": int(lab["db"][uid]),
            "database": lab["database"][uid],
            "mos": float(lab["mos"][uid]),
            "mos_norm": float(lab["mos_norm"][uid]),
            "modality": lab["modality"][uid],
        }

    def _frame_store(self) -> FrameStore:
        if self._store is None:
            self._store = FrameStore(frame_cache_root(self.dataset_root()))
        return self._store

    def _views(self, uid: int) -> list[str]:
        """What the store keeps of a stimulus: ``frames`` (the spatial extractor's input), ``pixels``
        (the whole image, for random training crops) and ``wave`` (audio, unpadded)."""
        modality = self._label_arrays()["modality"][uid]
        views = [] if modality == "audio" else ["frames"]
        if modality == "image" and self.train_crops == "random":
            views.append("pixels")
        if modality in ("audio", "av"):
            views.append("wave")
        return views

    def _stored(self, uid: int, view: str) -> tuple[np.ndarray, bool]:
        """``(array, built)`` of one view of one stimulus, decoding and storing it when missing.

        Pixels are stored as uint8, i.e. ``round(255 x)`` of the float frames: exact where nothing is
        resampled (native crops and fragments of images at least the crop size), within 0.5/255 per
        pixel after resizing (``resize`` sampling, and images smaller than the crop)."""
        lab, m = self._label_arrays(), self.media
        media = lab["media"][uid]
        source = lab["audio_src"][uid] if view == "wave" else media
        seen = self._complete.get((uid, view))
        if seen is not None:
            try:
                st = os.stat(source)
                # The same unchanged-file test file_fingerprint uses before trusting its memo.
                if seen[0] == (st.st_size, st.st_mtime_ns):
                    return np.load(seen[1], mmap_mode="r", allow_pickle=False), False
            except (OSError, ValueError):  # source or entry gone or damaged: the checked path below
                pass
            del self._complete[(uid, view)]
        params: dict[str, Any]
        compute: Any
        if view == "wave":
            params = {"sr": m.audio_sr, "samples": m.audio_len, "decoder": "soundfile+librosa|ffmpeg"}

            def compute() -> np.ndarray:
                wave, n, _ = m.audio(source)
                return wave[:n].numpy()

        elif view == "pixels":
            params = {"decoder": "pil-rgb"}

            def compute() -> np.ndarray:
                return _to_uint8(m.decode_image(media))

        else:
            params = {
                "sampling": m.spatial_sampling,
                "size": m.image_size,
                "resize_short": m.resize_short,
                "grid": m.fragment_grid,
                "crops": m.image_crops,
            }
            if lab["modality"][uid] == "image":
                params["decoder"] = "pil-rgb"

                def compute() -> np.ndarray:
                    return _to_uint8(m.image(media))

            else:
                yuv = lab["yuv"][uid]
                params.update(
                    frames=m.frames,
                    decoder="yuv420p-bt601" if yuv else m.decoder,
                    yuv=list(yuv) if yuv else None,
                )

                def compute() -> np.ndarray:
                    return _to_uint8(m.video_frames(media, yuv))

        # Keyed by the source's content (size + SHA-1, re-hashed only when its stat changes), like
        # the motion features of the same files: a rewritten source is decoded again, never stale.
        fp = file_fingerprint(source)
        key = frame_key(f"unqa-{view}", params, {"size": fp["size"], "sha1": fp["sha1"]})
        store = self._frame_store()
        entry, built = store.open(key), False
        if entry is None:
            try:
                array = compute()
            except MediaError as exc:
                raise MediaError(f"database `{lab['database'][uid]}` ({lab['where'][uid]}): {exc}") from exc

            def fill(out: dict[str, np.ndarray]) -> None:
                out[view][...] = array

            try:
                entry = store.build(
                    key,
                    {view: (array.shape, array.dtype.str)},
                    fill,
                    {"kind": f"unqa-{view}", "params": params, "sources": [fp]},
                )
            except PermissionError as exc:
                raise DataError(
                    f"cannot write the unqa frame cache under {store.root} ({exc}): set AVLAB_CACHE to a "
                    "writable folder (the cache then goes to $AVLAB_CACHE/frames) or data.frame_cache=off"
                ) from exc
            built = True
        self._complete[(uid, view)] = ((fp["size"], fp["mtime_ns"]), store.path(key) / f"{view}.npy")
        return entry[view], built

    def _stored_frames(self, uid: int, augment: tuple[int, int] | None) -> np.ndarray:
        """``[K, 3, S, S]`` uint8 of one stimulus; a training draw of an image with ``train_crops:
        random`` crops the stored whole image here, with the same seeded draws as without the store."""
        m = self.media
        if (
            augment is not None
            and self.train_crops == "random"
            and self._label_arrays()["modality"][uid] == "image"
        ):
            full = self._stored(uid, "pixels")[0]
            rng = np.random.default_rng([self.split_seed, uid, *augment])
            s, crops = m.image_size, []
            for _ in range(m.image_crops):
                origin = m.random_crop_origin(full.shape[-2], full.shape[-1], rng)
                if origin is None:  # smaller than a crop: every crop is the upscaled centre crop
                    return np.asarray(self._stored(uid, "frames")[0])
                top, left = origin
                crops.append(full[0, :, top : top + s, left : left + s])
            return np.stack(crops)
        return np.asarray(self._stored(uid, "frames")[0])

    def _stored_item(self, uid: int, augment: tuple[int, int] | None) -> dict[str, Any]:
        batch = self.load_batch([uid], augment)
        item = self._label_item(uid)
        for key in ("frames", "wave"):
            if key in batch:
                item[key] = batch[key][0]
        if "wave" in batch:
            item["wave_len"], item["has_audio"] = int(batch["wave_len"][0]), bool(batch["has_audio"][0])
        return item

    def _build_frame_cache(self, progress: bool) -> dict[str, Any]:
        """Store every stimulus' views (what ``auto`` would otherwise build on first use)."""
        n = len(self._read_table())
        built, start = 0, time.perf_counter()
        for uid in progress_iter(
            range(n), total=n, desc="unqa frame cache", unit="stimulus", disable=not progress
        ):
            built += sum(self._stored(uid, view)[1] for view in self._views(uid))
        return {
            "root": str(self._frame_store().root),
            "stimuli": n,
            "built": built,
            "seconds": round(time.perf_counter() - start, 3),
        }

    # ------------------------------------------------------------------ motion features (eq. 7)
    def _read_table(self) -> pd.DataFrame:
        if self.table is None:
            self.dataset_root(build=True)
            table, problems = self.read_all()
            if problems:
                raise DataError(
                    f"{len(problems)} problem(s) in the unqa databases:\n  - " + "\n  - ".join(problems[:30])
                )
            for col in ("width", "height", "fps"):
                if col not in table:
                    table[col] = np.nan
            table["uid"] = np.arange(len(table))
            # Normalised MOS in [0, 1] via the declared nominal range (IBM rescale): step one's MAE
            # then weighs databases on 0–5 and 0–100 scales alike.
            table["mos_norm"] = (table["mos"] - table["mos_lo"]) / (table["mos_hi"] - table["mos_lo"])
            self.table = table
        return self.table

    def motion_signature(self) -> dict[str, Any] | None:
        """What determines a cached F_m: the extractor (architecture, seed, weights file and its
        SHA-256) and the clip sampling; ``None`` without a motion extractor."""
        if self.motion_extractor is None:
            return None
        media = self.media
        return {
            **self.motion_extractor.signature,
            "frames": media.motion_frames,
            "size": media.motion_size,
            "chunks": media.motion_chunks,
        }

    @torch.no_grad()
    def motion_feature(self, path: str, yuv: tuple[int, int] | None = None) -> np.ndarray:
        """F_m of one video (mean over its temporal chunks), computed now, not cached."""
        if self.motion_extractor is None:
            raise DataError("no motion extractor configured (model.net.motion is null)")
        extractor = self.motion_extractor.eval()
        clips = self.media.motion_clips(path, yuv)
        out = torch.cat([extractor(c) for c in clips.split(self.motion_batch)])
        return out.mean(dim=0).cpu().numpy().astype(np.float32)

    def _motion_features(self, progress: bool = False) -> tuple[np.ndarray | None, dict[str, int]]:
        """F_m of every video/AV stimulus from the dataset's feature cache, computing what is missing."""
        counts = {"videos": 0, "computed": 0}
        signature = self.motion_signature()
        if signature is None:
            return None, counts
        table = self._read_table()
        cache = dataset_feature_cache(self.dataset_root())
        extractor = self.motion_extractor
        feats = np.zeros((len(table), extractor.out_dim), dtype=np.float32)
        weights = [signature["weights"]] if signature.get("weights") else []
        uids = table.loc[table["modality"].isin(["video", "av"]), "uid"].to_numpy()
        # SlowFast on every clip of a video takes seconds per video on a CPU; cached ones are instant.
        for uid in with_progress(uids, desc="unqa motion features", unit="video", disable=not progress):
            r = table.iloc[int(uid)]
            yuv = self._yuv(r)
            params = {**signature, "yuv": list(yuv) if yuv else None}

            def compute(r: pd.Series = r, yuv: tuple[int, int] | None = yuv) -> dict[str, np.ndarray]:
                counts["computed"] += 1
                return {"motion": self.motion_feature(r["media"], yuv)}

            # Inputs are fingerprinted by content (SHA-1), so the weights file's content is in the key.
            feats[int(uid)] = cached(
                cache, "unqa-slowfast", MOTION_CACHE_VERSION, params, [r["media"], *weights], compute
            )["motion"]
        counts["videos"] = len(uids)
        return feats, counts

    def extract_features(self, progress: bool = True) -> dict[str, Any]:
        """Compute and cache the SlowFast motion features (eq. 7) of every video/AV stimulus and, with
        ``frame_cache: auto``, store every decoded stimulus."""
        root = self.dataset_root(build=True)
        frames = self._build_frame_cache(progress) if self.frame_cache == "auto" else "off"
        feats, counts = self._motion_features(progress)
        if feats is None:
            return {
                "root": str(root),
                "features": "none: no motion extractor (model.net.motion is null)",
                "frame_cache": frames,
            }
        self.motion = feats
        return {
            "root": str(root),
            "features": "unqa-slowfast motion (eq. 7)",
            "cache": str(root / ".features"),
            "dim": int(feats.shape[1]),
            **counts,
            "signature": self.motion_signature(),
            "frame_cache": frames,
        }

    # ------------------------------------------------------------------ task-sampled training
    def train_plan_inputs(self) -> tuple[list[np.ndarray], list[str], list[str]]:
        """Training ids per database (in config order), their modalities and names."""
        return (
            [self.parts["train"].get(d, np.array([], dtype=int)) for d in range(len(self.specs))],
            self.modalities,
            self.names,
        )

    def attach_task_sampler(self, sampler: Any) -> None:
        """Use the callback's sampler (its state is checkpointed by the callback)."""
        self.task_sampler = sampler

    def _sampler(self) -> Any:
        if self.task_sampler is None:
            from avlab.callbacks.task_sampling import TaskSampler

            warnings.warn(
                "no WeightedTaskSampling callback configured: using plain weighted task sampling "
                "(audio_repeat=1) whose state is not checkpointed",
                RuntimeWarning,
                stacklevel=2,
            )
            self.task_sampler = TaskSampler(seed=self.split_seed, audio_repeat=1)
        return self.task_sampler

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.world_size, t.global_rank) if t is not None else (1, 0)

    def steps_per_epoch(self) -> int:
        idx, mods, _ = self.train_plan_inputs()
        world, _ = self._world()
        return int(
            sum(self._sampler().steps_per_database([len(i) for i in idx], mods, self.batch_size * world))
        )

    def set_train_plan(self, plan: list[tuple[int, np.ndarray]]) -> None:
        self._plan = plan

    def current_plan(self) -> list[tuple[int, np.ndarray]]:
        if self._plan is None:  # no callback drew one: draw it here (single process semantics)
            world, rank = self._world()
            idx, mods, _ = self.train_plan_inputs()
            self._plan = self._sampler().plan_epoch(idx, mods, self.batch_size, world, rank)
        plan, self._plan = self._plan, None
        return plan

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_PlannedBatches(self), batch_size=None, num_workers=self.num_workers)

    def _eval_loaders(self, part: str) -> list[DataLoader]:
        return [
            DataLoader(
                _Items(self, self.parts[part][d]),
                batch_size=self.batch_size,
                shuffle=False,
                num_workers=self.num_workers,
                collate_fn=self._collate_list,
            )
            for d in self.eval_databases(part)
        ]

    def eval_databases(self, part: str) -> list[int]:
        """Database indices with items in ``part`` (one val/test dataloader each, in this order)."""
        return [d for d in range(len(self.specs)) if len(self.parts[part].get(d, [])) > 0]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    # ------------------------------------------------------------------ the evaluation contract
    def sample_table(self, split: str) -> pd.DataFrame:
        """Stimuli of ``split`` (``train``/``val``/``test``), indexed by the dataset index that batches
        carry under ``index``: database, modality, media, MOS."""
        if self.table is None or split not in self.parts:
            raise DataError(f"sample_table({split!r}) needs setup() first and a split of train, val, test")
        uids = np.concatenate([u for u in self.parts[split].values()] or [np.array([], dtype=int)])
        cols = ["db_name", "modality", "media", "audio", "mos", "mos_norm", "group"]
        return (
            self.table.iloc[np.sort(uids)][cols]
            .rename(columns={"db_name": "database"})
            .set_axis(np.sort(uids))
        )

    def dataset_info(self) -> DatasetInfo:
        return DatasetInfo(name=self.dataset_name, logistic=self.logistic)

    def untested_databases(self) -> dict[str, str]:
        """Databases that get no test metric, and why (a test part needs at least 3 stimuli)."""
        out = {}
        for d, spec in enumerate(self.specs):
            n = len(self.parts.get("test", {}).get(d, []))
            if n < 3:
                out[spec.name] = f"its test part has {n} stimuli (SRCC/PLCC need at least 3)"
        return out

    # ------------------------------------------------------------------ checks
    def check(self) -> list[str]:
        try:
            root = self.dataset_root(build=False)
        except DataError as exc:
            return [str(exc)]
        if not root.exists():
            return [f"{root} does not exist"]
        table, problems = self.read_all()
        self._check_table = table
        return problems

    def split_report(self, table: pd.DataFrame) -> dict[str, str]:
        """How each database is split: ``N groups -> train/val/test`` or the item-level fallback."""
        out: dict[str, str] = {}
        for d, spec in enumerate(self.specs):
            rows = table[table["db_name"] == spec.name] if len(table) else table
            if spec.role == "test":
                out[spec.name] = f"role test: all {len(rows)} stimuli tested, none trained on"
                continue
            try:
                groups, note = split_groups(
                    spec.name, rows["group"].astype(str).to_numpy(), rows["media"].astype(str).to_numpy()
                )
                which = assign_splits(
                    groups, self.split_ratios, np.random.default_rng([self.split_seed, 0, d])
                )
            except DataError as exc:
                out[spec.name] = f"cannot be split: {exc}"
                continue
            counts = "/".join(str(int((which == p).sum())) for p in ("train", "val", "test"))
            out[spec.name] = (
                f"WARNING: {note}; " if note else f"{len(set(groups.tolist()))} content groups, "
            ) + f"train/val/test stimuli {counts}"
        return out

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"root": str(self.dataset_root())}
        for spec in self.specs:
            out[f"database {spec.name}"] = (
                f"{spec.format}, {spec.modality}, MOS {spec.mos_range[0]:g}-{spec.mos_range[1]:g}, "
                f"role {spec.role}"
            )
        table = self.table if self.table is not None else self._check_table
        if table is not None and len(table):
            for name, line in self.split_report(table).items():
                out[f"split {name}"] = line
        if self.table is not None:
            out["stimuli"] = len(self.table)
        return out
