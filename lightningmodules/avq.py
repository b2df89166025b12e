"""Training logic of the ``avq`` task (Attentive AV-FusionNet and its deep variants).

The network (``net``) is a plain ``nn.Module`` from :mod:`avlab.models.avq`; this module adds the
eq. (5) loss, AdamW, feature standardisation (statistics of the training part, stored as buffers
so a checkpoint predicts on new media without the training data), evaluation over the whole
validation/test set gathered from all ranks, and modality importance (paper §3, eq. 6–8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from avlab.lightningmodules.base import AvlabModule
from avlab.losses import CCCRMSELoss
from avlab.metrics.importance import MODALITIES, combined_importance, modality_importance
from avlab.metrics.quality import quality_metrics


class AVQModule(AvlabModule):
    """Full-reference AV quality regression.

    Args:
        net: the fusion network (``forward(video [B,N,6], audio [B,N,d_a]) -> [B]``).
        lam: λ of eq. (5), L = λ(1 − CCC) + (1 − λ)·RMSE (paper: 0.6).
        lr, weight_decay: AdamW settings (Table 2 spans 1e-4..1e-2 and 1e-3..1e-1).
        importance_alpha, importance_beta: α > β of eq. (8).
    """

    def __init__(self, net: nn.Module, lam: float = 0.6, lr: float = 1e-3, weight_decay: float = 1e-2,
                 importance_alpha: float = 0.7, importance_beta: float = 0.3) -> None:
        super().__init__()
        if not importance_alpha > importance_beta:
            raise ValueError(f"model.importance_alpha ({importance_alpha}) must exceed model.importance_beta ({importance_beta}) (eq. 8)")
        self.net = net
        self.loss_fn = CCCRMSELoss(lam=lam)
        self.lr, self.weight_decay = lr, weight_decay
        self.alpha, self.beta = importance_alpha, importance_beta
        d_video, d_audio = int(getattr(net, "d_video", 6)), int(getattr(net, "d_audio", 512))
        self.register_buffer("video_mean", torch.zeros(d_video))
        self.register_buffer("video_std", torch.ones(d_video))
        self.register_buffer("audio_mean", torch.zeros(d_audio))
        self.register_buffer("audio_std", torch.ones(d_audio))
        self._outputs: dict[str, list[dict[str, Tensor]]] = {"val": [], "test": []}

    # ------------------------------------------------------------------ features
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and dm is not None and hasattr(dm, "feature_stats"):
            for name, value in dm.feature_stats().items():
                getattr(self, name).copy_(value.to(self.device))

    def standardise(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        return (video - self.video_mean) / self.video_std, (audio - self.audio_mean) / self.audio_std

    def forward(self, video: Tensor, audio: Tensor) -> Tensor:
        return self.net(*self.standardise(video, audio))

    # ------------------------------------------------------------------ loops
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        pred = self(batch["video"], batch["audio"])
        loss = self.loss_fn(pred, batch["mos"])  # eq. (5)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred), add_dataloader_idx=False)
        return loss

    def _collect(self, stage: str, batch: dict[str, Tensor]) -> None:
        pred = self(batch["video"], batch["audio"])
        self._outputs[stage].append({"index": batch["index"], "pred": pred.detach(), "mos": batch["mos"]})

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._collect("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._collect("test", batch)

    def _gathered(self, stage: str) -> dict[str, Tensor]:
        outs = self._outputs[stage]
        self._outputs[stage] = []
        if not outs:
            return {}
        merged = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return self.gather_samples(merged)

    def on_validation_epoch_end(self) -> None:
        g = self._gathered("val")
        if not g or self.trainer.sanity_checking:
            return
        # The loss of the whole validation set, not a mean of batch losses: CCC is not additive.
        loss = self.loss_fn(g["pred"], g["mos"])
        metrics = quality_metrics(g["pred"].double().cpu().numpy(), g["mos"].double().cpu().numpy()) if len(g["pred"]) > 2 else {}
        self.log("val/loss", loss, prog_bar=True, add_dataloader_idx=False, sync_dist=False)
        for key in ("plcc", "srcc", "rmse"):
            if key in metrics:
                self.log(f"val/{key}", float(np.nan_to_num(metrics[key])), add_dataloader_idx=False)

    def on_test_epoch_end(self) -> None:
        g = self._gathered("test")
        if not g:
            return
        dm = self.trainer.datamodule
        pred, mos, index = (g[k].double().cpu().numpy() for k in ("pred", "mos", "index"))
        index = index.astype(int)
        run_dir = self.run_dir if self.is_main_process else None
        metrics = dm.evaluate(pred, mos, split="test", run_dir=run_dir, name=type(self.net).__name__, index=index)
        metrics["loss"] = float(self.loss_fn(g["pred"], g["mos"]))
        self.log_metrics("test", {k: float(v) for k, v in metrics.items()})
        self._importance(dm, index, run_dir)

    # ------------------------------------------------------------------ modality importance (paper §3)
    def _importance(self, dm: Any, index: np.ndarray, run_dir: Path | None) -> None:
        video = torch.as_tensor(dm.video[index], device=self.device)
        audio = torch.as_tensor(dm.audio[index], device=self.device)
        # The paper zeroes the model's input (standardised features), i.e. sets a modality to its training mean.
        table = modality_importance(self.net, *self.standardise(video, audio), alpha=self.alpha, beta=self.beta)
        meta = dm.meta("test", index)
        table.insert(0, "stimulus", meta["stimulus"].to_numpy())
        table.insert(1, "source", meta["source"].to_numpy())
        by_source = table.groupby("source")[["importance_audio", "importance_video", "abl_audio", "abl_video"]].mean()
        self.log_metrics("test", {f"importance_{m}": float(table[f"importance_{m}"].mean()) for m in MODALITIES})
        lines = ["modality importance (eq. 6-8, mean over held-out stimuli; alpha=%g, beta=%g):" % (self.alpha, self.beta)]
        for source, row in by_source.iterrows():
            dominant = "audio" if row["importance_audio"] > row["importance_video"] else "video"
            lines.append(f"  {source:<24} audio {row['importance_audio']:.3f}  video {row['importance_video']:.3f}  -> {dominant}-dominant")
        self.summary_lines = lines
        if run_dir is not None:
            table.to_csv(Path(run_dir) / "modality_importance.csv", index=False)
            by_source.to_csv(Path(run_dir) / "modality_importance_by_source.csv")
            from avlab.plots import grouped_bars

            grouped_bars([str(s) for s in by_source.index],
                         {"audio": by_source["importance_audio"].tolist(), "video": by_source["importance_video"].tolist()},
                         Path(run_dir) / "plots" / "modality_importance.png",
                         title="Modality importance per source (eq. 8)", ylabel="importance")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ avlab predict
    def predict_media(self, inputs: dict[str, str], datamodule: Any, out_dir: Path) -> dict[str, Any]:
        """Score a reference/distorted pair from raw media, with its modality importance."""
        from avlab.errors import ConfigError

        missing = [k for k in ("reference", "distorted") if k not in inputs]
        if missing:
            raise ConfigError(f"avq predict needs reference=REF.mp4 distorted=DIST.mp4; missing {', '.join(missing)}")
        feats = datamodule.pair_features(inputs["reference"], inputs["distorted"], stimulus=Path(inputs["distorted"]).stem)
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
            "reference": inputs["reference"], "distorted": inputs["distorted"],
            "predicted_quality": score, "scale": f"{lo:g}-{hi:g}",
            "q_audio": feats["q_audio"], "q_video": feats["q_video"],
            "modality_importance": {m: {"ablation_sensitivity": float(abl[m][0]), "feature_change_norm": float(nrm[m][0]),
                                        "combined": float(imp[m][0])} for m in MODALITIES},
        }
