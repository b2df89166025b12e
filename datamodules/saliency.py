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

Frames are resized to ``frame_size`` (bilinear, antialiased, uint8) and normalised with
``normalize`` (``imagenet`` mean/std as ViNet, or ``pm1``: ``2x − 1`` as kylemin/S3D and TASED).
Audio follows the SoundNet convention (:mod:`avlab.media.clips`).

Frame cache (``frame_cache=auto``). Decoding a 720p JPEG clip is ~99 % of the cost of a training
clip (its target map ~0.4 %, its audio ~0.2 %; fixations are only read at test time), so the
resized uint8 frames and continuous maps of every video are written once into
:mod:`avlab.features.frame_cache` and clips are sliced from memory maps. The uncached path
(``off``) runs the same decode and resize, so both give identical clips and test metrics; audio
and the native-resolution test ground truth and fixations are read from the files either way.

Bad input is reported by ``avlab data check`` (every case) and by ``setup`` (an error naming the
files): the policies ``short_videos``, ``count_mismatch`` and ``missing_audio`` are documented in
:mod:`avlab.datamodules.saliency_readers`.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
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
from avlab.features.frame_cache import (
    FrameStore,
    check_jpeg_device,
    decode_images,
    frame_cache_root,
    frame_key,
    resize_frames,
    sources_fingerprint,
)
from avlab.media.clips import (
    VideoFrames,
    audio_buffer_len,
    clip_audio,
    frame_audio_bounds,
    load_wav,
    window_indices,
)
from avlab.media.decoders import resolve_decoder
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
#: Frames written per step when a video goes into the frame cache (bounds memory use).
CACHE_CHUNK = 64
#: Frames decoded and resized together: on the CPU few enough that the native-size frames stay in
#: the cache (a 32-frame 720p stack is 88 MB, and stacking it cost as much as decoding it); on CUDA
#: many, since nvJPEG decodes a list in one batched call.
DECODE_GROUP = {"cpu": 8, "cuda": 64}


def normalize_frames(frames: torch.Tensor, normalize: str, channel_dim: int) -> torch.Tensor:
    """uint8 RGB frames ``[..., H, W, 3]`` → float32 with the channels moved to ``channel_dim``,
    contiguous, normalised (``imagenet``: ``(x/255 − mean)/std``; ``pm1``: ``2x/255 − 1``).

    On the CPU this converts one frame at a time, so each frame's floats stay in the cache between
    the conversion and the normalisation: twice as fast as whole-clip operations on a 32-frame
    224×384 clip, with bit-identical results.
    """
    if normalize not in ("imagenet", "pm1"):
        raise ConfigError(f"data.normalize must be imagenet or pm1, got {normalize!r}")
    if normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # (x − 0.5)/0.5 = 2x − 1
    channel_dim %= frames.ndim
    shape = list(frames.shape[:-1])
    shape.insert(channel_dim, 3)
    out = torch.empty(shape, dtype=torch.float32, device=frames.device)
    if frames.device.type != "cpu":
        out.movedim(channel_dim, -1).copy_(frames)
        view = [1] * out.ndim
        view[channel_dim] = 3
        return out.div_(255.0).sub_(out.new_tensor(mean).view(view)).div_(out.new_tensor(std).view(view))
    channels_last = out.movedim(channel_dim, -1)  # a view of ``out`` shaped like ``frames``
    for idx in itertools.product(*(range(n) for n in frames.shape[:-3])):
        o = channels_last[idx]
        o.copy_(frames[idx])
        for c in range(3):
            o[..., c].div_(255.0).sub_(mean[c]).div_(std[c])
    return out


def preprocess_frames(frames: torch.Tensor, frame_size: tuple[int, int], normalize: str) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → float ``[N, 3, h, w]``: bilinear resize (antialiased) to uint8, normalise.

    The resize is :func:`avlab.features.frame_cache.resize_frames`, the one the frame cache stores,
    so training (cached or not), testing and ``avlab predict`` see the same pixels.
    """
    return normalize_frames(resize_frames(frames, frame_size), normalize, 1)


class _FrameSource:
    """Frames and continuous maps of the videos decoded from their files and resized to ``frame_size``
    (uint8), with a small LRU cache: sliding test windows share all but one frame.

    JPEG frames and maps are decoded with PIL (``jpeg_device=cpu``) or torchvision's nvJPEG
    (``cuda``, resized there too); video files with the ``decoder`` backend. The frame cache is
    filled by :meth:`resized`/:meth:`maps` of this class, so cached and uncached clips are equal.
    """

    def __init__(
        self,
        videos: list[VideoRecord],
        frame_size: tuple[int, int],
        jpeg_device: str = "cpu",
        cache: int = 96,
        decoder: str = "auto",
    ) -> None:
        self.videos, self.frame_size, self.jpeg_device = videos, tuple(frame_size), jpeg_device
        self.decoder = decoder
        self.cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.capacity = cache
        self.readers: dict[int, VideoFrames] = {}

    def subset(self, vids: list[int]) -> _FrameSource:
        """The same decoding of the videos ``vids`` only (renumbered from 0)."""
        return _FrameSource(
            [self.videos[v] for v in vids], self.frame_size, self.jpeg_device, decoder=self.decoder
        )

    def decoding(self, vid: int) -> dict[str, str]:
        """How video ``vid`` is decoded and resized (the part of the frame-cache key that says so)."""
        if isinstance(self.videos[vid].frames, Path):
            video = resolve_decoder(self.decoder)  # `auto` is keyed by the backend it picks here
            return {"frames": video, "maps": self._image_decoder(), "resize": self.jpeg_device}
        return {"frames": self._image_decoder(), "maps": self._image_decoder(), "resize": self.jpeg_device}

    def _image_decoder(self) -> str:
        return "pil" if self.jpeg_device == "cpu" else "torchvision-nvjpeg"

    def _images(self, files: list[Path], gray: bool) -> torch.Tensor:
        backend = "pil" if self.jpeg_device == "cpu" else "torchvision"
        return decode_images(files, self.jpeg_device, backend=backend, gray=gray)

    def raw(self, vid: int, indices: list[int]) -> torch.Tensor:
        """Native-size uint8 ``[N, H, W, 3]`` frames ``indices`` of video ``vid``."""
        rec = self.videos[vid]
        if isinstance(rec.frames, Path):
            reader = self.readers.get(vid)
            if reader is None:
                reader = self.readers[vid] = VideoFrames(rec.frames, decoder=self.decoder)
            return torch.from_numpy(reader.get(indices))
        return self._images([rec.frames[i] for i in indices], gray=False)

    def _grouped(self, decode: Callable[[list[int]], torch.Tensor], indices: list[int]) -> torch.Tensor:
        step = DECODE_GROUP[self.jpeg_device]
        parts = [
            resize_frames(decode(indices[s : s + step]).to(self.jpeg_device), self.frame_size).cpu()
            for s in range(0, len(indices), step)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def resized(self, vid: int, indices: list[int]) -> torch.Tensor:
        """uint8 ``[N, h, w, 3]`` frames ``indices`` at ``frame_size``, on the CPU (no LRU cache)."""
        return self._grouped(lambda idx: self.raw(vid, idx), list(indices))

    def frames(self, vid: int, indices: list[int] | tuple[int, ...]) -> torch.Tensor:
        """uint8 ``[T, h, w, 3]`` frames ``indices`` (in that order) at ``frame_size``, on the CPU."""
        missing = sorted({i for i in indices if (vid, i) not in self.cache})
        if missing:
            for i, f in zip(missing, self.resized(vid, missing)):
                self.cache[(vid, i)] = f
        for i in indices:
            self.cache.move_to_end((vid, i))
        out = torch.stack([self.cache[(vid, i)] for i in indices])
        while len(self.cache) > max(self.capacity, len(indices)):
            self.cache.popitem(last=False)
        return out

    def maps(self, vid: int, indices: list[int] | tuple[int, ...]) -> torch.Tensor:
        """uint8 ``[T, h, w]`` continuous saliency maps ``indices`` at ``frame_size``, on the CPU."""
        files = self.videos[vid].maps
        return self._grouped(lambda idx: self._images([files[i] for i in idx], gray=True), list(indices))


class _CachedFrames:
    """The same frames and maps as :class:`_FrameSource`, read from the frame cache.

    Each video's entry (``frames`` ``T×h×w×3`` and ``maps`` ``T×h×w``, uint8) is keyed by the stat
    fingerprint of its frame and map files, ``frame_size`` and the decoder; it is opened as a
    memory map on first use in each process and built there if missing (``avlab features`` or
    ``prepare_data`` normally built it already).
    """

    def __init__(self, source: _FrameSource, store: FrameStore) -> None:
        self.source, self.store = source, store
        self.opened: dict[int, dict[str, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers reopen the memory maps themselves instead of receiving copies of them.
        return {**self.__dict__, "opened": {}}

    def identity(self, vid: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(params, source fingerprint) of video ``vid``'s entry: what its key is made of."""
        params = {"frame_size": list(self.source.frame_size), "decoder": self.source.decoding(vid)}
        return params, sources_fingerprint(self.source_files(vid))

    def source_files(self, vid: int) -> list[Path]:
        """Every file video ``vid``'s entry is decoded from, as absolute paths: recorded in the entry
        so that ``avlab cache prune`` can tell, from any working folder, when one has changed."""
        rec = self.source.videos[vid]
        files = [rec.frames] if isinstance(rec.frames, Path) else list(rec.frames)
        return [Path(f).absolute() for f in files + list(rec.maps)]

    def key(self, vid: int) -> str:
        return frame_key("saliency-frames", *self.identity(vid))

    def arrays(
        self, vid: int, on_frames: Callable[[int], None] | None = None
    ) -> tuple[dict[str, np.ndarray], bool]:
        """``(arrays, built)`` of video ``vid``; ``on_frames(n)`` is told of each decoded chunk."""
        if vid in self.opened:
            return self.opened[vid], False
        rec, (h, w) = self.source.videos[vid], self.source.frame_size
        n = rec.n_frames

        def fill(out: dict[str, np.ndarray]) -> None:
            for s in range(0, n, CACHE_CHUNK):
                idx = list(range(s, min(n, s + CACHE_CHUNK)))
                out["frames"][s : idx[-1] + 1] = self.source.resized(vid, idx).numpy()
                out["maps"][s : idx[-1] + 1] = self.source.maps(vid, idx).numpy()
                if on_frames is not None:
                    on_frames(len(idx))

        spec = {"frames": ((n, h, w, 3), "uint8"), "maps": ((n, h, w), "uint8")}
        params, sources = self.identity(vid)
        prov = {
            "kind": "saliency-frames",
            "video": f"{rec.dataset}/{rec.name}",
            "params": params,
            "sources": sources,
            "source_files": [str(f) for f in self.source_files(vid)],
        }
        key = frame_key("saliency-frames", params, sources)
        arrays, built = self.store.open_or_build(key, spec, fill, prov)
        self.opened[vid] = arrays
        return arrays, built

    def frames(self, vid: int, indices: list[int] | tuple[int, ...]) -> torch.Tensor:
        arr = self.arrays(vid)[0]["frames"]
        lo = indices[0]
        if list(indices) == list(range(lo, lo + len(indices))):
            return torch.from_numpy(np.array(arr[lo : lo + len(indices)]))  # one contiguous read
        return torch.from_numpy(arr[np.asarray(indices)])

    def maps(self, vid: int, indices: list[int] | tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(self.arrays(vid)[0]["maps"][np.asarray(indices)])


#: From this many frames to decode, ``extract_features`` builds videos in several processes
#: (CPU decoding only; below it, starting the processes costs more than it saves).
BUILD_PARALLEL_MIN_FRAMES = 2000


def _build_video(cache: _CachedFrames) -> bool:
    """Build the entry of the one video of ``cache`` (a worker process of ``extract_features``)."""
    return cache.arrays(0)[1]


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
    """Clips of a list of videos: random training clips, fixed validation clips, or test windows.

    Frames come from the frame cache when ``frame_store`` is given, else from the files; both give
    equal clips. :meth:`__getitems__` serves a whole batch at once, already collated, and equals
    :func:`collate_saliency` of the per-item outputs. ``clip`` is float ``[3, T, h, w]``
    (normalised), or with ``uint8_clips`` the uint8 frames ``[T, h, w, 3]``, for the DataModule to
    normalise on the training device (``data.normalize_on=device``).
    """

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
        frame_store: FrameStore | None = None,
        jpeg_device: str = "cpu",
        decoder: str = "auto",
        uint8_clips: bool = False,
    ) -> None:
        self.videos, self.mode, self.clip_len = videos, mode, clip_len
        self.frame_size = tuple(frame_size)
        self.normalize, self.uint8_clips = normalize, uint8_clips
        source = _FrameSource(videos, self.frame_size, jpeg_device, cache=3 * clip_len, decoder=decoder)
        self.frames: _FrameSource | _CachedFrames = (
            source if frame_store is None else _CachedFrames(source, frame_store)
        )
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
        return self.frames.maps(vid, [t])[0].float().div_(255.0)

    def _plan(self, i: int) -> tuple[int, tuple[int, ...], bool, torch.Tensor]:
        """(video, frame indices in model order, reversed, target) of item ``i``; draws the
        training clip's start from torch's global generator (seeded by seed_everything and per
        worker, so runs repeat)."""
        if self.mode == "train":
            vid = i // self.clips_per_video
            n_frames = self.videos[vid].n_frames
            for _ in range(10):
                start = int(torch.randint(0, n_frames - self.clip_len + 1, (1,)))
                target = self._target(vid, start + self.clip_len - 1)
                if float(target.max()) > 0:  # a target with no fixation teaches nothing: re-draw
                    break
            return vid, tuple(range(start, start + self.clip_len)), False, target
        vid, pos = self.items[i]
        if self.mode == "val":
            frames = tuple(range(pos, pos + self.clip_len))
            return vid, frames, False, self._target(vid, pos + self.clip_len - 1)
        if vid not in self._windows:
            self._windows[vid] = window_indices(self.videos[vid].n_frames, self.clip_len)
        w = self._windows[vid][pos]
        return vid, w.frames, w.reversed, self._target(vid, pos)

    def _extras(self, i: int, plan: tuple[int, tuple[int, ...], bool, torch.Tensor]) -> dict[str, Any]:
        vid, frames, reverse, target = plan
        out: dict[str, Any] = {}
        if self.audio is not None:
            out["audio"] = self.audio.get(vid, frames, reverse)
        out.update(target=target, index=torch.tensor(i))
        if self.mode == "test":
            # Evaluation reads native-resolution ground truth and fixations from the files, always.
            rec, pos = self.videos[vid], self.items[i][1]
            gt = load_map(rec.maps[pos])
            out.update(
                gt=torch.from_numpy(gt),
                fix=torch.from_numpy(load_fixation(rec.fixations[pos], gt.shape)),
                video=torch.tensor(self.video_offset + vid),
                dataset=torch.tensor(self.dataset_ids.get(rec.dataset, 0)),
                frame=torch.tensor(pos),
            )
        return out

    def _finish(self, frames: torch.Tensor, channel_dim: int) -> torch.Tensor:
        return frames if self.uint8_clips else normalize_frames(frames, self.normalize, channel_dim)

    def __getitem__(self, i: int) -> dict[str, Any]:
        plan = self._plan(i)
        clip = self._finish(self.frames.frames(plan[0], plan[1]), 0)
        return {"clip": clip, **self._extras(i, plan)}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        """A collated batch of ``indices``: equal to ``collate_saliency([self[i] for i in indices])``
        (the same draws in the same order)."""
        plans = [self._plan(i) for i in indices]
        raw = torch.stack([self.frames.frames(vid, frames) for vid, frames, _, _ in plans])
        items = [self._extras(i, plan) for i, plan in zip(indices, plans, strict=True)]
        return {
            "clip": self._finish(raw, 1),
            **collate_saliency(items),
        }


def collate_saliency(items: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """Stack same-shaped tensors; native-resolution ``gt``/``fix`` (sizes differ per video) stay lists.

    A batch that :meth:`SaliencyClips.__getitems__` already collated is returned as it is.
    """
    if isinstance(items, dict):
        return items
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
        decoder: video decoder for video files, ``auto``, ``decord``, ``torchcodec`` or ``pyav``
            (:mod:`avlab.media.decoders`); frame folders are read as images either way.
        frame_cache: ``auto``: frames and continuous maps are decoded once at ``frame_size`` into
            the frame cache (:mod:`avlab.features.frame_cache`; ``avlab features`` or the first
            run builds it) and clips are sliced from it; ``off``: every clip is decoded from the
            files. Clips are equal either way; test ground truth and fixations are always read
            at native resolution from the files.
        jpeg_device: ``cpu`` (PIL) or ``cuda`` (torchvision's nvJPEG) for decoding JPEG frames
            and maps, when building the cache or with ``frame_cache=off``.
        normalize_on: ``loader``: batches carry normalised float clips ``[B, 3, T, h, w]``;
            ``device``: the DataLoader carries uint8 frames ``[B, T, h, w, 3]`` (a quarter of the
            bytes through workers, pinned memory and the bus) and :meth:`on_after_batch_transfer`
            normalises them on the training device, so the model sees the same clips. The
            normalisation costs a CPU ~25 ms per 32×224×384 clip; a GPU, next to nothing.
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
        frame_cache: str | bool = "auto",
        jpeg_device: str = "cpu",
        normalize_on: str = "loader",
        demo_size: str = "small",
        batch_size: int = 8,
        num_workers: int | str = 0,
        decoder: str = "auto",
    ) -> None:
        super().__init__(root=root, demo_size=demo_size, batch_size=batch_size, num_workers=num_workers)
        if isinstance(frame_cache, bool):  # YAML reads a bare `off` (data.frame_cache=off) as false
            frame_cache = "auto" if frame_cache else "off"
        resolve_decoder(decoder)  # an unknown or missing decoder fails here, before any data is read
        self.decoder = decoder
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
            ("frame_cache", frame_cache, ("auto", "off")),
            ("normalize_on", normalize_on, ("loader", "device")),
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
        self.frame_cache, self.jpeg_device = frame_cache, check_jpeg_device(jpeg_device)
        self.normalize_on = normalize_on
        if jpeg_device == "cuda" and frame_cache == "off" and self.num_workers > 0:
            raise ConfigError(
                "data.jpeg_device=cuda with data.frame_cache=off decodes in the DataLoader workers, "
                "which cannot use CUDA once the trainer has; set data.num_workers=0, or "
                "data.frame_cache=auto (the cache is built on the GPU once, then read on the CPU)"
            )
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
            self.decoder,
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
            decoder=self.decoder,
            frame_store=self.frame_store(),
            jpeg_device=self.jpeg_device,
        )

    # ------------------------------------------------------------------ frame cache
    def frame_store(self) -> FrameStore | None:
        """The frame cache of this dataset (None with ``frame_cache=off``)."""
        return None if self.frame_cache == "off" else FrameStore(frame_cache_root(self.dataset_root()))

    def extract_features(self, progress: bool = True) -> dict[str, Any]:
        """Decode every video of the run (train, validation and test) into the frame cache.

        Videos already cached (same files, ``frame_size`` and decoder) are not decoded again.
        With ``frame_cache=off`` nothing is extracted.
        """
        import time

        from avlab.progress import progress_task

        root = self.dataset_root(build=True)
        store = self.frame_store()
        if store is None:
            return {"root": str(root), "features": "none: data.frame_cache=off decodes every clip"}
        self.setup()
        videos = list({id(r): r for split in ("train", "val", "test") for r in self.splits[split]}.values())
        cache = _CachedFrames(
            _FrameSource(videos, self.frame_size, self.jpeg_device, decoder=self.decoder), store
        )
        total, t0 = sum(r.n_frames for r in videos), time.perf_counter()
        missing = [v for v in range(len(videos)) if store.open(cache.key(v)) is None]
        todo = sum(videos[v].n_frames for v in missing)
        workers = min(os.cpu_count() or 1, 8, len(missing))
        if missing:
            log.info(
                "frame cache: decoding %d of %d videos (%d frames) into %s",
                len(missing),
                len(videos),
                todo,
                store.root,
            )
        with progress_task("frame cache", total=total, unit="frame", disable=not progress) as task:
            task.advance(total - todo)
            if workers >= 2 and self.jpeg_device == "cpu" and todo >= BUILD_PARALLEL_MIN_FRAMES:
                # One video per task, sent alone: the full record list can hold 100k+ frame paths.
                with ProcessPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                    jobs = {
                        pool.submit(_build_video, _CachedFrames(cache.source.subset([v]), store)): v
                        for v in missing
                    }
                    for job in as_completed(jobs):
                        job.result()
                        task.advance(videos[jobs[job]].n_frames)
            else:
                for v in missing:
                    cache.arrays(v, on_frames=task.advance)
        folders = [store.path(cache.key(v)) for v in range(len(videos))]
        return {
            "root": str(root),
            "frame_cache": str(store.root),
            "videos": len(videos),
            "frames": total,
            "built": len(missing),
            "frame_size": list(self.frame_size),
            "jpeg_device": self.jpeg_device,
            "bytes": sum(f.stat().st_size for d in folders for f in d.glob("*.npy")),
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self._dataset(split)
        dataset.uint8_clips = self.normalize_on == "device"  # see on_after_batch_transfer
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_saliency,
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``normalize_on=device``: uint8 ``[B, T, h, w, 3]`` clips → normalised float
        ``[B, 3, T, h, w]`` on the device the batch was moved to (the loaders' other setting)."""
        if (
            isinstance(batch, dict)
            and isinstance(batch.get("clip"), torch.Tensor)
            and batch["clip"].dtype == torch.uint8
        ):
            batch["clip"] = normalize_frames(batch["clip"], self.normalize, 1)
        return batch

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
