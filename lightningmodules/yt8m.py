"""Training logic of the ``yt8m`` task: the Attend-Fusion paper's YouTube-8M classifiers.

The network (``net``) is a plain ``nn.Module`` from :mod:`avlab.models.yt8m` mapping
``(rgb [B, d_v], audio [B, d_a])`` to class logits. This module adds:

* the loss of the starter code (``losses.py`` ``CrossEntropyLoss``, paper eq. 10): binary
  cross-entropy **summed over classes and averaged over the batch**. It is computed from logits
  (``binary_cross_entropy_with_logits``), which is the same quantity without the starter code's
  ``epsilon = 1e-5`` clipping of probabilities;
* AdamW with the paper's learning rate 1e-4 (§4.1);
* the official metrics (:class:`avlab.metrics.yt8m.YT8MMetrics`) on the validation and test
  streams, logged as ``val/<m>`` and ``test/<m>`` for ``gap``, ``hit_at_1``, ``perr``, ``map``,
  ``f1`` (micro-F1 at 0.5, not an official YT8M metric) and ``f1_macro``; they are streamed in
  bounded memory and synchronised across DDP ranks;
* a per-class AP table and plot in the run directory;
* ``avlab predict``: the Kaggle submission CSV (``VideoId,LabelConfidencePairs``, top 20).
"""

from __future__ import annotations

import glob
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from avlab.errors import ConfigError, DataError
from avlab.lightningmodules.base import AvlabModule
from avlab.metrics.yt8m import YT8MMetrics

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
        for vid, cls, val in zip(video_ids, classes[:, :k].tolist(), values[:, :k].tolist()):
            fh.write(vid + "," + " ".join("%i %g" % (c, v) for c, v in zip(cls, val)) + "\n")
    return path


def _classifier(net: nn.Module, num_classes: int) -> nn.Linear:
    """The layer producing the logits: the last ``Linear(*, num_classes)`` of ``net.head``."""
    head = getattr(net, "head", net)
    layers = [m for m in head.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not layers or layers[-1].bias is None:
        raise ConfigError(f"model.prior_bias: cannot find the classifier layer of {type(net).__name__} (expected net.head)")
    return layers[-1]


class YT8MModule(AvlabModule):
    """Multi-label video classification on YouTube-8M features.

    Args:
        net: the classifier (``forward(rgb, audio) -> logits [B, C]``), e.g.
            :class:`avlab.models.yt8m.AttendFusion`.
        lr: AdamW learning rate (paper §4.1: 1e-4).
        weight_decay: AdamW weight decay (the paper does not give it; PyTorch's default 0.01).
        top_k: predictions per video kept for GAP/mAP (official ``top_k=20``).
        threshold: probability above which a class counts as predicted for F1.
        predict_top_k: label/score pairs per video in the Kaggle CSV.
        prior_bias: if set, initialise the classifier's bias to ``logit(prior_bias)`` (e.g.
            ``0.001``), so that training starts from "every class is rare" instead of
            probability 0.5 for thousands of classes (Lin et al. 2017's prior initialisation).
            ``null`` keeps PyTorch's default initialisation. The paper does not say.
    """

    def __init__(self, net: nn.Module, lr: float = 1e-4, weight_decay: float = 0.01, top_k: int = 20,
                 threshold: float = 0.5, predict_top_k: int = 20, prior_bias: float | None = None) -> None:
        super().__init__()
        num_classes = getattr(net, "num_classes", None)
        if not isinstance(num_classes, int):
            raise ConfigError("model.net must expose `num_classes` (the YouTube-8M models do)")
        self.net = net
        self.num_classes = num_classes
        self.lr, self.weight_decay = lr, weight_decay
        self.predict_top_k = predict_top_k
        self.val_metrics = YT8MMetrics(num_classes, top_k=top_k, threshold=threshold)
        self.test_metrics = YT8MMetrics(num_classes, top_k=top_k, threshold=threshold)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        if prior_bias is not None:
            if not 0.0 < prior_bias < 1.0:
                raise ConfigError(f"model.prior_bias must be a probability in (0, 1), found {prior_bias}")
            layer = _classifier(net, num_classes)
            with torch.no_grad():
                layer.bias.fill_(math.log(prior_bias / (1.0 - prior_bias)))

    # ------------------------------------------------------------------ consistency with the data
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        problems = []
        if getattr(dm, "num_classes", self.num_classes) != self.num_classes:
            problems.append(f"data.num_classes={dm.num_classes} but the model has {self.num_classes} outputs (model.net.num_classes)")
        for key in ("visual_dim", "audio_dim"):
            want, have = getattr(dm, key, None), getattr(self.net, key, None)
            if want is not None and have is not None and want != have:
                problems.append(f"data.features={dm.features} gives {key}={want} but model.net.{key}={have}")
        if problems:
            raise ConfigError("; ".join(problems) + " — set them to agree (mf: 1024/128, mf_std: 2048/256)")

    # ------------------------------------------------------------------ loops
    def forward(self, rgb: Tensor, audio: Tensor) -> Tensor:
        return self.net(rgb, audio)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch["rgb"], batch["audio"])
        loss = multilabel_bce(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits), add_dataloader_idx=False)
        return loss

    def _evaluate(self, batch: dict[str, Any], metrics: YT8MMetrics, loss_metric: MeanMetric) -> None:
        logits = self(batch["rgb"], batch["audio"])
        labels = batch["labels"]
        loss_metric.update(multilabel_bce(logits, labels), weight=len(logits))
        metrics.update(torch.sigmoid(logits), labels)  # official metrics take probabilities

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_loss)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()  # synchronised over DDP ranks by torchmetrics
        loss = self.val_loss.compute()
        self.val_metrics.reset()
        self.val_loss.reset()
        if self.trainer.sanity_checking:
            return
        self.log("val/loss", loss, prog_bar=True, add_dataloader_idx=False)
        self.log("val/gap", values["gap"], prog_bar=True, add_dataloader_idx=False)
        self.log_metrics("val", {k: v for k, v in values.items() if k != "gap"})

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        per_class = self.test_metrics.last_per_class_ap
        positives = int(self.test_metrics.class_positives.sum())
        values["loss"] = self.test_loss.compute()
        self.test_metrics.reset()
        self.test_loss.reset()
        if positives == 0:
            log.warning(
                "the test split has no labels, so every metric is 0 (the official test split's labels are "
                "withheld): set data.test_pattern to a held-out part of validate"
            )
        self.log_metrics("test", values)
        if self.is_main_process and self.run_dir is not None and per_class is not None:
            self._write_per_class(per_class)

    def _write_per_class(self, per_class: dict[str, Tensor]) -> None:
        import pandas as pd

        dm = getattr(self.trainer, "datamodule", None)
        classes = per_class["class"].tolist()
        names = dm.class_names(classes) if dm is not None and hasattr(dm, "class_names") else [str(c) for c in classes]
        table = pd.DataFrame({"class": classes, "name": names, "ap": per_class["ap"].tolist(),
                              "positives": per_class["positives"].tolist()}).sort_values("ap", ascending=False)
        table.to_csv(Path(self.run_dir) / "per_class_ap.csv", index=False)
        if len(table) and self.plots_dir is not None:
            from avlab.plots import grouped_bars

            shown = table if len(table) <= 40 else pd.concat([table.head(20), table.tail(20)])
            grouped_bars([f"{n[:24]} ({p})" for n, p in zip(shown["name"], shown["positives"])], {"AP": shown["ap"].tolist()},
                         self.plots_dir / "per_class_ap.png",
                         title="Per-class AP on the test split (top-20 sparsified, official mAP definition)"
                         + ("" if len(table) <= 40 else ": best and worst 20 classes"), ylabel="AP")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ avlab predict
    def predict_media(self, inputs: dict[str, str], datamodule: Any, out_dir: Path) -> dict[str, Any]:
        """Score TFRecord shards and write the Kaggle CSV.

        ``input=`` names shards in the datamodule's schema: a file, a folder (all ``*.tfrecord``
        in it) or a glob. ``output=`` is the CSV path (default ``RUN_DIR/predictions.csv``).
        Labels in the shards, if any, are ignored.
        """
        if "input" not in inputs:
            raise ConfigError("yt8m predict needs input=SHARDS (a .tfrecord file, a folder or a glob) and optionally output=CSV")
        spec = str(Path(inputs["input"]).expanduser())
        if Path(spec).is_dir():
            paths = sorted(Path(spec).glob("*.tfrecord"))
        else:
            paths = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        if not paths:
            raise DataError(f"no TFRecord shards match input={inputs['input']}")
        dataset = datamodule.make_dataset(paths, source=spec)
        loader = torch.utils.data.DataLoader(dataset, batch_size=datamodule.batch_size, num_workers=0)
        ids: list[str] = []
        scores: list[Tensor] = []
        self.eval()
        for batch in loader:
            ids += list(batch["video_id"])
            scores.append(torch.sigmoid(self(batch["rgb"].to(self.device), batch["audio"].to(self.device))).cpu())
        out = Path(inputs.get("output") or Path(out_dir) / "predictions.csv").expanduser()
        write_kaggle_csv(out, ids, torch.cat(scores), self.predict_top_k)
        return {"predictions": str(out), "videos": len(ids), "shards": len(paths), "top_k": self.predict_top_k}
