"""YouTube-8M metrics: parity with a numpy re-statement of the official definitions.

The reference below is written from the official definitions (google/youtube-8m
``eval_util.py`` and the AP calculators, restated in avlab.metrics.yt8m's docstring), as plain loops:

* ``official_ap`` is ``ap_at_n`` as published: shuffle with ``random.seed(0)``, stable sort by
  score descending, ``Σ poscount/(i+1) · 1/num_positives``;
* ties are where avlab deliberately differs from "one random draw" (see avlab.metrics.yt8m):
  it returns the expectation over the random tie order. ``expected_ap`` states that expectation
  by brute force over all tie orders (tiny lists), and ``tie_averaged_ap_loop`` as a plain loop.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch
from torchmetrics.classification import MultilabelF1Score

from avlab.metrics.yt8m import YT8MMetrics, tie_averaged_ap, yt8m_metrics

TOL = 1e-6


# ----------------------------------------------------------------------------- reference
def official_ap(predictions, actuals, num_positives):
    """``AveragePrecisionCalculator.ap_at_n(..., n=None, total_num_positives=...)``."""
    predictions = list(predictions)
    actuals = list(actuals)
    if num_positives == 0 or not predictions:
        return 0.0
    random.seed(0)
    idx = random.sample(range(len(predictions)), len(predictions))
    predictions = [predictions[i] for i in idx]
    actuals = [actuals[i] for i in idx]
    sortidx = sorted(range(len(predictions)), key=lambda k: predictions[k], reverse=True)
    ap, poscount = 0.0, 0.0
    for i, k in enumerate(sortidx):
        if actuals[k] > 0:
            poscount += 1
            ap += poscount / (i + 1) / num_positives
    return ap


def tie_averaged_ap_loop(predictions, actuals, num_positives):
    """Expected official AP over uniformly random orders of equal scores, as a plain loop."""
    if num_positives == 0:
        return 0.0
    order = sorted(range(len(predictions)), key=lambda k: -predictions[k])
    total, seen, hits_before, i = 0.0, 0, 0, 0
    while i < len(order):
        j = i
        while j < len(order) and predictions[order[j]] == predictions[order[i]]:
            j += 1
        n = j - i
        h = sum(1 for k in order[i:j] if actuals[k] > 0)
        for t in range(1, n + 1):
            # P(hit at slot t) = h/n; given that, E[other hits in earlier slots] = (t-1)(h-1)/(n-1)
            others = (t - 1) * (h - 1) / (n - 1) if n > 1 else 0.0
            total += (h / n) * (hits_before + 1 + others) / (seen + t)
        seen += n
        hits_before += h
        i = j
    return total / num_positives


def expected_ap(predictions, actuals, num_positives):
    """Brute force: average the (unshuffled) AP over every ordering of every tie group."""
    groups = {}
    for p, a in zip(predictions, actuals):
        groups.setdefault(p, []).append(a)
    keys = sorted(groups, reverse=True)
    perms = [list(set(itertools.permutations(groups[k]))) for k in keys]
    total, count = 0.0, 0
    for combo in itertools.product(*perms):
        ranked = [a for grp in combo for a in grp]
        ap, pos = 0.0, 0
        for i, a in enumerate(ranked):
            if a:
                pos += 1
                ap += pos / (i + 1)
        # each distinct arrangement of a group is equally likely among permutations only if we
        # weight by multiplicity; distinct 0/1 arrangements of a group are equally likely anyway
        total += ap / num_positives
        count += 1
    return total / count


def topk_stable(row, k):
    """Top-k class indices; equal scores in ascending class order (avlab's documented rule)."""
    return np.argsort(-row, kind="stable")[:k]


def reference_metrics(preds, labels, k=20, tie_average=True, threshold=0.5):
    """GAP, Hit@1, PERR, mAP, F1 from the official definitions (plain numpy loops)."""
    preds = np.asarray(preds, np.float64)
    labels = np.asarray(labels)
    n, c = preds.shape
    ap = tie_averaged_ap_loop if tie_average else official_ap
    k = min(k, c)
    # top_k_by_class
    cls_pred = [[] for _ in range(c)]
    cls_lab = [[] for _ in range(c)]
    for v in range(n):
        for j in topk_stable(preds[v], k):
            cls_pred[j].append(preds[v, j])
            cls_lab[j].append(labels[v, j])
    positives = labels.sum(0)
    gap = ap([p for lst in cls_pred for p in lst], [a for lst in cls_lab for a in lst], positives.sum())
    aps = [ap(cls_pred[j], cls_lab[j], positives[j]) for j in range(c) if positives[j] > 0]
    # calculate_hit_at_one
    hit1 = np.average(labels[np.arange(n), np.argmax(preds, 1)])
    # calculate_precision_at_equal_recall_rate (ties at the cut-off averaged)
    perr = 0.0
    for v in range(n):
        nl = int(labels[v].sum())
        if nl == 0:
            continue  # official: every class is "top", none is a label -> 0
        order = np.argsort(-preds[v], kind="stable")
        cut = preds[v, order[nl - 1]]
        above = [j for j in range(c) if preds[v, j] > cut]
        tied = [j for j in range(c) if preds[v, j] == cut]
        prec = sum(labels[v, j] for j in above if preds[v, j] > 0)
        if cut > 0:
            prec += (nl - len(above)) * sum(labels[v, j] for j in tied) / len(tied)
        perr += prec / nl
    perr /= n
    pred_pos = preds > threshold
    tp = (pred_pos & (labels > 0)).sum()
    fp = (pred_pos & (labels == 0)).sum()
    fn = (~pred_pos & (labels > 0)).sum()
    return {
        "gap": gap,
        "hit_at_1": hit1,
        "perr": perr,
        "map": float(np.mean(aps)) if aps else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn),
    }


def official_perr_no_ties(preds, labels):
    """``calculate_precision_at_equal_recall_rate`` verbatim in spirit (argpartition)."""
    total = 0.0
    for row in range(preds.shape[0]):
        nl = int(labels[row].sum())
        top = np.argpartition(preds[row], -nl)[-nl:]
        prec = sum(labels[row][i] for i in top if preds[row][i] > 0)
        total += prec / top.size
    return total / preds.shape[0]


def make_data(seed, n=240, c=60, ties=False, empty_rows=True):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.06).astype(np.int64)
    labels[:, -3:] = 0  # some classes never positive (mAP must drop them)
    if empty_rows:
        labels[::7] = 0  # videos without labels
    logits = rng.normal(size=(n, c)) + 2.0 * labels
    preds = 1 / (1 + np.exp(-logits))
    if ties:
        preds = np.round(preds, 1)  # many equal scores, inside and across videos
    else:
        # distinct float32 values with the same ranking (float32 rounding alone can create ties)
        ranks = np.argsort(np.argsort(preds, axis=None)).reshape(preds.shape)
        preds = (ranks + 1) / (preds.size + 1)
    return preds.astype(np.float32), labels


# ----------------------------------------------------------------------------- tests
def test_tie_average_formula_matches_brute_force():
    rng = random.Random(1)
    for _ in range(30):
        m = rng.randint(1, 8)
        preds = [rng.choice([0.1, 0.5, 0.9]) for _ in range(m)]
        acts = [rng.randint(0, 1) for _ in range(m)]
        npos = sum(acts) + rng.randint(0, 2)
        if npos == 0:
            continue
        want = expected_ap(preds, acts, npos)
        assert tie_averaged_ap_loop(preds, acts, npos) == pytest.approx(want, abs=1e-12)
        got = tie_averaged_ap(torch.tensor(preds), torch.tensor(acts))[0].item() / npos
        assert got == pytest.approx(want, abs=1e-12)


def test_tie_average_is_mean_of_official_shuffles():
    # The official code draws one tie order; averaging over many draws approaches avlab's value.
    rng = np.random.default_rng(3)
    preds = np.round(rng.random(60), 1).tolist()
    acts = (rng.random(60) < 0.4).astype(int).tolist()
    npos = sum(acts)
    draws = []
    for s in range(400):
        order = np.random.default_rng(s).permutation(60)
        p = [preds[i] for i in order]
        a = [acts[i] for i in order]
        srt = sorted(range(60), key=lambda k: p[k], reverse=True)
        ap, pos = 0.0, 0
        for i, k in enumerate(srt):
            if a[k]:
                pos += 1
                ap += pos / (i + 1) / npos
        draws.append(ap)
    assert np.mean(draws) == pytest.approx(
        tie_averaged_ap_loop(preds, acts, npos), abs=3 * np.std(draws) / 20 + 1e-3
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_without_ties_equals_official_code(seed):
    preds, labels = make_data(seed)
    assert len(np.unique(preds)) == preds.size  # no ties at all: the official result is unique
    got = yt8m_metrics(torch.from_numpy(preds), torch.from_numpy(labels))
    want = reference_metrics(preds, labels, tie_average=False)
    for key in ("gap", "hit_at_1", "perr", "map", "f1"):
        assert got[key] == pytest.approx(want[key], abs=TOL), key
    # PERR also equals the official argpartition loop when nothing ties
    assert got["perr"] == pytest.approx(official_perr_no_ties(preds, labels), abs=TOL)


@pytest.mark.parametrize("top_k", [20, 5])
def test_parity_with_ties_and_unlabelled_videos(top_k):
    preds, labels = make_data(7, ties=True)
    got = yt8m_metrics(torch.from_numpy(preds), torch.from_numpy(labels), top_k=top_k)
    want = reference_metrics(preds, labels, k=top_k, tie_average=True)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=TOL), key


def test_gap_counts_positives_outside_top_k():
    # one video, 3 labels, only one can be in its top-1 list: GAP = (1/1)/3
    preds = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    labels = torch.tensor([[1, 1, 1, 0]])
    assert yt8m_metrics(preds, labels, top_k=1)["gap"] == pytest.approx(1 / 3, abs=TOL)


def test_perr_gives_no_credit_to_scores_at_or_below_zero():
    preds = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.3]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 0]])
    got = yt8m_metrics(preds, labels)
    assert got["perr"] == 0.0
    assert got["hit_at_1"] == pytest.approx(0.5)  # row 0: argmax is class 0 (first maximum)


def test_map_drops_empty_classes_and_keeps_missed_ones():
    preds = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.05]])
    labels = torch.tensor([[1, 0, 0], [0, 0, 1]])
    # class 0: ranked list [0.9 hit, 0.8 miss] -> AP 1; class 2 (top-1 never reaches it) -> AP 0;
    # class 1 has no positives -> dropped
    assert yt8m_metrics(preds, labels, top_k=1)["map"] == pytest.approx(0.5)


def test_f1_is_micro_at_threshold_half():
    preds, labels = make_data(11)
    got = yt8m_metrics(torch.from_numpy(preds), torch.from_numpy(labels))["f1"]
    tm = MultilabelF1Score(num_labels=preds.shape[1], threshold=0.5, average="micro")
    assert got == pytest.approx(float(tm(torch.from_numpy(preds), torch.from_numpy(labels))), abs=TOL)


def test_state_is_bounded_per_video_and_does_not_grow_with_classes():
    sizes = {}
    for c in (50, 5000):
        m = YT8MMetrics(c)
        rng = torch.Generator().manual_seed(0)
        for _ in range(3):
            p = torch.rand(64, c, generator=rng)
            y = (torch.rand(64, c, generator=rng) < 0.01).long()
            m.update(p, y)
        per_video = sum(
            t.numel() * t.element_size()
            for name in ("topk_scores", "topk_classes", "topk_hits")
            for t in getattr(m, name)
        )
        sizes[c] = per_video
        assert all(t.shape == (64, 20) for t in m.topk_scores)
    assert sizes[50] == sizes[5000] == 3 * 64 * 20 * (4 + 4 + 1)


@pytest.mark.parametrize("ties", [False, True])
def test_merging_two_accumulators_equals_one(ties):
    # torchmetrics' DDP sync concatenates "cat" states and adds "sum" states, as merge_state does.
    preds, labels = make_data(5, n=300, ties=ties)
    p, y = torch.from_numpy(preds), torch.from_numpy(labels)
    whole = YT8MMetrics(p.shape[1])
    for i in range(0, 300, 64):
        whole.update(p[i : i + 64], y[i : i + 64])
    a, b = YT8MMetrics(p.shape[1]), YT8MMetrics(p.shape[1])
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(0))  # ranks see shuffled subsets
    a.update(p[idx[:170]], y[idx[:170]])
    b.update(p[idx[170:]], y[idx[170:]])
    b.merge_state(a)  # the other order on purpose
    want, got = whole.compute(), b.compute()
    for key in want:
        assert float(got[key]) == pytest.approx(float(want[key]), abs=TOL), key


def test_shape_errors_are_clear():
    m = YT8MMetrics(10)
    with pytest.raises(ValueError, match=r"\[B, 10\]"):
        m.update(torch.rand(4, 9), torch.zeros(4, 9))


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_empty_metric_returns_zeros():
    assert all(math.isclose(float(v), 0.0) for v in YT8MMetrics(5).compute().values())
