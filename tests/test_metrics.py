"""sca_lib.metrics: VOC AP (2010+ envelope and 2007 11-point), mAP with ignore masks, top-1."""

import math

import numpy as np
import pytest
import torch

from sca_lib.metrics import (
    average_precision,
    classification_metrics,
    mean_average_precision,
    per_class_ap,
    top1_accuracy,
    voc_ap,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def ranked(labels):
    """Scores that rank `labels` in the given order (first = highest score)."""
    labels = np.asarray(labels, dtype=float)
    return np.arange(len(labels), 0, -1, dtype=float), labels


def devkit_ap(scores, gt, year=2010):
    """Line-by-line transcription of the devkit's VOCevalcls.m + VOCap.m (gt: 1 pos, -1 neg, 0 difficult)."""
    si = np.argsort(-scores, kind="stable")
    tp = np.cumsum(gt[si] > 0).astype(float)
    fp = np.cumsum(gt[si] < 0).astype(float)
    rec = tp / np.sum(gt > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = tp / (fp + tp)  # NaN while only difficult images have been seen, as in MATLAB
    if year == 2007:
        ap = 0.0
        for t in np.arange(0, 1.1, 0.1):
            p = prec[rec >= t]
            p = p[~np.isnan(p)]
            ap += (p.max() if p.size else 0.0) / 11
        return ap
    mrec = np.concatenate(([0], rec, [1]))
    mpre = np.concatenate(([0], prec, [0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = np.nanmax([mpre[i], mpre[i + 1]])
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return np.sum((mrec[i] - mrec[i - 1]) * mpre[i])


# --- hand-computed cases -------------------------------------------------------------------------

def test_perfect_and_worst_rankings():
    s, y = ranked([1, 1, 0, 0])
    assert average_precision(s, y) == pytest.approx(1.0)
    assert average_precision(s, y, method="voc2007") == pytest.approx(1.0)
    s, y = ranked([0, 0, 1])  # precision 1/3 at recall 1
    assert average_precision(s, y) == pytest.approx(1 / 3)
    assert average_precision(s, y, method="voc2007") == pytest.approx(1 / 3)


def test_envelope_lifts_precision_where_sklearn_does_not():
    # ranked labels [1, 0, 0, 1, 1]: precision at the positives 1, 2/4, 3/5.
    s, y = ranked([1, 0, 0, 1, 1])
    assert average_precision(s, y) == pytest.approx((1 + 3 / 5 + 3 / 5) / 3)  # 0.7333, envelope
    assert sklearn_metrics.average_precision_score(y, s) == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)  # 0.700
    # 11-point: t in 0..0.3 -> 1; t in 0.4..0.6 -> max(2/4, 3/5) = 0.6; t in 0.7..1.0 -> 0.6
    assert average_precision(s, y, method="voc2007") == pytest.approx((4 * 1 + 3 * 0.6 + 4 * 0.6) / 11)


def test_voc_ap_on_a_given_curve():
    rec = [0.5, 0.5, 1.0]
    prec = [1.0, 0.5, 2 / 3]
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    with pytest.raises(ValueError, match="same length"):
        voc_ap([0.5], [1.0, 0.5])
    with pytest.raises(ValueError, match="unknown AP method"):
        voc_ap(rec, prec, method="coco")


def test_difficult_labels_are_excluded_from_the_ranking():
    # a difficult image ranked first would be a false positive if it were counted as negative
    s, y = ranked([0, 1, 0, 1])
    ignore = np.array([True, False, False, False])
    assert average_precision(s, y) < 1.0
    assert average_precision(s, y, ignore) == pytest.approx(average_precision(s[1:], y[1:]))
    assert average_precision(s[1:], y[1:]) == pytest.approx((1 + 2 / 3) / 2)
    # a difficult *positive* does not count as a positive either (recall denominator)
    s, y = ranked([1, 0, 1])
    assert average_precision(s, y, np.array([False, False, True])) == pytest.approx(1.0)


def test_class_without_positives_is_nan_and_left_out_of_map():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.1, 0.9, 0.6]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    ignore = np.zeros_like(targets, dtype=bool)
    ap = per_class_ap(scores, targets, ignore)
    assert ap[0] == pytest.approx(1.0)
    assert ap[1] == pytest.approx(1 / 2)  # column 1 ranks image 2 (negative, 0.9) above image 1 (0.8)
    assert math.isnan(ap[2])
    assert mean_average_precision(scores, targets, ignore) == pytest.approx(np.mean(ap[:2]))
    m = classification_metrics(scores, targets, ignore, class_names=["a", "b", "c"])
    assert m["classes_evaluated"] == 2 and m["num_images"] == 3
    assert math.isnan(m["ap_by_class"]["c"]) and m["mAP"] == pytest.approx(np.mean(ap[:2]))
    assert math.isnan(mean_average_precision(scores, np.zeros_like(targets)))


def test_ties_keep_input_order_like_matlab_sort():
    s = np.array([0.5, 0.5, 0.5])
    assert average_precision(s, np.array([1, 0, 0])) == pytest.approx(1.0)
    assert average_precision(s, np.array([0, 0, 1])) == pytest.approx(1 / 3)


# --- against independent implementations --------------------------------------------------------

@pytest.mark.parametrize("year", [2010, 2007])
def test_matches_devkit_transcription_with_difficult_images(year):
    rng = np.random.default_rng(year)
    for _ in range(50):
        n = int(rng.integers(5, 60))
        scores = rng.normal(size=n)
        gt = rng.choice([1, -1, 0], size=n, p=[0.3, 0.6, 0.1])
        if not (gt > 0).any():
            gt[0] = 1
        ours = average_precision(scores, gt > 0, gt == 0, method=f"voc{year}")
        assert ours == pytest.approx(devkit_ap(scores, gt, year), abs=1e-12)


def test_envelope_ap_is_at_least_sklearn_and_equal_where_definitions_coincide():
    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(100):
        n = int(rng.integers(4, 40))
        y = (rng.random(n) < 0.4).astype(int)
        if y.sum() == 0:
            y[0] = 1
        s = rng.normal(size=n)  # continuous: no ties
        ours, sk = average_precision(s, y), sklearn_metrics.average_precision_score(y, s)
        assert ours >= sk - 1e-12
        # the raw precision at the true positives (in rank order); where it never rises again,
        # the envelope changes nothing at the recall steps and the two definitions coincide
        order = np.argsort(-s)
        hits = y[order] == 1
        prec_at_tp = (np.cumsum(hits) / np.arange(1, n + 1))[hits]
        monotone = np.all(np.diff(prec_at_tp) <= 1e-15)
        if monotone:
            assert ours == pytest.approx(sk, abs=1e-12)
        else:
            assert ours > sk
            differ += 1
    assert differ > 10  # the comparison exercised both regimes
    # single positive: always identical
    s = rng.normal(size=30)
    y = np.zeros(30, dtype=int)
    y[7] = 1
    assert average_precision(s, y) == pytest.approx(sklearn_metrics.average_precision_score(y, s))


def test_torchmetrics_agrees_with_sklearn_not_with_the_envelope():
    tm = pytest.importorskip("torchmetrics.classification")
    s, y = ranked([1, 0, 0, 1, 1])
    metric = tm.BinaryAveragePrecision()
    value = float(metric(torch.tensor(s / s.max(), dtype=torch.float32), torch.tensor(y, dtype=torch.long)))
    assert value == pytest.approx(0.7, abs=1e-6)
    assert average_precision(s, y) == pytest.approx(11 / 15)


# --- top-1 ---------------------------------------------------------------------------------------

def test_top1_definition():
    scores = np.array([
        [0.9, 0.8, 0.1],  # top = 0, positive -> correct
        [0.9, 0.8, 0.1],  # top = 0, not positive -> wrong
        [0.9, 0.8, 0.1],  # class 0 difficult-only: skipped, top = 1 positive -> correct
        [0.9, 0.8, 0.1],  # no positive label -> left out
    ])
    targets = np.array([[1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0]])
    ignore = np.zeros_like(targets, dtype=bool)
    ignore[2, 0] = True
    assert top1_accuracy(scores, targets, ignore) == pytest.approx(2 / 3)
    assert top1_accuracy(scores, targets) == pytest.approx(1 / 3)  # without the mask image 2 is wrong
    assert math.isnan(top1_accuracy(scores, np.zeros_like(targets)))


def test_accepts_torch_tensors_and_rejects_bad_shapes():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(16, 4, generator=g)
    targets = (torch.rand(16, 4, generator=g) < 0.5).float()
    targets[0] = 1
    ignore = torch.zeros(16, 4, dtype=torch.bool)
    m = classification_metrics(scores, targets, ignore)
    assert m["mAP"] == pytest.approx(mean_average_precision(scores.numpy(), targets.numpy()))
    assert len(m["per_class_ap"]) == 4
    with pytest.raises(ValueError, match=r"targets must have the scores' shape"):
        per_class_ap(scores, targets[:, :3])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        per_class_ap(scores[:, 0], targets[:, 0])
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([np.nan, 1.0]), np.array([1, 0]))
