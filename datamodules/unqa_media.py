"""Decoding the ``unqa`` stimuli: images, video frames and clips, raw YUV and audio, at the sizes
the configs ask for (paper §V-A, scaled by config)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avlab.datamodules.unqa_readers import IMAGE_EXTENSIONS
from avlab.errors import DataError, MediaError
from avlab.media.decoders import open_video, resolve_decoder, take_frames

log = logging.getLogger(__name__)


def detect_modality(path: str | Path) -> str:
    """``image``, ``video``, ``audio`` or ``av`` (a video with an audio track) of a media file."""
    p = Path(path)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        if not p.is_file():
            raise MediaError(f"{p} does not exist")
        return "image"
    from avlab.media.ffmpeg import probe

    info = probe(p)
    if info.has_video and info.n_frames > 1:
        return "av" if info.has_audio else "video"
    if info.has_video:
        return "image"
    return "audio"


class MediaLoader:
    """Decodes and preprocesses one stimulus (shared by training, testing and ``avlab predict``)."""

    SAMPLINGS = ("resize", "native", "fragments")

    def __init__(
        self,
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
        decoder: str = "auto",
    ) -> None:
        self.decoder = resolve_decoder(decoder)  # fails here, naming the valid or missing backend
        if spatial_sampling not in self.SAMPLINGS:
            raise DataError(
                f"data.spatial_sampling must be one of {', '.join(self.SAMPLINGS)}, got {spatial_sampling!r}"
            )
        if spatial_sampling == "fragments" and (fragment_grid < 1 or image_size % fragment_grid):
            raise DataError(
                f"data.image_size ({image_size}) must be a multiple of data.fragment_grid ({fragment_grid})"
            )
        self.spatial_sampling, self.fragment_grid = spatial_sampling, int(fragment_grid)
        grid = round(float(image_crops) ** 0.5)
        if (
            image_crops < 1
            or grid * grid != image_crops
            or (image_crops > 1 and spatial_sampling != "native")
        ):
            raise DataError(
                f"data.image_crops must be a square number (1, 4, 9, ...) and > 1 only with "
                f"spatial_sampling: native, got {image_crops} with {spatial_sampling}"
            )
        self.image_crops, self.crop_grid = int(image_crops), grid
        self.image_size, self.resize_short = int(image_size), int(resize_short or image_size)
        self.frames, self.motion_frames, self.motion_size = int(frames), int(motion_frames), int(motion_size)
        self.motion_chunks = max(1, int(motion_chunks))
        self.audio_sr, self.audio_len = int(audio_sr), round(audio_seconds * audio_sr)

    # ---------------------------------------------------------------- pixels
    @staticmethod
    def _resize_crop(x: Tensor, short: int, crop: int) -> Tensor:
        """``[N, 3, H, W]`` float → short side ``short`` (bilinear, antialiased), centre crop ``crop``."""
        h, w = x.shape[-2:]
        s = short / min(h, w)
        nh, nw = max(crop, round(h * s)), max(crop, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - crop) // 2, (nw - crop) // 2
        return x[..., top : top + crop, left : left + crop].clamp(0, 1)

    @staticmethod
    def _native_crop(x: Tensor, crop: int) -> Tensor:
        """Centre ``crop``×``crop`` at native resolution (upscaled only if the input is smaller)."""
        h, w = x.shape[-2:]
        if min(h, w) < crop:
            return MediaLoader._resize_crop(x, crop, crop)
        top, left = (h - crop) // 2, (w - crop) // 2
        return x[..., top : top + crop, left : left + crop].clamp(0, 1)

    @staticmethod
    def _fragments(x: Tensor, grid: int, size: int) -> Tensor:
        """FAST-VQA-style fragments: the centre ``size/grid`` patch of each cell of a ``grid``×``grid``
        partition, at native resolution, spliced into one ``size``×``size`` image."""
        p = size // grid
        h, w = x.shape[-2:]
        if min(h, w) < size:  # cells smaller than a patch: upscale just enough
            s = size / min(h, w)
            x = F.interpolate(
                x,
                size=(max(size, round(h * s)), max(size, round(w * s))),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            h, w = x.shape[-2:]
        rows = []
        for i in range(grid):
            top = i * h // grid + ((i + 1) * h // grid - i * h // grid - p) // 2
            cols = []
            for j in range(grid):
                left = j * w // grid + ((j + 1) * w // grid - j * w // grid - p) // 2
                cols.append(x[..., top : top + p, left : left + p])
            rows.append(torch.cat(cols, dim=-1))
        return torch.cat(rows, dim=-2).clamp(0, 1)

    def spatial(self, x: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] → ``[N, 3, S, S]`` by ``spatial_sampling``:

        * ``resize`` (paper §V-A): short side to ``resize_short``, centre crop ``image_size``;
        * ``native``: centre crop ``image_size`` at native resolution (no resampling, so JPEG
          blocks, noise and blur keep their pixel scale; cheap models see a part of the image);
        * ``fragments``: ``fragment_grid``² native-resolution patches from the whole image.
        """
        if self.spatial_sampling == "native":
            return self._native_crop(x, self.image_size)
        if self.spatial_sampling == "fragments":
            return self._fragments(x, self.fragment_grid, self.image_size)
        return self._resize_crop(x, self.resize_short, self.image_size)

    @staticmethod
    def _native_grid(x: Tensor, crop: int, grid: int) -> Tensor:
        """``grid``² native-resolution ``crop``×``crop`` crops, one centred in each cell of a
        ``grid``×``grid`` partition (clamped inside the image; they overlap on small images)."""
        h, w = x.shape[-2:]
        if min(h, w) < crop:
            return MediaLoader._resize_crop(x, crop, crop).expand(grid * grid, -1, -1, -1)
        out = []
        for i in range(grid):
            top = min(max(0, round((i + 0.5) * h / grid - crop / 2)), h - crop)
            for j in range(grid):
                left = min(max(0, round((j + 0.5) * w / grid - crop / 2)), w - crop)
                out.append(x[0, :, top : top + crop, left : left + crop])
        return torch.stack(out).clamp(0, 1)

    @staticmethod
    def decode_image(path: str) -> Tensor:
        """The whole image, ``[1, 3, H, W]`` in [0, 1]."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.array(im.convert("RGB"))  # a writable copy for torch.from_numpy
        except (OSError, ValueError) as exc:
            raise MediaError(f"cannot read image {path}: {exc}") from exc
        return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0

    def random_crop_origin(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int] | None:
        """Top-left corner of a random ``image_size`` crop of an ``h``×``w`` image; None (and no
        draw) when the image is smaller, whose crop is then the upscaled centre crop."""
        s = self.image_size
        if min(h, w) < s:
            return None
        return int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))

    def random_crop(self, x: Tensor, rng: np.random.Generator) -> Tensor:
        """One native-resolution ``image_size`` crop at a random position (training augmentation)."""
        s = self.image_size
        origin = self.random_crop_origin(x.shape[-2], x.shape[-1], rng)
        if origin is None:
            return self._native_crop(x, s)
        top, left = origin
        return x[..., top : top + s, left : left + s].clamp(0, 1)

    def image(self, path: str) -> Tensor:
        """``[K, 3, S, S]`` in [0, 1]: K = ``image_crops`` (1 but for native multi-crop sampling, whose
        crops the spatial extractor averages like a video's frames)."""
        x = self.decode_image(path)
        if self.image_crops > 1:
            return self._native_grid(x, self.image_size, self.crop_grid)
        return self.spatial(x)

    def _read_frames(self, path: str, indices_fn: Any, yuv: tuple[int, int] | None) -> np.ndarray:
        if yuv is not None or str(path).lower().endswith(".yuv"):
            if yuv is None:
                raise MediaError(f"{path}: raw YUV needs its width and height (from the score file)")
            return _read_yuv420(path, yuv[0], yuv[1], indices_fn)
        video = open_video(path, decoder=self.decoder)
        try:
            return take_frames(video, indices_fn(len(video)))
        finally:
            video.close()

    def video_frames(self, path: str, yuv: tuple[int, int] | None = None) -> Tensor:
        """``frames`` frames spread over the video → ``[T, 3, S, S]`` for the spatial extractor."""
        from avlab.models.unqa import uniform_indices

        arr = self._read_frames(path, lambda n: uniform_indices(n, self.frames), yuv)
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
        return self.spatial(x)

    def motion_clips(self, path: str, yuv: tuple[int, int] | None = None) -> Tensor:
        """``[chunks, 3, motion_frames, M, M]``: one clip per temporal chunk (SlowFast input)."""

        def indices(n: int) -> np.ndarray:
            out = []
            for c in range(self.motion_chunks):
                lo, hi = (
                    c * n // self.motion_chunks,
                    max(c * n // self.motion_chunks + 1, (c + 1) * n // self.motion_chunks),
                )
                # consecutive frames from the chunk's start when it is long enough, else spread/repeated
                span = np.arange(lo, min(hi, lo + self.motion_frames))
                if len(span) < self.motion_frames:
                    span = np.clip(
                        np.round(np.linspace(lo, hi - 1, self.motion_frames)).astype(int), 0, n - 1
                    )
                out.append(span)
            return np.concatenate(out)

        arr = self._read_frames(path, indices, yuv)
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
        x = self._resize_crop(x, self.motion_size, self.motion_size)
        x = x.view(self.motion_chunks, self.motion_frames, 3, self.motion_size, self.motion_size)
        return x.permute(0, 2, 1, 3, 4).contiguous()

    # ---------------------------------------------------------------- audio
    def audio(self, path: str) -> tuple[Tensor, int, bool]:
        """``(wave [n], valid samples, has_audio)``: mono, ``audio_sr``, first ``audio_seconds``."""
        wave: np.ndarray | None = None
        if str(path).lower().endswith((".wav", ".flac")):
            import soundfile as sf

            try:
                data, sr = sf.read(str(path), dtype="float32", always_2d=True)
                wave = data.mean(axis=1)
                if sr != self.audio_sr:
                    import librosa

                    wave = librosa.resample(wave, orig_sr=sr, target_sr=self.audio_sr)
            except RuntimeError:
                wave = None
        if wave is None:
            from avlab.media.ffmpeg import load_audio, probe

            if not probe(path).has_audio:  # missing modality: an AV item without audio
                return torch.zeros(self.audio_len), 0, False
            data, _ = load_audio(path, sr=self.audio_sr, mono=True)
            wave = data[0]
        wave = np.asarray(wave, dtype=np.float32)[: self.audio_len]
        out = torch.zeros(self.audio_len)
        out[: len(wave)] = torch.from_numpy(wave)
        return out, len(wave), len(wave) > 0


def _read_yuv420(path: str, width: int, height: int, indices_fn: Any) -> np.ndarray:
    """Frames of a raw 8-bit YUV 4:2:0 file as RGB ``[T, H, W, 3]`` uint8 (BT.601 full-range)."""
    frame = width * height * 3 // 2
    size = Path(path).stat().st_size
    n = size // frame
    if n == 0:
        raise MediaError(f"{path}: smaller than one {width}x{height} YUV 4:2:0 frame; check the resolution")
    out = []
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for i in indices_fn(n):
        buf = mm[int(i) * frame : (int(i) + 1) * frame]
        y = buf[: width * height].reshape(height, width).astype(np.float32)
        u = (
            buf[width * height : width * height * 5 // 4]
            .reshape(height // 2, width // 2)
            .repeat(2, 0)
            .repeat(2, 1)
            .astype(np.float32)
            - 128
        )
        v = (
            buf[width * height * 5 // 4 :]
            .reshape(height // 2, width // 2)
            .repeat(2, 0)
            .repeat(2, 1)
            .astype(np.float32)
            - 128
        )
        rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], axis=-1)
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(out)
