"""Saliency inference on whole videos: sliding windows, then PNG maps and an overlay MP4.

* :func:`predict_video` — a window of ``clip_len`` frames with step 1 predicts its last frame; the
  first ``clip_len − 1`` frames use the time-reversed window (audio reversed too), as
  :func:`avlab.media.clips.window_indices` defines. Each frame is decoded once, windows are batched.
* :func:`predict_saliency_media` — what ``avlab predict`` does for the saliency task: one 8-bit PNG
  map per frame (evaluation post-processing: resize to the native size, blur, min-max) and an MP4
  with the maps over the video and the video's own audio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avlab.errors import MediaError
from avlab.media.clips import VideoFrames, audio_buffer_len, clip_audio, frame_audio_bounds, window_indices

__all__ = ["predict_saliency_media", "predict_video"]

#: A saliency network: ``(clips [B, 3, T, H, W], audio [B, L] or None) → maps [B, H, W]``.
SaliencyNet = Callable[[Tensor, Tensor | None], Tensor]


@torch.no_grad()
def predict_video(
    net: SaliencyNet,
    video: VideoFrames,
    preprocess: Callable[[Tensor], Tensor],
    clip_len: int,
    *,
    batch_size: int = 8,
    wav: np.ndarray | None = None,
    fps: float | None = None,
    device: torch.device | str = "cpu",
    chunk: int = 16,
) -> Iterator[tuple[int, Tensor, np.ndarray]]:
    """Yield ``(frame index, map [h, w] at model resolution, native frame uint8 [H, W, 3])`` in order.

    Every frame is decoded once (in chunks of ``chunk`` consecutive frames) and preprocessed once;
    the model-resolution frames stay in a buffer only while a later window needs them (at most
    ``2·clip_len − 1 + batch_size + chunk`` frames), so memory does not grow with the video.
    Windows run ``batch_size`` at a time; with ``wav`` (mono 22,050 Hz in [-1, 1]) each window gets
    its SoundNet audio clip, time-reversed for reversed windows.
    """
    n = len(video)
    windows = window_indices(n, clip_len)
    bounds = frame_audio_bounds(n, float(fps or video.fps), len(wav)) if wav is not None else None
    buffer = audio_buffer_len(clip_len)
    frames: dict[int, Tensor] = {}
    natives: dict[int, np.ndarray] = {}
    decoded = 0

    def ensure(upto: int) -> None:
        nonlocal decoded
        while decoded <= upto:
            hi = min(n, max(upto + 1, decoded + chunk))
            raw = video.get(np.arange(decoded, hi))
            proc = preprocess(torch.from_numpy(np.ascontiguousarray(raw)))
            for j, i in enumerate(range(decoded, hi)):
                frames[i], natives[i] = proc[j], raw[j]
            decoded = hi

    for b0 in range(0, n, batch_size):
        batch = windows[b0 : b0 + batch_size]
        ensure(max(max(w.frames) for w in batch))
        clips = torch.stack([torch.stack([frames[i] for i in w.frames], dim=1) for w in batch]).to(device)
        audio = None
        if bounds is not None:
            audio = torch.stack(
                [
                    torch.from_numpy(clip_audio(wav, bounds, w.frames, buffer, reverse=w.reversed))
                    for w in batch
                ]
            ).to(device)
        maps = net(clips, audio).float().cpu()
        for w, m in zip(batch, maps):
            yield w.target, m, natives.pop(w.target)
        nxt = b0 + batch_size
        keep_from = 0 if nxt <= clip_len - 1 else nxt - clip_len + 1  # window nxt's first frame
        for i in [i for i in frames if i < keep_from]:
            del frames[i]


def predict_saliency_media(
    net: SaliencyNet,
    path: str | Path,
    out_dir: str | Path,
    *,
    preprocess: Callable[[Tensor], Tensor],
    clip_len: int,
    audio_visual: bool,
    postprocess: Callable[[Tensor, tuple[int, int]], Tensor],
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    decoder: str = "auto",
) -> dict[str, Any]:
    """Maps for every frame of the video ``path``: ``out_dir/maps/<stem>_00001.png`` … and
    ``out_dir/<stem>_saliency.mp4`` (the maps over the frames, with the video's audio).

    ``postprocess(map, (H, W))`` turns a model-resolution map into the native-size map in [0, 1]
    (the evaluation post-processing). ``decoder`` is the video backend (``data.decoder``, see
    :mod:`avlab.media.decoders`). Returns a JSON-able summary.
    """
    from PIL import Image

    from avlab.media.ffmpeg import load_audio, probe
    from avlab.media.overlay import OverlayWriter, blend_heatmap, jet_lut

    path = Path(path).expanduser()
    info = probe(path)  # clear MediaError for a missing, empty or corrupt file
    if not info.has_video:
        raise MediaError(f"{path} has no video stream")
    video = VideoFrames(path, decoder=decoder)
    n, fps = len(video), video.fps or info.fps
    if n < clip_len:
        raise MediaError(f"{path} has {n} frames, fewer than the {clip_len}-frame window of this model")
    notes = []
    wav = None
    if audio_visual:
        if info.has_audio:
            wav = load_audio(path, sr=22050, mono=True)[0][0]
        else:
            wav = np.zeros(0, np.float32)
            notes.append("the video has no audio track: the audio branch saw silence")
    maps_dir = Path(out_dir) / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    overlay = Path(out_dir) / f"{path.stem}_saliency.mp4"
    h, w = info.height, info.width
    lut = jet_lut()
    count, start = 0, time.perf_counter()
    with OverlayWriter(overlay, path, w, h, fps, n) as writer:
        for t, m, frame in predict_video(
            net, video, preprocess, clip_len, batch_size=batch_size, wav=wav, fps=fps, device=device
        ):
            smap = postprocess(m, (h, w)).numpy()
            u8 = np.clip(np.round(smap * 255), 0, 255).astype(np.uint8)
            Image.fromarray(u8, mode="L").save(maps_dir / f"{path.stem}_{t + 1:05d}.png", compress_level=1)
            writer.write(blend_heatmap(frame, smap, lut))
            count += 1
    elapsed = time.perf_counter() - start
    return {
        "input": str(path),
        "frames": n,
        "maps_written": count,
        "maps_dir": str(maps_dir),
        "overlay": str(overlay),
        "fps": fps,
        "audio": bool(audio_visual and info.has_audio),
        "windows_per_second": count / elapsed if elapsed > 0 else math.nan,
        "notes": notes,
    }
