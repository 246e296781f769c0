"""Solutions to the exercises of notebook 00 (the data).

Run them: ``python notebooks/solutions/00_data.py``; ``tests/test_exercises.py`` runs every
``exercise_*`` function here, so the solutions stay correct as the library changes. Everything runs
offline in a few seconds: small tensors, and a small synthetic devkit generated into a temporary
folder with the library's own generator.
"""

import math
import tempfile
from collections import Counter

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from sca_lib.data import VOCClassification, VOCDetection, detection_transforms, generate_synthetic_voc, make_config
from sca_lib.metrics import average_precision


def voc_ap_by_hand(ranked_labels):
    """Exercise 1: VOC2010 AP of one class from its labels in ranked order (1 positive, 0 negative).

    precision(k) = TP(k) / k, recall(k) = TP(k) / N+; the interpolated precision at a recall is the
    best precision at that recall or any higher one; AP sums (recall step) x (interpolated precision)
    over the positives, where recall steps up by 1 / N+."""
    n_pos = sum(ranked_labels)
    tp, prec, rec = 0, [], []
    for k, y in enumerate(ranked_labels, start=1):
        tp += y
        prec.append(tp / k)
        rec.append(tp / n_pos)
    ap = 0.0
    for k, y in enumerate(ranked_labels):
        if y:
            ap += (1 / n_pos) * max(prec[k:])  # the envelope: best precision from here down the ranking
    return ap


def raw_ap_by_hand(ranked_labels):
    """The same sum with the raw precision at each positive (scikit-learn's and torchmetrics' AP)."""
    n_pos, tp, ap = sum(ranked_labels), 0, 0.0
    for k, y in enumerate(ranked_labels, start=1):
        tp += y
        if y:
            ap += (1 / n_pos) * tp / k
    return ap


def exercise_1() -> None:
    from torchmetrics.functional.classification import binary_average_precision

    ranked = [1, 0, 0, 1, 1]  # highest score first
    scores = torch.linspace(1.0, 0.1, len(ranked))  # strictly decreasing: no ties
    labels = torch.tensor(ranked)
    # by hand: precision at the positives is 1/1, 2/4, 3/5; the envelope lifts 2/4 to the 3/5 found later
    assert math.isclose(voc_ap_by_hand(ranked), (1 + 3 / 5 + 3 / 5) / 3)
    assert math.isclose(average_precision(scores, labels), voc_ap_by_hand(ranked))
    # torchmetrics (like scikit-learn) takes the raw precision: (1 + 2/4 + 3/5) / 3 = 0.70
    assert math.isclose(raw_ap_by_hand(ranked), (1 + 2 / 4 + 3 / 5) / 3)
    assert math.isclose(binary_average_precision(scores, labels).item(), raw_ap_by_hand(ranked), rel_tol=1e-6)
    # they agree whenever the raw precision at the positives never rises again (a perfect ranking, one
    # positive, ...); [0, 1, 1, 0] is not such a ranking: 1/2 then 2/3
    for ranked in ([1, 1, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 0]):
        s, y = torch.linspace(1.0, 0.1, len(ranked)), torch.tensor(ranked)
        assert math.isclose(average_precision(s, y), binary_average_precision(s, y).item(), rel_tol=1e-6)


def union_probability_some_class_empty(n_objects: int, n_classes: int = 20) -> float:
    """P(at least one of n_classes gets no object) when each object's class is an independent,
    uniform draw: inclusion-exclusion over the sets of classes left empty."""
    return sum((-1) ** (k + 1) * math.comb(n_classes, k) * (1 - k / n_classes) ** n_objects
               for k in range(1, n_classes))


def exercise_2() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config("target", "fast", n_train=40, n_val=8)
        root = generate_synthetic_voc(tmp, cfg)
        det, cls = VOCDetection(root, split="train"), VOCClassification(root, split="train")
        counts, non_difficult_images = Counter(), Counter()
        for i in range(len(det)):
            t = det.load_target(i)
            labels, difficult = t["labels"].tolist(), t["difficult"].tolist()
            counts.update(det.classes[lab - 1] for lab in labels)
            non_difficult_images.update({det.classes[lab - 1] for lab, d in zip(labels, difficult) if not d})
        per_class = np.array([counts[c] for c in det.classes])
        # the devkit's per-class files say the same: 1 = at least one non-difficult instance
        positives = (cls.labels == 1).sum(0).numpy()
        assert (positives == np.array([non_difficult_images[c] for c in det.classes])).all()
        n = int(per_class.sum())
        assert n >= len(det)  # at least one object per image
        empty = [c for c, k in zip(det.classes, per_class) if k == 0]
        assert all(positives[det.classes.index(c)] == 0 for c in empty)  # no object, no positive image
    # how likely is an empty class at all? uniform draws: inclusion-exclusion against a simulation
    rng = np.random.default_rng(0)
    for n_objects in (40, 80, 128):
        draws = rng.integers(0, 20, size=(20_000, n_objects))
        sim = np.mean([(np.bincount(d, minlength=20) == 0).any() for d in draws])
        exact = union_probability_some_class_empty(n_objects)
        assert abs(sim - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000) + 1e-3, (n_objects, sim, exact)
    assert union_probability_some_class_empty(128) < 0.05 < union_probability_some_class_empty(80)


def exercise_3() -> None:
    h, w = 60, 80
    img = torch.zeros(3, h, w)
    img[:, 10:30, 50:70] = 1.0  # a white rectangle: rows 10-29, columns 50-69
    boxes = tv_tensors.BoundingBoxes([[50, 10, 70, 30]], format="XYXY", canvas_size=(h, w))  # pixel edges
    pipeline = v2.Compose([detection_transforms(size=120), v2.RandomHorizontalFlip(p=1.0)])
    out, target = pipeline(tv_tensors.Image(img), {"boxes": boxes, "labels": torch.tensor([1])})
    assert out.shape[-2:] == (120, 160)  # the shorter side to 120, aspect ratio kept: scale 2
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    # the box by hand: scaled by 2, then mirrored, x -> W - x with W = 160
    assert np.allclose([x0, y0, x1, y1], [160 - 140, 20, 160 - 100, 60])
    # and it still encloses the white pixels, and only them
    rows, cols = torch.nonzero(out[0] > 0.5, as_tuple=True)
    assert (rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1) == (y0, y1, x0, x1)


def exercise_4() -> None:
    # one class, six images ranked by score; the top one holds only a difficult instance
    scores = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.tensor([0, 1, 0, 1, 0, 0])  # the multi-hot target: difficult-only is not positive
    ignore = torch.tensor([True, False, False, False, False, False])
    ap_ignored = average_precision(scores, labels, ignore)  # the devkit's rule: out of the ranking
    ap_negative = average_precision(scores, labels)  # counted as a negative: a false positive at rank 1
    ap_positive = average_precision(scores, labels | ignore)  # counted as a positive
    assert math.isclose(ap_ignored, voc_ap_by_hand([1, 0, 1, 0, 0])) and math.isclose(ap_ignored, (1 + 2 / 3) / 2)
    assert math.isclose(ap_negative, (1 / 2 + 2 / 4) / 2)
    assert math.isclose(ap_positive, (1 + 1 + 3 / 4) / 3)
    assert ap_negative < ap_ignored < ap_positive
    # an ignored image changes nothing wherever it is ranked
    ranks = set()
    for s0 in (0.95, 0.85, 0.75, 0.65, 0.55, 0.45):  # first, between each pair of the others, last
        s = scores.clone()
        s[0] = s0
        ranks.add(int((s > s0).sum()) + 1)
        assert math.isclose(average_precision(s, labels, ignore), ap_ignored)
    assert ranks == {1, 2, 3, 4, 5, 6}


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("exercise_"):
            fn()
            print(f"{name}: ok")
