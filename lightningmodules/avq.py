"""Training logic of the ``avq`` task (Attentive AV-FusionNet and its deep variants).

The network (``net``) is a plain ``nn.Module`` from :mod:`avlab.models.avq`; this module adds the
eq. (5) loss, AdamW, feature standardisation (statistics of the training part, stored as buffers
so a checkpoint predicts on new media without the training data), evaluation over the whole
validation/test set gathered from all ranks, and modality importance (paper §3, eq. 6–8).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from avlab.datamodules.avq import AVQDataModule
from avlab.datamodules.base import DatasetInfo
from avlab.errors import FeatureError
from avlab.lightningmodules.base import AvlabModule, EvalOutputs
from avlab.losses import CCCRMSELoss
from avlab.metrics.importance import MODALITIES, combined_importance, modality_importance
from avlab.metrics.quality import quality_metrics

log = logging.getLogger(__name__)


@runtime_checkable
class ProvidesIntermediates(Protocol):
    """A fusion network that exposes its embeddings, so modality importance (eq. 7) can be
    computed: ``phi_pre_{audio,video}`` and ``phi_post_{audio,video}`` of one forward pass."""

    def intermediates(self, video: Tensor, audio: Tensor) -> dict[str, Tensor]: ...


def evaluate_quality(
    stage: str,
    samples: dict[str, np.ndarray],
    table: pd.DataFrame | None,
    outputs: EvalOutputs,
    info: DatasetInfo,
    *,
    name: str = "",
) -> dict[str, float]:
    """PLCC/SRCC/KRCC/RMSE on the MOS scale, ``predictions_<stage>.csv`` and a scatter plot.

    The one evaluation of avq, shared by the deep models (:meth:`AVQModule.evaluate`) and the
    closed-form baselines (:mod:`avlab.baselines.avq`). ``samples`` holds ``index``, ``pred`` and
    ``target`` (numpy, ordered by index); ``table`` their ``sample_table`` rows in that order.
    """
    pred, target = np.asarray(samples["pred"], dtype=float), np.asarray(samples["target"], dtype=float)
    if np.isnan(pred).any():
        raise FeatureError(
            f"{int(np.isnan(pred).sum())} predictions are NaN; the model diverged (lower model.lr)"
        )
    metrics = quality_metrics(pred, target, logistic=info.logistic)
    if outputs.enabled:
        frame = (
            table.reset_index(drop=True)
            if table is not None
            else pd.DataFrame({"index": np.asarray(samples["index"]), "mos": target})
        )
        frame["predicted"] = pred
        outputs.write_csv(f"predictions_{stage}.csv", frame)
        from avlab.plots import scatter_prediction

        lo, hi = info.score_scale or (float(np.min(target)), float(np.max(target)))
        groups = frame["source"].tolist() if "source" in frame else None
        outputs.plot(
            f"prediction_vs_mos_{stage}.png",
            scatter_prediction,
            pred,
            target,
            title=f"{name} ({stage}): PLCC {metrics['plcc']:.3f}, SRCC {metrics['srcc']:.3f}",
            xlabel=f"MOS ({lo:g}–{hi:g})",
            groups=groups,
        )
    return {k: float(v) for k, v in metrics.items()}


class AVQModule(AvlabModule):
    """Full-reference AV quality regression.

    Args:
        net: the fusion network (``forward(video [B,N,6], audio [B,N,d_a]) -> [B]``).
        lam: λ of eq. (5), L = λ(1 − CCC) + (1 − λ)·RMSE (paper: 0.6).
        lr, weight_decay: AdamW settings (Table 2 spans 1e-4..1e-2 and 1e-3..1e-1).
        importance_alpha, importance_beta: α > β of eq. (8).
    """

    def __init__(
        self,
        net: nn.Module,
        lam: float = 0.6,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        importance_alpha: float = 0.7,
        importance_beta: float = 0.3,
    ) -> None:
        super().__init__()
        if not importance_alpha > importance_beta:
            raise ValueError(
                f"model.importance_alpha ({importance_alpha}) must exceed "
                f"model.importance_beta ({importance_beta}) (eq. 8)"
            )
        self.net = net
        self.loss_fn = CCCRMSELoss(lam=lam)
        self.lr, self.weight_decay = lr, weight_decay
        self.alpha, self.beta = importance_alpha, importance_beta
        d_video, d_audio = int(getattr(net, "d_video", 6)), int(getattr(net, "d_audio", 512))
        self.register_buffer("video_mean", torch.zeros(d_video))
        self.register_buffer("video_std", torch.ones(d_video))
        self.register_buffer("audio_mean", torch.zeros(d_audio))
        self.register_buffer("audio_std", torch.ones(d_audio))

    # ------------------------------------------------------------------ features
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and isinstance(dm, AVQDataModule):
            # Standardisation statistics of the training part become buffers of the checkpoint.
            for name, value in dm.feature_stats().items():
                getattr(self, name).copy_(value.to(self.device))

    def standardise(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        return (video - self.video_mean) / self.video_std, (audio - self.audio_mean) / self.audio_std

    def forward(self, video: Tensor, audio: Tensor) -> Tensor:
        return self.net(*self.standardise(video, audio))

    @property
    def reports_importance(self) -> bool:
        return isinstance(self.net, ProvidesIntermediates)

    # ------------------------------------------------------------------ loops
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        pred = self(batch["video"], batch["audio"])
        loss = self.loss_fn(pred, batch["mos"])  # eq. (5)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred), add_dataloader_idx=False)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.collect("val", index=batch["index"], pred=self(batch["video"], batch["audio"]), mos=batch["mos"])

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        extra = {"video": batch["video"], "audio": batch["audio"]} if self.reports_importance else {}
        pred = self(batch["video"], batch["audio"])
        self.collect("test", index=batch["index"], pred=pred, mos=batch["mos"], **extra)

    def evaluate(
        self, stage: str, samples: dict[str, Tensor], table: pd.DataFrame | None
    ) -> dict[str, float]:
        # The loss of the whole set, not a mean of batch losses: CCC is not additive.
        loss = float(self.loss_fn(samples["pred"], samples["mos"]))
        pred, mos = (samples[k].double().cpu().numpy() for k in ("pred", "mos"))
        if stage == "val":
            metrics = quality_metrics(pred, mos) if len(pred) > 2 else {}
            shown = {k: float(np.nan_to_num(metrics[k])) for k in ("plcc", "srcc", "rmse") if k in metrics}
            return {"loss": loss} | shown
        info, outputs = self.dataset_info, self.eval_outputs()
        arrays = {"index": samples["index"].cpu().numpy(), "pred": pred, "target": mos}
        metrics = evaluate_quality(stage, arrays, table, outputs, info, name=type(self.net).__name__)
        metrics["loss"] = loss
        if self.reports_importance:
            metrics.update(self._importance(samples, table, outputs))
        else:
            log.info(
                "modality importance skipped: %s has no intermediates(video, audio) method",
                type(self.net).__name__,
            )
        return metrics

    # ------------------------------------------------------------------ modality importance (paper §3)
    def _importance(
        self, samples: dict[str, Tensor], table: pd.DataFrame | None, outputs: EvalOutputs
    ) -> dict[str, float]:
        # The paper zeroes the model's input (standardised features), i.e. sets a modality to its
        # training mean.
        video, audio = self.standardise(samples["video"].to(self.device), samples["audio"].to(self.device))
        frame = modality_importance(self.net, video, audio, alpha=self.alpha, beta=self.beta)
        index = samples["index"].cpu().numpy()
        names = table if table is not None else pd.DataFrame({"stimulus": index, "source": "all"})
        frame.insert(0, "stimulus", names["stimulus"].to_numpy())
        frame.insert(1, "source", names["source"].to_numpy())
        columns = ["importance_audio", "importance_video", "abl_audio", "abl_video"]
        by_source = frame.groupby("source")[columns].mean()
        lines = [
            (
                f"modality importance (eq. 6-8, mean over held-out stimuli; alpha={self.alpha:g}, "
                f"beta={self.beta:g}):"
            )
        ]
        for source, row in by_source.iterrows():
            dominant = "audio" if row["importance_audio"] > row["importance_video"] else "video"
            lines.append(
                f"  {source:<24} audio {row['importance_audio']:.3f}  "
                f"video {row['importance_video']:.3f}  -> {dominant}-dominant"
            )
        self.summary_lines = lines
        outputs.write_csv("modality_importance.csv", frame)
        outputs.write_csv("modality_importance_by_source.csv", by_source, index=True)
        if outputs.enabled:
            from avlab.plots import grouped_bars

            outputs.plot(
                "modality_importance.png",
                grouped_bars,
                [str(s) for s in by_source.index],
                {m: by_source[f"importance_{m}"].tolist() for m in ("audio", "video")},
                title="Modality importance per source (eq. 8)",
                ylabel="importance",
            )
        return {f"importance_{m}": float(frame[f"importance_{m}"].mean()) for m in MODALITIES}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ avlab predict
    def predict_media(self, inputs: dict[str, str], datamodule: Any, out_dir: Path) -> dict[str, Any]:
        """Score a reference/distorted pair from raw media, with its modality importance."""
        from avlab.errors import ConfigError

        missing = [k for k in ("reference", "distorted") if k not in inputs]
        if missing:
            raise ConfigError(
                f"avq predict needs reference=REF.mp4 distorted=DIST.mp4; missing {', '.join(missing)}"
            )
        if not isinstance(datamodule, AVQDataModule):
            raise ConfigError(
                f"avq predict extracts features with the avq DataModule; `data._target_` builds "
                f"{type(datamodule).__name__}"
            )
        # The DataModule owns feature extraction, for new media as for the dataset.
        feats = datamodule.pair_features(
            inputs["reference"], inputs["distorted"], stimulus=Path(inputs["distorted"]).stem
        )
        video = torch.as_tensor(feats["video"])[None].to(self.device)
        audio = torch.as_tensor(feats["audio"])[None].to(self.device)
        from avlab.metrics.importance import ablation_sensitivity, feature_change_norm

        std_video, std_audio = self.standardise(video, audio)
        abl = ablation_sensitivity(self.net, std_video, std_audio)  # eq. (6)
        nrm = feature_change_norm(self.net, std_video, std_audio)  # eq. (7)
        # One stimulus: min–max over the two modalities (joint scope) is the only defined normalisation.
        imp = combined_importance(abl, nrm, alpha=self.alpha, beta=self.beta, scope="joint")
        score = float(self(video, audio)[0])
        lo, hi = datamodule.target_scale
        return {
            "reference": inputs["reference"],
            "distorted": inputs["distorted"],
            "predicted_quality": score,
            "scale": f"{lo:g}-{hi:g}",
            "q_audio": feats["q_audio"],
            "q_video": feats["q_video"],
            "modality_importance": {
                m: {
                    "ablation_sensitivity": float(abl[m][0]),
                    "feature_change_norm": float(nrm[m][0]),
                    "combined": float(imp[m][0]),
                }
                for m in MODALITIES
            },
        }
