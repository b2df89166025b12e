"""End to end: both AVRSP stages through `avlab train`, stage chaining, `avlab predict`, and the
sliding/reverse-window inference (ordering, reversed audio, batching, decode-once)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import SALIENCY_TINY

from avlab import cli
from avlab.config import load_experiment
from avlab.errors import ConfigError
from avlab.instantiate import instantiate
from avlab.media.clips import audio_buffer_len, clip_audio, frame_audio_bounds
from avlab.media.ffmpeg import run_ffmpeg

SMALL = [*SALIENCY_TINY, "trainer.max_epochs=1", "trainer.accelerator=cpu"]


def _train(capsys, name: str, *overrides: str) -> Path:
    assert cli.main(["train", name, *SMALL, *overrides]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("run directory: ")
    return Path(last.removeprefix("run directory: "))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert cli.main(["train", "saliency/avrsp_dhf1k_pretrain", *SMALL, f"run.root={runs}"]) == 0
    return next((runs / "saliency" / "avrsp_dhf1k_pretrain").iterdir())


def test_stage1_dhf1k_writes_metrics(stage1: Path) -> None:
    metrics = json.loads((stage1 / "metrics.json").read_text())
    for m in ("cc", "nss", "auc_j", "sim", "kl"):
        assert f"test/{m}" in metrics and f"test/DHF1K/{m}" in metrics
    assert metrics["test/n_videos"] == 2.0
    assert (stage1 / "checkpoints" / "last.ckpt").is_file()


def test_stage2_av_starts_from_stage1_and_reports_per_dataset(capsys, stage1: Path, tmp_path: Path) -> None:
    run = _train(capsys, "saliency/avrsp_av", f"model.init_from={stage1}", f"run.root={tmp_path}")
    metrics = json.loads((run / "metrics.json").read_text())
    for m in ("cc", "nss", "auc_j", "sim", "kl"):
        assert isinstance(metrics[f"test/{m}"], float)
        for db in ("AVAD", "Coutrot_db1", "Coutrot_db2", "DIEM", "ETMD_av", "SumMe"):
            assert f"test/{db}/{m}" in metrics
    assert metrics["test/n_videos"] == 6.0
    assert (run / "plots" / "saliency_examples.png").is_file() and (run / "saliency_per_video.csv").is_file()
    # init_from copied the stage-1 visual branch (the checkpoint of stage 2 started there).
    cfg = load_experiment("saliency/avrsp_av", [*SMALL, f"model.init_from={stage1}"])
    module = instantiate(cfg.model)
    stats = module.load_init(stage1)
    assert stats["loaded"] > 100 and stats["fresh"] > 0
    s1 = torch.load(next((stage1 / "checkpoints").glob("last.ckpt")), weights_only=True)["state_dict"]
    key = next(k for k in s1 if k.startswith("net.visual."))
    torch.testing.assert_close(module.state_dict()[key], s1[key])
    # Predict: one map per input frame and an overlay with the original audio.
    video = tmp_path / "clip.mp4"
    demo = Path(os.environ["AVLAB_CACHE"]) / "demo" / "saliency" / "tiny" / "stavis"
    vdir = next((demo / "video_frames" / "AVAD").iterdir())
    wav = demo / "video_audio" / "AVAD" / vdir.name / f"{vdir.name}.wav"
    run_ffmpeg(
        [
            "-v",
            "error",
            "-framerate",
            "25",
            "-i",
            str(vdir / "img_%05d.jpg"),
            "-i",
            str(wav),
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-y",
            str(video),
        ],
        what="test video",
    )
    ckpt = run / "checkpoints" / "last.ckpt"
    assert (
        cli.main(
            [
                "predict",
                "saliency/avrsp_av",
                f"ckpt_path={ckpt}",
                f"input={video}",
                *SMALL,
                f"run.root={tmp_path}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    n_in = len(list(vdir.glob("*.jpg")))
    assert result["frames"] == result["maps_written"] == n_in
    assert len(list(Path(result["maps_dir"]).glob("*.png"))) == n_in and result["audio"] is True
    from avlab.media.ffmpeg import probe

    info = probe(result["overlay"])
    assert info.n_frames == n_in and info.has_audio


def test_init_from_errors(tmp_path: Path) -> None:
    cfg = load_experiment("saliency/avrsp_av", SMALL)
    module = instantiate(cfg.model)
    with pytest.raises(ConfigError, match="does not exist"):
        module.load_init(tmp_path / "nope.ckpt")
    other = instantiate(load_experiment("saliency/avrsp_av", [*SMALL, "model.visual.width_mult=0.25"]).model)
    torch.save({"state_dict": other.state_dict()}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match="does not fit this model's visual branch"):
        module.load_init(tmp_path / "other.ckpt")


# --------------------------------------------------------------------------- reverse windows
class _FakeVideo:
    """Frames whose pixels hold their own index; counts how often each frame is decoded."""

    def __init__(self, n: int) -> None:
        self.n, self.decoded = n, np.zeros(n, int)
        self.fps = 25.0

    def __len__(self) -> int:
        return self.n

    def get(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        self.decoded[idx] += 1
        return np.broadcast_to(idx[:, None, None, None], (len(idx), 4, 6, 3)).astype(np.uint8).copy()


def test_sliding_windows_reverse_the_first_frames_and_their_audio() -> None:
    from avlab.inference.saliency import predict_video

    n, T = 20, 8
    wav = np.random.default_rng(0).uniform(-1, 1, int(n / 25 * 22050)).astype(np.float32)
    seen: list[tuple[list[int], np.ndarray]] = []

    def net(clips: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        for c, a in zip(clips, audio):
            seen.append((c[0, :, 0, 0].round().int().tolist(), a.numpy()))
        # the map encodes the window's last frame, so the caller can check the target
        return clips[:, 0, -1].clone()

    video = _FakeVideo(n)
    out = list(
        predict_video(net, video, lambda f: f.permute(0, 3, 1, 2).float(), T, batch_size=3, wav=wav, fps=25.0)
    )
    assert [t for t, _, _ in out] == list(range(n))
    assert (video.decoded == 1).all(), "every frame is decoded exactly once"
    bounds = frame_audio_bounds(n, 25.0, len(wav))
    for t, (frames, audio) in enumerate(seen):
        if t >= T - 1:
            assert frames == list(range(t - T + 1, t + 1))
            expected = clip_audio(wav, bounds, frames, audio_buffer_len(T))
        else:  # the reversed window [t+T-1 .. t]: its last frame is t, its audio is reversed
            assert frames == list(range(t + T - 1, t - 1, -1))
            expected = clip_audio(wav, bounds, frames, audio_buffer_len(T), reverse=True)
            forward = clip_audio(wav, bounds, frames[::-1], audio_buffer_len(T))
            nz = np.flatnonzero(forward)
            span = slice(nz.min(), nz.max() + 1)
            np.testing.assert_allclose(expected[span], forward[span][::-1], atol=1e-4)
        np.testing.assert_allclose(audio, expected)
        assert float(out[t][1][0, 0]) == t and int(out[t][2][0, 0, 0]) == t


def test_batched_windows_equal_one_at_a_time() -> None:
    from avlab.inference.saliency import predict_video

    torch.manual_seed(0)
    cfg = load_experiment("saliency/avrsp_av", SMALL)
    module = instantiate(cfg.model).eval()
    video = _FakeVideo(12)
    wav = np.random.default_rng(1).uniform(-1, 1, 12000).astype(np.float32)

    def prep(f: torch.Tensor) -> torch.Tensor:
        x = f.permute(0, 3, 1, 2).float() / 20.0
        return torch.nn.functional.interpolate(x, size=(32, 56))

    a = [m for _, m, _ in predict_video(module, video, prep, 8, batch_size=5, wav=wav, fps=25.0)]
    b = [m for _, m, _ in predict_video(module, _FakeVideo(12), prep, 8, batch_size=1, wav=wav, fps=25.0)]
    torch.testing.assert_close(torch.stack(a), torch.stack(b), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- a student's fusion block
FUSION_BLOCK = '''
import torch
from torch import nn


class GatedAudioFusion(nn.Module):
    """Each visual token decides, through a sigmoid gate, how much of the pooled audio it takes."""

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.audio = nn.Linear(dim, dim)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        pooled = a.mean(dim=1, keepdim=True).expand(-1, v.shape[1], -1)
        g = torch.sigmoid(self.gate(torch.cat([v, pooled], dim=-1)))
        return v + g * self.audio(pooled)
'''

FUSION_CONFIG = """
defaults: [saliency/avrsp_av]
description: a student's gated fusion block
model:
  fusion:
    _target_: my_block.py:GatedAudioFusion
    dim: ${model.channels}
    hidden: 16
"""


def test_a_fusion_block_is_one_file_and_one_config(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way a student adds a saliency fusion block: no edit anywhere in avlab."""
    student = tmp_path / "student"
    student.mkdir()
    (student / "my_block.py").write_text(FUSION_BLOCK)
    (student / "my_block.yaml").write_text(FUSION_CONFIG)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # `my_block.py` resolves next to the YAML file, not the cwd
    run = _train(capsys, str(student / "my_block.yaml"), f"run.root={tmp_path / 'runs'}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(np.isfinite(metrics[f"test/{m}"]) for m in ("cc", "nss", "auc_j", "sim", "kl"))
    assert metrics["test/n_videos"] == 6.0 and (run / "saliency_per_video.csv").is_file()
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "net.fusion.gate.0.weight" in state and state["net.fusion.gate.0.weight"].shape == (16, 32)
    assert not any(k.startswith("net.fusion.blocks") for k in state), "RAVF's keys must not leak in"
    # `avlab test` on the (only, so best) checkpoint reports the metrics the run reported.
    best = next((run / "checkpoints").glob("best*.ckpt"))
    assert (
        cli.main(
            [
                "test",
                str(student / "my_block.yaml"),
                f"ckpt_path={best}",
                *SMALL,
                f"run.root={tmp_path / 'runs-test'}",
            ]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    again = json.loads((Path(last.removeprefix("run directory: ")) / "metrics.json").read_text())
    assert again["test/cc"] == pytest.approx(metrics["test/cc"], abs=1e-6)


# --------------------------------------------------------------------------- the audio is learned
#: CPU-scale schedule on the tiny demo (20-frame videos, 12 training videos of fold 1): 8 random
#: clips per video and epoch, 6 epochs (72 steps of 8 clips), lr 1e-3, BatchNorm momentum 0.1.
LEARN = [
    "data.demo_size=tiny",
    "data.clip_len=8",
    "data.frame_size=[32,56]",
    "data.test_stride=4",
    "data.batch_size=8",
    "data.clips_per_video=8",
    "data.val_fraction=0",
    "model.visual.width_mult=0.125",
    "model.channels=16",
    "model.lr=1e-3",
    "model.bn_momentum=0.1",
    "trainer.max_epochs=6",
    "seed=0",
    "trainer.accelerator=cpu",
    "logger.wandb.mode=disabled",
]


def test_audio_visual_beats_visual_only_when_the_voice_says_where_to_look(capsys, tmp_path: Path) -> None:
    """Issue: saliency must learn the audio. In the demo the frames cannot tell which of two speakers
    is watched; the voice can (avlab.demo.saliency). Same seed, data and schedule for both models."""
    av = _train_cfg(
        capsys, "saliency/avrsp_av", *LEARN, "model.audio.width_mult=0.25", f"run.root={tmp_path}"
    )
    vis = _train_cfg(capsys, "saliency/avrsp_visual", *LEARN, f"run.root={tmp_path}")
    cc_av, cc_v = av["test/cc"], vis["test/cc"]
    # measured: 0.516 vs 0.408 (oracles that place a blob on the speaker / on both speakers: 0.80 / 0.58)
    assert cc_av > cc_v + 0.05, f"audio-visual CC {cc_av:.3f} does not beat visual-only CC {cc_v:.3f} by 0.05"
    assert av["test/nss"] > vis["test/nss"]


def _train_cfg(capsys, name: str, *overrides: str) -> dict[str, float]:
    assert cli.main(["train", name, *overrides]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads((Path(last.removeprefix("run directory: ")) / "metrics.json").read_text())


def test_bn_momentum_reaches_every_batchnorm_and_null_keeps_s3d_s() -> None:
    from torch.nn.modules.batchnorm import _BatchNorm

    module = instantiate(load_experiment("saliency/avrsp_av", [*SMALL, "model.bn_momentum=0.1"]).model)
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) > 50 and {m.momentum for m in bns} == {0.1}
    default = instantiate(load_experiment("saliency/avrsp_av", SMALL).model)
    s3d = {m.momentum for m in default.net.visual.modules() if isinstance(m, _BatchNorm)}
    assert s3d == {0.001}  # torchvision's S3D
    with pytest.raises(ConfigError, match="model.bn_momentum must be in"):
        instantiate(load_experiment("saliency/avrsp_av", [*SMALL, "model.bn_momentum=0"]).model)
