"""Solutions to the exercises of notebook 07 (detection: Faster R-CNN with attention).

Run them: ``python notebooks/solutions/07_detection.py``; ``tests/test_exercises.py`` runs every
``exercise_*`` function here, so the solutions stay correct as the library changes. Everything has
random weights (nothing is downloaded); exercise 4 trains two tiny detectors on the synthetic
devkit (a few seconds each).
"""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sca_lib import build_detector, count_parameters
from sca_lib.attention import AttnResBlock
from sca_lib.metrics import voc_detection_ap
from sca_lib.train import TrainConfig, train_detector

SIZE = dict(min_size=256, max_size=320)  # section 1's image keeps its size


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def exercise_1() -> None:
    """One AttnResBlock at layer4.1 against C4's seven. Each block swaps a bottleneck for
    ``x + conv3x3(attention(x))`` at the stage's full width: the 3x3 conv has C * C * 9 weights, four
    times more at stage 4's 2048 channels than at stage 3's 1024. Stage 4's two blocks cost more
    than stage 3's five."""
    with torch.device("meta"):  # parameters with shapes only: counted, never initialised (instant)
        plain = build_detector("resnet50", **SIZE)
        one = build_detector("resnet50", attention="dual", placement="layer4.1", **SIZE)
        c4 = build_detector("resnet50", attention="dual", **SIZE)
    p0, p1, p7 = (count_parameters(m)["total"] for m in (plain, one, c4))
    body0, body7 = plain.backbone.body, c4.backbone.body
    added = {}  # what replacing each block adds: the AttnResBlock minus the bottleneck it replaced
    for name, block in body7.named_modules():
        if isinstance(block, AttnResBlock):
            stage, index = name.split(".")
            added[name] = _params(block) - _params(getattr(body0, stage)[int(index)])
            assert block.conv.weight.numel() == block.channels ** 2 * 9
    print(f"plain {p0 / 1e6:.2f} M; one AttnResBlock at layer4.1 {p1 / 1e6:.2f} M (+{(p1 - p0) / 1e6:.2f}); "
          f"C4's seven {p7 / 1e6:.2f} M (+{(p7 - p0) / 1e6:.2f})")
    print({k: round(v / 1e6, 2) for k, v in added.items()})
    assert p1 - p0 == added["layer4.1"]  # the single placement is exactly one of C4's seven blocks
    assert p7 - p0 == sum(added.values())
    stage3 = sum(v for k, v in added.items() if k.startswith("layer3"))
    stage4 = sum(v for k, v in added.items() if k.startswith("layer4"))
    assert len(added) == 7 and stage4 > stage3 and stage4 / (p7 - p0) > 0.6
    print(f"stage 4 (2 blocks): {stage4 / 1e6:.1f} M of the {(p7 - p0) / 1e6:.1f} M C4 adds; "
          f"stage 3 (5 blocks): {stage3 / 1e6:.1f} M")


def exercise_2() -> None:
    """Fused vs unfused C13 with the same attention weights. The fusion runs from the coarsest level
    down, ``out[L] = A(P[L])`` and ``out[l] = A(P[l]) + up(out[l+1])``: the coarsest level (``pool``)
    has nothing coarser to add, so it is the only identical one; every finer level differs."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 256, 320)
    fused = build_detector("resnet50", fpn_attention="dual", **SIZE).eval()
    unfused = build_detector("resnet50", fpn_attention="dual", fpn_fusion=False, **SIZE).eval()
    unfused.backbone.fpn_attention.load_state_dict(fused.backbone.fpn_attention.state_dict())
    with torch.no_grad():
        pyramid = fused.backbone.fpn(fused.backbone.body(x))
        a, b = fused.backbone.fpn_attention(pyramid), unfused.backbone.fpn_attention(pyramid)
        attend = fused.backbone.fpn_attention.attn
        for k in pyramid:  # without fusion, each level is just the shared module on that level
            torch.testing.assert_close(b[k], attend(pyramid[k]))
    diffs = {k: float((a[k] - b[k]).abs().max()) for k in pyramid}
    print("largest |fused - unfused| per level:", {k: f"{v:.3g}" for k, v in diffs.items()})
    assert list(pyramid)[-1] == "pool" and diffs["pool"] == 0.0
    assert all(v > 1e-3 for k, v in diffs.items() if k != "pool")


def exercise_3() -> None:
    """``[20, 20, 30, 41]`` against box 2 ``[20, 20, 30, 30]``: intersection 10 x 10 = 100, union
    100 + 10 x 21 - 100 = 210, IoU 0.476 < 0.5: a false positive now. 2 TP, 3 FP; recall stops at
    2/3 with precision 1 up to recall 1/3 and 0.5 at 2/3, so AP = 1/3 * 1 + 1/3 * 0.5 = 0.5. The
    11-point AP: 1 at recall 0, 0.1, 0.2, 0.3; 0.5 at 0.4, 0.5, 0.6; 0 beyond: (4 + 1.5) / 11 = 0.5 too."""
    gts = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "labels": [1, 1], "difficult": [False, False]},
           {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": [1, 1], "difficult": [False, True]}]
    dets = [{"boxes": [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 41]],  # the last box lowered from 40 to 41
             "scores": [0.95, 0.85, 0.6], "labels": [1, 1, 1]},
            {"boxes": [[50, 50, 60, 60], [30, 30, 40, 40], [0, 0, 10, 12]],
             "scores": [0.9, 0.8, 0.7], "labels": [1, 1, 1]}]
    iou = (10 * 10) / (10 * 10 + 10 * 21 - 10 * 10)
    assert iou < 0.5
    r = voc_detection_ap(dets, gts, label=1)
    r07 = voc_detection_ap(dets, gts, label=1, method="voc2007")
    print(f"IoU {iou:.3f}: {r['tp']} TP, {r['fp']} FP, {r['ignored']} ignored; AP {r['ap']:.4f} (was 0.7333), "
          f"VOC2007 {r07['ap']:.4f} (was 0.7455)")
    assert (r["tp"], r["fp"], r["ignored"]) == (2, 3, 1)
    assert abs(r["ap"] - 0.5) < 1e-12 and abs(r07["ap"] - 5.5 / 11) < 1e-12


def _tiny_run(schedule: str, out: Path) -> pd.DataFrame:
    cfg = TrainConfig.from_mode("fast", task="detection", attention=None, fpn_attention="dual", seed=0,
                                schedule=schedule, train_images=8, val_images=4)
    train_detector(cfg, out, progress=False)
    return pd.read_csv(out / "log.csv")


def exercise_4() -> None:
    """Staged vs single schedule, fast mode on 8 training images. The clip fires on every step in
    both (the gradient norm is far above 2.0), so every step has length lr x 2.0: the single
    schedule keeps 0.02 for all three epochs and trains the whole detector from the first step;
    the staged one trains only the new parts first and divides the step by 10 at each stage. At
    this size the loss curves are noise; the step lengths are the difference."""
    cols = ["epoch", "stage_name", "lr", "trainable_params", "train_loss", "grad_norm_mean", "clip_fraction",
            "step_size_mean"]
    with tempfile.TemporaryDirectory() as tmp:
        staged = _tiny_run("staged", Path(tmp) / "staged")
        single = _tiny_run("single", Path(tmp) / "single")
    for name, h in (("staged", staged), ("single", single)):
        print(name)
        print(h[cols].round(4).to_string(index=False))
        assert len(h) == 3 and (h["clip_fraction"] == 1.0).all()
        np.testing.assert_allclose(h["step_size_mean"], 2.0 * h["lr"], rtol=1e-6)
    assert single["step_size_mean"].tolist() == [0.02] * 3
    assert staged["step_size_mean"].round(6).tolist() == [0.02, 0.002, 0.0002]
    # single trains everything from epoch 1; staged starts with the new parts and ends with everything
    assert (single["trainable_params"] == staged["trainable_params"].iloc[-1]).all()
    assert staged["trainable_params"].is_monotonic_increasing
    assert staged["trainable_params"].iloc[0] < single["trainable_params"].iloc[0]


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("exercise_"):
            fn()
            print(f"{name}: ok")
