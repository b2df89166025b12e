"""Saliency data: fold lists, clip/audio alignment, windows, bad input, demo layouts, batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import soundfile as sf
import torch

from avlab.datamodules.saliency import SaliencyDataModule, load_fixation, parse_fold_list
from avlab.demo.saliency import AV_DATASETS, build_saliency_demo
from avlab.errors import ConfigError, DataError
from avlab.media.clips import audio_buffer_len, clip_audio, frame_audio_bounds, window_indices


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_saliency_demo(tmp_path_factory.mktemp("saliency-demo"), size="tiny")


def _dm(root: Path, **kw) -> SaliencyDataModule:
    kw.setdefault("clip_len", 8)
    kw.setdefault("frame_size", (32, 56))
    return SaliencyDataModule(root=str(root), **kw)


# --------------------------------------------------------------------------- fold lists
def test_fold_list_parsing_skips_blank_lines_and_reports_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "AVAD_list_test_1_fps.txt"
    path.write_text("\nV32_Dancers 202 28.666571\n   \nclip4 385 24.999750\nshort 3\n\n")
    assert parse_fold_list(path) == [("V32_Dancers", 202, 28.666571), ("clip4", 385, 24.99975)]
    path.write_text("V1 twelve 25\n")
    with pytest.raises(DataError, match=r"AVAD_list_test_1_fps.txt:1"):
        parse_fold_list(path)


def test_demo_layout_and_folds(demo: Path) -> None:
    root = demo / "stavis"
    for db in AV_DATASETS:
        assert (root / "video_frames" / db).is_dir() and (root / "annotations" / db).is_dir()
    assert (root / "fold_lists" / "DIEM_list_train_fps.txt").is_file()
    assert not (root / "fold_lists" / "DIEM_list_train_1_fps.txt").exists()
    assert "\n\n" in (root / "fold_lists" / "ETMD_av_list_test_2_fps.txt").read_text() or (
        root / "fold_lists" / "ETMD_av_list_test_2_fps.txt"
    ).read_text().startswith("\n")
    mat = scipy.io.loadmat(str(next((root / "annotations" / "AVAD").rglob("fixMap_00001.mat"))))
    assert "eyeMap" in mat and mat["eyeMap"].ndim == 2
    tests = {}
    for fold in (1, 2, 3):
        dm = _dm(root, fold=fold)
        dm.setup()
        tests[fold] = {(r.dataset, r.name) for r in dm.splits["test"]}
        train = {(r.dataset, r.name) for r in dm.splits["train"] + dm.splits["val"]}
        assert not tests[fold] & {t for t in train if t[0] != "DIEM"}
        assert len([t for t in tests[fold] if t[0] == "DIEM"]) == 1  # DIEM's fixed split in every fold
    non_diem = [{t for t in tests[f] if t[0] != "DIEM"} for f in (1, 2, 3)]
    assert not (non_diem[0] & non_diem[1]) and len(non_diem[0] | non_diem[1] | non_diem[2]) == 15
    assert _dm(root).check() == []


def test_batches_have_the_documented_shapes(demo: Path) -> None:
    torch.manual_seed(0)
    dm = _dm(demo / "stavis", datasets=["AVAD", "DIEM"], batch_size=2, test_stride=3)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["clip"].shape == (2, 3, 8, 32, 56) and b["audio"].shape == (2, audio_buffer_len(8))
    assert b["target"].shape == (2, 32, 56) and float(b["target"].amax(dim=(1, 2)).min()) > 0
    t = next(iter(dm.test_dataloader()))
    assert isinstance(t["gt"], list) and t["gt"][0].shape == t["fix"][0].shape == (54, 96)  # native AVAD size
    assert set(t["fix"][0].unique().tolist()) <= {0, 1}
    assert t["frame"].tolist() == [0, 3]


def test_dhf1k_layout_decodes_video_files(demo: Path) -> None:
    dm = _dm(demo / "DHF1K", layout="dhf1k", audio=False, batch_size=2, test_stride=5)
    dm.setup()
    assert {r.name for r in dm.splits["test"]} == {"0601", "0602"}
    assert all(isinstance(r.frames, Path) and r.frames.suffix == ".mp4" for r in dm.splits["train"])
    b = next(iter(dm.test_dataloader()))
    assert "audio" not in b and b["clip"].shape == (2, 3, 8, 32, 56)
    assert b["fix"][0].shape == b["gt"][0].shape == (54, 96)


# --------------------------------------------------------------------------- clips and audio
def test_audio_windows_follow_the_soundnet_convention() -> None:
    sr, fps, n = 22050, 25.0, 40
    wav = np.linspace(-1, 1, int(n / fps * sr)).astype(np.float32)
    start, end = frame_audio_bounds(n, fps, len(wav))
    half = sr / fps / 2
    assert start[0] == 0 and end[0] == int(half)  # frame 0 is centred at t = 0
    assert start[10] == int(10 * sr / fps - half) and end[10] == int(10 * sr / fps + half)
    buf = audio_buffer_len(32)
    assert buf == 70560
    out = clip_audio(wav, (start, end), list(range(5, 13)), buf)
    excerpt = wav[start[5] : end[12] + 1]
    nz = np.flatnonzero(out)
    # Centred in the buffer, Hann-windowed, scaled to ±256.
    off = (buf - excerpt.size) // 2
    np.testing.assert_allclose(
        out[off : off + excerpt.size], excerpt * np.hanning(excerpt.size) * 256, rtol=1e-5, atol=1e-4
    )
    assert nz.min() >= off and nz.max() < off + excerpt.size
    rev = clip_audio(wav, (start, end), list(range(12, 4, -1)), buf, reverse=True)
    np.testing.assert_allclose(rev[off : off + excerpt.size], out[off : off + excerpt.size][::-1], atol=1e-4)


def test_window_indices_forward_and_reversed() -> None:
    w = window_indices(20, 8)
    assert len(w) == 20
    assert w[7].frames == tuple(range(8)) and not w[7].reversed
    assert w[19].frames == tuple(range(12, 20))
    assert w[0].frames == tuple(range(7, -1, -1)) and w[0].reversed  # last frame of the window = target
    assert w[6].frames == tuple(range(13, 5, -1))
    assert all(win.frames[-1] == win.target for win in w)
    # T <= n < 2T - 1: reversed windows clamp at the last frame (documented policy).
    short = window_indices(10, 8)
    assert short[5].frames == (9, 9, 9, 9, 8, 7, 6, 5)
    with pytest.raises(DataError, match="fewer than the 8-frame window"):
        window_indices(5, 8)


def test_clip_frames_and_audio_are_aligned(demo: Path) -> None:
    """The clip's audio is the audio of exactly its frames: check against the WAV by hand."""
    dm = _dm(demo / "stavis", datasets=["Coutrot_db2"], batch_size=1, test_stride=1)
    dm.setup()
    ds = dm._dataset("test")
    rec = ds.videos[0]
    item = ds[10]  # target frame 10, window [3..10]
    from avlab.media.clips import load_wav

    wav = load_wav(rec.wav)  # Coutrot_db2's demo WAV is 44.1 kHz: resampled to 22,050 Hz
    assert abs(len(wav) - rec.n_frames / rec.fps * 22050) < 22050 / rec.fps
    s, e = frame_audio_bounds(rec.n_frames, rec.fps, len(wav))
    expected = clip_audio(wav, (s, e), list(range(3, 11)), audio_buffer_len(8))
    np.testing.assert_allclose(item["audio"].numpy(), expected)
    from avlab.datamodules.saliency import preprocess_frames
    from avlab.media.clips import read_frames

    raw = torch.from_numpy(read_frames(rec.frames, list(range(3, 11))))
    frames = preprocess_frames(raw, (32, 56), "imagenet")
    torch.testing.assert_close(item["clip"], frames.permute(1, 0, 2, 3))
    rev = ds[2]  # reversed window [9..2], audio reversed
    expected_rev = clip_audio(wav, (s, e), list(range(9, 1, -1)), audio_buffer_len(8), reverse=True)
    np.testing.assert_allclose(rev["audio"].numpy(), expected_rev)


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def broken(demo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "stavis"
    shutil.copytree(demo / "stavis", root)
    return root


def _first(root: Path, db: str = "AVAD") -> str:
    return parse_fold_list(root / "fold_lists" / f"{db}_list_test_1_fps.txt")[0][0]


def test_missing_wav_is_a_clear_error_or_silence(broken: Path) -> None:
    name = _first(broken)
    (broken / "video_audio" / "AVAD" / name / f"{name}.wav").unlink()
    with pytest.raises(DataError, match=rf"AVAD/{name}: audio file .* does not exist"):
        _dm(broken, datasets=["AVAD"]).setup()
    dm = _dm(broken, datasets=["AVAD"], missing_audio="silence", test_stride=5)
    dm.setup()
    item = dm._dataset("test")[0]
    assert float(item["audio"].abs().sum()) == 0.0
    assert any("does not exist" in p for p in dm.check())


def test_frame_map_count_mismatch_truncates_or_errors(broken: Path) -> None:
    name = _first(broken)
    maps = sorted((broken / "annotations" / "AVAD" / name / "maps").iterdir())
    maps[-1].unlink()
    dm = _dm(broken, datasets=["AVAD"])
    dm.setup()
    rec = next(r for r in dm.splits["test"] if r.name == name)
    assert rec.n_frames == len(maps) - 1 and len(rec.frames) == rec.n_frames
    assert any("counts differ" in p for p in dm.check())
    with pytest.raises(DataError, match="counts differ"):
        _dm(broken, datasets=["AVAD"], count_mismatch="error").setup()


def test_short_video_errors_or_is_skipped(broken: Path) -> None:
    with pytest.raises(DataError, match="shorter than the 32-frame window"):
        _dm(broken, datasets=["AVAD"], clip_len=32).setup()
    dm = _dm(broken, datasets=["AVAD"], clip_len=19)
    dm.setup()
    dm2 = _dm(broken, datasets=["AVAD"], clip_len=21, short_videos="skip")
    with pytest.raises(DataError, match="no training videos"):
        dm2.setup()


def test_fixation_mat_with_wrong_key_or_shape(tmp_path: Path) -> None:
    good = tmp_path / "good.mat"
    scipy.io.savemat(str(good), {"eyeMap": np.eye(4, 6)})
    assert load_fixation(good, (4, 6)).sum() == 4
    dhf = tmp_path / "dhf.mat"
    scipy.io.savemat(str(dhf), {"I": np.eye(4, 6)})
    assert load_fixation(dhf, (4, 6)).dtype == np.uint8
    wrong_key = tmp_path / "key.mat"
    scipy.io.savemat(str(wrong_key), {"fixations": np.eye(4)})
    with pytest.raises(DataError, match=r"no variable `eyeMap`.*holds fixations"):
        load_fixation(wrong_key)
    with pytest.raises(DataError, match=r"has shape 4×6 but its saliency map is 6×4"):
        load_fixation(good, (6, 4))


def test_wrong_fixation_in_dataset_is_reported(broken: Path) -> None:
    name = _first(broken)
    mat = broken / "annotations" / "AVAD" / name / "fixMap_00001.mat"
    scipy.io.savemat(str(mat), {"eyeMap": np.zeros((3, 3))})
    problems = _dm(broken, datasets=["AVAD"]).check()
    assert any("fixMap_00001.mat has shape 3×3" in p for p in problems)
    dm = _dm(broken, datasets=["AVAD"])
    dm.setup()
    ds = dm._dataset("test")
    idx = next(i for i, (v, t) in enumerate(ds.items) if ds.videos[v].name == name and t == 0)
    with pytest.raises(DataError, match="fixations are never resized"):
        ds[idx]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="Did you mean `DIEM`"):
        SaliencyDataModule(datasets=["DIEMM"])
    with pytest.raises(ConfigError, match="data.fold must be 1, 2 or 3"):
        SaliencyDataModule(fold=4)
    dm = SaliencyDataModule()
    with pytest.raises(ConfigError, match="must be 3"):
        dm.configure_split("fold", 0, 5)
    dm.configure_split("fold", 2, 3)
    assert dm.fold == 3


def test_demo_is_deterministic(demo: Path, tmp_path: Path) -> None:
    again = build_saliency_demo(tmp_path / "again", size="tiny")
    for rel in ("stavis/annotations/SumMe", "stavis/video_audio/DIEM"):
        a = sorted((demo / rel).rglob("*.*"))
        b = sorted((again / rel).rglob("*.*"))
        assert [p.relative_to(demo) for p in a] == [p.relative_to(again) for p in b]
        for pa, pb in zip(a[:10], b[:10]):
            assert pa.read_bytes() == pb.read_bytes() or pa.suffix == ".mat"  # .mat headers carry a date
    w1, _ = sf.read(str(next((demo / "stavis/video_audio/DIEM").rglob("*.wav"))))
    w2, _ = sf.read(str(next((again / "stavis/video_audio/DIEM").rglob("*.wav"))))
    np.testing.assert_array_equal(w1, w2)


# --------------------------------------------------------------------------- catalog and sample table
def test_layouts_are_formats_of_the_shared_reader_catalog(demo: Path, tmp_path: Path) -> None:
    from avlab.datamodules.readers import ReadOptions, get_reader

    table = get_reader("stavis").read(demo / "stavis", ReadOptions("stavis"))
    assert len(table) == 18 and set(table["dataset"]) == set(AV_DATASETS)
    # every non-DIEM video is the test video of exactly one fold; DIEM's split is the same in all three
    for _, row in table.iterrows():
        sides = [row[f"fold{f}"] for f in (1, 2, 3)]
        assert sides.count("test") == (
            3 if row["dataset"] == "DIEM" and sides[0] == "test" else 0 if row["dataset"] == "DIEM" else 1
        )
    dhf = get_reader("dhf1k").read(demo / "DHF1K", ReadOptions("dhf1k"))
    assert dict(zip(dhf["name"], dhf["fold1"])) == {
        "0001": "train",
        "0002": "train",
        "0003": "train",
        "0004": "train",
        "0601": "test",
        "0602": "test",
    }
    with pytest.raises(ConfigError, match=r"data.layout: unknown format 'stavs'\. Did you mean `stavis`"):
        SaliencyDataModule(layout="stavs")
    with pytest.raises(ConfigError, match="data.layout: unknown format 'manifest'"):
        SaliencyDataModule(layout="manifest")  # a quality format of the catalog is not a saliency layout
    (tmp_path / "empty").mkdir()
    dm = _dm(tmp_path / "empty", datasets=["AVAD"])
    assert any("AVAD_list_train_1_fps.txt does not exist" in p for p in dm.check())


def test_sample_table_names_what_batches_carry(demo: Path) -> None:
    dm = _dm(demo / "stavis", datasets=["AVAD", "DIEM"], batch_size=3, test_stride=4, clips_per_video=2)
    dm.setup()
    test = dm.sample_table("test")
    batch = next(iter(dm.test_dataloader()))
    rows = test.loc[batch["index"].numpy()]
    assert rows["video"].tolist() == batch["video"].tolist()
    assert rows["frame"].tolist() == batch["frame"].tolist()
    assert rows["dataset_id"].tolist() == batch["dataset"].tolist()
    assert set(test["dataset"]) == {"AVAD", "DIEM"} and test.index.is_unique
    assert len(dm.sample_table("train")) == len(dm._dataset("train")) == 2 * len(dm.splits["train"])
    val = dm.sample_table("val")
    item = dm._dataset("val")[len(val) - 1]
    rec = dm.splits["val"][int(val["video"].iloc[-1])]
    assert rec.name == val["name"].iloc[-1]
    torch.testing.assert_close(
        item["target"], dm._dataset("val")._target(int(val["video"].iloc[-1]), int(val["frame"].iloc[-1]))
    )


# --------------------------------------------------------------------------- the demo's audio-visual signal
def test_the_voice_says_which_speaker_is_watched(demo: Path) -> None:
    """The demo's gaze follows the speaker whose voice is heard (documented in avlab.demo.saliency)."""
    from avlab.demo.saliency import SPEAKER_F0, _seed, plan_speakers
    from avlab.media.clips import load_wav

    dm = _dm(demo / "stavis", datasets=["AVAD", "SumMe", "ETMD_av"])
    dm.setup()
    on_speaker, heard_right = [], []
    for rec in dm.splits["train"] + dm.splits["val"] + dm.splits["test"]:
        gt = load_fixation(rec.fixations[0])
        h, w = gt.shape
        rng = np.random.default_rng(_seed(0, rec.dataset, rec.name))  # the builder's draws, in its order
        sp = plan_speakers(rec.n_frames, h, w, rec.fps, rng)
        wav = load_wav(rec.wav, sr=22050)
        s, e = frame_audio_bounds(rec.n_frames, rec.fps, len(wav))
        yy, xx = np.mgrid[0:h, 0:w]
        for t in range(rec.n_frames):
            fix = load_fixation(rec.fixations[t], (h, w)).astype(bool)
            if not fix.any():
                continue  # the blink frame
            dist = [np.hypot(yy - cy, xx - cx)[fix] for cy, cx in sp.centres[t]]
            near = [(d < 2 * sp.radius).mean() for d in dist]
            on_speaker.append(near[sp.speaking[t]] > near[1 - sp.speaking[t]])
            # the heard voice: which f0 has more energy in this frame's audio
            seg = wav[s[t] : e[t] + 1] * np.hanning(e[t] + 1 - s[t])
            spec = np.abs(np.fft.rfft(seg, 8192))
            freqs = np.fft.rfftfreq(8192, 1 / 22050)
            energy = [spec[np.abs(freqs - f0) < 20].max() for f0 in SPEAKER_F0]
            heard_right.append(int(np.argmax(energy)) == sp.speaking[t])
    # the voice matches the plan except where a turn changes inside the frame's audio
    assert np.mean(heard_right) > 0.9
    # most frames' fixations sit on the speaker who speaks (latency: observers follow within a few frames)
    assert np.mean(on_speaker) > 0.75


@pytest.mark.parametrize("min_files", [10**9, 1], ids=["one-process", "process-pool"])
def test_check_opens_every_fixation_file(
    broken: Path, min_files: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from avlab.datamodules import saliency

    monkeypatch.setattr(saliency, "CHECK_PARALLEL_MIN_FILES", min_files)
    test_video = _first(broken)
    train_video = parse_fold_list(broken / "fold_lists" / "AVAD_list_train_1_fps.txt")[0][0]
    ann = broken / "annotations" / "AVAD"
    # Frame 2 is none of the first/middle/last frames a sampling check would open.
    scipy.io.savemat(str(ann / test_video / "fixMap_00002.mat"), {"fixations": np.eye(4), "pts": np.ones(3)})
    scipy.io.savemat(str(ann / train_video / "fixMap_00002.mat"), {"eyeMap": np.zeros((5, 7))})
    problems = _dm(broken, datasets=["AVAD"]).check()
    wrong_key = [p for p in problems if "no variable `eyeMap`" in p]
    wrong_shape = [p for p in problems if "has shape 5×7" in p]
    assert len(wrong_key) == 1 and len(wrong_shape) == 1, problems
    assert f"AVAD/{test_video}:" in wrong_key[0] and "fixMap_00002.mat" in wrong_key[0]
    assert "it holds fixations, pts" in wrong_key[0]
    assert f"AVAD/{train_video}:" in wrong_shape[0] and "fixMap_00002.mat" in wrong_shape[0]
    # Nothing else in the copy is wrong: the check reports exactly the two files.
    assert len(problems) == 2, problems
