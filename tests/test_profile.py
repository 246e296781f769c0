"""Tests for sca_lib.profile: hand-computed parameter and FLOP counts, latency and the table."""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd
import pytest
import torch
from torch import nn

from sca_lib.attention import AttnResBlock, DualAttention, LiteDualAttention
import sca_lib.profile
from sca_lib.profile import (
    COST_COLUMNS,
    LATENCY_BUDGETS,
    add_ratios,
    attention_cost,
    compare_costs,
    compare_latency,
    cost_table,
    count_flops,
    count_parameters,
    flops_by_module,
    latency_budget,
    measure_latency,
)


def test_parameter_counts_match_hand_computed():
    # DualAttention(512): fc1 512*64+64, fc2 64*512+512, spatial 512+1
    assert count_parameters(DualAttention(512)) == {"total": 66625, "trainable": 66625}
    # Lite (reduction 16): 512*32+32 + 32*512+512 + 513
    assert count_parameters(LiteDualAttention(512))["total"] == 33825
    # AttnResBlock(64): DualAttention(64) (64*8+8 + 8*64+64 + 65) + conv3x3 64*64*9+64
    block = AttnResBlock(64)
    assert count_parameters(block)["total"] == 1161 + 36928
    block.conv.weight.requires_grad_(False)
    assert count_parameters(block) == {"total": 38089, "trainable": 38089 - 64 * 64 * 9}


@pytest.mark.parametrize("cin,cout,k,stride,hw", [(3, 8, 3, 1, 16), (16, 32, 3, 2, 15), (8, 4, 1, 1, 7)])
def test_conv_flops_equal_formula(cin, cout, k, stride, hw):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
    hout = (hw + 2 * (k // 2) - k) // stride + 1
    expected = cout * cin * k * k * hout * hout  # one fused multiply-add = one FLOP, bias not counted
    assert count_flops(conv, (1, cin, hw, hw), include_elementwise=False) == expected
    assert count_flops(conv, (cin, hw, hw)) == expected  # no elementwise op in a bare conv
    assert count_flops(conv, (2, cin, hw, hw), include_elementwise=False) == 2 * expected


def test_linear_and_elementwise_flops():
    assert count_flops(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (1, 3, 2, 2)) == 60
    sig = nn.Sigmoid()
    assert count_flops(sig, (1, 4, 8, 8), include_elementwise=False) == 0  # fvcore skips sigmoid
    assert count_flops(sig, (1, 4, 8, 8)) == 256  # our handle: one per output element
    assert count_flops(nn.MaxPool2d(2), (1, 4, 8, 8)) == 256  # one comparison per input element


def test_dual_attention_flops_both_conventions():
    c, h, w = 64, 14, 14
    att = DualAttention(c)
    # fvcore default: pool (1/input element) + fc1 + fc2 + spatial 1x1 conv
    fvcore = c * h * w + c * (c // 8) + (c // 8) * c + c * h * w
    assert count_flops(att, (1, c, h, w), include_elementwise=False) == fvcore
    full = count_flops(att, (1, c, h, w))
    # at least the two products x*c and (x*c)*s, the two gates and the ReLU are added
    assert full >= fvcore + 2 * c * h * w + c + h * w + c // 8
    cost = attention_cost(nn.Sequential(nn.Identity(), att), (1, c, h, w))
    assert cost == {"params": count_parameters(att)["total"], "flops": full, "flops_fvcore": fvcore}
    by_mod = flops_by_module(nn.Sequential(att), (1, c, h, w), include_elementwise=False)
    assert by_mod["0"] == fvcore and by_mod["0.spatial.conv"] == c * h * w


def test_latency_and_table():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.train()
    ms = measure_latency(model, (3, 16, 16), batch_size=2, warmup=1, runs=3)
    assert ms > 0 and model.training  # training flag restored
    conv = nn.Conv2d(3, 4, 3, padding=1)
    lat = compare_latency({"a": conv, "b": nn.Sequential(conv, DualAttention(4, 2))}, (1, 3, 16, 16), 1,
                          warmup=0, runs=2)
    assert set(lat) == {"a", "b"} and all(v > 0 for v in lat.values())
    table = cost_table({"conv": model}, (1, 3, 16, 16), batch_sizes=(1, 2), warmup=0, runs=1, device="cpu")
    assert list(table["model"]) == ["conv"]
    row = table.iloc[0]
    assert row["params_M"] * 1e6 == pytest.approx(4 * 27 + 4)
    assert row["gflops_fvcore"] * 1e9 == pytest.approx(4 * 27 * 256 + 4 * 256)  # conv + adaptive pool
    assert {"latency_ms_b1", "latency_ms_b2", "gflops", "attn_params", "device", "threads"} <= set(table.columns)
    assert "latency_ms_b1" not in cost_table({"conv": model}, (3, 16, 16), latency=False).columns


def test_bad_input_size():
    with pytest.raises(ValueError, match=r"input_size must be \(C, H, W\) or \(N, C, H, W\)"):
        count_flops(nn.Identity(), (16, 16))
    with pytest.raises(ValueError, match="runs >= 1"):
        measure_latency(nn.Identity(), (3, 4, 4), runs=0)


def test_profile_module_is_not_shadowed():
    import types

    assert isinstance(sca_lib.profile, types.ModuleType) and not hasattr(sca_lib.profile, "profile")


def test_latency_budget_follows_the_run_mode(monkeypatch):
    monkeypatch.setenv("SCA_MODE", "FAST")
    assert latency_budget() == LATENCY_BUDGETS["fast"] and latency_budget().threads == 1
    assert latency_budget("cpu").size == 224 and latency_budget("full").batch_sizes == (1, 32)
    monkeypatch.setenv("SCA_MODE", "bogus")
    with pytest.raises(ValueError, match="expected one of fast, cpu, full"):
        latency_budget()
    with pytest.raises(ValueError, match="expected one of fast, cpu, full"):
        latency_budget("gpu")


def test_compare_costs_columns_article_and_ratios():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    attn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), DualAttention(8, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    threads = torch.get_num_threads()
    t = compare_costs({"plain": conv, "+dual": attn}, "fast", input_size=(1, 3, 16, 16),
                      article={"+dual": (1.5, 0.2)}, ratios=True, device="cpu", latency=True)
    assert torch.get_num_threads() == threads  # the budget's thread count is used during timing only
    assert list(t.columns) == ["model", "params_M", "article_params_M", "params_ratio", "gflops_fvcore", "gflops",
                               "article_gflops", "flops_ratio", "attn_params", "attn_mflops",
                               "latency_ms_b1", "latency_ms_b2", "device", "latency_input_size"]
    assert list(t.columns[:10]) == list(COST_COLUMNS)
    assert t["latency_input_size"].tolist() == ["3x64x64"] * 2
    assert t["article_params_M"].isna().tolist() == [True, False] and t["article_gflops"].iloc[1] == 0.2
    assert t["params_ratio"].iloc[0] == 1.0 and t["params_ratio"].iloc[1] > 1.0
    assert t["attn_params"].tolist() == [0, count_parameters(attn[1])["total"]]
    plain = compare_costs({"plain": conv}, "fast", input_size=(1, 3, 16, 16))
    assert "article_params_M" not in plain.columns and "params_ratio" not in plain.columns
    assert not [c for c in plain.columns if "latency" in c]  # fast mode times nothing unless asked
    with pytest.raises(ValueError, match="unknown models"):
        compare_costs({"plain": conv}, "fast", input_size=(1, 3, 16, 16), article={"VGG16": (138, 15.5)})


def test_add_ratios_to_a_baseline_row():
    table = cost_table({"a": nn.Conv2d(3, 4, 1), "b": nn.Conv2d(3, 8, 1)}, (1, 3, 8, 8), batch_sizes=(1,),
                       warmup=0, runs=1, device="cpu")
    add_ratios(table, baseline=1)
    assert table["params_ratio"].tolist() == pytest.approx([16 / 32, 1.0])
    assert table["flops_fvcore_ratio"].tolist() == pytest.approx([0.5, 1.0])
    assert table["latency_ratio_b1"].iloc[1] == 1.0


def test_compare_latency_changes_the_order_round_by_round():
    calls = []

    class Named(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x

    ms = compare_latency({n: Named(n) for n in "abc"}, (3, 4, 4), warmup=1, runs=6)
    # warm-up in the given order, then 6 rounds (a whole cycle for 3 functions): each a permutation,
    # every function right after every other one twice
    assert calls[:3] == list("abc")
    rounds = [calls[3 + 3 * k:6 + 3 * k] for k in range(6)]
    assert len(calls) == 21 and all(sorted(r) == list("abc") for r in rounds)
    follows = Counter((r[k], r[k + 1]) for r in rounds for k in range(2))
    assert set(follows.values()) == {2} and len(follows) == 6
    assert set(ms) == set("abc") and all(v >= 0 for v in ms.values())


def test_paired_latency_divides_round_by_round_and_times_a_control(monkeypatch):
    from sca_lib.profile import paired_latency

    scripted = {"plain": [10.0, 20.0, 10.0], "attn": [11.0, 24.0, 12.0], "plain (copy)": [10.0, 22.0, 9.0]}
    seen = {k: 0 for k in scripted}

    def fake_time(fn):  # fn is the model bound to the input
        name = fn.func.tag
        seen[name] += 1
        return scripted[name][seen[name] - 1]

    class Tagged(nn.Identity):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

    monkeypatch.setattr(sca_lib.profile, "_timer", lambda device: fake_time)
    plain = Tagged("plain")
    original_deepcopy = sca_lib.profile.copy.deepcopy
    monkeypatch.setattr(sca_lib.profile.copy, "deepcopy", lambda m: Tagged("plain (copy)") if m is plain
                        else original_deepcopy(m))
    t = paired_latency({"plain": plain, "attn": Tagged("attn")}, (3, 4, 4), warmup=0, runs=3).set_index("model")
    assert list(t.index) == ["plain", "attn", "plain (copy)"]
    assert t.loc["plain", "ratio"] == 1.0 and t.loc["plain", "rounds"] == 3
    # per-round ratios 1.1, 1.2, 1.2: median 1.2 (not the ratio of medians, 12 / 10 = 1.2 here by chance: check min/max)
    assert t.loc["attn", "ratio"] == pytest.approx(1.2) and t.loc["attn", "ratio_min"] == pytest.approx(1.1)
    assert t.loc["plain (copy)", "ratio_min"] == pytest.approx(0.9) and t.loc["plain (copy)", "ratio_max"] == pytest.approx(1.1)
    assert t.loc["attn", "median_ms"] == 12.0
    with pytest.raises(ValueError, match="at least one model"):
        paired_latency({})


@pytest.mark.parametrize("n", range(1, 9))
def test_balanced_orders_time_every_function_after_every_other_equally_often(n):
    from sca_lib.profile import balanced_orders

    rows = balanced_orders(n)
    assert len(rows) == (2 * n if n % 2 and n > 1 else n)
    assert all(sorted(row) == list(range(n)) for row in rows)  # each function once per round
    assert all(sorted(col) == sorted(list(range(n)) * (len(rows) // n)) for col in zip(*rows))  # every position alike
    follows = Counter((row[k], row[k + 1]) for row in rows for k in range(n - 1))
    assert all(i != j for i, j in follows)  # never right after itself within a round
    flat = [f for row in rows for f in row]
    assert n <= 2 or all(a != b for a, b in zip(flat, flat[1:]))  # nor where one round ends and the next begins
    if n > 1:  # every ordered pair equally often: once (even n) or twice (odd n) per cycle
        assert set(follows) == {(i, j) for i in range(n) for j in range(n) if i != j}
        assert set(follows.values()) == {len(rows) // n}
    with pytest.raises(ValueError, match="at least one"):
        balanced_orders(0)


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_round_orders_relabel_each_cycle_and_keep_it_balanced(n):
    from sca_lib.profile import balanced_orders, round_orders

    cycle = len(balanced_orders(n))
    orders = round_orders(n, 3 * cycle + 1)
    assert len(orders) == 3 * cycle + 1 and orders == round_orders(n, 3 * cycle + 1)  # seeded: the same every run
    assert all(sorted(o) == list(range(n)) for o in orders)
    for k in range(3):  # every whole cycle balanced, under its own labels
        rows = orders[k * cycle:(k + 1) * cycle]
        follows = Counter((r[i], r[i + 1]) for r in rows for i in range(n - 1))
        assert len(follows) == n * (n - 1) and set(follows.values()) == {cycle // n}
    flat = [f for o in orders for f in o]
    if n > 2:  # nothing runs right after itself, not even where one round or cycle ends and the next begins
        assert all(a != b for a, b in zip(flat, flat[1:]))
    # the labels change between cycles and between seeds (a short run draws its predecessors)
    assert len({tuple(orders[k * cycle]) for k in range(3)}) > 1 or n == 2
    assert round_orders(n, cycle, seed=1) != round_orders(n, cycle, seed=0) or n == 2


def test_an_alternating_order_favours_the_end_functions_and_the_balanced_one_does_not(monkeypatch):
    """What the balanced orders fix, on a scripted machine where a call is fast right after itself
    (its data in the cache) and slow after anything else: two copies of the same function must come
    out equal in every round. Alternating A B C D / D C B A does not give that: A and D repeat at
    every change of round."""
    from sca_lib.profile import paired_ratios, time_interleaved

    last = [None]

    def once(fn):
        t = 1.0 if last[0] is fn else 2.0
        last[0] = fn
        return t

    monkeypatch.setattr(sca_lib.profile, "_timer", lambda device: once)
    fns = {k: (lambda: None) for k in ("floor", "floor (copy)", "x", "y")}
    r = paired_ratios(time_interleaved(fns, rounds=40, warmup=0))
    assert (r["ratio_min"] == 1.0).all() and (r["ratio_max"] == 1.0).all()
    last[0] = None
    alternating = {k: [] for k in fns}
    for rnd in range(40):
        for k in (list(fns) if rnd % 2 == 0 else list(fns)[::-1]):
            alternating[k].append(once(fns[k]))
    r = paired_ratios(alternating).set_index("model")
    assert r.loc["floor (copy)", "ratio_max"] == 2.0  # the floor ran right after itself in half the rounds


def test_time_interleaved_warms_up_alternates_and_times_cuda_with_events(monkeypatch):
    from sca_lib.profile import paired_ratios, time_interleaved

    calls = []
    times = time_interleaved({k: (lambda k=k: calls.append(k)) for k in "ab"}, rounds=4, warmup=2)
    assert calls[:4] == list("aabb") and all(sorted(calls[4 + 2 * k:6 + 2 * k]) == list("ab") for k in range(4))
    assert calls[4:6] != calls[6:8]  # within a cycle of two rounds, both orders
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
    with pytest.raises(ValueError, match="rounds >= 1"):
        time_interleaved({"a": lambda: None}, rounds=0)

    # on a GPU each call is bracketed by CUDA events recorded after a synchronisation
    log = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self, stream=None):
            log.append("record")
            self.t = len(log)

        def synchronize(self):
            log.append("event sync")

        def elapsed_time(self, end):
            return float(end.t - self.t)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "stream")
    t = time_interleaved({"a": lambda: log.append("call")}, rounds=1, warmup=0, device="cuda")
    assert log == ["sync", "record", "call", "record", "event sync"] and t == {"a": [2.0]}
    r = paired_ratios({"a": [2.0, 4.0], "b": [3.0, 4.0]}).set_index("model")
    assert r.loc["b", "ratio"] == pytest.approx(1.25) and r.loc["b", "ratio_max"] == pytest.approx(1.5)
    assert math.isnan(r.loc["b", "ratio_ci_low"])  # 2 rounds: no 95 % interval for a median
    r = paired_ratios({"a": [1.0] * 10, "b": [float(v) for v in range(10, 0, -1)]}).set_index("model")
    assert (r.loc["b", "ratio_ci_low"], r.loc["b", "ratio_ci_high"]) == (2.0, 9.0)  # the 2nd and 9th of 10


def test_add_paired_latency_adds_ratio_columns_and_a_control_row(monkeypatch):
    from sca_lib.profile import add_paired_latency

    def fake(models, input_size, batch_size, device, warmup, runs, control):
        assert control and batch_size in (1, 8)
        return pd.DataFrame({"model": list(models) + ["plain (copy)"], "median_ms": [10.0, 12.0, 10.1],
                             "ratio": [1.0, 1.2, 1.01], "ratio_min": [1.0, 1.1, 0.98],
                             "ratio_max": [1.0, 1.3, 1.03], "rounds": [runs] * 3,
                             "ratio_ci_low": [1.0, 1.15, 0.99], "ratio_ci_high": [1.0, 1.25, 1.02]})

    monkeypatch.setattr(sca_lib.profile, "paired_latency", fake)
    table = pd.DataFrame({"model": ["plain", "attn"], "params_M": [1.0, 1.1]})
    out = add_paired_latency(table, {"plain": nn.Identity(), "attn": nn.Identity()}, (3, 8, 8), (1, 8), runs=5)
    assert list(out["model"]) == ["plain", "attn", "plain (copy)"]
    assert list(out["params_M"]) == [1.0, 1.1, 1.0]
    assert list(out["latency_ratio_b8"]) == [1.0, 1.2, 1.01] and list(out["latency_ratio_min_b1"]) == [1.0, 1.1, 0.98]
    assert set(out["latency_rounds_b1"]) == {5} and set(out["latency_input_size"]) == {"3x8x8"}
    assert list(out["latency_ratio_ci_low_b8"]) == [1.0, 1.15, 0.99] and list(out["latency_ratio_ci_high_b1"]) == [1.0, 1.25, 1.02]
    with pytest.raises(ValueError, match="first row must be the first model 'attn'"):
        add_paired_latency(table, {"attn": nn.Identity(), "plain": nn.Identity()}, (3, 8, 8))


def test_committed_latency_reads_the_paired_table_with_its_control():
    from sca_lib.profile import committed_latency

    t = committed_latency("vgg16")
    assert list(t["model"])[0] == "plain" and "plain (copy)" in set(t["model"])
    assert (t["latency_ratio_min_b1"] <= t["latency_ratio_b1"]).all() and (t["latency_ratio_b1"] <= t["latency_ratio_max_b1"]).all()
    assert set(committed_latency()["backbone"]) >= {"vgg16", "resnet50", "mobilenet_v3_large"}
