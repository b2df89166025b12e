"""Data of the ``avq`` task: full-reference audio-visual quality (Attentive AV-FusionNet).

Two formats of the shared reader catalog (:mod:`avlab.datamodules.readers`) are read
(``format=auto`` picks by the files present):

``manifest`` — avlab's documented format: a folder with ``manifest.csv``, one row per stimulus
(``media`` and ``group`` are accepted for ``distorted`` and ``source``):

=====================  ====================================================================
column                 meaning
=====================  ====================================================================
stimulus               unique name of the stimulus
source                 source clip it was made from (splits never put one source on two sides)
reference              reference media (video with audio, or video only), relative to the CSV
distorted              distorted media, relative to the CSV
video_bitrate_kbps     video bitrate (informative; NaN for CRF/QP encodes)
audio_bitrate_kbps     audio bitrate (a feature of SVR-3F/8F)
mos                    subjective (or pseudo-) mean opinion score
mos_scale              nominal scale of ``mos``, e.g. ``1-5`` or ``0-100``
reference_audio        optional: separate reference audio file
distorted_audio        optional: separate distorted audio file
=====================  ====================================================================

``live_sjtu`` — the LIVE-SJTU AV-QA release: ``MOS.mat`` (fields ``MOS``, ``disNames``,
``refNames``, ``allNames``, ``frameRate``, ``resolution``) and the ``.yuv``/``.wav`` files it names,
anywhere below the folder. Raw YUV is wrapped once into lossless H.264 under the feature cache so
libvmaf can read it. The paper keeps AAC 32–128 kb/s only (``audio_bitrates=[32, 128]``).

Scores are mapped to a common scale (``target_scale``, 1–5 by default) with the IBM Likert
transformation, using each dataset's nominal scale. Deep models see per-feature standardised
features; SVR sees [0, 1]-scaled ones; both scalers are fitted on the training part only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from avlab.datamodules.base import ArraySplit, AvlabDataModule, DatasetInfo, SupportsArrays
from avlab.datamodules.readers import ReadOptions, detect_format, get_reader, missing_files
from avlab.errors import DataError, FeatureError, MediaError
from avlab.features.audio import AudioFeatureExtractor, SpectralSimilarityExtractor
from avlab.features.cache import FeatureCache
from avlab.features.vmaf import VMAF_FEATURES, check_vmaf_backend, extract_vmaf_with_backend
from avlab.metrics.quality import ibm_rescale
from avlab.progress import progress as with_progress
from avlab.rundir import atomic_path

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("stimulus", "source", "reference", "distorted", "audio_bitrate_kbps", "mos", "mos_scale")


def parse_scale(text: Any, *, where: str) -> tuple[float, float]:
    """``"1-5"`` → (1.0, 5.0)."""
    try:
        lo, hi = (float(v) for v in str(text).replace("–", "-").split("-", 1))
    except ValueError as exc:
        raise DataError(
            f"{where}: mos_scale {text!r} is not of the form LOW-HIGH (e.g. 1-5 or 0-100)"
        ) from exc
    if not hi > lo:
        raise DataError(f"{where}: mos_scale {text!r} must have HIGH > LOW")
    return lo, hi


# --------------------------------------------------------------------------- reading
#: Columns an avq manifest must provide (names as in the file; ``distorted``/``source`` may also be
#: spelled ``media``/``group``, the catalog's names).
REQUIRED_COLUMNS = ("stimulus", "source", "reference", "distorted", "audio_bitrate_kbps", "mos", "mos_scale")
#: catalog column → avq column
_FROM_CATALOG = {"media": "distorted", "audio": "distorted_audio", "group": "source"}


def read_manifest(path: Path) -> pd.DataFrame:
    """Read and validate ``manifest.csv`` with the shared reader; paths become absolute.

    Every problem is reported at once, each naming its row and stimulus.
    """
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; an avq dataset folder needs a manifest.csv (see datamodules/avq.py)"
        )
    table = get_reader("manifest").read(path.parent, ReadOptions(name=path.parent.name, score_file=path.name))
    problems = validate_table(table, path)
    if problems:
        raise DataError(f"{path} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems[:20]))
    return _avq_columns(table)


def _avq_columns(table: pd.DataFrame) -> pd.DataFrame:
    return table.rename(columns=_FROM_CATALOG).reset_index(drop=True)


def validate_table(table: pd.DataFrame, path: Path, *, check_files: bool = True) -> list[str]:
    """Problems of a manifest read by the shared reader: missing columns, duplicate stimuli, MOS
    missing or outside its declared scale, files that do not exist."""
    provided = set(table.attrs.get("columns", table.columns))
    provided |= {_FROM_CATALOG[c] for c in list(provided) if c in _FROM_CATALOG}
    missing = [c for c in REQUIRED_COLUMNS if c not in provided]
    if missing:
        return [f"missing column(s) {', '.join(missing)}; found {', '.join(sorted(map(str, provided)))}"]
    problems = []
    dupes = table["stimulus"][table["stimulus"].duplicated()].tolist()
    if dupes:
        problems.append(f"duplicate stimulus name(s): {', '.join(map(str, dupes[:5]))}")
    for _, row in table.iterrows():
        where = f"{row['where']} (stimulus {row['stimulus']!r})"
        mos = pd.to_numeric(row["mos"], errors="coerce")
        if pd.isna(mos):
            problems.append(
                f"{where}: MOS is missing or not a number ({row['mos']!r}); fill it in or drop the row"
            )
        else:
            try:
                lo, hi = parse_scale(row["mos_scale"], where=where)
                if not lo <= mos <= hi:
                    problems.append(f"{where}: MOS {mos} is outside its declared scale {row['mos_scale']}")
            except DataError as exc:
                problems.append(str(exc))
    if check_files:
        paths = ("reference", "distorted", "reference_audio", "distorted_audio")
        problems.extend(missing_files(_avq_columns(table), paths))
    return problems


def read_live_sjtu(root: Path, audio_bitrates: list[int] | None) -> pd.DataFrame:
    """LIVE-SJTU ``MOS.mat`` (shared reader) → the avq table, keeping ``audio_bitrates`` only."""
    table = get_reader("live_sjtu").read(root, ReadOptions(name=root.name))
    if audio_bitrates:
        table = table[table["audio_bitrate_kbps"].isin([float(b) for b in audio_bitrates])]
        if table.empty:
            raise DataError(
                f"{root / 'MOS.mat'}: no stimulus left after keeping audio bitrates "
                f"{audio_bitrates} (data.audio_bitrates)"
            )
    problems = missing_files(table, label=str(root))
    if problems:
        raise DataError(
            f"{root}: {len(problems)} file(s) named in MOS.mat are not anywhere under "
            "the folder:\n  - " + "\n  - ".join(problems[:20])
        )
    return _avq_columns(table)


def wrap_raw_yuv(path: str, *, width: int, height: int, fps: float, cache_root: Path) -> str:
    """Lossless H.264 copy of a raw 4:2:0 YUV file (libvmaf input needs a container); made once."""
    from avlab.media.ffmpeg import run_ffmpeg

    src = Path(path)
    out = cache_root / "yuv" / f"{src.stem}-{src.stat().st_size}.mkv"
    if out.is_file():
        return str(out)
    with atomic_path(out) as tmp:
        run_ffmpeg(
            [
                "-y",
                "-v",
                "error",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "yuv420p",
                "-s",
                f"{width}x{height}",
                "-r",
                f"{fps}",
                "-i",
                str(src),
                "-c:v",
                "libx264",
                "-qp",
                "0",
                "-preset",
                "ultrafast",
                str(tmp),
            ],
            what=f"wrapping raw YUV {src}",
        )
    return str(out)


# --------------------------------------------------------------------------- torch dataset
class AVQFeatureDataset(Dataset):
    """Standardised features of a subset of stimuli; items carry their dataset index for DDP gathering."""

    def __init__(self, indices: np.ndarray, video: np.ndarray, audio: np.ndarray, mos: np.ndarray) -> None:
        self.indices = indices
        self.video = torch.as_tensor(video, dtype=torch.float32)
        self.audio = torch.as_tensor(audio, dtype=torch.float32)
        self.mos = torch.as_tensor(mos, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.indices[i])
        return {"index": torch.tensor(j), "video": self.video[j], "audio": self.audio[j], "mos": self.mos[j]}


# --------------------------------------------------------------------------- datamodule
class AVQDataModule(AvlabDataModule, SupportsArrays):
    """Reference/distorted AV pairs → VMAF + audio features → source-disjoint splits.

    Args:
        root: dataset folder (manifest or LIVE-SJTU); unset ⇒ the demo data.
        format: ``auto`` | ``manifest`` | ``live_sjtu``.
        n_units: temporal units N of the pooled features (the paper uses N = 1).
        audio_features: the audio extractor (``_target_`` node); default the built-in
            :class:`~avlab.features.audio.SpectralSimilarityExtractor` (512-d).
        target_scale: common MOS scale; scores are IBM-rescaled onto it.
        holdout_sources: sources held out for testing: a count (drawn with ``split_seed``), names,
            or ``all`` for a test-only dataset (cross-dataset testing: every stimulus is scored and
            nothing trains). The paper holds out 5 of 65.
        val_sources: sources of the training part used for validation (checkpoint selection).
        audio_bitrates: LIVE-SJTU only: audio bitrates kept (the paper drops 8 kb/s).
        logistic: ``None``, ``"4"`` or ``"5"``: also report PLCC/RMSE after a logistic fit.
        dataset_name: name used for per-dataset metric keys in cross-dataset tests.
        feature_cache: folder of the feature cache; default ``<root>/.features``.
        vmaf_backend: ``libvmaf`` (ffmpeg's libvmaf, CPU) or ``torch`` (vmaf-torch, needs
            ``pip install avlab[vmaf-torch]``); same six features, cached apart.
        vmaf_device: ``auto`` | ``cpu`` | ``cuda`` for the torch backend (``auto``: a GPU if visible).
    """

    task = "avq"
    supported_protocols = ("fold", "holdout_fold")

    def __init__(
        self,
        root: str | None = None,
        format: str = "auto",
        n_units: int = 1,
        audio_features: AudioFeatureExtractor | None = None,
        target_scale: tuple[float, float] | list[float] = (1.0, 5.0),
        holdout_sources: int | list[str] | str = 5,
        val_sources: int = 1,
        split_seed: int = 0,
        audio_bitrates: list[int] | None = None,
        logistic: str | None = None,
        dataset_name: str | None = None,
        feature_cache: str | None = None,
        vmaf_backend: str = "libvmaf",
        vmaf_device: str = "auto",
        demo_size: str = "small",
        batch_size: int = 32,
        num_workers: int | str = 0,
    ) -> None:
        super().__init__(root=root, demo_size=demo_size, batch_size=batch_size, num_workers=num_workers)
        if format != "auto":
            get_reader(format, where="data.format", allowed=("manifest", "live_sjtu"))
        self.format = format
        self.n_units = int(n_units)
        self.audio_extractor = audio_features or SpectralSimilarityExtractor()
        self.target_scale = (float(target_scale[0]), float(target_scale[1]))
        self.holdout_sources = holdout_sources
        self.val_sources = int(val_sources)
        self.split_seed = int(split_seed)
        self.audio_bitrates = list(audio_bitrates) if audio_bitrates else None
        self.logistic = logistic
        self.dataset_name = dataset_name
        self.feature_cache_dir = feature_cache
        check_vmaf_backend(vmaf_backend, vmaf_device)  # a missing vmaf-torch fails here, not mid-extraction
        self.vmaf_backend = vmaf_backend
        self.vmaf_device = vmaf_device
        self.table: pd.DataFrame | None = None
        self.video: np.ndarray | None = None  # [n, N, 6] raw VMAF features
        self.audio: np.ndarray | None = None  # [n, N, d_a] raw audio features
        self.split_indices: dict[str, np.ndarray] = {}
        self.stats: dict[str, np.ndarray] = {}

    @staticmethod
    def build_demo(out_dir: Path, size: str = "small") -> Path:
        from avlab.demo.avq import build_avq_demo

        return build_avq_demo(Path(out_dir), size=size)

    # ------------------------------------------------------------------ reading
    def _format(self, root: Path) -> str:
        if self.format != "auto":
            return self.format
        return detect_format(root, ("manifest", "live_sjtu"))

    def cache(self, root: Path) -> FeatureCache:
        return FeatureCache(Path(self.feature_cache_dir) if self.feature_cache_dir else root / ".features")

    def read_table(self, root: Path) -> pd.DataFrame:
        fmt = self._format(root)
        table = (
            read_manifest(root / "manifest.csv")
            if fmt == "manifest"
            else read_live_sjtu(root, self.audio_bitrates or [32, 128])
        )
        if fmt == "live_sjtu":
            cache_root = Path(self.cache(root).root)
            for col in ("reference", "distorted"):
                table[col] = [
                    wrap_raw_yuv(p, width=int(w), height=int(h), fps=float(f), cache_root=cache_root)
                    if str(p).endswith(".yuv")
                    else p
                    for p, w, h, f in zip(table[col], table["width"], table["height"], table["fps"])
                ]
        return table.reset_index(drop=True)

    def pair_features(
        self,
        reference: str,
        distorted: str,
        *,
        reference_audio: str | None = None,
        distorted_audio: str | None = None,
        stimulus: str | None = None,
        cache: FeatureCache | None = None,
    ) -> dict[str, Any]:
        """X_v, X_a, Q_v and Q_a (both on ``target_scale``) of one reference/distorted pair."""
        vm = extract_vmaf_with_backend(
            reference,
            distorted,
            backend=self.vmaf_backend,
            device=self.vmaf_device,
            n_units=self.n_units,
            cache=cache,
        )
        au = self.audio_extractor.extract(
            reference_audio or reference,
            distorted_audio or distorted,
            n_units=self.n_units,
            stimulus=stimulus,
            cache=cache,
        )
        if au.embedding.shape[-1] != self.audio_extractor.dim:
            raise FeatureError(
                f"{stimulus or distorted}: audio feature width {au.embedding.shape[-1]}, "
                f"expected {self.audio_extractor.dim}"
            )
        return {
            "video": np.asarray(vm.features, dtype=np.float32),
            "audio": np.asarray(au.embedding, dtype=np.float32),
            "q_video": float(ibm_rescale(vm.vmaf, (0.0, 100.0), self.target_scale)),
            "q_audio": float(ibm_rescale(au.quality, (1.0, 5.0), self.target_scale)),
        }

    def extract_features(self, progress: bool = True) -> dict[str, Any]:
        """Compute (or read from the cache) the features of every stimulus; ``avlab features`` and
        ``prepare_data`` call this, and ``setup`` reads what it cached."""
        root = self.dataset_root(build=True)
        table = self.read_table(root)
        cache = self.cache(root)
        video, audio, q_video, q_audio = [], [], [], []
        # One step per stimulus: each runs ffmpeg/libvmaf and the audio extractor (cached ones are instant).
        rows = with_progress(
            table.iterrows(),
            total=len(table),
            desc="avq features (VMAF + audio)",
            unit="pair",
            disable=not progress,
        )
        for i, row in rows:
            try:
                feats = self.pair_features(
                    row["reference"],
                    row["distorted"],
                    reference_audio=_opt(row, "reference_audio"),
                    distorted_audio=_opt(row, "distorted_audio"),
                    stimulus=str(row["stimulus"]),
                    cache=cache,
                )
            except (MediaError, FeatureError) as exc:
                raise type(exc)(
                    f"stimulus {row['stimulus']!r} (row {i + 2} of the dataset table): {exc}"
                ) from exc
            video.append(feats["video"])
            audio.append(feats["audio"])
            q_video.append(feats["q_video"])
            q_audio.append(feats["q_audio"])
        table = table.copy()
        table["q_video"], table["q_audio"] = q_video, q_audio
        table["mos_native"] = table["mos"].astype(float)
        table["mos"] = [
            float(ibm_rescale(m, parse_scale(s, where=str(st)), self.target_scale))
            for m, s, st in zip(table["mos_native"], table["mos_scale"], table["stimulus"])
        ]
        self.table, self.video, self.audio = table, np.stack(video), np.stack(audio)
        return {
            "root": str(root),
            "stimuli": len(table),
            "sources": int(table["source"].nunique()),
            "video_features": list(VMAF_FEATURES),
            "audio_extractor": self.audio_extractor.name,
            "audio_dim": int(self.audio.shape[-1]),
            "n_units": self.n_units,
            "cache": str(cache.root),
        }

    # ------------------------------------------------------------------ splits
    def sources_by_split(self) -> dict[str, list[str]]:
        """Source names of train/val/test for the current split.

        * no protocol: ``holdout_sources`` are the test set, ``val_sources`` of the rest validate;
        * ``fold`` (``cv.protocol=rotate``): the sources are cut into K folds that take turns as
          the test set; ``val_sources`` of the other folds validate;
        * ``holdout_fold`` (``cv.protocol=holdout_cv``, the paper's protocol): ``holdout_sources``
          stay the test set of every fold, and the other sources are cut into K folds that take
          turns as the validation set; the remaining K - 1 folds train.

        The hold-out is the same draw (``split_seed``) with and without ``holdout_cv``, so a
        single-split run and a cross-validated run test on the same sources.
        """
        assert self.table is not None
        sources = sorted(self.table["source"].unique())
        rng = np.random.default_rng(self.split_seed)
        if self.split_kind == "fold":
            k = self.split_count
            if k > len(sources):
                raise DataError(f"cv.folds={k} needs at least {k} sources, the dataset has {len(sources)}")
            order = [sources[i] for i in rng.permutation(len(sources))]
            folds = np.array_split(np.array(order, dtype=object), k)
            test = sorted(folds[self.split_index].tolist())
        else:
            test = self._holdout(sources, rng)
        rest = [s for s in sources if s not in test]
        if self.split_kind == "holdout_fold":
            k = self.split_count
            if k > len(rest):
                raise DataError(
                    f"cv.folds={k} with cv.protocol=holdout_cv needs at least {k} sources besides the "
                    f"{len(test)} of data.holdout_sources, the dataset has {len(rest)}; lower cv.folds "
                    "or data.holdout_sources"
                )
            order = [rest[i] for i in rng.permutation(len(rest))]
            val = sorted(np.array_split(np.array(order, dtype=object), k)[self.split_index].tolist())
            return {"train": [s for s in rest if s not in val], "val": val, "test": test}
        n_val = min(self.val_sources, len(rest) - 1)
        val = sorted(rng.choice(rest, size=n_val, replace=False).tolist()) if n_val > 0 else []
        if not rest:  # holdout_sources=all: a test-only dataset
            return {"train": [], "val": [], "test": test}
        train = [s for s in rest if s not in val]
        return {"train": train, "val": val or train, "test": test}

    def _holdout(self, sources: list[str], rng: np.random.Generator) -> list[str]:
        """The fixed test sources: ``holdout_sources`` by name, that many drawn with ``rng``, or
        every source (``all``)."""
        if self.holdout_sources == "all":
            if self.split_kind is not None:
                raise DataError(
                    f"data.holdout_sources=all leaves no source to train on, so {self.split_kind} "
                    "splits (cv.folds) cannot be cut; use it for test-only datasets (test_data)"
                )
            return list(sources)
        if isinstance(self.holdout_sources, (list, tuple)):
            test = sorted(str(s) for s in self.holdout_sources)
            unknown = [s for s in test if s not in sources]
            if unknown:
                raise DataError(
                    f"data.holdout_sources names unknown source(s) {unknown}; sources are {sources}"
                )
            return test
        try:
            n = int(self.holdout_sources)
        except (TypeError, ValueError):
            raise DataError(
                f"data.holdout_sources={self.holdout_sources!r} is neither a count, a list of source "
                "names nor 'all'"
            ) from None
        if not 0 < n < len(sources):
            raise DataError(
                f"data.holdout_sources={n} must be between 1 and {len(sources) - 1} ({len(sources)} sources)"
            )
        return sorted(rng.choice(sources, size=n, replace=False).tolist())

    def setup(self, stage: str | None = None) -> None:
        if self.table is None:
            self.extract_features()
        by_split = self.sources_by_split()
        src = self.table["source"].to_numpy()
        self.split_indices = {k: np.flatnonzero(np.isin(src, v)) for k, v in by_split.items()}
        train = self.split_indices["train"]
        if train.size == 0:  # a test-only dataset: the model brings its own training statistics
            self.stats = {}
            return
        # Standardisation statistics come from the training part only (no test leakage).
        v = self.video[train].reshape(-1, self.video.shape[-1])
        a = self.audio[train].reshape(-1, self.audio.shape[-1])
        self.stats = {
            "video_mean": v.mean(0),
            "video_std": v.std(0) + 1e-6,
            "audio_mean": a.mean(0),
            "audio_std": a.std(0) + 1e-6,
        }

    def feature_stats(self) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in self.stats.items()}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = AVQFeatureDataset(
            self.split_indices[split], self.video, self.audio, self.table["mos"].to_numpy(np.float32)
        )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # ------------------------------------------------------------------ the contract
    def dataset_info(self) -> DatasetInfo:
        return DatasetInfo(name=self.dataset_name, score_scale=self.target_scale, logistic=self.logistic)

    def sample_table(self, split: str) -> pd.DataFrame:
        """Stimulus, source, bitrates and MOS (on ``target_scale``) of a split, by dataset index."""
        assert self.table is not None, "call setup() first"
        return self.table.loc[self.split_indices[split], list(SAMPLE_COLUMNS)]

    def arrays(self, split: str) -> ArraySplit:
        """Features of the baselines (Q_a, Q_v, pooled VMAF, audio bitrate) and MOS of a split.

        Closed-form baselines fit on train+val, since they select no checkpoint, except under
        ``holdout_cv``: there val is a fifth of the data and, if it joined, every fold would fit
        the same sources; fitting the fold's train part keeps each fold's baseline on exactly the
        sources its deep counterpart trains on, so the fold spread (``_std``) compares.
        """
        with_val = split == "train" and self.split_kind != "holdout_fold"
        idx = (
            np.concatenate([self.split_indices["train"], self.split_indices["val"]])
            if with_val
            else self.split_indices[split]
        )
        idx = np.unique(idx)
        t = self.table.iloc[idx]
        feats = {
            "q_audio": t["q_audio"].to_numpy(float),
            "q_video": t["q_video"].to_numpy(float),
            "vmaf": self.video[idx].mean(axis=1).astype(float),
            "audio_bitrate_kbps": t["audio_bitrate_kbps"].to_numpy(float),
        }
        return ArraySplit(feats, t["mos"].to_numpy(float), idx)

    # ------------------------------------------------------------------ checks
    def check(self) -> list[str]:
        root = self.dataset_root(build=False)
        if not root.exists():
            return [f"{root} does not exist"]
        try:
            fmt = self._format(root)
        except DataError as exc:
            return [str(exc)]
        if fmt == "manifest":
            try:
                table = get_reader("manifest").read(root, ReadOptions(name=root.name))
            except DataError as exc:
                return [str(exc)]
            problems = validate_table(table, root / "manifest.csv")
            if problems:
                return problems
        try:
            self.extract_features()
        except (DataError, MediaError, FeatureError) as exc:
            return [str(exc)]
        return []

    def describe(self) -> dict[str, Any]:
        out = {"root": str(self.dataset_root())}
        if self.table is not None:
            out.update(stimuli=len(self.table), sources=int(self.table["source"].nunique()))
        return out


#: Columns of :meth:`AVQDataModule.sample_table` (and of the prediction CSVs).
SAMPLE_COLUMNS = ("stimulus", "source", "audio_bitrate_kbps", "video_bitrate_kbps", "mos")


def _opt(row: pd.Series, key: str) -> str | None:
    value = row.get(key)
    return value if isinstance(value, str) and value else None
