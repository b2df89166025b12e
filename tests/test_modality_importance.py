"""Modality importance, eq. (6)–(8), on tiny hand-computable models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from avlab.metrics.importance import (
    ablation_sensitivity,
    combined_importance,
    feature_change_norm,
    min_max,
    modality_importance,
)
from avlab.models.avq import AttentiveAVFusionNet, SimpleAVFusion


class LinearAV(nn.Module):
    """f = 1 + w_a·sum(audio) + w_v·sum(video); 'post' embeddings scale the inputs."""

    def __init__(self, w_a: float, w_v: float, s_a: float = 1.0, s_v: float = 1.0) -> None:
        super().__init__()
        self.w_a, self.w_v, self.s_a, self.s_v = w_a, w_v, s_a, s_v
        self.drop = nn.Dropout(0.9)  # must be inactive during importance evaluation

    def forward(self, video: Tensor, audio: Tensor) -> Tensor:
        return self.drop(1 + self.w_a * audio.sum(dim=(1, 2)) + self.w_v * video.sum(dim=(1, 2)))

    def intermediates(self, video: Tensor, audio: Tensor) -> dict[str, Tensor]:
        return {
            "phi_pre_audio": audio,
            "phi_post_audio": self.s_a * audio,
            "phi_pre_video": video,
            "phi_post_video": self.s_v * video,
        }


def _x() -> tuple[Tensor, Tensor]:
    video = torch.tensor([[[1.0, 1.0]], [[2.0, 0.0]]])  # sums 2, 2
    audio = torch.tensor([[[1.0, 0.0, 0.0]], [[3.0, 0.0, 1.0]]])  # sums 1, 4
    return video, audio


def test_ablation_hand_computed() -> None:
    model = LinearAV(w_a=0.5, w_v=1.0).train()
    video, audio = _x()
    abl = ablation_sensitivity(model, video, audio)
    # f(x) = 1 + 0.5·[1, 4] + [2, 2] = [3.5, 5]; masking audio removes 0.5·[1, 4]; masking video removes 2
    torch.testing.assert_close(abl["audio"], torch.tensor([0.5 / 3.5, 2.0 / 5.0]))
    torch.testing.assert_close(abl["video"], torch.tensor([2.0 / 3.5, 2.0 / 5.0]))
    assert model.training  # mode restored


def test_model_ignoring_audio_has_zero_audio_ablation() -> None:
    abl = ablation_sensitivity(LinearAV(w_a=0.0, w_v=1.0), *_x())
    assert torch.equal(abl["audio"], torch.zeros(2))
    assert (abl["video"] > 0).all()


def test_feature_change_norm_hand_computed() -> None:
    nrm = feature_change_norm(LinearAV(1, 1, s_a=0.5, s_v=3.0), *_x())
    torch.testing.assert_close(nrm["audio"], torch.tensor([0.5, 0.5]))  # ‖x − 0.5x‖/‖x‖
    torch.testing.assert_close(nrm["video"], torch.tensor([2.0, 2.0]))  # ‖x − 3x‖/‖x‖


def test_min_max_and_constant_guard() -> None:
    torch.testing.assert_close(min_max(torch.tensor([2.0, 4.0, 3.0])), torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(min_max(torch.tensor([7.0, 7.0])), torch.zeros(2))
    assert torch.equal(min_max(torch.tensor([7.0])), torch.zeros(1))


def test_combined_importance_eq8() -> None:
    abl = {"audio": torch.tensor([0.1, 0.3]), "video": torch.tensor([0.5, 0.2])}
    nrm = {"audio": torch.tensor([1.0, 2.0]), "video": torch.tensor([3.0, 1.0])}
    joint = combined_importance(abl, nrm, alpha=0.7, beta=0.3)
    # joint min–max: abl over {0.1, 0.3, 0.5, 0.2} → audio [0, .5], video [1, .25];
    # norm over {1, 2, 3, 1} → audio [0, .5], video [1, 0]
    torch.testing.assert_close(joint["audio"], torch.tensor([0.7 * 0 + 0.3 * 1, 0.7 * 0.5 + 0.3 * 0.5]))
    torch.testing.assert_close(joint["video"], torch.tensor([0.7 * 1 + 0.3 * 0, 0.7 * 0.25 + 0.3 * 1]))
    per = combined_importance(abl, nrm, alpha=0.7, beta=0.3, scope="per_modality")
    torch.testing.assert_close(per["audio"], torch.tensor([0.3, 0.7]))
    torch.testing.assert_close(per["video"], torch.tensor([0.7, 0.3]))


@pytest.mark.parametrize("alpha,beta", [(0.3, 0.7), (0.5, 0.5)])
def test_alpha_must_exceed_beta(alpha: float, beta: float) -> None:
    d = {"audio": torch.ones(2), "video": torch.ones(2)}
    with pytest.raises(ValueError, match="alpha > beta"):
        combined_importance(d, d, alpha=alpha, beta=beta)


def test_dataframe_with_real_models() -> None:
    torch.manual_seed(0)
    video, audio = torch.randn(5, 1, 6), torch.randn(5, 1, 512)
    df = modality_importance(AttentiveAVFusionNet(), video, audio)
    assert list(df.columns) == [
        "abl_audio",
        "abl_video",
        "norm_audio",
        "norm_video",
        "importance_audio",
        "importance_video",
    ]
    assert len(df) == 5
    assert np.isfinite(df.to_numpy()).all()
    assert (df[["importance_audio", "importance_video"]].to_numpy() <= 1 + 1e-9).all()
    # a model without cross-attention does not change its embeddings: eq. (7) is 0
    df_simple = modality_importance(SimpleAVFusion(), video, audio)
    assert (df_simple[["norm_audio", "norm_video"]].to_numpy() == 0).all()
