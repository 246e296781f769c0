"""Pascal VOC classification metrics, computed the way the VOC devkit computes them.

Average precision (AP) of one class, from the devkit's ``VOCevalcls.m`` / ``VOCap.m``:

1. Drop the images whose label for this class is "difficult only" (``ignore``); they are neither
   right nor wrong. (The devkit keeps them in the ranking with ``gt = 0``; they then add neither a
   true nor a false positive, so precision and recall stay flat across them and the AP is the same
   as dropping them.)
2. Rank the remaining images by score, highest first. Ties keep the input order (a stable sort, as
   MATLAB's ``sort`` does); this matters only for exactly tied scores.
3. ``tp = cumsum(positive)``, ``fp = cumsum(negative)``, ``recall = tp / #positives``,
   ``precision = tp / (tp + fp)``.
4. ``method="voc2010"`` (VOC2010 and later, the default): pad recall with 0 and 1 and precision
   with 0 and 0, replace precision by its monotonically decreasing envelope (each point takes the
   maximum precision at any higher recall), and sum ``(recall step) * envelope`` over the points
   where recall changes: the area under the envelope, all points.
   ``method="voc2007"``: the 11-point interpolated AP, ``mean over t in {0, 0.1, ..., 1} of
   max(precision[recall >= t])`` (0 where no recall reaches t).

How this differs from scikit-learn's ``average_precision_score`` (and torchmetrics'
``MultilabelAveragePrecision``): they compute ``sum_n (R_n - R_{n-1}) P_n`` with the *raw*
precision at each threshold, no envelope, and group tied scores into one threshold. The VOC2010
AP is therefore always >= scikit-learn's; they are equal whenever the raw precision at the true
positives never rises again further down the ranking (e.g. every perfect ranking, every ranking
with a single positive) and there are no ties. Example: labels ranked ``[1, 0, 0, 1, 1]`` give
scikit-learn ``(1 + 2/4 + 3/5) / 3 = 0.700`` but VOC2010 ``(1 + 3/5 + 3/5) / 3 = 0.733``, because
the envelope lifts the precision 2/4 at the second positive to the 3/5 reached later.

A class with no positive image (after ignoring difficult ones) has no AP: it is ``nan`` in
:func:`per_class_ap` and left out of :func:`mean_average_precision` (which says how many classes it
averaged). On the full VOC2012 val split every class has positives; small synthetic or debug
splits may not.

Top-1 accuracy (claim C11 reports "top-1" for a multi-label data set without defining it). Our
definition, :func:`top1_accuracy`: an image counts as correct when its highest-scoring class is
one of its positive labels. Classes that are difficult-only for that image are skipped when picking
the highest-scoring class (neither right nor wrong, as in AP), and images without any positive
label are left out. It is reported *beside* mAP, never instead of it: it ignores every label but
one per image and every score but the top one.

All functions take numpy arrays or torch tensors: ``scores`` (N, C) (logits or probabilities,
only the order matters), ``targets`` (N, C) with 1 = positive and 0 = negative, ``ignore`` (N, C)
bool, True where the label is difficult-only (the data package's ignore mask).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import numpy as np

__all__ = [
    "AP_METHODS",
    "voc_ap",
    "average_precision",
    "per_class_ap",
    "mean_average_precision",
    "top1_accuracy",
    "classification_metrics",
]

#: ``"voc2010"``: area under the precision envelope (VOC2010+ devkit); ``"voc2007"``: 11-point.
AP_METHODS = ("voc2010", "voc2007")

ArrayLike = Union[np.ndarray, "torch.Tensor", Sequence]  # noqa: F821 - torch is optional here


def _to_numpy(x: ArrayLike, name: str, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().float().cpu().numpy() if dtype is not bool else x.detach().cpu().numpy()
    arr = np.asarray(x)
    if dtype is not None:
        arr = arr.astype(dtype)
    return arr


def _check_method(method: str) -> str:
    if method not in AP_METHODS:
        raise ValueError(f"unknown AP method {method!r}; expected one of {', '.join(AP_METHODS)}")
    return method


def voc_ap(recall: ArrayLike, precision: ArrayLike, method: str = "voc2010") -> float:
    """AP from a precision/recall curve, as the VOC devkit's ``VOCap.m`` (or the 2007 11-point rule).

    Args:
        recall: (K,) recall after each ranked detection, non-decreasing.
        precision: (K,) precision after each ranked detection.
        method: ``"voc2010"`` (area under the decreasing envelope) or ``"voc2007"`` (11-point).
    """
    _check_method(method)
    rec = _to_numpy(recall, "recall", np.float64).ravel()
    prec = _to_numpy(precision, "precision", np.float64).ravel()
    if rec.shape != prec.shape:
        raise ValueError(f"voc_ap: recall and precision must have the same length, got {rec.shape} and {prec.shape}")
    if method == "voc2007":
        ap = 0.0
        # np.arange(0, 1.1, 0.1), as py-faster-rcnn's voc_eval.py and MATLAB's 0:0.1:1
        for t in np.arange(0.0, 1.1, 0.1):
            p = prec[rec >= t]
            ap += (p.max() if p.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotonically decreasing envelope
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1  # points where recall changes
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def average_precision(
    scores: ArrayLike, labels: ArrayLike, ignore: Optional[ArrayLike] = None, method: str = "voc2010"
) -> float:
    """VOC AP of one class.

    Args:
        scores: (N,) score per image (higher = more confident).
        labels: (N,) 1 for positive, 0 for negative.
        ignore: (N,) bool, True for difficult-only labels (excluded from the ranking).
        method: ``"voc2010"`` (default) or ``"voc2007"``.

    Returns:
        AP in [0, 1], or ``nan`` when no non-ignored positive exists.
    """
    _check_method(method)
    s = _to_numpy(scores, "scores", np.float64).ravel()
    y = _to_numpy(labels, "labels", np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(
            f"average_precision: scores and labels must have the same length, got {s.shape} and {y.shape}"
        )
    if ignore is not None:
        ig = _to_numpy(ignore, "ignore", bool).ravel().astype(bool)
        if ig.shape != s.shape:
            raise ValueError(f"average_precision: ignore must have shape {s.shape}, got {ig.shape}")
        s, y = s[~ig], y[~ig]
    if not np.all(np.isfinite(s)):
        raise ValueError("average_precision: scores contain NaN or inf; check the model's outputs")
    pos = y > 0.5
    npos = int(pos.sum())
    if npos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(pos[order])
    fp = np.cumsum(~pos[order])
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, method)


def _check_2d(scores: np.ndarray, targets: np.ndarray, ignore: Optional[np.ndarray], fn: str) -> None:
    if scores.ndim != 2:
        raise ValueError(f"{fn} expects scores of shape (N, C), got {scores.shape}")
    if targets.shape != scores.shape:
        raise ValueError(f"{fn}: targets must have the scores' shape {scores.shape}, got {targets.shape}")
    if ignore is not None and ignore.shape != scores.shape:
        raise ValueError(f"{fn}: ignore must have the scores' shape {scores.shape}, got {ignore.shape}")


def per_class_ap(
    scores: ArrayLike, targets: ArrayLike, ignore: Optional[ArrayLike] = None, method: str = "voc2010"
) -> np.ndarray:
    """Per-class VOC AP for multi-label classification.

    Args:
        scores: (N, C) scores.
        targets: (N, C) 1 = positive, 0 = negative.
        ignore: (N, C) bool, True for difficult-only labels.
        method: ``"voc2010"`` or ``"voc2007"``.

    Returns:
        (C,) float64 array of APs; ``nan`` for classes without a (non-ignored) positive.
    """
    s = _to_numpy(scores, "scores", np.float64)
    t = _to_numpy(targets, "targets", np.float64)
    ig = None if ignore is None else _to_numpy(ignore, "ignore", bool).astype(bool)
    _check_2d(s, t, ig, "per_class_ap")
    return np.array(
        [average_precision(s[:, c], t[:, c], None if ig is None else ig[:, c], method) for c in range(s.shape[1])],
        dtype=np.float64,
    )


def mean_average_precision(
    scores: ArrayLike, targets: ArrayLike, ignore: Optional[ArrayLike] = None, method: str = "voc2010"
) -> float:
    """mAP: the mean of :func:`per_class_ap` over the classes that have positives (nan if none has)."""
    ap = per_class_ap(scores, targets, ignore, method)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def top1_accuracy(scores: ArrayLike, targets: ArrayLike, ignore: Optional[ArrayLike] = None) -> float:
    """Fraction of images whose highest-scoring class is one of their positive labels.

    Classes that are difficult-only for an image are skipped when picking its top class; images
    without a positive label are left out (``nan`` if no image has one). Shapes: (N, C) each.
    """
    s = _to_numpy(scores, "scores", np.float64)
    t = _to_numpy(targets, "targets", np.float64)
    ig = None if ignore is None else _to_numpy(ignore, "ignore", bool).astype(bool)
    _check_2d(s, t, ig, "top1_accuracy")
    pos = t > 0.5
    if ig is not None:
        pos &= ~ig
        s = np.where(ig, -np.inf, s)
    keep = pos.any(axis=1)
    if not keep.any():
        return float("nan")
    top = np.argmax(s[keep], axis=1)
    return float(pos[keep][np.arange(top.size), top].mean())


def classification_metrics(
    scores: ArrayLike,
    targets: ArrayLike,
    ignore: Optional[ArrayLike] = None,
    class_names: Optional[Sequence[str]] = None,
    method: str = "voc2010",
) -> Dict[str, object]:
    """All classification metrics at once, JSON-friendly.

    Returns a dict with ``mAP`` (float, nan-classes excluded), ``top1`` (float),
    ``per_class_ap`` (list of C floats, nan for classes without positives), ``classes_evaluated``
    (int, how many classes entered the mean), ``num_images`` (int), ``ap_method`` (str) and, if
    ``class_names`` is given, ``ap_by_class`` ({name: AP}).
    """
    ap = per_class_ap(scores, targets, ignore, method)
    out: Dict[str, object] = {
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "top1": top1_accuracy(scores, targets, ignore),
        "per_class_ap": [float(a) for a in ap],
        "classes_evaluated": int(np.isfinite(ap).sum()),
        "num_images": int(_to_numpy(scores, "scores").shape[0]),
        "ap_method": method,
    }
    if class_names is not None:
        if len(class_names) != ap.size:
            raise ValueError(f"classification_metrics: {len(class_names)} class names for {ap.size} classes")
        out["ap_by_class"] = {n: float(a) for n, a in zip(class_names, ap)}
    return out
