"""VOC detection AP: hand-worked cases of the devkit's rules, and a cross-check against torchmetrics."""

import numpy as np
import pytest
import torch

from sca_lib.metrics import detection_metrics, voc_detection_ap

# Two images, class 1: three countable boxes and one difficult box (worked out in the comments).
GTS = [
    {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [1, 1], "difficult": [False, False]},   # G1, G2
    {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": [1, 1], "difficult": [False, True]},    # G3, G4 (difficult)
]
DETS = [
    {"boxes": [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 40]], "scores": [0.95, 0.85, 0.6], "labels": [1, 1, 1]},
    {"boxes": [[50, 50, 60, 60], [30, 30, 40, 40], [0, 0, 10, 12]], "scores": [0.9, 0.8, 0.7], "labels": [1, 1, 1]},
]
# Ranked: 0.95 G1 (TP) | 0.9 G4, difficult (neither) | 0.85 G1 again, IoU 0.81 (FP, duplicate) |
# 0.8 touches nothing (FP) | 0.7 G3, IoU 100/120 (TP) | 0.6 G2, IoU exactly 100/200 = 0.5 (TP: >= 0.5).
# recall 1/3 1/3 1/3 1/3 2/3 1; precision 1 1 1/2 1/3 1/2 3/5 -> envelope 1 1 .6 .6 .6 .6.
# VOC2010: 1/3 * 1 + 1/3 * 0.6 + 1/3 * 0.6 = 0.7333...; VOC2007: (4 * 1 + 7 * 0.6) / 11 = 0.74545...


def test_hand_worked_case_both_interpolations():
    r = voc_detection_ap(DETS, GTS, label=1)
    assert r["npos"] == 3 and r["tp"] == 3 and r["fp"] == 2 and r["ignored"] == 1
    np.testing.assert_allclose(r["recall"], [1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(r["precision"], [1, 1, 1 / 2, 1 / 3, 1 / 2, 3 / 5])
    assert r["ap"] == pytest.approx((1 + 0.6 + 0.6) / 3, abs=1e-12)
    assert voc_detection_ap(DETS, GTS, 1, method="voc2007")["ap"] == pytest.approx((4 + 7 * 0.6) / 11, abs=1e-12)


def test_threshold_is_inclusive_and_difficult_is_neither():
    # at 0.51 the IoU-0.5 detection becomes a false positive: recall stops at 2/3
    r = voc_detection_ap(DETS, GTS, 1, iou_threshold=0.51)
    assert r["tp"] == 2 and r["fp"] == 3
    assert r["ap"] == pytest.approx(1 / 3 * 1 + 1 / 3 * 0.5, abs=1e-12)
    # without the difficult flag G4 counts: the 0.9 detection becomes a true positive, npos 4
    plain = [dict(g, difficult=[False, False]) for g in GTS]
    r = voc_detection_ap(DETS, plain, 1)
    assert r["npos"] == 4 and r["tp"] == 4 and r["ignored"] == 0


def test_duplicates_never_fall_back_to_the_second_best_box():
    # two objects side by side; the second detection's best box is the taken one: a false positive
    # (COCO's matcher would give it the untaken neighbour, IoU 0.6, and call it a true positive)
    gts = [{"boxes": [[0, 0, 10, 10], [2, 0, 12, 10]], "labels": [1, 1]}]
    dets = [{"boxes": [[0, 0, 10, 10], [1, 0, 11, 10]], "scores": [0.9, 0.8], "labels": [1, 1]}]
    r = voc_detection_ap(dets, gts, 1)
    assert (r["tp"], r["fp"]) == (1, 1) and r["ap"] == pytest.approx(0.5)


def test_mean_over_classes_with_boxes_and_bad_input():
    gts = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 3])}]
    dets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 8, 8]]), "scores": torch.tensor([0.5, 0.9]),
             "labels": torch.tensor([1, 2])}]
    m = detection_metrics(dets, gts, num_classes=3, class_names=["a", "b", "c"])
    # class 1: found (AP 1); class 2: no box (nan, not averaged); class 3: missed (AP 0)
    assert m["per_class_ap"][0] == 1.0 and np.isnan(m["per_class_ap"][1]) and m["per_class_ap"][2] == 0.0
    assert m["mAP"] == 0.5 and m["classes_evaluated"] == 2 and m["num_detections"] == 2
    with pytest.raises(ValueError, match="one entry per image"):
        detection_metrics(dets, gts + gts, num_classes=3)
    with pytest.raises(ValueError, match=r"outside 1\.\.3: num_classes counts object classes"):
        detection_metrics(dets, [{"boxes": [[0, 0, 1, 1]], "labels": [0]}], num_classes=3)
    with pytest.raises(ValueError, match=r"detections\[0\] has label\(s\) \[4\] outside 1\.\.3"):
        detection_metrics([{"boxes": [[0, 0, 1, 1]], "scores": [1], "labels": [4]}], gts, num_classes=3)
    with pytest.raises(ValueError, match=r"shape \(K, 4\)"):
        detection_metrics([{"boxes": [[0, 0, 1]], "scores": [1], "labels": [1]}], gts, num_classes=3)
    with pytest.raises(ValueError, match="keys"):
        detection_metrics([{"boxes": [[0, 0, 1, 1]]}], gts, num_classes=3)
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics([{"boxes": [[0, 0, 1, 1]], "scores": [float("nan")], "labels": [1]}], gts, num_classes=3)


def _random_split(rng, n_images=12, n_classes=3):
    """Objects on a coarse grid (no detection can reach IoU 0.5 with two of them), no difficult:
    the VOC and COCO matchers then agree and only the interpolation differs."""
    dets, gts = [], []
    for _ in range(n_images):
        cells = rng.choice(16, size=rng.integers(1, 6), replace=False)
        boxes = np.array([[c % 4 * 40 + 5, c // 4 * 40 + 5, c % 4 * 40 + 25, c // 4 * 40 + 25] for c in cells], float)
        labels = rng.integers(1, n_classes + 1, size=len(boxes))
        db, ds, dl = [], [], []
        for b, lab in zip(boxes, labels):
            for _ in range(rng.integers(0, 3)):  # misses, hits and duplicates
                db.append(b + rng.normal(0, 3, 4))
                ds.append(rng.random())
                dl.append(lab if rng.random() < 0.85 else rng.integers(1, n_classes + 1))
        for _ in range(rng.integers(0, 4)):  # false alarms
            x, y = rng.uniform(0, 140, 2)
            db.append([x, y, x + rng.uniform(5, 20), y + rng.uniform(5, 20)])
            ds.append(rng.random())
            dl.append(rng.integers(1, n_classes + 1))
        dets.append({"boxes": torch.tensor(np.array(db).reshape(-1, 4), dtype=torch.float32),
                     "scores": torch.tensor(ds, dtype=torch.float32), "labels": torch.tensor(dl, dtype=torch.int64)})
        gts.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)})
    return dets, gts


def test_agrees_with_torchmetrics_within_the_interpolation_bound():
    pytest.importorskip("pycocotools")
    from torchmetrics.detection import MeanAveragePrecision

    for seed in range(5):
        dets, gts = _random_split(np.random.default_rng(seed))
        ours = detection_metrics(dets, gts, num_classes=3)
        tm = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5], class_metrics=True)
        tm.update(dets, gts)
        res = tm.compute()
        theirs = {int(c): float(a) for c, a in zip(res["classes"], res["map_per_class"])}
        for c in range(1, 4):
            # COCO's 101-point sum and the VOC2010 integral of the same envelope differ by <= 1/100
            assert abs(ours["per_class_ap"][c - 1] - theirs[c]) <= 0.01 + 1e-6, (seed, c)
        assert abs(ours["mAP"] - float(res["map_50"])) <= 0.01 + 1e-6
