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
"""

from __future__ import annotations

import logging
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
from avlab.errors import DataError, MediaError
from avlab.features.cache import cached, dataset_feature_cache
from avlab.models.unqa import MotionExtractor
from avlab.progress import progress as with_progress

log = logging.getLogger(__name__)

__all__ = ["MediaLoader", "UNQADataModule", "detect_modality"]

#: Version of the cached SlowFast features (bump when the extraction changes).
MOTION_CACHE_VERSION = "1"


# --------------------------------------------------------------------------- datasets
class _Items(Dataset):
    """Map-style view of some stimuli (by global id); used for validation and testing."""

    def __init__(self, dm: UNQADataModule, uids: np.ndarray) -> None:
        self.dm, self.uids = dm, np.asarray(uids, dtype=int)

    def __len__(self) -> int:
        return len(self.uids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dm.load_item(int(self.uids[i]))


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
            yield self.dm.collate([self.dm.load_item(int(u), augment=(epoch, step)) for u in uids])


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
        cache_decoded: keep decoded stimuli in memory (small databases / demo only).
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
        cache_decoded: bool = False,
        dataset_name: str | None = None,
        demo_size: str = "small",
        batch_size: int = 8,
        num_workers: int = 0,
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
        self.cache_decoded = bool(cache_decoded)
        if train_crops not in ("centre", "random") or (
            train_crops == "random" and spatial_sampling != "native"
        ):
            raise DataError(
                f"data.train_crops must be centre or random (random needs spatial_sampling: "
                f"native), got {train_crops!r} with {spatial_sampling!r}"
            )
        self.train_crops = train_crops
        self._pixels: dict[int, Tensor] = {}
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
        self._memo: dict[int, dict[str, Any]] = {}

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
        if augment is not None and self.train_crops == "random" and self.row(uid)["modality"] == "image":
            return self._random_crops(uid, augment)
        if uid in self._memo:
            return self._memo[uid]
        r = self.row(uid)
        item: dict[str, Any] = {
            "index": uid,
            "db": int(r["db"]),
            "database": r["db_name"],
            "mos": float(r["mos"]),
            "mos_norm": float(r["mos_norm"]),
            "modality": r["modality"],
        }
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
        if self.cache_decoded:
            self._memo[uid] = item
        return item

    def _random_crops(self, uid: int, augment: tuple[int, int]) -> dict[str, Any]:
        item = dict(self.load_item(uid))  # labels (and the fixed crops, memoised with cache_decoded)
        full = self._pixels.get(uid)
        if full is None:
            full = self.media.decode_image(self.row(uid)["media"])
            if self.cache_decoded:
                self._pixels[uid] = full
        rng = np.random.default_rng([self.split_seed, uid, *augment])
        item["frames"] = torch.cat([self.media.random_crop(full, rng) for _ in range(self.media.image_crops)])
        return item

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack items of one database into a batch; adds cached motion features when available."""
        if len({it["database"] for it in items}) != 1:
            raise DataError(
                "a unqa batch must hold stimuli of one database (the heads and losses are per database)"
            )
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
        if self.motion is not None and out["modality"] in ("video", "av"):
            out["motion"] = torch.from_numpy(self.motion[out["index"].numpy()])
        return out

    def _collate_list(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collate(items)

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
        """Compute and cache the SlowFast motion features (eq. 7) of every video/AV stimulus."""
        root = self.dataset_root(build=True)
        feats, counts = self._motion_features(progress)
        if feats is None:
            return {"root": str(root), "features": "none: no motion extractor (model.net.motion is null)"}
        self.motion = feats
        return {
            "root": str(root),
            "features": "unqa-slowfast motion (eq. 7)",
            "cache": str(root / ".features"),
            "dim": int(feats.shape[1]),
            **counts,
            "signature": self.motion_signature(),
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
