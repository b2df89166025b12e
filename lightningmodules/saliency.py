"""Training, evaluation and inference of the ``saliency`` task (AVRSP, paper §III–IV).

* Loss: eq. (19) ``KL − 0.1·CC − 0.1·SIM`` (:class:`avlab.metrics.saliency.SaliencyLoss`).
* Optimiser: AdamW (lr 1e-4, weight decay 1e-5) with ReduceLROnPlateau (factor 0.5) on
  ``val/loss`` (paper §IV-B, Training Details).
* Two stages: ``saliency/avrsp_dhf1k_pretrain`` trains the visual branch on DHF1K;
  ``saliency/avrsp_av`` sets ``model.init_from`` to that run's checkpoint (or run directory) and
  trains audio-visual. ``init_from`` loads weights only (``weights_only=True``), every tensor whose
  name and shape match (the visual branch, ASPP/LIP, MS, MRG, decoder); the audio branch and the
  fusion block start fresh. A missing file or a visual branch that does not fit is a clear error.
* Test: per-frame metrics at the ground-truth resolution (protocol in
  :mod:`avlab.metrics.saliency`), through the shared evaluation hook of
  :mod:`avlab.lightningmodules.base` (collected per batch, gathered from all DDP ranks and
  de-duplicated by sample index, looked up in the DataModule's sample table), averaged per video,
  then over videos — overall (``test/cc`` …) and per dataset (``test/<dataset>/cc`` …).
* Predict: ``avlab predict`` runs :mod:`avlab.inference.saliency` (sliding and reversed windows,
  PNG maps and an overlay MP4).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from avlab.errors import ConfigError
from avlab.inference.saliency import predict_saliency_media
from avlab.lightningmodules.base import AvlabModule
from avlab.metrics.saliency import METRICS, SaliencyLoss, frame_metrics, postprocess, video_average
from avlab.models.saliency import AVRSP

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["SaliencyModule", "resolve_init_checkpoint"]


def resolve_init_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from ``init_from``: a ``.ckpt`` file, or a run directory (best, else last)."""
    p = Path(path).expanduser()
    if p.is_dir():
        ckpts = sorted((p / "checkpoints").rglob("best*.ckpt")) or sorted(
            (p / "checkpoints").rglob("last.ckpt")
        )
        if not ckpts:
            raise ConfigError(
                f"model.init_from={p} is a folder without checkpoints/best*.ckpt or last.ckpt; "
                "give the stage-1 run directory or a .ckpt file"
            )
        return ckpts[-1]
    if not p.is_file():
        raise ConfigError(
            f"model.init_from={p} does not exist; give the stage-1 checkpoint, e.g. "
            "runs/saliency/avrsp_dhf1k_pretrain/<time>/checkpoints/last.ckpt"
        )
    return p


class SaliencyModule(AvlabModule):
    """AVRSP (or its visual-only variant) with the paper's loss, optimiser and evaluation.

    Args:
        visual: visual backbone node (``model.visual``; :class:`avlab.models.saliency.S3DEncoder`,
            ``model.visual.weights=PATH`` loads Kinetics S3D weights).
        audio: audio backbone node (``model.audio``; SoundNet-8) or None for visual-only.
        fusion: fusion block (``model.fusion``; RAVF or a Table V alternative) or None.
        channels: width C of the multi-scale features and fusion tokens.
        ms_mrg_pairs: MS & MRG pairs, 0–4 (Table IV; AVRSP uses 3).
        use_ms, use_mrg: keep the MS, resp. MRG, half of the pairs (Table III's "MS only" and
            "MRG only" rows switch one off).
        ms_mrg_norm_act: BatchNorm + ReLU after the convs of MS and MRG (False: the paper's plain convs).
        aspp_rates: ASPP dilation rates.
        kernel: 3-D conv kernel of MS, MRG and decoder.
        lr, weight_decay: AdamW (paper: 1e-4, 1e-5).
        plateau_factor, plateau_patience: ReduceLROnPlateau on ``val/loss`` (paper: factor 0.5).
        loss_weights: ``[w_KL, w_CC, w_SIM]`` of eq. (19) (paper: 1, −0.1, −0.1).
        init_from: stage-1 checkpoint (or run directory) to start from; weights only.
        blur_sigma, blur_ksize: the evaluation blur (protocol step 2; 0 disables it).
        predict_batch_size: windows per forward pass in ``avlab predict``.
        n_plot_frames: test frames drawn in ``plots/saliency_examples.png``.
        bn_momentum: if set, the momentum of every BatchNorm layer of the network. torchvision's S3D
            uses 0.001, right for fine-tuning Kinetics weights (running statistics that are already
            good) but far too slow for a randomly initialised network trained for a few hundred
            steps: its evaluation-mode statistics would stay near their initial values (the CPU
            profile sets 0.1, PyTorch's default). ``null`` keeps each layer's own value.
    """

    def __init__(
        self,
        visual: nn.Module,
        audio: nn.Module | None = None,
        fusion: nn.Module | None = None,
        channels: int = 128,
        ms_mrg_pairs: int = 3,
        use_ms: bool = True,
        use_mrg: bool = True,
        ms_mrg_norm_act: bool = True,
        aspp_rates: Sequence[int] = (1, 2, 3),
        kernel: int = 3,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        plateau_factor: float = 0.5,
        plateau_patience: int = 3,
        loss_weights: Sequence[float] = (1.0, -0.1, -0.1),
        init_from: str | None = None,
        blur_sigma: float = 2.0,
        blur_ksize: int = 11,
        predict_batch_size: int = 8,
        n_plot_frames: int = 4,
        bn_momentum: float | None = None,
    ) -> None:
        super().__init__()
        self.net = AVRSP(
            visual,
            audio,
            fusion,
            channels=channels,
            ms_mrg_pairs=ms_mrg_pairs,
            aspp_rates=tuple(aspp_rates),
            kernel=kernel,
            use_ms=use_ms,
            use_mrg=use_mrg,
            ms_mrg_norm_act=ms_mrg_norm_act,
        )
        if bn_momentum is not None:
            if not 0 < bn_momentum <= 1:
                raise ConfigError(f"model.bn_momentum must be in (0, 1] or null, got {bn_momentum}")
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = bn_momentum
        if len(loss_weights) != 3:
            raise ConfigError(f"model.loss_weights must be [w_kl, w_cc, w_sim], got {list(loss_weights)}")
        self.loss_fn = SaliencyLoss(*loss_weights)
        self.lr, self.weight_decay = lr, weight_decay
        self.plateau_factor, self.plateau_patience = plateau_factor, plateau_patience
        self.init_from = init_from
        self._initialised = False
        self.blur_sigma, self.blur_ksize = blur_sigma, blur_ksize
        self.predict_batch_size, self.n_plot_frames = predict_batch_size, n_plot_frames
        self._plots: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ stage chaining
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.init_from and not self._initialised:
            self.load_init(self.init_from)
        self._initialised = True

    def load_init(self, path: str | Path) -> dict[str, int]:
        """Load matching weights from a checkpoint (stage 1 → stage 2); see the module docstring."""
        ckpt_path = resolve_init_checkpoint(path)
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"cannot load model.init_from={ckpt_path}: {exc}") from exc
        sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
        own = self.state_dict()
        loadable = {k: v for k, v in sd.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        mismatched = [k for k in sd if k in own and tuple(own[k].shape) != tuple(sd[k].shape)]
        visual = [k for k in own if k.startswith("net.visual.")]
        missing_visual = [k for k in visual if k not in loadable]
        if missing_visual or (mismatched and any(k.startswith("net.visual.") for k in mismatched)):
            raise ConfigError(
                f"model.init_from={ckpt_path} does not fit this model's visual branch: "
                f"{len(missing_visual)} of {len(visual)} tensors missing or of another shape (e.g. "
                f"{(missing_visual or mismatched)[:2]}); use the same model.visual / model.channels "
                "as stage 1"
            )
        self.load_state_dict(loadable, strict=False)
        skipped = [k for k in own if k not in loadable]
        fresh = ", ".join(sorted({k.split(".")[1] for k in skipped})[:4])
        log.info(
            "init_from %s: loaded %d tensors, %d start fresh (%s...)",
            ckpt_path,
            len(loadable),
            len(skipped),
            fresh,
        )
        if mismatched:
            log.warning(
                "init_from: %d tensors of another shape were skipped, e.g. %s",
                len(mismatched),
                mismatched[:3],
            )
        return {"loaded": len(loadable), "fresh": len(skipped), "mismatched": len(mismatched)}

    # ------------------------------------------------------------------ forward and loops
    def forward(self, clip: Tensor, audio: Tensor | None = None) -> Tensor:
        return self.net(clip, audio if self.net.is_audio_visual else None)

    def _predict(self, batch: dict[str, Any]) -> Tensor:
        if self.net.is_audio_visual and "audio" not in batch:
            raise ConfigError("this model is audio-visual but the data has no audio; set data.audio=true")
        return self(batch["clip"], batch.get("audio"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        pred = self._predict(batch)
        loss = self.loss_fn(pred, batch["target"])  # eq. (19)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred), add_dataloader_idx=False)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self._predict(batch)
        loss = self.loss_fn(pred, batch["target"])
        terms = SaliencyLoss.terms(pred, batch["target"])
        n = len(pred)
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True, add_dataloader_idx=False)
        self.log(
            "val/cc",
            torch.nan_to_num(terms["cc"]).mean(),
            batch_size=n,
            sync_dist=True,
            add_dataloader_idx=False,
        )

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self._predict(batch)
        loss = self.loss_fn(pred, batch["target"])
        rows = {m: [] for m in METRICS}
        for i in range(len(pred)):
            gt, fix = batch["gt"][i].to(pred.device), batch["fix"][i].to(pred.device)
            fm = frame_metrics(
                pred[i].detach(), gt, fix, blur_sigma=self.blur_sigma, blur_ksize=self.blur_ksize
            )
            for m in METRICS:
                rows[m].append(fm[m].to(torch.float64))
        out = {m: torch.stack(v).to(self.device) for m, v in rows.items()}
        self.collect(
            "test",
            index=batch["index"],
            video=batch["video"],
            frame=batch["frame"],
            loss=loss.detach().to(torch.float64).expand(len(pred)).clone(),
            **out,
        )
        if self.is_main_process and len(self._plots) < self.n_plot_frames:
            for i in range(min(len(pred), self.n_plot_frames - len(self._plots))):
                self._plots.append(
                    {
                        "pred": pred[i].detach().cpu(),
                        "gt": batch["gt"][i].cpu(),
                        "fix": batch["fix"][i].cpu(),
                        "frame": int(batch["frame"][i]),
                        "video": int(batch["video"][i]),
                    }
                )

    def evaluate(
        self, stage: str, samples: dict[str, Tensor], table: pd.DataFrame | None
    ) -> dict[str, float]:
        """Test metrics (the shared evaluation hook): frame → video → mean over videos, overall and per
        dataset (named by the sample table's ``dataset`` column), plus the per-video CSV and plots."""
        g = {k: v.cpu().numpy() for k, v in samples.items()}
        metrics = self.test_metrics(g, table)
        nan_frames = {m: int(np.isnan(g[m]).sum()) for m in METRICS}
        dropped = ", ".join(f"{m} {k}" for m, k in nan_frames.items())
        self.summary_lines = [
            (
                f"saliency test: {int(metrics['n_frames'])} frames of {int(metrics['n_videos'])} videos; "
                f"frame → video → mean over videos; frames without a defined value dropped: {dropped}"
            ),
            (
                f"protocol: prediction resized to the GT size (bicubic), Gaussian blur σ={self.blur_sigma} "
                f"({self.blur_ksize}×{self.blur_ksize}), min-max; fixations never resized"
            ),
        ]
        self._write_outputs(g, table)
        return metrics

    @staticmethod
    def test_metrics(g: dict[str, np.ndarray], meta: pd.DataFrame | None = None) -> dict[str, float]:
        """Overall and per-dataset metrics from gathered per-frame values ``g`` (keys: the metric
        names, ``video``, ``loss``) and, when known, their rows of the sample table (``dataset``)."""
        groups = None
        if meta is not None:
            datasets = meta["dataset"].to_numpy()
            groups = {d: np.unique(g["video"][datasets == d]).tolist() for d in dict.fromkeys(datasets)}
        metrics: dict[str, float] = {}
        for m in METRICS:
            avg = video_average(g[m], g["video"], groups)
            metrics[m] = avg.pop("")
            for name, value in avg.items():
                metrics[f"{name}/{m}"] = value
        metrics["loss"] = float(np.mean(g["loss"]))
        metrics["n_videos"] = float(len(np.unique(g["video"])))
        metrics["n_frames"] = float(len(g["video"]))
        return metrics

    def _write_outputs(self, g: dict[str, np.ndarray], meta: pd.DataFrame | None) -> None:
        import pandas as pd

        out = self.eval_outputs()  # writes on rank zero of a run with a run directory only
        if out.enabled:
            table = pd.DataFrame({k: g[k] for k in ("video", "frame", *METRICS)})
            per_video = table.groupby("video")[list(METRICS)].mean()  # pandas' mean skips NaN frames
            if meta is not None:
                names = meta.assign(video=g["video"]).groupby("video")[["dataset", "name"]].first()
                per_video = names.join(per_video)
            out.write_csv("saliency_per_video.csv", per_video, index=True)
            if self._plots:
                out.plot("saliency_examples.png", self._plot_examples)
        self._plots = []

    def _plot_examples(self, path: Path) -> None:
        from avlab.plots import _pyplot

        plt = _pyplot()
        n = len(self._plots)
        fig, axes = plt.subplots(n, 2, figsize=(6, 1.8 * n), dpi=100, squeeze=False)
        for row, item in zip(axes, self._plots):
            pp = postprocess(item["pred"].double(), tuple(item["gt"].shape), self.blur_sigma, self.blur_ksize)
            row[0].imshow(item["gt"].numpy(), cmap="gray")
            ys, xs = np.nonzero(item["fix"].numpy())
            row[0].scatter(xs, ys, s=4, c="red")
            row[0].set_title(f"video {item['video']} frame {item['frame'] + 1}: GT + fixations", fontsize=7)
            row[1].imshow(pp.numpy(), cmap="jet")
            row[1].set_title("prediction (post-processed)", fontsize=7)
            for ax in row:
                ax.axis("off")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=self.plateau_factor, patience=self.plateau_patience
        )
        schedule = {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"}
        return {"optimizer": opt, "lr_scheduler": schedule}

    # ------------------------------------------------------------------ avlab predict
    def predict_media(self, inputs: dict[str, str], datamodule: Any, out_dir: Path) -> dict[str, Any]:
        """Saliency maps for every frame of ``input=VIDEO``: PNGs and an overlay MP4 with the audio
        (:func:`avlab.inference.saliency.predict_saliency_media`)."""
        if "input" not in inputs:
            raise ConfigError("saliency predict needs input=VIDEO.mp4")

        def post(m: Tensor, size: tuple[int, int]) -> Tensor:
            return postprocess(m, size, self.blur_sigma, self.blur_ksize, dtype=torch.float32)

        was_training = self.training
        self.eval()
        try:
            return predict_saliency_media(
                self,
                inputs["input"],
                out_dir,
                preprocess=datamodule.preprocess,
                clip_len=int(datamodule.clip_len),
                audio_visual=self.net.is_audio_visual,
                postprocess=post,
                batch_size=self.predict_batch_size,
                device=self.device,
                decoder=datamodule.decoder,
            )
        finally:
            self.train(was_training)
