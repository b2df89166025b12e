"""The synthetic content and gaze of the saliency demo: two speakers, their voices, and observers.

What these functions generate, and the formulas, are documented in :mod:`avlab.demo.saliency` (the
builder writes that documentation into the demo folder's README.txt). **No human looked at these
videos**: the gaze is simulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SPEAKER_COLOURS",
    "SPEAKER_F0",
    "Speakers",
    "dialogue",
    "draw_speakers",
    "plan_speakers",
    "synthetic_gaze",
    "two_speaker_gaze",
]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma, mode="constant")


def _motion_energy(frames: np.ndarray) -> np.ndarray:
    """``m_t`` of the module docstring: blurred absolute frame difference, max-normalised per frame."""
    t_n, _, w, _ = frames.shape
    gray = frames.astype(np.float32).mean(axis=-1)
    motion = np.zeros_like(gray)
    motion[1:] = np.abs(np.diff(gray, axis=0))
    motion[0] = motion[1] if t_n > 1 else 0
    motion = np.stack([_blur(m, 0.04 * w) for m in motion])
    return motion / (motion.reshape(t_n, -1).max(axis=1)[:, None, None] + 1e-6)


def _centre_bias(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((xx - (w - 1) / 2) / (w / 4)) ** 2 + ((yy - (h - 1) / 2) / (h / 4)) ** 2) / 2)


def _observe(
    attract: np.ndarray,
    rng: np.random.Generator,
    n_observers: int,
    p_saccade: float,
    blink: int | None,
    shift: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Observers over attraction maps ``[T, H, W]`` (module docstring) → fixations uint8 ``[T, H, W]``.

    ``shift(t, pos) → [n, 2]`` displacements (e.g. following a moving speaker) is applied to the
    observers that drift; ``None`` means none.
    """
    t_n, h, w = attract.shape
    fix = np.zeros((t_n, h, w), np.uint8)
    pos = None
    for t in range(t_n):
        p = attract[t].ravel() / attract[t].sum()
        samples = rng.choice(h * w, size=n_observers, p=p)
        new = np.stack([samples // w, samples % w], axis=1).astype(np.float64)
        if pos is None:
            pos = new
        else:
            saccade = rng.random(n_observers) < p_saccade
            drift = pos + rng.normal(0, 0.01 * w, size=pos.shape)
            if shift is not None:
                drift = drift + shift(t, pos)
            pos = np.where(saccade[:, None], new, drift)
            pos[:, 0] = np.clip(pos[:, 0], 0, h - 1)
            pos[:, 1] = np.clip(pos[:, 1], 0, w - 1)
        if t == blink:
            continue
        iy, ix = np.round(pos).astype(int).T
        fix[t, iy, ix] = 1
    return fix


def _continuous(fix: np.ndarray) -> np.ndarray:
    """Fixations blurred with σ = 0.035·W, scaled to max 1 per frame (all-zero frames stay zero)."""
    t_n, _, w = fix.shape
    cont = np.stack([_blur(f.astype(np.float32), 0.035 * w) for f in fix])
    peak = cont.reshape(t_n, -1).max(axis=1)[:, None, None]
    return np.where(peak > 0, cont / np.where(peak > 0, peak, 1), 0)


def synthetic_gaze(
    frames: np.ndarray, *, n_observers: int, seed: int, blink: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The DHF1K part's motion-driven synthetic gaze (module docstring).

    Returns ``(fixations uint8 [T, H, W] in {0, 1}, continuous float [T, H, W] in [0, 1])``.
    """
    rng = np.random.default_rng(seed)
    _, h, w, _ = frames.shape
    attract = _motion_energy(frames) + 0.25 * _centre_bias(h, w)[None]
    fix = _observe(attract, rng, n_observers, 0.15, blink)
    return fix, _continuous(fix)


@dataclass(frozen=True)
class Speakers:
    """The two speakers of a video: centres ``[T, 2, 2]`` (frame, speaker, (y, x)) in pixels, the
    radius, and who speaks at each frame (``[T]``, 0 = orange, 1 = blue)."""

    centres: np.ndarray
    radius: float
    speaking: np.ndarray


#: RGB of the orange (0) and blue (1) speaker, and the f0 (Hz) of their voices.
SPEAKER_COLOURS = ((235, 120, 20), (30, 140, 235))
SPEAKER_F0 = (180.0, 900.0)


def plan_speakers(n_frames: int, h: int, w: int, fps: float, rng: np.random.Generator) -> Speakers:
    """Where the two speakers are and who speaks when (module docstring)."""
    radius = 0.09 * w
    # Fixed sides (orange left, blue right): which side is watched is then a matter of the voice alone,
    # a mapping a CPU-sized model learns from a dozen training videos.
    xs = (0.27 * w, 0.73 * w)
    t = np.arange(n_frames, dtype=np.float64)
    centres = np.zeros((n_frames, 2, 2))
    for k in range(2):
        y0 = rng.uniform(0.35, 0.65) * h
        px, py = rng.uniform(30, 60), rng.uniform(30, 60)  # periods in frames
        phx, phy = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        centres[:, k, 0] = y0 + 0.10 * h * np.sin(2 * np.pi * t / py + phy)
        centres[:, k, 1] = xs[k] + 0.08 * w * np.sin(2 * np.pi * t / px + phx)
    speaking = np.zeros(n_frames, np.int64)
    who, start = int(rng.integers(2)), 0
    while start < n_frames:
        length = max(1, round(rng.uniform(0.6, 1.4) * fps))
        speaking[start : start + length] = who
        who, start = 1 - who, start + length
    return Speakers(centres, radius, speaking)


def draw_speakers(frames: np.ndarray, sp: Speakers) -> np.ndarray:
    """The frames with the two discs painted on (1-pixel soft edge); the same whoever speaks."""
    out = frames.astype(np.float32).copy()
    _, h, w, _ = frames.shape
    yy, xx = np.mgrid[0:h, 0:w]
    for t in range(len(frames)):
        for k in range(2):
            cy, cx = sp.centres[t, k]
            alpha = np.clip(sp.radius + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1)[..., None]
            out[t] = (1 - alpha) * out[t] + alpha * np.asarray(SPEAKER_COLOURS[k], np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def dialogue(sp: Speakers, fps: float, sr: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """The speakers' voices, mono float ``[n_samples]`` at ``sr``, RMS 0.1 (module docstring)."""
    time = np.arange(n_samples) / sr
    frame = np.clip(np.round(time * fps).astype(int), 0, len(sp.speaking) - 1)  # frame k centred at k/fps
    who = sp.speaking[frame]
    out = np.zeros(n_samples)
    for k, f0 in enumerate(SPEAKER_F0):
        vib = 1 + 0.01 * np.sin(2 * np.pi * 5.0 * time + rng.uniform(0, 2 * np.pi))
        phase = 2 * np.pi * f0 * np.cumsum(vib) / sr
        voice = sum(np.sin(h * phase) / h for h in range(1, 6))
        syllables = 0.35 + 0.65 * (0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * time + rng.uniform(0, 2 * np.pi)))
        # 20 ms fades at turn boundaries, so a turn change is not a click.
        fade = int(0.02 * sr)
        gate = np.convolve((who == k).astype(np.float64), np.ones(fade) / fade, mode="same")
        out += voice * syllables * gate
    return out * 0.1 / (np.sqrt(np.mean(out**2)) + 1e-12)


def two_speaker_gaze(
    frames: np.ndarray, sp: Speakers, *, n_observers: int, rng: np.random.Generator, blink: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The STAViS part's synthetic gaze (module docstring): mostly on whoever speaks.

    Returns ``(fixations uint8 [T, H, W] in {0, 1}, continuous float [T, H, W] in [0, 1])``.
    """
    t_n, h, w, _ = frames.shape
    yy, xx = np.mgrid[0:h, 0:w]
    sigma = sp.radius / 1.5
    background = (_motion_energy(frames) + _centre_bias(h, w)[None]) / 2
    attract = np.empty((t_n, h, w))
    for t in range(t_n):
        blobs = [np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)) for cy, cx in sp.centres[t]]
        on, off = blobs[sp.speaking[t]], blobs[1 - sp.speaking[t]]
        attract[t] = (
            0.85 * on / on.sum() + 0.05 * off / off.sum() + 0.10 * background[t] / background[t].sum()
        )

    def follow(t: int, pos: np.ndarray) -> np.ndarray:
        # an observer within 1.5·r of a speaker moves with it
        move = np.zeros_like(pos)
        for k in range(2):
            near = np.hypot(*(pos - sp.centres[t - 1, k]).T) < 1.5 * sp.radius
            move[near] = sp.centres[t, k] - sp.centres[t - 1, k]
        return move

    fix = _observe(attract, rng, n_observers, 0.3, blink, follow)
    return fix, _continuous(fix)
