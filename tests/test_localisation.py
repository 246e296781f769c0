"""Localisation scores (pointing game, energy inside the boxes) on hand-worked maps and boxes."""

import json

import numpy as np
import pytest
import torch

from sca_lib.localisation import (PointingGame, box_mask, centre_map, energy_inside, is_difficult_pair,
                                  localisation_scores, peak, pointing_hit)


def _torchray_hit(mask, point, tolerance=15):
    """The benchmark's own rule, written out: an acceptance disc around the point meets the mask."""
    v, u = torch.meshgrid((torch.arange(mask.shape[0], dtype=torch.float32) - point[1]) ** 2,
                          (torch.arange(mask.shape[1], dtype=torch.float32) - point[0]) ** 2, indexing="ij")
    return bool((torch.as_tensor(mask) & ((v + u) < tolerance ** 2)).any())


def test_box_mask_covers_the_pixels_between_the_edges():
    m = box_mask([[2, 1, 5, 3]], (5, 8))  # columns 2..4, rows 1..2
    assert m.sum() == 6 and m[1:3, 2:5].all() and not m[0].any() and not m[:, 5:].any()
    assert box_mask([[6, 3, 20, 20]], (5, 8)).sum() == 2 * 2  # clipped to the image
    assert box_mask(np.zeros((0, 4)), (3, 3)).sum() == 0


def test_pointing_hit_is_strictly_within_the_tolerance():
    mask = np.zeros((40, 40), dtype=bool)
    mask[10, 20] = True  # one pixel: column 20, row 10
    assert not pointing_hit((5, 10), mask)       # 15 px away: not strictly within
    assert pointing_hit((6, 10), mask)           # 14 px
    assert not pointing_hit((9, 22), mask)       # sqrt(11^2 + 12^2) = 16.3
    assert pointing_hit((10, 21), mask)          # sqrt(10^2 + 11^2) = 14.9
    assert pointing_hit((20, 10), mask, tolerance=1)
    assert not pointing_hit((20, 10), np.zeros((40, 40), dtype=bool))


def test_pointing_hit_equals_the_benchmark_rule_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(20, 60, size=2)
        x0, y0 = rng.integers(0, w - 2), rng.integers(0, h - 2)
        mask = box_mask([[x0, y0, rng.integers(x0 + 1, w + 1), rng.integers(y0 + 1, h + 1)]], (h, w))
        point = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        tol = int(rng.integers(1, 20))
        assert pointing_hit(point, mask, tol) == _torchray_hit(mask, point, tol)


def test_peak_and_the_centre_baseline():
    s = np.zeros((7, 9))
    s[2, 6] = 1.0
    assert peak(s) == (6, 2) and peak(torch.tensor(s)[None]) == (6, 2)
    assert peak(centre_map((7, 9))) == (4, 3)
    assert peak(centre_map((8, 8))) in {(3, 3), (4, 3), (3, 4), (4, 4)}


def test_energy_inside_hand_worked():
    s = np.ones((4, 4))
    mask = box_mask([[0, 0, 2, 2]], (4, 4))
    s[mask] = 3.0
    assert energy_inside(s, mask) == pytest.approx((12 / 24, 0.25))
    assert energy_inside(np.ones((4, 4)), mask) == pytest.approx((0.25, 0.25))  # uniform: its area share
    with pytest.raises(ValueError, match="non-negative"):
        energy_inside(s - 2, mask)
    with pytest.raises(ValueError, match="upsample the map"):
        energy_inside(np.ones((2, 2)), mask)
    with pytest.raises(ValueError, match=r"one map of shape \(H, W\)"):
        energy_inside(np.ones((2, 4, 4)), mask)


def test_pointing_game_averages_over_the_classes_scored():
    g = PointingGame(3)
    for hit in (True, True, False):
        g.add(0, hit)
    g.add(1, False)
    assert g.class_accuracies[:2].tolist() == pytest.approx([2 / 3, 0.0]) and np.isnan(g.class_accuracies[2])
    assert g.accuracy == pytest.approx(1 / 3) and g.pairs == 4
    with pytest.raises(ValueError, match="class_index must be in 0..2"):
        g.add(3, True)


def test_difficult_pairs_need_a_small_class_and_a_distractor():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 40, 40]])
    assert is_difficult_pair(boxes, [1, 2], 1, (40, 40))       # 100 / 1600 px and another class
    assert not is_difficult_pair(boxes, [1, 2], 2, (40, 40))   # the whole image
    assert not is_difficult_pair(boxes[:1], [1], 1, (40, 40))  # alone in its image


def test_localisation_scores_hand_worked_split():
    s1 = np.zeros((40, 40))
    s1[5, 5] = 1.0  # peaks in class 1's box, 35 px from class 2's
    t1 = {"boxes": torch.tensor([[0, 0, 10, 10], [30, 30, 40, 40]], dtype=torch.float32),
          "labels": torch.tensor([1, 2]), "difficult": torch.tensor([False, False])}
    t2 = {"boxes": torch.tensor([[0, 0, 20, 20]]), "labels": torch.tensor([1]), "difficult": torch.tensor([True])}
    r = localisation_scores([({0: s1, 1: s1}, t1), ({0: s1}, t2)], num_classes=3)
    assert r["pointing"] == pytest.approx(0.5) and r["pointing_per_class"][:2] == [1.0, 0.0]
    assert r["pairs"] == 2 and r["skipped_difficult"] == 1  # the all-difficult image is not scored
    assert r["pointing_difficult"] == pytest.approx(0.5) and r["pairs_difficult"] == 2
    assert r["energy"] == pytest.approx(0.5) and r["area"] == pytest.approx(100 / 1600)
    assert r["energy_over_area"] == pytest.approx(0.5 * 16)
    with pytest.raises(KeyError, match="no map for class index 1"):
        localisation_scores([({0: s1}, t1)], num_classes=3)


def test_evaluate_classifier_scores_every_method_on_the_same_pairs(tmp_path):
    from sca_lib import build_classifier
    from sca_lib.data import VOCDetection
    from sca_lib.localisation import centre_map, evaluate_classifier
    from sca_lib.standin import synthetic_devkit

    root = synthetic_devkit("target", "fast", tmp_path)
    val = VOCDetection(root, split="val")
    torch.manual_seed(0)
    model = build_classifier("mobilenet_v3_small", attention="dual", num_classes=20, weights=None)
    r = evaluate_classifier(model, val, image_size=64, limit=6, batch_size=4)
    assert set(r) == {"attention", "gradcam", "centre"}
    assert r["attention"]["pairs"] == r["gradcam"]["pairs"] == r["centre"]["pairs"] > 0
    for scores in r.values():
        assert 0.0 <= scores["pointing"] <= 1.0 and 0.0 <= scores["energy"] <= 1.0
    # the centre baseline is exactly the scores of centre maps on the same images
    items = []
    for i in range(6):
        img, t = val[i]
        centre = centre_map(tuple(img.shape[-2:]))
        items.append(({int(c) - 1: centre for c in t["labels"]}, t))
    expected = localisation_scores(items, num_classes=20)
    assert json.dumps(r["centre"]) == json.dumps(expected)  # NaN for the classes never scored, on both sides
    with pytest.raises(ValueError, match="unknown localisation methods"):
        evaluate_classifier(model, val, image_size=64, methods=("cam",))
    with pytest.raises(ValueError, match="no attention module"):
        evaluate_classifier(build_classifier("mobilenet_v3_small", attention=None, num_classes=20, weights=None),
                            val, image_size=64, limit=2, methods=("attention",))


def test_pointing_chance_is_the_share_of_points_that_would_hit():
    from sca_lib.localisation import pointing_chance

    mask = np.zeros((40, 40), dtype=bool)
    mask[10, 20] = True
    assert pointing_chance(mask, 1) == 1 / 1600          # only the pixel itself is closer than 1
    assert pointing_chance(mask, 2) == 9 / 1600          # itself, 4 neighbours (d = 1), 4 diagonals (d^2 = 2)
    assert pointing_chance(np.zeros((5, 5), dtype=bool)) == 0.0
    rng = np.random.default_rng(0)
    m = np.zeros((20, 30), dtype=bool)
    m[rng.integers(0, 20, 3), rng.integers(0, 30, 3)] = True
    m[4:7, 10:16] = True
    brute = np.mean([[_torchray_hit(m, (u, v), 6) for u in range(30)] for v in range(20)])
    assert pointing_chance(m, 6) == pytest.approx(brute)  # the benchmark's rule at every pixel


def test_scaled_tolerance_keeps_the_share_of_the_diagonal():
    from sca_lib.localisation import VOC_DIAGONAL, scaled_tolerance

    assert VOC_DIAGONAL == 625.0
    assert scaled_tolerance([(375, 500)]) == pytest.approx(15.0)
    assert scaled_tolerance([(75, 100)] * 3 + [(375, 500)]) == pytest.approx(3.0)  # the median image: diagonal 125
    with pytest.raises(ValueError, match="at least one image size"):
        scaled_tolerance([])


def test_scores_add_chance_levels_extra_tolerances_and_count_flat_maps():
    mask_box = [[20, 10, 21, 11]]  # one pixel: column 20, row 10
    near = np.zeros((40, 40))
    near[10, 5] = 1.0  # 15 px left of the box: a miss at 15 px, a hit at 16
    flat = np.ones((40, 40))  # points at (0, 0): 22.4 px away, a miss at both
    t = {"boxes": torch.tensor(mask_box, dtype=torch.float32), "labels": torch.tensor([1])}
    t2 = {"boxes": torch.tensor([[0, 0, 3, 3]], dtype=torch.float32), "labels": torch.tensor([2])}
    r = localisation_scores([({0: near}, t), ({1: flat}, t2)], num_classes=3, extra_tolerances=(16,))
    assert r["pointing"] == 0.5 and r["pointing@16px"] == 1.0  # class 1 hits only at 16 px; class 2's flat map hits
    assert r["flat_maps"] == 1
    assert r["pointing_not_flat"] == 0.0  # only class 1's map counts, and it misses at 15 px
    from sca_lib.localisation import is_flat

    saturated = np.ones((8, 8), dtype=np.float32)
    saturated[3, 4] = np.float32(1) - np.float32(6e-8)  # a sigmoid gate at 1 everywhere, float32 noise
    assert is_flat(np.zeros((4, 4))) and is_flat(saturated) and not is_flat(near)
    assert not is_flat(np.where(np.arange(64).reshape(8, 8) > 3, 1.0, 0.999))  # a real, if small, dip
    from sca_lib.localisation import pointing_chance

    p1 = pointing_chance(box_mask(mask_box, (40, 40)), 15)
    p2 = pointing_chance(box_mask([[0, 0, 3, 3]], (40, 40)), 15)
    assert r["pointing_chance"] == pytest.approx((p1 + p2) / 2)  # per class, then over classes
    assert r["pointing_chance@16px"] > r["pointing_chance"]
    assert np.isnan(r["pointing_difficult_chance"])  # no difficult pair: one class per image


def test_evaluate_detector_scores_trunk_and_pyramid_maps(tmp_path):
    from sca_lib.data import VOCDetection
    from sca_lib.detection import build_detector
    from sca_lib.localisation import evaluate_detector
    from sca_lib.maps import detector_attention_maps
    from sca_lib.standin import synthetic_devkit

    root = synthetic_devkit("target", "fast", tmp_path)
    val = VOCDetection(root, split="val")
    torch.manual_seed(0)
    det = build_detector("mobilenet_v3_small", attention="dual", num_classes=21, weights_backbone=None,
                         min_size=64, max_size=96).eval()
    r = evaluate_detector(det, val, limit=3, batch_size=2)
    assert set(r) == {"attention", "centre"} and r["attention"]["pairs"] == r["centre"]["pairs"] > 0
    items = []  # the attention method is the maps of detector_attention_maps, scored under every class present
    for i in range(3):
        img, t = val[i]
        maps = detector_attention_maps(det, [img.as_subclass(torch.Tensor).float()])
        (spatial,) = [v["spatial"][0] for v in maps.values() if v["spatial"] is not None]
        items.append(({int(c) - 1: spatial for c in t["labels"]}, t))
    assert json.dumps(r["attention"]) == json.dumps(localisation_scores(items, num_classes=20))
    fpn = build_detector("mobilenet_v3_small", fpn_attention="dual", num_classes=21, weights_backbone=None,
                         min_size=64, max_size=96).eval()
    with pytest.raises(ValueError, match="pass module="):
        evaluate_detector(fpn, val, limit=1)
    keys = list(detector_attention_maps(fpn, [val[0][0].as_subclass(torch.Tensor).float()]))
    assert len(keys) >= 2 and all("[" in k for k in keys)  # one map per pyramid level
    one = evaluate_detector(fpn, val, ("attention",), module=keys[0], limit=2)
    assert 0.0 <= one["attention"]["pointing"] <= 1.0
    with pytest.raises(ValueError, match="unknown detector localisation methods"):
        evaluate_detector(det, val, ("gradcam",))
