"""Full-reference audio features X_a ∈ R^{N×d_a} for Attentive AV-FusionNet, behind a pluggable interface.

The paper (Salaj & Biswas, Sec. 2) takes X_a (d_a = 512) from the last hidden layer of Dolby's
Generative Machine Listener (GML) and Q_a from GML's output. GML is not public, so avlab offers:

* :class:`SpectralSimilarityExtractor` (default): a deterministic, weight-free FR comparison of the
  reference and degraded mel spectrograms in the spirit of ViSQOL's per-band NSIM. Per temporal
  unit it gives, for each of the 128 mel bands, mean and std of NSIM and mean and std of the
  level difference: exactly 512 values, so the model's shapes match the paper's.
* :class:`PrecomputedEmbeddings`: one ``.npy`` per stimulus (e.g. real GML embeddings exported by
  a Dolby user), checked for width.

Both return :class:`AudioFeatures` (``embedding [N, dim]`` float32 and a scalar ``quality`` Q_a on
a 1–5 MOS-like scale for the weighted-product (Eq. 9) and SVR baselines), and both can cache their
results in a :class:`~avlab.features.cache.FeatureCache`.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avlab.errors import ConfigError, FeatureError, MediaError
from avlab.features.cache import FeatureCache, cache_key, file_fingerprint

__all__ = [
    "AudioFeatureExtractor",
    "AudioFeatures",
    "PrecomputedEmbeddings",
    "SpectralSimilarityExtractor",
    "align_signals",
    "estimate_lag",
    "nsim_to_quality",
]

log = logging.getLogger(__name__)


@dataclass
class AudioFeatures:
    """Audio features of one (reference, distorted) pair.

    Attributes:
        embedding: ``[N, dim]`` float32, the X_a of the paper (N temporal units).
        quality: Q_a, a scalar on a 1–5 MOS-like scale (5 = transparent).
        from_cache: whether the result was read from a feature cache.
    """

    embedding: np.ndarray
    quality: float
    from_cache: bool = False


class AudioFeatureExtractor(abc.ABC):
    """Interface of full-reference audio feature extractors.

    Subclasses set ``name``, ``version`` and ``dim``, describe their settings in :meth:`params`
    (everything that changes the output; it is part of the cache key) and implement
    :meth:`_compute`. :meth:`extract` adds caching and shape checks.
    """

    name: str = "audio"
    version: str = "1"
    dim: int = 512

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Settings that determine the output (JSON-able)."""

    @abc.abstractmethod
    def _compute(
        self, reference: Path, distorted: Path, *, n_units: int, stimulus: str | None
    ) -> AudioFeatures:
        """Compute the features without caching."""

    def cache_inputs(self, reference: Path, distorted: Path, stimulus: str | None) -> list[Path]:
        """Files whose content the result depends on (fingerprinted into the cache key)."""
        return [Path(reference), Path(distorted)]

    def cache_key(
        self, reference: str | Path, distorted: str | Path, *, n_units: int = 1, stimulus: str | None = None
    ) -> str:
        """Feature-cache key of this extractor's result for the pair."""
        return cache_key(
            self.name,
            self.version,
            {**self.params(), "n_units": int(n_units)},
            self.cache_inputs(Path(reference), Path(distorted), stimulus),
        )

    @staticmethod
    def to_arrays(features: AudioFeatures) -> dict[str, np.ndarray]:
        """What the cache stores for a result."""
        return {
            "embedding": np.asarray(features.embedding, dtype=np.float32),
            "quality": np.float64(features.quality),
        }

    def provenance(
        self, reference: Path, distorted: Path, n_units: int, stimulus: str | None
    ) -> dict[str, Any]:
        """Provenance sidecar for a cached result."""
        return {
            "extractor": self.name,
            "version": self.version,
            "params": {**self.params(), "n_units": n_units},
            "inputs": [file_fingerprint(p) for p in self.cache_inputs(reference, distorted, stimulus)],
            "stimulus": stimulus,
        }

    def extract(
        self,
        reference: str | Path,
        distorted: str | Path,
        *,
        n_units: int = 1,
        stimulus: str | None = None,
        cache: FeatureCache | None = None,
    ) -> AudioFeatures:
        """X_a (``[n_units, dim]``) and Q_a of ``distorted`` against ``reference``.

        Raises:
            MediaError: a file is missing, corrupt or has no audio stream.
            FeatureError: the signals are too short for ``n_units`` units, or a precomputed
                embedding is missing or has the wrong width.
        """
        reference, distorted = Path(reference), Path(distorted)
        if n_units < 1:
            raise FeatureError(f"n_units must be >= 1, got {n_units}")
        for role, path in (("reference", reference), ("distorted", distorted)):
            if not path.is_file():
                raise MediaError(f"{role} audio {path} does not exist; check the manifest or the path")
        key = None
        if cache is not None:
            key = self.cache_key(reference, distorted, n_units=n_units, stimulus=stimulus)
            hit = cache.get(key)
            if hit is not None and hit["embedding"].shape == (n_units, self.dim):
                return AudioFeatures(
                    embedding=hit["embedding"], quality=float(hit["quality"]), from_cache=True
                )
        out = self._compute(reference, distorted, n_units=n_units, stimulus=stimulus)
        emb = np.asarray(out.embedding, dtype=np.float32)
        if emb.shape != (n_units, self.dim):  # a bug in a subclass, not bad input
            raise AssertionError(f"{self.name} returned shape {emb.shape}, expected {(n_units, self.dim)}")
        out = AudioFeatures(embedding=emb, quality=float(out.quality))
        if cache is not None and key is not None:
            cache.put(key, self.to_arrays(out), self.provenance(reference, distorted, n_units, stimulus))
        return out


# ----------------------------------------------------------------------------------------------
# Alignment


def estimate_lag(
    reference: np.ndarray, distorted: np.ndarray, *, max_lag: int = 4096, max_samples: int = 480_000
) -> int:
    """Delay of ``distorted`` relative to ``reference`` in samples (positive: distorted is late).

    Peak of the FFT cross-correlation of the mono mixdowns over the first ``max_samples``
    samples, searched within ``±max_lag`` (codec delays are a few thousand samples at most; the
    bound keeps periodic content from locking onto a far-away period).
    """
    from scipy.signal import correlate, correlation_lags

    ref = np.asarray(reference, dtype=np.float64)
    dist = np.asarray(distorted, dtype=np.float64)
    ref = ref.mean(axis=0) if ref.ndim == 2 else ref
    dist = dist.mean(axis=0) if dist.ndim == 2 else dist
    ref, dist = ref[:max_samples], dist[:max_samples]
    if not np.any(ref) or not np.any(dist):
        return 0
    corr = correlate(dist, ref, mode="full", method="fft")
    lags = correlation_lags(dist.size, ref.size, mode="full")
    window = np.abs(lags) <= max_lag
    return int(lags[window][np.argmax(corr[window])])


def align_signals(
    reference: np.ndarray, distorted: np.ndarray, *, max_lag: int = 4096
) -> tuple[np.ndarray, np.ndarray, int]:
    """Compensate the lag found by :func:`estimate_lag`; trim both ``[C, T]`` signals to a common length."""
    lag = estimate_lag(reference, distorted, max_lag=max_lag)
    if lag > 0:
        distorted = distorted[:, lag:]
    elif lag < 0:
        reference = reference[:, -lag:]
    n = min(reference.shape[1], distorted.shape[1])
    return reference[:, :n], distorted[:, :n], lag


# ----------------------------------------------------------------------------------------------
# Built-in spectral similarity


#: Mean NSIM at or below which Q_a is 1 (see :func:`nsim_to_quality`).
NSIM_FLOOR = 0.3
#: Exponent of the NSIM → Q_a map; > 1 spreads the high-quality end, where codecs operate.
NSIM_GAMMA = 1.5


def nsim_to_quality(mean_nsim: float) -> float:
    """Q_a = 1 + 4 · clip((s − s0) / (1 − s0), 0, 1)^γ, s0 = :data:`NSIM_FLOOR`, γ = :data:`NSIM_GAMMA`.

    Monotone in the mean NSIM s; identical signals (s = 1) give 5. s0 was set so that the AAC
    ladder of the avq demo (16–256 kb/s, native ffmpeg AAC-LC) spans roughly 2–5 on mixed
    speech/music/transient content, as listening-test MOS for such ladders typically does.
    """
    x = float(np.clip((mean_nsim - NSIM_FLOOR) / (1.0 - NSIM_FLOOR), 0.0, 1.0))
    return 1.0 + 4.0 * x**NSIM_GAMMA


class SpectralSimilarityExtractor(AudioFeatureExtractor):
    """ViSQOL-like full-reference per-band spectral similarity (weight-free, deterministic).

    Steps:
        1. Decode both files at ``sample_rate`` (ffmpeg), keep all channels.
        2. Align: estimate the lag by cross-correlation (±``max_lag`` samples; AAC priming and
           resampler delays are ~1–3k samples) and compensate it, then trim to the common length.
        3. Mel power spectrogram (``n_mels`` bands, ``n_fft``, ``hop_length``), power averaged over
           channels, in dB, floored at ``floor_db`` below the reference's maximum and shifted so
           the floor is 0 (L = ``floor_db`` is the dynamic range).
        4. NSIM per time–frequency cell (ViSQOL; Hines et al. 2015): with Gaussian-weighted local
           means μ, standard deviations σ and covariance σ_rd (σ = 1 cell in time and frequency),
           NSIM = (2 μ_r μ_d + C1)/(μ_r² + μ_d² + C1) · (σ_rd + C3)/(σ_r σ_d + C3),
           C1 = (0.01 L)², C3 = (0.03 L)²/2.
        5. Per temporal unit (N contiguous chunks of frames) and per band: mean and std of NSIM,
           mean and std of the level difference (D − R)/L.

    Embedding layout (``dim = 4 · n_mels`` = 512 by default), index = statistic · n_mels + band:
    ``[nsim_mean(128), nsim_std(128), diff_mean(128), diff_std(128)]``; bands ascend in frequency.

    Q_a = :func:`nsim_to_quality` of the mean NSIM over all bands and frames of the clip.
    Stereo image differences are not measured (power is averaged over channels).
    """

    name = "spectral_similarity"
    version = "1"

    def __init__(
        self,
        sample_rate: int = 48000,
        n_mels: int = 128,
        n_fft: int = 2048,
        hop_length: int = 512,
        dim: int = 512,
        *,
        floor_db: float = 80.0,
        max_lag: int = 4096,
    ) -> None:
        if dim != 4 * n_mels:
            raise ConfigError(
                f"SpectralSimilarityExtractor gives 4 statistics per mel band, so dim must be "
                f"4 * n_mels = {4 * n_mels}, got dim={dim}; set n_mels = dim / 4"
            )
        self.sample_rate, self.n_mels, self.n_fft, self.hop_length = sample_rate, n_mels, n_fft, hop_length
        self.dim, self.floor_db, self.max_lag = dim, floor_db, max_lag

    def params(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "n_mels": self.n_mels,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "dim": self.dim,
            "floor_db": self.floor_db,
            "max_lag": self.max_lag,
            "nsim_floor": NSIM_FLOOR,
            "nsim_gamma": NSIM_GAMMA,
        }

    def _mel_power(self, x: np.ndarray) -> np.ndarray:
        import librosa

        mel = librosa.feature.melspectrogram(
            y=x,
            sr=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            fmax=self.sample_rate / 2,
            power=2.0,
        )
        return mel.mean(axis=0) if mel.ndim == 3 else mel  # [n_mels, frames], power averaged over channels

    def compare(
        self,
        reference: np.ndarray,
        distorted: np.ndarray,
        *,
        n_units: int = 1,
        align: bool = True,
        what: str = "signal",
    ) -> tuple[np.ndarray, float, int]:
        """Embedding ``[n_units, dim]``, mean NSIM and the compensated lag for two ``[C, T]`` signals."""
        from scipy.ndimage import gaussian_filter

        ref = np.atleast_2d(np.asarray(reference, dtype=np.float32))
        dist = np.atleast_2d(np.asarray(distorted, dtype=np.float32))
        if ref.shape[0] != dist.shape[0]:  # e.g. mono reference, stereo stimulus: compare mixdowns
            ref, dist = ref.mean(axis=0, keepdims=True), dist.mean(axis=0, keepdims=True)
        lag = 0
        if align:
            ref, dist, lag = align_signals(ref, dist, max_lag=self.max_lag)
        else:
            n = min(ref.shape[1], dist.shape[1])
            ref, dist = ref[:, :n], dist[:, :n]
        if ref.shape[1] < self.n_fft:
            raise FeatureError(
                f"{what}: only {ref.shape[1]} common audio samples at {self.sample_rate} Hz; "
                f"the audio must be longer than n_fft={self.n_fft} samples"
            )
        ref_db = 10.0 * np.log10(self._mel_power(ref) + 1e-12)
        dist_db = 10.0 * np.log10(self._mel_power(dist) + 1e-12)
        floor = ref_db.max() - self.floor_db
        big_l = self.floor_db
        r = np.clip(ref_db - floor, 0.0, None)
        d = np.clip(dist_db - floor, 0.0, None)
        n_frames = r.shape[1]
        if n_units > n_frames:
            raise FeatureError(
                f"{what}: {n_frames} spectrogram frames cannot form {n_units} temporal units; "
                f"use n_units <= {n_frames}"
            )
        sig = (1.0, 1.0)
        mu_r, mu_d = gaussian_filter(r, sig, mode="nearest"), gaussian_filter(d, sig, mode="nearest")
        var_r = np.maximum(gaussian_filter(r * r, sig, mode="nearest") - mu_r**2, 0.0)
        var_d = np.maximum(gaussian_filter(d * d, sig, mode="nearest") - mu_d**2, 0.0)
        cov = gaussian_filter(r * d, sig, mode="nearest") - mu_r * mu_d
        c1, c3 = (0.01 * big_l) ** 2, (0.03 * big_l) ** 2 / 2.0
        intensity = (2 * mu_r * mu_d + c1) / (mu_r**2 + mu_d**2 + c1)
        structure = (cov + c3) / (np.sqrt(var_r * var_d) + c3)
        nsim = intensity * structure  # [bands, frames]
        diff = (d - r) / big_l
        units = []
        for cols in np.array_split(np.arange(n_frames), n_units):
            ns, df = nsim[:, cols], diff[:, cols]
            units.append(np.concatenate([ns.mean(1), ns.std(1), df.mean(1), df.std(1)]))
        return np.stack(units).astype(np.float32), float(nsim.mean()), lag

    def _compute(
        self, reference: Path, distorted: Path, *, n_units: int, stimulus: str | None
    ) -> AudioFeatures:
        from avlab.media.ffmpeg import load_audio

        ref, _ = load_audio(reference, sr=self.sample_rate)
        dist, _ = load_audio(distorted, sr=self.sample_rate)
        emb, mean_nsim, lag = self.compare(ref, dist, n_units=n_units, what=f"{distorted} vs {reference}")
        if abs(lag) >= self.max_lag:
            log.warning(
                "%s vs %s: lag at the search bound (%d samples); the files may not be the same segment",
                distorted,
                reference,
                lag,
            )
        return AudioFeatures(embedding=emb, quality=nsim_to_quality(mean_nsim))


class PrecomputedEmbeddings(AudioFeatureExtractor):
    """Audio embeddings loaded from one ``.npy`` per stimulus (e.g. 512-d GML embeddings).

    ``folder / pattern.format(stimulus=...)`` must hold an array of shape ``[dim]`` (clip level)
    or ``[N, dim]`` (N temporal units; chunk-averaged when ``n_units`` is smaller than N).

    Q_a comes from the built-in :class:`SpectralSimilarityExtractor` (``quality_extractor``):
    an embedding file holds only the hidden-layer activations, not the predictor's own score,
    so the baselines that need a scalar Q_a use the weight-free measure instead.
    """

    name = "precomputed"
    version = "1"

    def __init__(
        self,
        folder: str | Path,
        pattern: str = "{stimulus}.npy",
        dim: int = 512,
        *,
        quality_extractor: AudioFeatureExtractor | None = None,
    ) -> None:
        self.folder, self.pattern, self.dim = Path(folder), pattern, int(dim)
        self.quality_extractor = quality_extractor or SpectralSimilarityExtractor()

    def params(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "dim": self.dim,
            "quality": self.quality_extractor.name,
            "quality_params": self.quality_extractor.params(),
        }

    def path_for(self, stimulus: str) -> Path:
        """The ``.npy`` file of ``stimulus``."""
        return self.folder / self.pattern.format(stimulus=stimulus)

    def cache_inputs(self, reference: Path, distorted: Path, stimulus: str | None) -> list[Path]:
        paths = [Path(reference), Path(distorted)]
        if stimulus is not None and self.path_for(stimulus).is_file():
            paths.append(self.path_for(stimulus))
        return paths

    def load(self, stimulus: str, n_units: int = 1) -> np.ndarray:
        """The embedding of ``stimulus`` as ``[n_units, dim]`` float32.

        Raises:
            FeatureError: missing file, unreadable file, wrong rank or width, or fewer units than asked.
        """
        path = self.path_for(stimulus)
        if not path.is_file():
            raise FeatureError(
                f"precomputed audio embedding {path} does not exist; export one .npy per "
                "stimulus "
                f"named like `{self.pattern}` into {self.folder}"
            )
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FeatureError(
                f"{path} is not a readable .npy array ({exc}); re-export it with numpy.save"
            ) from exc
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise FeatureError(f"{path} has shape {arr.shape}; expected [{self.dim}] or [N, {self.dim}]")
        if arr.shape[1] != self.dim:
            raise FeatureError(
                f"{path} has width {arr.shape[1]}, expected {self.dim}; export embeddings of "
                f"width {self.dim} or set the extractor's dim to {arr.shape[1]}"
            )
        if not np.all(np.isfinite(arr)):
            raise FeatureError(f"{path} contains NaN or infinite values; re-export it")
        if arr.shape[0] < n_units:
            raise FeatureError(
                f"{path} holds {arr.shape[0]} temporal unit(s) but n_units={n_units} was "
                "asked; "
                f"use n_units <= {arr.shape[0]}"
            )
        if arr.shape[0] != n_units:
            arr = np.stack([c.mean(axis=0) for c in np.array_split(arr, n_units, axis=0)])
        return arr.astype(np.float32)

    def _compute(
        self, reference: Path, distorted: Path, *, n_units: int, stimulus: str | None
    ) -> AudioFeatures:
        if stimulus is None:
            raise FeatureError("PrecomputedEmbeddings needs the stimulus name to find its .npy file")
        emb = self.load(stimulus, n_units)
        quality = self.quality_extractor.extract(reference, distorted, n_units=1).quality
        return AudioFeatures(embedding=emb, quality=quality)

    def extract(
        self,
        reference: str | Path,
        distorted: str | Path,
        *,
        n_units: int = 1,
        stimulus: str | None = None,
        cache: FeatureCache | None = None,
    ) -> AudioFeatures:
        """Load the embedding (always re-read, so edits to the .npy are seen) and a cached Q_a."""
        if stimulus is None:
            raise FeatureError("PrecomputedEmbeddings needs the stimulus name to find its .npy file")
        emb = self.load(stimulus, n_units)  # cheap; errors surface before any decoding
        quality = self.quality_extractor.extract(reference, distorted, n_units=1, cache=cache).quality
        return AudioFeatures(embedding=emb, quality=quality)
