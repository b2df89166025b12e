"""Full-reference audio features: shape, identity, AAC-ladder monotonicity, lag, precomputed loader."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soundfile as sf

from avlab.demo.avq import synthesize_soundtrack
from avlab.errors import ConfigError, FeatureError, MediaError
from avlab.features.audio import (
    PrecomputedEmbeddings,
    SpectralSimilarityExtractor,
    estimate_lag,
    nsim_to_quality,
)
from avlab.features.cache import FeatureCache
from avlab.media.ffmpeg import run_ffmpeg

SR = 48000
LADDER = (16, 32, 64, 96, 256)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("audio")
    x = synthesize_soundtrack("music+transients", int(1.5 * SR), seed=3)
    ref = d / "ref.wav"
    sf.write(str(ref), x.T, SR, subtype="FLOAT")
    files = {"ref": ref, "x": x}
    for kbps in LADDER:
        out = d / f"aac{kbps}.m4a"
        run_ffmpeg(
            ["-v", "error", "-i", str(ref), "-c:a", "aac", "-b:a", f"{kbps}k", "-y", str(out)], what="test"
        )
        files[kbps] = out
    for lag in (1500, -700):  # distorted late by 1500 samples / early by 700 samples
        y = np.concatenate([np.zeros((2, lag)), x], axis=1) if lag > 0 else x[:, -lag:]
        p = d / f"lag{lag}.wav"
        sf.write(str(p), y.T, SR, subtype="FLOAT")
        files[f"lag{lag}"] = p
    video_only = d / "video_only.mp4"
    run_ffmpeg(
        [
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=10:duration=1",
            "-c:v",
            "libx264",
            "-y",
            str(video_only),
        ],
        what="test",
    )
    files["video_only"] = video_only
    return files


@pytest.fixture(scope="module")
def extractor() -> SpectralSimilarityExtractor:
    return SpectralSimilarityExtractor()


def test_width_512_and_units(audio, extractor):
    one = extractor.extract(audio["ref"], audio[64])
    assert one.embedding.shape == (1, 512) and one.embedding.dtype == np.float32
    assert np.all(np.isfinite(one.embedding))
    three = extractor.extract(audio["ref"], audio[64], n_units=3)
    assert three.embedding.shape == (3, 512)
    # The clip-level NSIM mean (first 128 values) is the frame-weighted mean of the unit means.
    np.testing.assert_allclose(three.embedding[:, :128].mean(0), one.embedding[0, :128], atol=0.02)
    assert three.quality == pytest.approx(one.quality)
    with pytest.raises(FeatureError, match="n_units"):
        extractor.extract(audio["ref"], audio[64], n_units=100_000)


def test_identical_is_maximal(audio, extractor):
    same = extractor.extract(audio["ref"], audio["ref"])
    assert same.quality == pytest.approx(5.0, abs=1e-6)
    emb = same.embedding[0]
    np.testing.assert_allclose(emb[:128], 1.0, atol=1e-5)  # NSIM mean per band
    np.testing.assert_allclose(emb[128:], 0.0, atol=1e-5)  # NSIM std, level-difference mean and std
    worse = extractor.extract(audio["ref"], audio[256])
    assert worse.embedding[0, :128].mean() < emb[:128].mean()


def test_quality_monotone_over_aac_ladder(audio, extractor):
    q = [extractor.extract(audio["ref"], audio[k]).quality for k in LADDER]
    assert all(a < b for a, b in itertools.pairwise(q)), q
    assert q[0] < 3.0 < q[-1] and 1.0 <= q[0] and q[-1] <= 5.0


def test_nsim_to_quality_is_monotone():
    s = np.linspace(-1, 1, 201)
    q = np.array([nsim_to_quality(v) for v in s])
    assert np.all(np.diff(q) >= 0) and q[0] == 1.0 and q[-1] == 5.0


def test_lag_estimation_and_compensation(audio, extractor):
    x = audio["x"]
    delayed = np.concatenate([np.zeros((2, 1500)), x], axis=1)
    assert estimate_lag(x, delayed) == 1500
    assert estimate_lag(x, x[:, 700:]) == -700
    assert estimate_lag(x, np.concatenate([np.zeros((2, 9000)), x], axis=1), max_lag=4096) != 9000  # bounded
    for name in ("lag1500", "lag-700"):
        res = extractor.extract(audio["ref"], audio[name])
        assert res.quality > 4.95, name
    # Without compensation the same pair looks badly degraded: the alignment is what fixes it.
    _, nsim_unaligned, _ = extractor.compare(x, delayed, align=False)
    _, nsim_aligned, lag = extractor.compare(x, delayed)
    assert lag == 1500 and nsim_aligned > 0.99 and nsim_unaligned < 0.9


def test_errors(audio, extractor, tmp_path):
    with pytest.raises(MediaError, match="video_only.mp4 has no audio stream"):
        extractor.extract(audio["ref"], audio["video_only"])
    with pytest.raises(MediaError, match="missing.wav"):
        extractor.extract(audio["ref"], tmp_path / "missing.wav")
    with pytest.raises(ConfigError, match="4 \\* n_mels"):
        SpectralSimilarityExtractor(dim=500)
    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros((100, 2), dtype=np.float32), SR)
    with pytest.raises(FeatureError, match="short.wav"):
        extractor.extract(short, short)


def test_cache(audio, extractor, tmp_path):
    cache = FeatureCache(tmp_path)
    a = extractor.extract(audio["ref"], audio[32], cache=cache)
    b = extractor.extract(audio["ref"], audio[32], cache=cache)
    assert not a.from_cache and b.from_cache
    np.testing.assert_array_equal(a.embedding, b.embedding)
    assert a.quality == b.quality
    other = SpectralSimilarityExtractor(n_mels=64, dim=256).extract(audio["ref"], audio[32], cache=cache)
    assert not other.from_cache and other.embedding.shape == (1, 256)


def test_precomputed_embeddings(audio, tmp_path):
    folder = tmp_path / "gml"
    folder.mkdir()
    np.save(folder / "clip_ok.npy", np.arange(512, dtype=np.float32))
    np.save(folder / "clip_units.npy", np.ones((4, 512)) * np.arange(4)[:, None])
    np.save(folder / "clip_wide.npy", np.zeros(768, dtype=np.float32))
    pre = PrecomputedEmbeddings(folder)
    ok = pre.extract(audio["ref"], audio[64], stimulus="clip_ok")
    assert ok.embedding.shape == (1, 512) and ok.embedding[0, 5] == 5.0
    # Q_a comes from the built-in extractor, since the .npy holds no score.
    assert ok.quality == pytest.approx(SpectralSimilarityExtractor().extract(audio["ref"], audio[64]).quality)
    units = pre.extract(audio["ref"], audio[64], stimulus="clip_units", n_units=2)
    np.testing.assert_allclose(units.embedding[:, 0], [0.5, 2.5])
    with pytest.raises(FeatureError) as exc:
        pre.extract(audio["ref"], audio[64], stimulus="clip_wide")
    msg = str(exc.value)
    assert "clip_wide.npy" in msg and "768" in msg and "512" in msg
    with pytest.raises(FeatureError, match=r"gml/nothere\.npy"):
        pre.extract(audio["ref"], audio[64], stimulus="nothere")
    with pytest.raises(FeatureError, match="n_units=2"):
        pre.extract(audio["ref"], audio[64], stimulus="clip_ok", n_units=2)
