"""Training logic of the ``yt8m`` task: the Attend-Fusion paper's YouTube-8M classifiers.

The network (``net``) is a :class:`~avlab.models.yt8m.base.YT8MModel` mapping
``(rgb [B, d_v], audio [B, d_a])`` to class logits. This module adds:

* the loss of the starter code (``losses.py`` ``CrossEntropyLoss``, paper eq. 10): binary
  cross-entropy **summed over classes and averaged over the batch**. It is computed from logits
  (``binary_cross_entropy_with_logits``), which is the same quantity without the starter code's
  ``epsilon = 1e-5`` clipping of probabilities;
* AdamW with the paper's learning rate 1e-4 (§4.1);
* the official metrics (:class:`avlab.metrics.yt8m.YT8MMetrics`) on the validation and test
  streams, logged as ``val/<m>`` and ``test/<m>`` for ``gap``, ``hit_at_1``, ``perr``, ``map``,
  ``f1`` (micro-F1 at 0.5, not an official YT8M metric) and ``f1_macro``;
* a per-class AP table and plot in the run directory, with the class names the DataModule's
  ``dataset_info().class_names`` gives (``vocabulary.csv``);
* ``avlab predict``: the Kaggle submission CSV (``VideoId,LabelConfidencePairs``, top 20).

Evaluation follows the shared hook of :mod:`avlab.lightningmodules.base` except for one step:
the metrics are *streamed* instead of gathered. Gathering every video's class probabilities
would hold ``N × C`` floats (1.1M validation videos × 3862 classes ≈ 17 GB in the 2018 data);
:class:`YT8MMetrics` keeps each video's top-20 and a few ``C``-sized counters and synchronises
them over DDP ranks itself, so :meth:`YT8MModule.finish_stage` computes from those and then logs
and writes through the shared path (``<stage>/<metric>``, :meth:`eval_outputs`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from avlab.datamodules.yt8m import YT8MDataModule
from avlab.errors import ConfigError
from avlab.lightningmodules.base import AvlabModule
from avlab.metrics.yt8m import YT8MMetrics
from avlab.models.yt8m.base import YT8MModel
from avlab.plots import grouped_bars

log = logging.getLogger(__name__)

__all__ = ["YT8MModule", "multilabel_bce", "write_kaggle_csv"]


def multilabel_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Starter-code loss (eq. 10): BCE summed over classes, averaged over the batch."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(dim=1).mean()


def write_kaggle_csv(path: Path, video_ids: list[str], scores: Tensor, top_k: int = 20) -> Path:
    """Write ``VideoId,LabelConfidencePairs`` rows (``"label score label score …"``, best first).

    The format of the starter code's ``inference.py`` (scores printed with ``%g``).
    """
    k = min(top_k, scores.shape[1])
    values, classes = torch.sort(scores, dim=1, descending=True, stable=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.write("VideoId,LabelConfidencePairs\n")
        fh.writelines(
            vid + "," + " ".join(f"{c:d} {v:g}" for c, v in zip(cls, val)) + "\n"
            for vid, cls, val in zip(video_ids, classes[:, :k].tolist(), values[:, :k].tolist())
        )
    return path


class YT8MModule(AvlabModule):
    """Multi-label video classification on YouTube-8M features.

    Args:
        net: the classifier, a :class:`~avlab.models.yt8m.base.YT8MModel`
            (``forward(rgb, audio) -> logits [B, C]``), e.g.
            :class:`avlab.models.yt8m.attend_fusion.AttendFusion`.
        lr: AdamW learning rate (paper §4.1: 1e-4).
        weight_decay: AdamW weight decay (the paper does not give it; PyTorch's default 0.01).
        top_k: predictions per video kept for GAP/mAP (official ``top_k=20``).
        threshold: probability above which a class counts as predicted for F1.
        predict_top_k: label/score pairs per video in the Kaggle CSV.
        prior_bias: if set, initialise the classifier's bias (``net.classifier()``) to
            ``logit(prior_bias)`` (e.g. ``0.001``), so that training starts from "every class is
            rare" instead of probability 0.5 for thousands of classes (Lin et al. 2017's prior
            initialisation). ``null`` keeps PyTorch's default initialisation. The paper does not say.
    """

    #: Logged to the progress bar as well.
    progress_metrics = ("loss", "gap")

    def __init__(
        self,
        net: YT8MModel,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        top_k: int = 20,
        threshold: float = 0.5,
        predict_top_k: int = 20,
        prior_bias: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, YT8MModel):
            raise ConfigError(
                f"model.net builds {type(net).__name__}, which is not an avlab.models.yt8m.base.YT8MModel: "
                "derive the network from it (it declares visual_dim, audio_dim and num_classes)"
            )
        self.net = net
        self.num_classes = net.num_classes
        self.lr, self.weight_decay = lr, weight_decay
        self.predict_top_k = predict_top_k
        self.val_metrics = YT8MMetrics(self.num_classes, top_k=top_k, threshold=threshold)
        self.test_metrics = YT8MMetrics(self.num_classes, top_k=top_k, threshold=threshold)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        if prior_bias is not None:
            if not 0.0 < prior_bias < 1.0:
                raise ConfigError(f"model.prior_bias must be a probability in (0, 1), found {prior_bias}")
            try:
                layer = net.classifier()
            except ValueError as exc:
                raise ConfigError(f"model.prior_bias: {exc}") from exc
            with torch.no_grad():
                layer.bias.fill_(math.log(prior_bias / (1.0 - prior_bias)))

    # ------------------------------------------------------------------ loops
    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        return self.net(rgb, audio)

    def _logits(self, batch: dict[str, Any]) -> Tensor:
        """The net's logits for a batch, after checking that the data and the net agree."""
        rgb, audio, labels = batch["rgb"], batch["audio"], batch["labels"]
        problems = []
        if labels.shape[-1] != self.num_classes:
            problems.append(
                f"the data has {labels.shape[-1]} classes (data.num_classes) but the model "
                f"{self.num_classes} outputs (model.net.num_classes)"
            )
        for what, x, key, want in (
            ("visual", rgb, "visual_dim", self.net.visual_dim),
            ("audio", audio, "audio_dim", self.net.audio_dim),
        ):
            if x.shape[-1] != want:
                problems.append(
                    f"the data gives {what} features of width {x.shape[-1]} but model.net.{key}={want}"
                )
        if problems:
            raise ConfigError(
                "; ".join(problems) + " — set them to agree (data.features=mf: 1024/128, mf_std: 2048/256)"
            )
        return self(rgb, audio)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self._logits(batch)
        loss = multilabel_bce(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits), add_dataloader_idx=False)
        return loss

    def _stream(self, stage: str) -> tuple[YT8MMetrics, MeanMetric]:
        return (self.val_metrics, self.val_loss) if stage == "val" else (self.test_metrics, self.test_loss)

    def _evaluate_batch(self, stage: str, batch: dict[str, Any]) -> None:
        logits = self._logits(batch)
        labels = batch["labels"]
        metrics, loss = self._stream(stage)
        loss.update(multilabel_bce(logits, labels), weight=len(logits))
        metrics.update(torch.sigmoid(logits), labels)  # official metrics take probabilities

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_batch("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_batch("test", batch)

    # ------------------------------------------------------------------ evaluation
    def finish_stage(self, stage: str) -> dict[str, float]:
        """The shared epoch-end hook with streamed metrics (see the module docstring)."""
        metrics, loss = self._stream(stage)
        values = metrics.compute()  # synchronised over DDP ranks by torchmetrics
        per_class = metrics.last_per_class_ap
        positives = int(metrics.class_positives.sum())
        values["loss"] = loss.compute()
        metrics.reset()
        loss.reset()
        # Lightning's sanity check runs a few validation batches only: no metric of them is meaningful.
        if stage == "val" and self._trainer is not None and self.trainer.sanity_checking:
            return {}
        out = {name: float(value) for name, value in values.items()}
        if stage == "test":
            if positives == 0:
                log.warning(
                    "the test split has no labels, so every metric is 0 (the official test split's "
                    "labels are withheld): set data.test_pattern to a held-out part of validate"
                )
            if per_class is not None:
                self._write_per_class(per_class)
        for name, value in out.items():
            self.log(
                f"{stage}/{name}", value, prog_bar=name in self.progress_metrics, add_dataloader_idx=False
            )
        return out

    def _write_per_class(self, per_class: dict[str, Tensor]) -> None:
        """``per_class_ap.csv`` (class, name, AP, positives; best first) and its bar plot."""
        outputs = self.eval_outputs()
        if not outputs.enabled:
            return
        classes = per_class["class"].tolist()
        names = self.dataset_info.class_names
        table = pd.DataFrame(
            {
                "class": classes,
                "name": [names[c] if names is not None and c < len(names) else str(c) for c in classes],
                "ap": per_class["ap"].tolist(),
                "positives": per_class["positives"].tolist(),
            }
        ).sort_values("ap", ascending=False)
        outputs.write_csv("per_class_ap.csv", table)
        if len(table):
            shown = table if len(table) <= 40 else pd.concat([table.head(20), table.tail(20)])
            title = "Per-class AP on the test split (top-20 sparsified, official mAP definition)"
            outputs.plot(
                "per_class_ap.png",
                grouped_bars,
                [f"{n[:24]} ({p})" for n, p in zip(shown["name"], shown["positives"])],
                {"AP": shown["ap"].tolist()},
                title=title + ("" if len(table) <= 40 else ": best and worst 20 classes"),
                ylabel="AP",
            )

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ avlab predict
    def predict_media(self, inputs: dict[str, str], datamodule: Any, out_dir: Path) -> dict[str, Any]:
        """Score TFRecord shards and write the Kaggle CSV.

        ``input=`` names shards in the datamodule's schema: a file, a folder (all ``*.tfrecord``
        in it) or a glob; the DataModule reads them (:meth:`YT8MDataModule.shard_loader`).
        ``output=`` is the CSV path (default ``RUN_DIR/predictions.csv``). Labels in the shards,
        if any, are ignored.
        """
        if "input" not in inputs:
            raise ConfigError(
                "yt8m predict needs input=SHARDS (a .tfrecord file, a folder or a glob) "
                "and optionally output=CSV"
            )
        if not isinstance(datamodule, YT8MDataModule):
            raise ConfigError(
                "yt8m predict reads shards through YT8MDataModule; "
                f"data._target_ builds {type(datamodule).__name__}"
            )
        loader = datamodule.shard_loader(inputs["input"])
        ids: list[str] = []
        scores: list[Tensor] = []
        shards = len(loader.dataset.paths)
        self.eval()
        for batch in loader:
            ids += list(batch["video_id"])
            scores.append(
                torch.sigmoid(self(batch["rgb"].to(self.device), batch["audio"].to(self.device))).cpu()
            )
        out = Path(inputs.get("output") or Path(out_dir) / "predictions.csv").expanduser()
        write_kaggle_csv(out, ids, torch.cat(scores), self.predict_top_k)
        return {"predictions": str(out), "videos": len(ids), "shards": shards, "top_k": self.predict_top_k}
