"""Solutions to the exercises of notebook 09 (the attention family).

Run them: ``python notebooks/solutions/09_attention_family.py``; ``tests/test_exercises.py`` runs
every ``exercise_*`` function here, so the solutions stay correct as the library changes. Exercises
1 and 5 train tiny fast-mode models on the synthetic devkit (a few seconds, offline; their mAPs are
plumbing, not results).
"""

import dataclasses
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import sca_lib
from sca_lib import create_attention
from sca_lib.family import matched_hidden


def _gate_matrix(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``out / x`` of one feature map (C, H, W) as a (C, H*W) matrix: the weight on each feature.
    Float division is exact to a few ulps whatever the size of ``x``, so no positive input is needed."""
    with torch.no_grad():
        out = module(x[None])[0]
    return (out.double() / x.double()).flatten(1)


def _rank_one_residual(g: torch.Tensor) -> float:
    """Second singular value over the first: 0 for a rank-one matrix (up to float rounding)."""
    s = torch.linalg.svdvals(g)
    return (s[1] / s[0]).item()


def exercise_1() -> None:
    """Trained `dual` and `cbam` stay rank one. `dual` computes x * c(x) * s(x): the weight on
    feature (k, p) is c_k * s_p, a column vector times a row vector, whatever the weights are, so
    training cannot change the rank. CBAM's spatial gate reads x' = M_c * x, but it still gives one
    weight per position: M_c[k] * M_s[p], rank one too. Coordinate Attention gives each channel its
    own row and column weights, g^h_k(i) * g^w_k(j): not rank one."""
    from sca_lib.data import ensure_synthetic
    from sca_lib.train import load_trained, train_model

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("dual", "cbam"):
            out = Path(tmp) / name
            train_model({"mode": "fast", "attention": name, "placement": "after_features.8", "seed": 0}, out,
                        progress=False)  # section 7's fast-mode run: 3 stages of one epoch, 32 px
            model, summary = load_trained(out)
            (place, module), = sca_lib.attention_modules(model).items()
            # one validation image at 112 px (the network is convolutional): a 7x7 map at the module
            root = ensure_synthetic("target", "fast", version=summary["config"]["data_version"], verbose=False)
            val = sca_lib.VOCClassification(root, split="val",
                                            transform=sca_lib.classification_transforms(112, normalize=True))
            seen = {}
            hook = module.register_forward_hook(lambda m, args, y: seen.update(x=args[0][0]))
            with torch.no_grad():
                model(val[0][0][None])
            hook.remove()
            x = seen["x"]
            assert x.shape == (48, 7, 7), (place, x.shape)
            assert _rank_one_residual(_gate_matrix(module, x)) < 1e-5, name
        # the contrast: Coordinate Attention on the same feature map, its own rows and columns per channel
        torch.manual_seed(0)
        assert _rank_one_residual(_gate_matrix(create_attention("coord", 48).eval(), x)) > 1e-3


def exercise_2() -> None:
    """SCA-CNN's S-C order: the spatial attention reads V, the channel attention reads the spatially
    attended map; both are asked by the same query h (the image's pooled features)."""
    torch.manual_seed(0)
    m = create_attention("sca_cnn_sc", 48)
    v = torch.randn(2, 48, 7, 7)
    n, c, hh, ww = v.shape
    h = v.mean((2, 3))                                                              # the query (context)
    a = torch.tanh(m.w_s(v) + m.w_hs(h)[:, :, None, None])                          # (N, k, H, W)
    alpha = F.softmax(m.w_i(a).flatten(1), dim=1).view(n, 1, hh, ww) * (hh * ww)   # rescaled to mean 1
    y = v * alpha                                                                   # f_s(V, alpha)
    b = torch.tanh(y.mean((2, 3))[:, :, None] * m.w_c + m.b_c + m.w_hc(h)[:, None, :])  # (N, C, k)
    beta = F.softmax((b * m.w_i_c).sum(-1), dim=1) * c                              # (N, C)
    torch.testing.assert_close(m(v), y * beta[:, :, None, None])
    cs = create_attention("sca_cnn", 48)
    cs.load_state_dict(m.state_dict())  # the same weights in the other order: a different output
    assert not torch.allclose(cs(v), m(v), atol=1e-4)


def coord_params(channels: int) -> int:
    """Coordinate Attention: F1 (C -> h, bias), BatchNorm's weight and bias (h each), F_h and F_w
    (h -> C, bias each); h = max(8, C // 32)."""
    h = max(8, channels // 32)
    return (channels * h + h) + 2 * h + 2 * (h * channels + channels)


def se_params(channels: int) -> int:
    """SE at r 16: two 1x1 convs with biases, C -> C/16 -> C."""
    k = channels // 16
    return (channels * k + k) + (k * channels + channels)


def exercise_3() -> None:
    """At 512 channels: h = 16, Coordinate Attention has 25,648 parameters, SE 33,312. SE grows as
    C^2 / 8, Coordinate Attention as 3 C^2 / 32 from 256 channels on, but its hidden width never
    drops below 8, so on narrow maps it is the larger of the two (1,272 vs 339 at 48 channels). It
    is the cheaper one from 208 channels on (5,432 vs 5,629; at 207 channels 5,406 vs 5,187)."""
    for c in (16, 48, 128, 207, 208, 256, 512, 2048):
        assert coord_params(c) == sum(p.numel() for p in create_attention("coord", c).parameters()), c
        assert se_params(c) == sum(p.numel() for p in create_attention("se", c).parameters()), c
    assert coord_params(512) == 25_648 and se_params(512) == 33_312
    cheaper = [c for c in range(16, 4097) if coord_params(c) < se_params(c)]
    assert cheaper == list(range(208, 4097))  # from 208 channels on, and never again the larger


def exercise_4() -> None:
    """The ratio drifts because the two costs scale differently with the map. The bottleneck's
    two 1x1 convs run at every position: its FLOPs are exactly proportional to H*W. The dual
    module's channel MLP runs once per image, whatever the map size (2Ck + k + C with k = C/8: 630
    at 48 channels); only its pooling, spatial conv and products run per position. So the dual
    module is (MLP) + (per position) * H*W, the ratio starts lower on small maps and tends to the
    per-position ratio (2Ch + C + h) / (per-position cost of dual) as the map grows: 1.18 at 7x7,
    1.25 at 28x28, for 48 channels."""
    c, h = 48, matched_hidden(48, 8, "flops")
    assert h == 2
    dual, block = create_attention("dual", c), create_attention("matched_flops", c)
    assert block.hidden == h
    flops = {side: (sca_lib.count_flops(dual, (1, c, side, side)), sca_lib.count_flops(block, (1, c, side, side)))
             for side in (7, 28, 56)}
    ratio = {side: b / d for side, (d, b) in flops.items()}
    assert ratio[7] < ratio[28] < ratio[56]
    # the bottleneck: no per-image part
    per_pos = flops[7][1] / 49
    assert all(b == per_pos * side * side for side, (_, b) in flops.items())
    # the dual module: a per-image part (its channel MLP) plus a per-position part
    slope = (flops[56][0] - flops[28][0]) / (56 * 56 - 28 * 28)
    intercept = flops[28][0] - slope * 28 * 28
    k = c // 8
    assert math.isclose(intercept, 2 * c * k + k + c)           # the MLP: 630 FLOPs, once per image
    assert math.isclose(flops[7][0], intercept + slope * 49)    # the same line at 7x7
    assert math.isclose(ratio[56], per_pos / slope, rel_tol=0.01)  # large maps: the per-position ratio


def exercise_5() -> None:
    """A copy of `cpu_family` with one more study, scSE (add) vs scSE max-out, run in fast mode on 2
    seeds. Fast mode (32 px, one epoch per stage) checks that the study runs; its numbers mean
    nothing. Before calling a difference real you need: the comparison declared before the runs
    (a grid refuses to declare one on fewer than 5 seeds: below), enough seeds (with 2, the 95 %
    interval uses t = 12.7 on one degree of freedom: about 7 times wider than with 5 seeds at the
    same spread), the cpu protocol (or real data), Holm's correction with the other comparisons,
    and a capacity control beside it."""
    from sca_lib.ablate import run_grid
    from sca_lib.stats import paired_difference, t_quantile
    from sca_lib.studies import GRIDS, Study, build_grid

    study = Study("scse_fusion", "scSE: add the gates or take their max?", "attention",
                  ({"attention": "scse"}, {"attention": "scse_max"}), ("mobilenet_v3_small",))
    base = GRIDS["cpu_family"]
    # the copy: fast mode, 2 seeds; the cpu protocol's settings (the cpu mode's sizes) replaced by
    # fewer images, so the four runs take a few seconds
    copy = dataclasses.replace(base, name="my_family", mode="fast", seeds=(0, 1),
                               settings={"train_images": 32, "val_images": 16},
                               studies=base.studies + (study,), primary=())
    try:
        dataclasses.replace(copy, primary=(("scse_fusion", "scse_max"),))
    except ValueError as e:
        assert "at least 5" in str(e)
    else:
        raise AssertionError("a grid with 2 seeds should refuse to declare a primary comparison")

    GRIDS["my_family"] = copy  # the runner takes a grid by name
    try:
        points = build_grid("my_family", only=["scse_fusion"])
        assert len(points) == 4 and {p["config"]["seed"] for p in points} == {0, 1}
        assert {p["config"]["attention"] for p in points} == {"scse", "scse_max"}
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_grid("my_family", results_dir=Path(tmp) / "results", runs_dir=Path(tmp) / "runs",
                            only=["scse_fusion"], progress=False)
    finally:
        del GRIDS["my_family"]
    by = {(r["config"]["attention"], r["config"]["seed"]): r["mAP"] for r in rows if r.get("status") == "ok"}
    assert len(by) == 4
    diff, low, high, n = paired_difference({s: by["scse_max", s] for s in (0, 1)},
                                           {s: by["scse", s] for s in (0, 1)})
    assert n == 2 and low <= diff <= high
    # one degree of freedom: the interval's half-width is 12.7 sd / sqrt(2), against 2.78 sd / sqrt(5)
    assert t_quantile(1) / math.sqrt(2) > 7 * t_quantile(4) / math.sqrt(5)


if __name__ == "__main__":
    for name, fn in sorted(globals().items()):
        if name.startswith("exercise_"):
            fn()
            print(f"{name}: ok")
