"""YouTube-8M evaluation metrics as the official starter code defines them, in bounded memory.

Definitions (google/youtube-8m ``eval_util.py``, ``average_precision_calculator.py``,
``mean_average_precision_calculator.py``). Inputs are
per-video class **probabilities** ``preds [N, C]`` and 0/1 labels ``target [N, C]``.

* **GAP** (global average precision, ``top_k=20``): keep each video's 20 highest scores, pool
  them from all videos into one ranked list, and compute non-interpolated AP,
  ``Σ_{hits at rank i} (hits up to i / i) / P`` where ``P`` counts *all* positive labels,
  including those that fell outside every top-20 list.
* **Hit@1**: fraction of videos whose highest-scoring class is a true label (videos without
  labels count as misses; the mean is over all videos).
* **PERR** (precision at equal recall rate): per video with ``n`` labels, the fraction of its
  ``n`` top-scoring classes that are true labels, a class counting only if its score is > 0;
  averaged over **all** videos (a video without labels contributes 0, as in the official code).
* **mAP**: per class, AP over only the (score, label) pairs that entered some video's top-20
  list, with all of that class's positives as the denominator; classes without any positive
  label are dropped (``filter_empty_classes=True``) and the rest averaged.
* **F1** (not an official YouTube-8M metric; the paper does not define it): micro-averaged F1
  at threshold 0.5 — a class is predicted when its probability is ``> 0.5`` (torchmetrics'
  ``MultilabelF1Score(threshold=0.5, average="micro")`` convention). ``f1_macro`` averages the
  per-class F1 over the classes that have at least one positive label.

Ties. The official code leaves two tie cases to chance: ``numpy.argpartition`` picks which of
equally-scored classes enter a video's top-k (or PERR's top-n), and ``ap_at_n`` shuffles the
pooled list with ``random.seed(0)`` before a stable sort. avlab makes both deterministic and
independent of the order in which videos arrive (so DDP and single-process runs agree):

* top-k within a video: equal scores are taken in ascending class-index order (this is also
  ``numpy.argmax``'s choice for Hit@1);
* PERR at its cut-off and AP over the pooled ranked list: the **expected value over a uniformly
  random order of the tied items** — i.e. the official metric's average over its shuffle. For
  a tie group of ``n`` items holding ``h`` hits after ``s`` earlier items with ``H`` hits, the
  expected contribution of the item at position ``s + t`` is
  ``(h/n) · (H + 1 + (t−1)(h−1)/(n−1)) / (s + t)``. Without ties this is exactly the official AP.

Memory: the accumulator keeps, per video, only its top-k scores (float32), classes (int32)
and hit flags (uint8) — ``9·k`` bytes, independent of ``C`` — plus a few ``C``-sized counters
(positives per class, F1 TP/FP/FN). The full ``N × C`` matrix is never stored. List states are
``dist_reduce_fx="cat"`` and counters ``"sum"``, so torchmetrics' DDP sync (or
:meth:`~torchmetrics.Metric.merge_state`) yields exactly the single-process result.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["YT8MMetrics", "tie_averaged_ap", "yt8m_metrics"]


def tie_averaged_ap(
    scores: Tensor, hits: Tensor, segments: Tensor | None = None, num_segments: int = 1
) -> Tensor:
    """Sum over hits of the (tie-averaged) precision at their rank, per segment.

    Divide by the segment's number of positives to get its AP. With ``segments=None`` the whole
    list is one ranked list (GAP); with class ids as segments each class is ranked on its own
    (per-class AP for mAP).

    Args:
        scores: ``[M]`` scores (higher ranks first).
        hits: ``[M]`` 0/1 relevance.
        segments: ``[M]`` integer segment ids in ``[0, num_segments)``, or ``None``.
        num_segments: number of segments.

    Returns:
        ``[num_segments]`` float64 sums.
    """
    m = scores.numel()
    device = scores.device
    if m == 0:
        return torch.zeros(num_segments, dtype=torch.float64, device=device)
    scores = scores.reshape(-1)
    hits = hits.reshape(-1).to(torch.float64)
    if segments is None:
        segments = torch.zeros(m, dtype=torch.long, device=device)
    segments = segments.reshape(-1).long()
    # Order: by segment, then by score descending (two stable sorts = a lexicographic sort).
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(segments[order], stable=True)]
    s, h, g = scores[order], hits[order], segments[order]

    pos = torch.arange(m, device=device)
    seg_start = torch.ones(m, dtype=torch.bool, device=device)
    seg_start[1:] = g[1:] != g[:-1]
    grp_start = seg_start.clone()
    grp_start[1:] |= s[1:] != s[:-1]
    # Index of the first element of each element's segment / tie group (running maximum).
    seg_first = torch.cummax(torch.where(seg_start, pos, torch.zeros_like(pos)), 0).values
    grp_first = torch.cummax(torch.where(grp_start, pos, torch.zeros_like(pos)), 0).values
    grp_id = torch.cumsum(grp_start.long(), 0) - 1
    n_grp = torch.bincount(grp_id).to(torch.float64)[grp_id]  # tie-group size n
    h_grp = torch.bincount(grp_id, weights=h)[grp_id]  # hits in the tie group h
    hits_before = torch.cumsum(h, 0) - h  # exclusive running hit count
    prior_hits = hits_before[grp_first] - hits_before[seg_first]  # H: hits ranked before the group
    rank = (pos - seg_first + 1).to(torch.float64)  # s + t
    t_minus_1 = (pos - grp_first).to(torch.float64)
    pair = torch.where(n_grp > 1, t_minus_1 * (h_grp - 1) / (n_grp - 1).clamp(min=1), torch.zeros_like(n_grp))
    term = (h_grp / n_grp) * (prior_hits + 1 + pair) / rank
    return torch.zeros(num_segments, dtype=torch.float64, device=device).index_add_(0, g, term)


def _canonical_topk(preds: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` scores and classes per row, best first, equal scores in ascending class order.

    Equals ``torch.sort(preds, descending=True, stable=True)[..., :k]`` but costs a ``topk``:
    ``topk`` may pick any of several classes tied at the k-th place, so rows where a tie group
    straddles the cut fall back to the full stable sort (rare with real-valued scores).
    """
    if k >= preds.shape[1]:
        return torch.sort(preds, dim=1, descending=True, stable=True)
    values, classes = preds.topk(k, dim=1, sorted=True)
    # Canonical order inside the top-k: by class, then (stably) by score descending.
    by_class = torch.argsort(classes, dim=1)
    values, classes = values.gather(1, by_class), classes.gather(1, by_class)
    by_score = torch.argsort(values, dim=1, descending=True, stable=True)
    values, classes = values.gather(1, by_score), classes.gather(1, by_score)
    cut = values[:, -1:]
    straddles = ((preds > cut).sum(1) + (preds == cut).sum(1)) > k
    if straddles.any():
        rows = torch.nonzero(straddles).flatten()
        v, c = torch.sort(preds[rows], dim=1, descending=True, stable=True)
        values[rows], classes[rows] = v[:, :k], c[:, :k]
    return values, classes


class YT8MMetrics(Metric):
    """Streaming GAP@k, Hit@1, PERR, mAP, micro/macro F1@threshold (see the module docstring).

    ``update(preds, target)`` takes probabilities ``[B, C]`` and 0/1 labels ``[B, C]``;
    ``compute()`` returns ``{"gap", "hit_at_1", "perr", "map", "f1", "f1_macro"}``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, top_k: int = 20, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1 or top_k < 1:
            raise ValueError(f"num_classes and top_k must be positive; found {num_classes}, {top_k}")
        self.num_classes = int(num_classes)
        self.top_k = min(int(top_k), self.num_classes)
        self.threshold = float(threshold)
        self.last_per_class_ap: dict[str, Tensor] | None = None
        self.add_state("topk_scores", default=[], dist_reduce_fx="cat")
        self.add_state("topk_classes", default=[], dist_reduce_fx="cat")
        self.add_state("topk_hits", default=[], dist_reduce_fx="cat")
        self.add_state(
            "class_positives", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state("hit_at_1_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("perr_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Accumulate a batch: ``preds`` probabilities ``[B, C]``, ``target`` 0/1 ``[B, C]``."""
        if preds.dim() != 2 or preds.shape != target.shape or preds.shape[1] != self.num_classes:
            raise ValueError(
                f"YT8MMetrics: expected preds and target of shape [B, {self.num_classes}], "
                f"found {list(preds.shape)} and {list(target.shape)}"
            )
        preds = preds.detach()
        if not preds.is_floating_point():
            preds = preds.float()
        target = target.detach() > 0
        n = preds.shape[0]
        if n == 0:
            return
        y = target.to(preds.dtype)  # float sums are much faster than bool sums on CPU
        per_class = y.sum(0)
        n_labels = y.sum(1).long()
        # The kk best classes per video, equal scores in ascending class order (documented tie
        # rule); kk also covers PERR's cut-off at each video's label count.
        kk = min(max(self.top_k, int(n_labels.max())), self.num_classes)
        sorted_scores, sorted_classes = _canonical_topk(preds, kk)
        sorted_hits = target.gather(1, sorted_classes)
        k = self.top_k
        self.topk_scores.append(sorted_scores[:, :k].float())
        self.topk_classes.append(sorted_classes[:, :k].int())
        self.topk_hits.append(sorted_hits[:, :k].to(torch.uint8))
        self.class_positives += per_class.long()
        self.num_videos += n

        # Hit@1: numpy.argmax's first maximum == first column of the canonical order.
        self.hit_at_1_sum += sorted_hits[:, 0].double().sum()

        # PERR, tie-averaged at the n-th place; videos without labels contribute 0.
        has = n_labels > 0
        if has.any():
            nl = n_labels[has]
            ss, sh = sorted_scores[has], sorted_hits[has]
            cut = ss.gather(1, (nl - 1).unsqueeze(1))  # n-th largest score
            # Everything scoring above the cut is within the top n-1, hence within the top kk.
            above = ss > cut
            credited = (sh & above & (ss > 0)).sum(1).double()  # official: no credit for a score ≤ 0
            slots = (nl - above.sum(1)).double()
            tied = preds[has] == cut  # the tie group may extend past the top kk: count on the row
            tie_size = tied.sum(1, dtype=torch.float64)
            tie_hits = (tied & target[has]).sum(1, dtype=torch.float64)
            tie_credit = torch.where(cut.squeeze(1) > 0, slots * tie_hits / tie_size, torch.zeros_like(slots))
            self.perr_sum += ((credited + tie_credit) / nl.double()).sum()

        # F1 counters at the threshold (torchmetrics convention: predicted iff p > threshold).
        predicted = (preds > self.threshold).to(preds.dtype)
        tp = (predicted * y).sum(0)
        self.tp += tp.long()
        self.fp += (predicted.sum(0) - tp).long()
        self.fn += (per_class - tp).long()

    def compute(self) -> dict[str, Tensor]:
        """The epoch's metrics (float32 scalars)."""
        device = self.class_positives.device
        if int(self.num_videos) == 0:
            zero = torch.zeros((), device=device)
            return {k: zero for k in ("gap", "hit_at_1", "perr", "map", "f1", "f1_macro")}
        scores = dim_zero_cat(self.topk_scores).reshape(-1)
        classes = dim_zero_cat(self.topk_classes).reshape(-1).long()
        hits = dim_zero_cat(self.topk_hits).reshape(-1)
        n = self.num_videos.double()
        positives = self.class_positives.double()

        total_pos = positives.sum()
        gap = (
            tie_averaged_ap(scores, hits)[0] / total_pos
            if total_pos > 0
            else torch.zeros((), dtype=torch.float64, device=device)
        )
        per_class = tie_averaged_ap(scores, hits, classes, self.num_classes)
        present = positives > 0
        ap = per_class[present] / positives[present]
        mean_ap = ap.mean() if present.any() else torch.zeros((), dtype=torch.float64, device=device)
        #: Per-class AP of the last compute() (synced states), for plots: classes, AP, positives.
        self.last_per_class_ap = {
            "class": torch.nonzero(present).flatten().cpu(),
            "ap": ap.float().cpu(),
            "positives": self.class_positives[present].cpu(),
        }

        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        denom = 2 * tp.sum() + fp.sum() + fn.sum()
        f1 = 2 * tp.sum() / denom if denom > 0 else torch.zeros((), dtype=torch.float64, device=device)
        per_f1 = torch.where(
            2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp)
        )
        f1_macro = (
            per_f1[present].mean() if present.any() else torch.zeros((), dtype=torch.float64, device=device)
        )
        out = {
            "gap": gap,
            "hit_at_1": self.hit_at_1_sum / n,
            "perr": self.perr_sum / n,
            "map": mean_ap,
            "f1": f1,
            "f1_macro": f1_macro,
        }
        return {k: v.float() for k, v in out.items()}


def yt8m_metrics(preds: Tensor, target: Tensor, top_k: int = 20, threshold: float = 0.5) -> dict[str, float]:
    """One-shot version of :class:`YT8MMetrics` on full ``[N, C]`` tensors (tests, notebooks)."""
    metric = YT8MMetrics(preds.shape[1], top_k=top_k, threshold=threshold)
    metric.update(preds, target)
    return {k: float(v) for k, v in metric.compute().items()}
