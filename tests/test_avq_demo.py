"""The avq demo builder: manifest format, decodable media, pseudo-MOS, idempotence and feature-cache reuse."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from avlab.demo.avq import MANIFEST_COLUMNS, build_avq_demo, pseudo_mos, synthesize_soundtrack
from avlab.errors import ConfigError
from avlab.features.audio import SpectralSimilarityExtractor
from avlab.features.cache import dataset_feature_cache
from avlab.features.vmaf import extract_vmaf
from avlab.media.ffmpeg import probe


@pytest.fixture(scope="session")
def tiny_avq(tmp_path_factory) -> Path:
    # Under the session's base temp folder so that other modules asking for it reuse the build.
    return build_avq_demo(tmp_path_factory.getbasetemp() / "avq_tiny", size="tiny", seed=0)


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_manifest_columns_and_rows(tiny_avq):
    with open(tiny_avq / "manifest.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == MANIFEST_COLUMNS
    rows = _rows(tiny_avq)
    assert len(rows) == 27  # 3 sources x 3 video x 3 audio bitrates
    assert len({r["stimulus"] for r in rows}) == 27
    assert {r["source"] for r in rows} == {"carphone_a", "bikes_b", "bbb_a"}
    assert {int(r["video_bitrate_kbps"]) for r in rows} == {25, 100, 1500}
    assert {int(r["audio_bitrate_kbps"]) for r in rows} == {16, 64, 256}
    for r in rows:
        assert r["mos_scale"] == "1-5"
        assert r["distorted"] == f"stimuli/{r['stimulus']}.mp4"
        assert r["reference"] == f"references/{r['source']}.mkv"
        assert not Path(r["reference"]).is_absolute()
        assert 1.0 <= float(r["mos"]) <= 5.0


def test_all_media_decode(tiny_avq):
    rows = _rows(tiny_avq)
    refs = {r["reference"] for r in rows}
    ref_info = {ref: probe(tiny_avq / ref) for ref in refs}
    for info in ref_info.values():
        assert info.has_video and info.has_audio and (info.width, info.height) == (176, 144)
        assert info.audio_sample_rate == 48000 and info.audio_channels == 2
    for r in rows:
        info = probe(tiny_avq / r["distorted"])
        ref = ref_info[r["reference"]]
        assert info.has_video and info.has_audio
        assert (info.width, info.height) == (176, 144) and info.n_frames == ref.n_frames
        assert info.audio_sample_rate == 48000 and info.audio_channels == 2


def test_demo_info_documents_pseudo_mos(tiny_avq):
    info = json.loads((tiny_avq / "demo_info.json").read_text())
    assert info["size"] == "tiny" and info["seed"] == 0 and info["builder_version"]
    assert info["subjective_scores"] is False and "pseudo" in info["note"].lower()
    assert "q_a^(1-w_v)" in info["pseudo_mos"]["formula"]
    w = [s["w_v"] for s in info["sources"]]
    assert min(w) == pytest.approx(0.35) and max(w) == pytest.approx(0.80)  # content-dependent weights


def test_pseudo_mos_follows_objective_quality(tiny_avq):
    mos = {r["stimulus"]: float(r["mos"]) for r in _rows(tiny_avq)}
    for src in ("carphone_a", "bikes_b", "bbb_a"):
        assert mos[f"{src}_v1500_a256"] > mos[f"{src}_v25_a16"] + 0.5
    # Same audio degradation hurts more where the video weight is low (audio-dominated content).
    info = {s["name"]: s["w_v"] for s in json.loads((tiny_avq / "demo_info.json").read_text())["sources"]}
    assert info["bbb_a"] < info["bikes_b"]


def test_pseudo_mos_function():
    assert pseudo_mos(100.0, 5.0, 0.5, "x", 0) == pseudo_mos(100.0, 5.0, 0.5, "x", 0)
    assert pseudo_mos(100.0, 5.0, 0.5, "x", 0) != pseudo_mos(100.0, 5.0, 0.5, "y", 0)
    assert 1.0 <= pseudo_mos(0.0, 1.0, 0.5, "x", 0) < 1.5
    assert 4.7 < pseudo_mos(100.0, 5.0, 0.5, "x", 0) <= 5.0
    hi_v = pseudo_mos(90.0, 2.0, 0.8, "s", 0) - pseudo_mos(90.0, 2.0, 0.35, "s", 0)
    assert hi_v > 0.3  # a video-weighted source forgives bad audio


def test_rerun_is_fast_and_features_are_cached(tiny_avq):
    before = (tiny_avq / "manifest.csv").read_text()
    t0 = time.perf_counter()
    assert build_avq_demo(tiny_avq, size="tiny", seed=0) == tiny_avq
    assert time.perf_counter() - t0 < 0.5
    assert (tiny_avq / "manifest.csv").read_text() == before
    cache = dataset_feature_cache(tiny_avq)
    ext = SpectralSimilarityExtractor()
    for r in _rows(tiny_avq):
        ref, dist = tiny_avq / r["reference"], tiny_avq / r["distorted"]
        v = extract_vmaf(ref, dist, cache=cache)
        a = ext.extract(ref, dist, cache=cache, stimulus=r["stimulus"])
        assert v.from_cache and a.from_cache, r["stimulus"]
        assert v.features.shape == (1, 6) and a.embedding.shape == (1, 512)


def test_unknown_size(tmp_path):
    with pytest.raises(ConfigError, match="tiny"):
        build_avq_demo(tmp_path, size="huge")


def test_soundtracks_deterministic_and_distinct():
    a = synthesize_soundtrack("speech", 4800, seed=1)
    assert a.shape == (2, 4800) and a.dtype == np.float32
    np.testing.assert_array_equal(a, synthesize_soundtrack("speech", 4800, seed=1))
    assert not np.allclose(a, synthesize_soundtrack("speech", 4800, seed=2))
    assert np.abs(synthesize_soundtrack("transients+ambience", 48000, seed=0)).max() <= 0.9 + 1e-6
    with pytest.raises(ConfigError, match="kazoo"):
        synthesize_soundtrack("kazoo", 100, seed=0)
