"""Exact AUROC, average precision and F1-max from scores and binary labels (sklearn's tie rules)."""

from __future__ import annotations

import numpy as np

from ._arrays import as_scores, undefined
from ._split import SplitScores, chunks, sorted_searchsorted, split_scores

_NAMES = ("auroc", "ap", "f1-max")


def ranking_from_split(split: SplitScores, what: str = "") -> dict[str, float]:
    """AUROC, AP and F1-max of split scores (keys ``auroc``, ``ap``, ``f1-max``).

    Every anomalous score ``v`` is a threshold of the precision–recall curve ("score >= v" is
    anomalous); thresholds between anomalous scores never give a better F1 and add nothing to
    AP, so evaluating at the anomalous scores reproduces sklearn's curves exactly:

    * AUROC = P(s_anomalous > s_normal) + P(=)/2 = trapezoidal area under the ROC curve,
      computed in integers;
    * AP = sum over thresholds of (recall step) x precision = mean over anomalous samples of
      the precision at their score (``sklearn.metrics.average_precision_score``);
    * F1-max = max of 2PR/(P+R) over the curve (0 where P+R=0).

    ``what`` prefixes the names in warnings. Undefined metrics (no normal or no anomalous
    sample) are NaN, with a logged warning.
    """
    n_neg, n_pos = split.n_neg, split.n_pos
    if n_neg == 0 or n_pos == 0:
        reason = "no anomalous samples" if n_pos == 0 else "no normal samples"
        return {name: undefined(f"{what}{name}", reason) for name in _NAMES}
    neg, pos = split.neg, split.pos_sorted()
    auc_sum = 0  # sum over anomalous samples of (#normal below) + (#normal at or below)
    precision_sum = 0.0
    best_f1 = 0.0
    for part in chunks(n_pos):
        values = pos[part]
        below = sorted_searchsorted(neg, values, "left")
        at_or_below = sorted_searchsorted(neg, values, "right")
        auc_sum += int(below.sum(dtype=np.int64)) + int(at_or_below.sum(dtype=np.int64))
        true_pos = n_pos - sorted_searchsorted(pos, values, "left")  # anomalous scores >= value
        false_pos = n_neg - below  # normal scores >= value
        precision = true_pos / (true_pos + false_pos)
        recall = true_pos / n_pos
        precision_sum += float(precision.sum())
        best_f1 = max(best_f1, float(np.max(2 * precision * recall / (precision + recall))))
    return {"auroc": auc_sum / (2 * n_pos * n_neg), "ap": precision_sum / n_pos, "f1-max": best_f1}


def ranking_metrics(scores: object, labels: object) -> dict[str, float]:
    """AUROC, AP and F1-max of scores against binary labels.

    Args:
        scores: real array of any shape (numpy or torch), higher = more anomalous.
        labels: same shape, bool or 0/1 (1 = anomalous).

    Returns:
        ``{"auroc", "ap", "f1-max"}`` as floats in [0, 1]; NaN (with a warning) when the labels
        hold a single class. Memory: about one copy of ``scores`` (chunked, no index arrays).
    """
    scores_a, labels_a = as_scores(scores, labels)
    return ranking_from_split(split_scores(scores_a, labels_a, regions=False))


def roc_from_split(split: SplitScores) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of split scores: ``(fpr, tpr)``, float64, from (0, 0) to (1, 1).

    One point per distinct score ``v``, highest first: the fractions of normal and anomalous
    scores ``>= v`` (the thresholds of :func:`ranking_from_split`, sklearn's ``roc_curve``
    without ``drop_intermediate``); empty arrays when a class is missing.
    """
    n_neg, n_pos = split.n_neg, split.n_pos
    if n_neg == 0 or n_pos == 0:
        return np.zeros(0), np.zeros(0)
    levels = np.unique(np.concatenate([split.neg, split.pos]))[::-1]
    ascending = levels[::-1]
    false_pos = n_neg - sorted_searchsorted(split.neg, ascending, "left")[::-1]
    true_pos = n_pos - sorted_searchsorted(split.pos_sorted(), ascending, "left")[::-1]
    fpr = np.concatenate([[0.0], false_pos / n_neg])
    tpr = np.concatenate([[0.0], true_pos / n_pos])
    return fpr, tpr


def roc_curve(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of scores against binary labels (see :func:`roc_from_split`); its
    trapezoidal area is :func:`auroc`."""
    scores_a, labels_a = as_scores(scores, labels)
    return roc_from_split(split_scores(scores_a, labels_a, regions=False))


def auroc(scores: object, labels: object) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``); see :func:`ranking_metrics`."""
    return ranking_metrics(scores, labels)["auroc"]


def average_precision(scores: object, labels: object) -> float:
    """Average precision, step-wise (``average_precision_score``); see :func:`ranking_metrics`."""
    return ranking_metrics(scores, labels)["ap"]


def f1_max(scores: object, labels: object) -> float:
    """Maximum F1 over the precision–recall curve; see :func:`ranking_metrics`."""
    return ranking_metrics(scores, labels)["f1-max"]
