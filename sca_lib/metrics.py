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

from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = [
    "AP_METHODS",
    "voc_ap",
    "average_precision",
    "per_class_ap",
    "mean_average_precision",
    "top1_accuracy",
    "classification_metrics",
    "voc_detection_ap",
    "detection_metrics",
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


# --------------------------------------------------------------------------------------------
# Detection: the devkit's VOCevaldet.m
# --------------------------------------------------------------------------------------------
#
# Per class, over the whole split:
#
# 1. Every detection of the class, from every image, ranked by score, highest first (ties keep the
#    input order: image order, then the order within an image).
# 2. Each detection, in that order, is compared with the image's ground-truth boxes of its class,
#    ``difficult`` ones included: the box of largest IoU is its match (only boxes that actually
#    intersect count). If that IoU is >= ``iou_threshold`` (0.5; the devkit tests ``ovmax >=
#    minoverlap``, py-faster-rcnn's ``voc_eval.py`` tests ``>``, which differs only at exactly 0.5):
#    a ``difficult`` match makes the detection neither a true nor a false positive; a match that an
#    earlier detection already took makes it a false positive (a duplicate); otherwise it is a true
#    positive and takes the box. Below the threshold, or with no intersecting box, it is a false
#    positive. The devkit never falls back to the second-best box when the best is taken.
# 3. ``recall = cumsum(tp) / #non-difficult boxes``, ``precision = cumsum(tp) / cumsum(tp + fp)``,
#    then :func:`voc_ap` (``"voc2010"``: all points; ``"voc2007"``: 11 points).
#
# Boxes are continuous ``xyxy`` in pixels (:class:`sca_lib.data.VOCDetection` turns the devkit's
# 1-based inclusive pixel indices ``(xmin, ymin, xmax, ymax)`` into ``(xmin - 1, ymin - 1, xmax,
# ymax)``, torchvision's convention). Width is then ``x2 - x1``: exactly the devkit's ``xmax - xmin +
# 1``, so the IoU equals the devkit's.
#
# How this differs from COCO-style AP at IoU 0.5 (``torchmetrics.detection.MeanAveragePrecision``,
# ``map_50``): (a) COCO samples the precision envelope at 101 recall points, VOC2010 integrates it;
# with the same matching the two differ by at most ``(envelope(0) - envelope(1)) / 100 <= 0.01`` per
# class (both lie between the left and right Riemann sums of the envelope on a 0.01 grid); (b) COCO
# matches a detection to the best *still unmatched* box, VOC to the best box, taken or not (a
# duplicate that overlaps a second object is a true positive in COCO and a false positive here);
# (c) COCO has no ``difficult``: its ``iscrowd`` regions absorb any number of detections and use
# another overlap; (d) COCO keeps at most 100 detections per image.


def _boxes(x: ArrayLike, what: str) -> np.ndarray:
    arr = _to_numpy(x, what, np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what} must have shape (K, 4) (x1, y1, x2, y2), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain NaN or inf")
    return arr


def _vector(x: Optional[ArrayLike], n: int, what: str, dtype, default=None) -> np.ndarray:
    if x is None:
        if default is None:
            raise ValueError(f"{what} is missing")
        return np.full(n, default, dtype=dtype)
    arr = _to_numpy(x, what).astype(dtype).ravel()
    if arr.shape != (n,):
        raise ValueError(f"{what} must have one entry per box ({n}), got shape {arr.shape}")
    return arr


def _check_detections(detections: Sequence[Mapping], ground_truths: Sequence[Mapping]):
    if len(detections) != len(ground_truths):
        raise ValueError(f"detections and ground_truths need one entry per image, got {len(detections)} and "
                         f"{len(ground_truths)}")
    dets, gts = [], []
    for i, (d, g) in enumerate(zip(detections, ground_truths)):
        for name, obj, keys in (("detections", d, ("boxes", "scores", "labels")), ("ground_truths", g, ("boxes", "labels"))):
            if not isinstance(obj, Mapping) or any(k not in obj for k in keys):
                raise ValueError(f"{name}[{i}] must be a dict with keys {keys} (torchvision's detection layout), "
                                 f"got {type(obj).__name__}{' with keys ' + str(sorted(obj)) if isinstance(obj, Mapping) else ''}")
        db = _boxes(d["boxes"], f"detections[{i}]['boxes']")
        dets.append((db, _vector(d["scores"], len(db), f"detections[{i}]['scores']", np.float64),
                     _vector(d["labels"], len(db), f"detections[{i}]['labels']", np.int64)))
        gb = _boxes(g["boxes"], f"ground_truths[{i}]['boxes']")
        gts.append((gb, _vector(g["labels"], len(gb), f"ground_truths[{i}]['labels']", np.int64),
                    _vector(g.get("difficult"), len(gb), f"ground_truths[{i}]['difficult']", bool, False)))
        if not np.all(np.isfinite(dets[-1][1])):
            raise ValueError(f"detections[{i}]['scores'] contain NaN or inf; check the model's outputs")
    return dets, gts


def _iou_row(box: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``gt`` (K, 4); -inf where they do not intersect (the devkit's rule)."""
    iw = np.minimum(box[2], gt[:, 2]) - np.maximum(box[0], gt[:, 0])
    ih = np.minimum(box[3], gt[:, 3]) - np.maximum(box[1], gt[:, 1])
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) - inter
    ok = (iw > 0) & (ih > 0)
    return np.where(ok, inter / np.where(ok, union, 1.0), -np.inf)


def voc_detection_ap(detections: Sequence[Mapping], ground_truths: Sequence[Mapping], label: int,
                     iou_threshold: float = 0.5, method: str = "voc2010") -> Dict[str, object]:
    """VOC detection AP of one class (``label``, as in the targets: 1..20 for VOC), the devkit's way.

    Args:
        detections: one dict per image, ``{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}``
            (what torchvision's detectors return in eval mode).
        ground_truths: one dict per image, ``{"boxes": (M, 4), "labels": (M,), "difficult": (M,)
            bool}`` (``difficult`` optional: all False); :class:`sca_lib.data.VOCDetection` targets.
        label: the class.
        iou_threshold: 0.5 in VOC.
        method: ``"voc2010"`` (all points) or ``"voc2007"`` (11 points).

    Returns ``{"ap", "npos" (non-difficult boxes), "tp", "fp", "ignored" (matched a difficult box),
    "recall", "precision" (arrays over the ranked detections)}``; ``ap`` is nan when the class has no
    non-difficult box.
    """
    _check_method(method)
    dets, gts = _check_detections(detections, ground_truths)
    return _class_ap(dets, gts, int(label), float(iou_threshold), method)


def _class_ap(dets, gts, label: int, thr: float, method: str) -> Dict[str, object]:
    gt_boxes, gt_diff, taken = [], [], []
    npos = 0
    for gb, gl, gd in gts:
        m = gl == label
        gt_boxes.append(gb[m])
        gt_diff.append(gd[m])
        taken.append(np.zeros(int(m.sum()), dtype=bool))
        npos += int((~gd[m]).sum())
    img, score, box = [], [], []
    for i, (db, ds, dl) in enumerate(dets):
        m = dl == label
        img.extend([i] * int(m.sum()))
        score.append(ds[m])
        box.append(db[m])
    score_all = np.concatenate(score) if score else np.zeros(0)
    box_all = np.concatenate(box) if box else np.zeros((0, 4))
    order = np.argsort(-score_all, kind="stable")
    tp = np.zeros(order.size)
    fp = np.zeros(order.size)
    ignored = 0
    for d, k in enumerate(order):
        i = img[k]
        ovmax, jmax = -np.inf, -1
        if len(gt_boxes[i]):
            ov = _iou_row(box_all[k], gt_boxes[i])
            jmax = int(np.argmax(ov))  # the first of equal overlaps, as the devkit's strict ">"
            ovmax = float(ov[jmax])
        if ovmax >= thr:
            if gt_diff[i][jmax]:
                ignored += 1
            elif not taken[i][jmax]:
                tp[d] = 1
                taken[i][jmax] = True
            else:
                fp[d] = 1  # a second detection of a taken object
        else:
            fp[d] = 1
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / npos if npos else np.full(order.size, np.nan)
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    ap = voc_ap(rec, prec, method) if npos else float("nan")
    return {"ap": ap, "npos": npos, "tp": int(tp.sum()), "fp": int(fp.sum()), "ignored": ignored,
            "recall": rec, "precision": prec}


def detection_metrics(detections: Sequence[Mapping], ground_truths: Sequence[Mapping],
                      num_classes: int = 20, class_names: Optional[Sequence[str]] = None,
                      iou_threshold: float = 0.5, method: str = "voc2010") -> Dict[str, object]:
    """VOC detection mAP over labels ``1..num_classes`` (torchvision's convention, 0 = background).

    Returns a JSON-friendly dict: ``mAP`` (mean over classes with a non-difficult box),
    ``per_class_ap`` (list, nan where a class has none), ``classes_evaluated``, ``num_images``,
    ``num_detections``, ``iou_threshold``, ``ap_method`` and, with ``class_names``, ``ap_by_class``.
    Both ``method``'s are one call each; VOC2007's test set is scored with ``"voc2007"``.
    """
    _check_method(method)
    num_classes = int(num_classes)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"detection_metrics: {len(class_names)} class names for {num_classes} classes")
    dets, gts = _check_detections(detections, ground_truths)
    for i, ((gb, gl, _), (_, _, dl)) in enumerate(zip(gts, dets)):
        for what, lab in (("ground_truths", gl), ("detections", dl)):
            bad = lab[(lab < 1) | (lab > num_classes)]
            if bad.size:
                raise ValueError(f"{what}[{i}] has label(s) {sorted(set(bad.tolist()))} outside 1..{num_classes}: "
                                 f"num_classes counts object classes without the background (20 for VOC, whose "
                                 f"labels are 1..20; build_detector's num_classes=21 includes the background)")
    ap = np.array([_class_ap(dets, gts, c, float(iou_threshold), method)["ap"] for c in range(1, num_classes + 1)])
    out: Dict[str, object] = {
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "per_class_ap": [float(a) for a in ap],
        "classes_evaluated": int(np.isfinite(ap).sum()),
        "num_images": len(dets),
        "num_detections": int(sum(len(d[0]) for d in dets)),
        "iou_threshold": float(iou_threshold),
        "ap_method": method,
    }
    if class_names is not None:
        out["ap_by_class"] = {n: float(a) for n, a in zip(class_names, ap)}
    return out
