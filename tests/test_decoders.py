"""Video decoding backends (avlab.media.decoders): same frames from every installed backend, choice
by name, clear errors, and a DataModule that decodes with data.decoder=pyav."""

from __future__ import annotations

import builtins
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avlab.errors import ConfigError, MediaError
from avlab.media import decoders
from avlab.media.clips import VideoFrames, decode_video
from avlab.media.decoders import (
    DECODERS,
    RESIZE_MEAN_TOLERANCE,
    available_decoders,
    read_frames,
    resolve_decoder,
)
from avlab.media.ffmpeg import ffmpeg_exe, run_ffmpeg

INSTALLED = available_decoders()
W, H, N, FPS = 96, 64, 40, 25


def _encode(out: Path, *, size: str = f"{W}x{H}", frames: int = N) -> Path:
    # B-frames and a short GOP, so reading random frames exercises seeking and frame reordering.
    run_ffmpeg(
        ["-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}", "-frames:v", str(frames)]
        + ["-c:v", "libx264", "-g", "8", "-bf", "2", "-pix_fmt", "yuv420p", "-y", str(out)],
        what="encoding the decoder test clip",
    )
    return out


def _ffmpeg_rgb(path: Path, width: int = W, height: int = H, vf: list[str] | None = None) -> np.ndarray:
    """All frames as the ffmpeg CLI decodes them: the reference no backend shares code with."""
    cmd = [
        ffmpeg_exe(),
        "-v",
        "error",
        "-i",
        str(path),
        *(vf or []),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _encode(tmp_path_factory.mktemp("decoders") / "clip.mp4")


@pytest.fixture(autouse=True)
def _fresh_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    # Availability is cached per process; tests that hide a backend must not leak into others.
    monkeypatch.setattr(decoders, "_available", {})


def test_pyav_is_always_installed() -> None:
    # PyAV is the dependency avlab installs everywhere; without it a platform may have no decoder.
    assert "pyav" in INSTALLED


@pytest.mark.parametrize("name", INSTALLED)
def test_native_frames_equal_the_ffmpeg_cli(clip: Path, name: str) -> None:
    ref = _ffmpeg_rgb(clip)
    video = VideoFrames(clip, decoder=name)
    assert len(video) == len(ref) == N and video.fps == pytest.approx(FPS)
    frames = video.get(np.arange(N))
    assert frames.dtype == np.uint8 and frames.shape == (N, H, W, 3)
    # Same libavcodec H.264 decoder and the same yuv420p -> RGB conversion: bit-identical.
    np.testing.assert_array_equal(frames, ref)


@pytest.mark.parametrize("name", INSTALLED)
def test_random_indices_equal_the_sequential_frames(clip: Path, name: str) -> None:
    ref = _ffmpeg_rgb(clip)
    idx = np.random.default_rng(0).integers(0, N, 25)  # unsorted, with repeats, across GOPs
    idx = np.concatenate([idx, [N - 1, 0, 17, 17]])
    video = VideoFrames(clip, decoder=name)
    np.testing.assert_array_equal(video.get(idx), ref[idx])
    # A second read on the same open file goes backwards and forwards again.
    np.testing.assert_array_equal(video.get([30, 2, 9]), ref[[30, 2, 9]])
    np.testing.assert_array_equal(decode_video(clip, [5], decoder=name), ref[[5]])


@pytest.mark.parametrize(
    "codec",
    [
        ("avi", ["-c:v", "libx264", "-bf", "2"]),  # packet timestamps in decoding order
        ("avi", ["-c:v", "mpeg4", "-bf", "2", "-q:v", "3"]),
        ("mp4", ["-c:v", "libx264", "-bf", "2", "-x264opts", "open_gop=1"]),
        ("mkv", ["-c:v", "libx264", "-bf", "2"]),
    ],
    ids=["h264-bframes-avi", "mpeg4-bframes-avi", "h264-open-gop-mp4", "h264-mkv"],
)
def test_auto_reads_exact_frames_at_random_indices_of_harder_files(
    tmp_path: Path, codec: tuple[str, list[str]]
) -> None:
    # decord 0.6 returns other frames for the first three (module docstring); auto must not.
    suffix, args = codec
    path = tmp_path / f"clip.{suffix}"
    run_ffmpeg(
        ["-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate={FPS}", "-frames:v", str(N)]
        + [*args, "-g", "10", "-pix_fmt", "yuv420p", "-y", str(path)],
        what="encoding a test clip",
    )
    ref = _ffmpeg_rgb(path)
    video = VideoFrames(path)
    assert video.decoder == "pyav" and len(video) == len(ref) == N
    for i in np.random.default_rng(1).integers(0, N, 12).tolist() + [N - 1, 0, 11]:
        np.testing.assert_array_equal(video.get([i])[0], ref[i], err_msg=f"frame {i} of {path.name}")
    np.testing.assert_array_equal(video.get(np.arange(N)), ref)


@pytest.mark.parametrize("size", [(64, 48), (48, 32)], ids=["64x48", "48x32-decord-fallback"])
@pytest.mark.parametrize("name", INSTALLED)
def test_resized_frames_match_ffmpeg_scale_within_the_documented_bound(
    clip: Path, name: str, size: tuple[int, int]
) -> None:
    w, h = size
    ref = _ffmpeg_rgb(clip, w, h, ["-vf", f"scale={w}:{h}:flags=bilinear"]).astype(np.int16)
    frames = read_frames(clip, decoder=name, width=w, height=h)
    assert frames.shape == (N, h, w, 3) and frames.dtype == np.uint8
    # Each backend resamples with its own filter (see RESIZE_MEAN_TOLERANCE); single pixels on the
    # clip's sharp synthetic edges differ a lot, so the bound is on the mean difference.
    assert np.abs(frames.astype(np.int16) - ref).mean() <= RESIZE_MEAN_TOLERANCE
    idx = [33, 4, 4, 20]
    np.testing.assert_array_equal(read_frames(clip, idx, decoder=name, width=w, height=h), frames[idx])


def test_auto_takes_the_first_installed_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DECODERS[0] == "pyav" and resolve_decoder("auto") == INSTALLED[0] == "pyav"
    monkeypatch.setitem(decoders._CHECKS, "pyav", _missing("av"))
    monkeypatch.setattr(decoders, "_available", {})  # forget what the first call found
    rest = INSTALLED[1:]
    assert available_decoders() == rest
    if rest:
        assert resolve_decoder("auto") == rest[0]
        assert VideoFrames("unused.mp4").decoder == rest[0]  # resolved at construction, opened lazily
    for name in ("torchcodec", "decord"):
        monkeypatch.setitem(decoders._CHECKS, name, _missing(name))
    monkeypatch.setattr(decoders, "_available", {})
    with pytest.raises(
        ConfigError, match=r"no video decoder is installed; install PyAV with `pip install av`"
    ):
        resolve_decoder("auto")


def _missing(module: str):
    def check() -> None:
        raise ImportError(f"No module named {module!r}")

    return check


def test_unknown_decoder_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown video decoder 'pyv'\. Did you mean `pyav`\?") as err:
        read_frames("unused.mp4", decoder="pyv")
    assert all(name in str(err.value) for name in ("auto", *DECODERS))


def test_a_decoder_that_is_not_installed_says_what_to_install(
    clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_av(name: str, *args, **kwargs):
        if name == "av" or name.startswith("av."):
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "av", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(ConfigError, match=r"data\.decoder=pyav: .*`pip install av`"):
        VideoFrames(clip, decoder="pyav")
    assert "pyav" not in available_decoders()


@pytest.mark.parametrize("name", INSTALLED)
def test_a_corrupt_file_names_the_file_and_the_backend(tmp_path: Path, name: str) -> None:
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(MediaError, match=rf"corrupt\.mp4 cannot be (opened|decoded) with the {name} decoder"):
        VideoFrames(bad, decoder=name).get([0])


def test_missing_file_and_out_of_range_index_are_media_errors(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="nothere.mp4 does not exist"):
        read_frames(tmp_path / "nothere.mp4", decoder="pyav")
    with pytest.raises(MediaError, match=r"frame index out of range \[0, 40\)"):
        read_frames(clip, [0, N], decoder="pyav")
    with pytest.raises(ConfigError, match="width and height together"):
        read_frames(clip, decoder="pyav", width=32)


def test_video_frames_pickle_without_the_open_decoder(clip: Path) -> None:
    video = VideoFrames(clip, decoder="pyav")
    first = video.get([3])
    copy = pickle.loads(pickle.dumps(video))  # what a spawned DataLoader worker receives
    assert copy.decoder == "pyav" and copy._reader is None
    np.testing.assert_array_equal(copy.get([3]), first)


def _dhf1k(root: Path, videos: dict[str, int]) -> Path:
    """A minimal DHF1K folder: video/<id>.mp4 with per-frame maps and fixations."""
    (root / "video").mkdir(parents=True)
    for vid, n in videos.items():
        _encode(root / "video" / f"{vid}.mp4", size="64x48", frames=n)
        for kind in ("maps", "fixation"):
            (root / "annotation" / vid / kind).mkdir(parents=True)
        for i in range(1, n + 1):
            gt = np.zeros((48, 64), np.uint8)
            gt[20:28, 4 * (i % 12) : 4 * (i % 12) + 8] = 255
            Image.fromarray(gt).save(root / "annotation" / vid / "maps" / f"{i:04d}.png")
            Image.fromarray(gt).save(root / "annotation" / vid / "fixation" / f"{i:04d}.png")
    return root


def test_saliency_datamodule_decodes_dhf1k_videos_with_pyav(tmp_path: Path) -> None:
    from avlab.datamodules.saliency import SaliencyDataModule

    root = _dhf1k(tmp_path / "DHF1K", {"0001": 12, "0002": 12, "0601": 10})
    clips = {}
    for name in dict.fromkeys(("pyav", INSTALLED[-1])):
        dm = SaliencyDataModule(
            root=str(root),
            layout="dhf1k",
            decoder=name,
            audio=False,
            clip_len=4,
            frame_size=(32, 48),
            batch_size=2,
            test_stride=3,
            frame_cache="off",
        )
        dm.setup()
        test = dm.splits["test"]
        assert [r.name for r in test] == ["0601"] and test[0].n_frames == 10 and test[0].fps == FPS
        batch = next(iter(dm.test_dataloader()))
        assert batch["clip"].shape == (2, 3, 4, 32, 48)
        clips[name] = batch["clip"]
    # Whichever backend decodes, the model sees the same clip.
    for clip_tensor in clips.values():
        assert bool((clip_tensor == clips["pyav"]).all())
    with pytest.raises(ConfigError, match="unknown video decoder 'ffmpeg'"):
        SaliencyDataModule(root=str(root), layout="dhf1k", decoder="ffmpeg")


def test_unqa_media_loader_decodes_videos_with_the_chosen_backend(clip: Path) -> None:
    from avlab.datamodules.unqa import UNQADataModule
    from avlab.datamodules.unqa_media import MediaLoader

    loaders = {
        name: MediaLoader(image_size=32, frames=3, motion_frames=4, decoder=name) for name in INSTALLED
    }
    frames = {name: m.video_frames(str(clip)) for name, m in loaders.items()}
    motion = {name: m.motion_clips(str(clip)) for name, m in loaders.items()}
    assert frames["pyav"].shape == (3, 3, 32, 32) and motion["pyav"].shape == (1, 3, 4, 64, 64)
    for name in INSTALLED:
        assert bool((frames[name] == frames["pyav"]).all()) and bool((motion[name] == motion["pyav"]).all())
    with pytest.raises(ConfigError, match="unknown video decoder 'decordd'. Did you mean `decord`"):
        UNQADataModule(decoder="decordd")
