"""Cost of a model: parameters, FLOPs (fvcore) and latency, as one tidy table.

:func:`cost_table` measures several models side by side; :func:`compare_costs` does the same at
the run mode's latency budget (:data:`LATENCY_BUDGETS`) and keeps the columns a reader compares,
optionally next to the article's numbers and as ratios to the first model (:func:`add_ratios`).

FLOP convention (read this before comparing numbers): fvcore counts **one fused multiply-add as
one FLOP** (so its "FLOPs" are MACs; the article's 15.5 G for VGG16 and 4.1 G for ResNet50 use the
same convention). By default fvcore 0.1.5 counts convolutions, linear layers, batch norm (eval: 2
per element with affine) and adaptive average pooling (1 per input element), and *skips* activation
functions (ReLU, Sigmoid, Hardsigmoid, Hardswish), elementwise multiply and add, and max pooling.
An attention module is mostly such elementwise work (gates and the ``x * c * s`` product), so
``count_flops(..., include_elementwise=True)`` (the default here) registers handles that count
one FLOP per output element for activations, gates, mul/add/sub/div, and one per input element
for max pooling. ``include_elementwise=False`` gives fvcore's own number. :func:`cost_table`
reports both.

Latency: warm-up runs, then the median of ``runs`` timed forwards under ``torch.inference_mode``
in eval mode, the models interleaved in an order that changes round by round so that each model
is timed right after every other one equally often (:func:`round_orders`, :func:`time_interleaved`,
which times any zero-argument functions the same way); on CUDA each run
is timed with CUDA events after a synchronisation. CPU numbers depend on the thread count (recorded in
the table) and on whatever else the machine runs. :func:`paired_latency` gives ratios paired
round by round with their [min, max] and a copy of the first model as a control, the spread that
says how small an effect a measurement can resolve.
"""

from __future__ import annotations

import copy
import logging
import random
import statistics
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd
import torch
from torch import nn

from .attention import attention_modules
from .config import check_mode, get_mode, repo_root
from .stats import median_ci

__all__ = [
    "count_parameters",
    "count_flops",
    "flops_by_module",
    "attention_cost",
    "measure_latency",
    "compare_latency",
    "paired_latency",
    "add_paired_latency",
    "time_interleaved",
    "balanced_orders",
    "round_orders",
    "paired_ratios",
    "cost_table",
    "add_ratios",
    "compare_costs",
    "committed_latency",
    "LatencyBudget",
    "LATENCY_BUDGETS",
    "latency_budget",
    "COST_COLUMNS",
    "ELEMENTWISE_OPS",
]

SizeArg = Union[Sequence[int], torch.Size]

#: Ops that fvcore skips and ``include_elementwise=True`` counts (FLOPs per output element).
ELEMENTWISE_OPS: Tuple[str, ...] = tuple(
    f"aten::{op}{suffix}"
    for op in ("sigmoid", "hardsigmoid", "hardswish", "relu", "mul", "add", "sub", "rsub", "div")
    for suffix in ("", "_")
)
_POOL_OPS = ("aten::max_pool2d",)  # one FLOP per input element (a comparison each)
_EXTRA = "elementwise"


def count_parameters(model: nn.Module) -> Dict[str, int]:
    """``{"total": int, "trainable": int}`` (shared parameters counted once)."""
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def _input_shape(input_size: SizeArg, batch_size: Optional[int] = None) -> Tuple[int, ...]:
    size = tuple(int(s) for s in input_size)
    if len(size) == 3:
        size = (1,) + size
    if len(size) != 4 or min(size) < 1:
        raise ValueError(f"input_size must be (C, H, W) or (N, C, H, W) of positive ints, got {tuple(input_size)}")
    if batch_size is not None:
        size = (int(batch_size),) + size[1:]
    return size


def _out_numel(outputs: List[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(outputs[0])
    n = 1
    for s in shape or []:
        n *= s
    return n


def _elementwise_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    return Counter({_EXTRA: _out_numel(outputs)})


def _pool_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    from fvcore.nn.jit_handles import get_shape

    n = 1
    for s in get_shape(inputs[0]) or []:
        n *= s
    return Counter({_EXTRA: n})


@contextmanager
def _eval(model: nn.Module) -> Iterator[nn.Module]:
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _analysis(model: nn.Module, input_size: SizeArg):
    """A fvcore FlopCountAnalysis with the elementwise handles registered (tagged ``elementwise``)."""
    with warnings.catch_warnings():  # fvcore's import calls the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    shape = _input_shape(input_size)
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.zeros(shape, device=device)
    analysis = FlopCountAnalysis(model, x)
    analysis.set_op_handle(**{op: _elementwise_handle for op in ELEMENTWISE_OPS})
    analysis.set_op_handle(**{op: _pool_handle for op in _POOL_OPS})
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def _quiet():
    logging.getLogger("fvcore").setLevel(logging.ERROR)


def flops_by_module(model: nn.Module, input_size: SizeArg = (1, 3, 224, 224),
                    include_elementwise: bool = True) -> Dict[str, int]:
    """FLOPs (fused multiply-add = 1) of every submodule, by name (``""`` is the whole model)."""
    _quiet()
    with _eval(model), torch.no_grad():
        a = _analysis(model, input_size)
        total = a.by_module()
        if include_elementwise:
            return dict(total)
        extra = a.by_module_and_operator()
        return {k: v - extra.get(k, {}).get(_EXTRA, 0) for k, v in total.items()}


def count_flops(model: nn.Module, input_size: SizeArg = (1, 3, 224, 224), include_elementwise: bool = True) -> int:
    """FLOPs of one forward at ``input_size`` (N, C, H, W) or (C, H, W), via fvcore.

    One fused multiply-add counts as one FLOP. ``include_elementwise=True`` adds activations,
    gates, elementwise mul/add and max pooling (one per element) that fvcore skips by default; see
    the module docstring. The model is traced in eval mode on its own device.
    """
    _quiet()
    with _eval(model), torch.no_grad():
        a = _analysis(model, input_size)
        total = a.total()
        return int(total if include_elementwise else total - a.by_operator().get(_EXTRA, 0))


def _costs(model: nn.Module, input_size: SizeArg) -> Dict[str, int]:
    """One fvcore trace -> whole-model and attention FLOPs in both conventions, attention params."""
    mods = attention_modules(model)
    _quiet()
    with _eval(model), torch.no_grad():
        a = _analysis(model, input_size)
        total, per_op = a.by_module(), a.by_module_and_operator()
    extra = {n: per_op.get(n, {}).get(_EXTRA, 0) for n in list(mods) + [""]}
    return {
        "flops": int(total[""]),
        "flops_fvcore": int(total[""] - extra[""]),
        "attn_params": sum(count_parameters(m)["total"] for m in mods.values()),
        "attn_flops": int(sum(total.get(n, 0) for n in mods)),
        "attn_flops_fvcore": int(sum(total.get(n, 0) - extra[n] for n in mods)),
    }


def attention_cost(model: nn.Module, input_size: SizeArg = (1, 3, 224, 224)) -> Dict[str, int]:
    """Params and FLOPs (both conventions) of the attention modules inside ``model``.

    Counts every outermost attention module (:func:`sca_lib.attention.attention_modules`; for an
    :class:`~sca_lib.attention.AttnResBlock` that includes its 3x3 conv).
    Returns ``{"params", "flops", "flops_fvcore"}``; all zero when there is none.
    """
    c = _costs(model, input_size)
    return {"params": c["attn_params"], "flops": c["attn_flops"], "flops_fvcore": c["attn_flops_fvcore"]}


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function timing one call in milliseconds: wall clock on the CPU; on CUDA, events recorded
    on ``device``'s current stream around the call (after a synchronisation, so earlier work is excluded)."""
    if device.type == "cuda":
        def once(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            stream = torch.cuda.current_stream(device)  # the device's stream, not the current device's
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def once(fn: Callable[[], Any]) -> float:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1000.0
    return once


def balanced_orders(n: int) -> List[List[int]]:
    """One cycle of round orders for ``n`` functions: a Williams design.

    A Latin square (each function once per round, once in every position per cycle) balanced for
    carry-over: within the cycle every function comes right after every other function equally
    often (once for even ``n``, twice for odd) and never right after itself (for ``n = 2`` one
    function must repeat where the two rows meet). A call leaves the caches
    and the allocator in its own state, and the next call runs faster or slower for it: with an
    alternating order (A B C, then C B A) the first and last functions were timed right after
    themselves (their own data in the cache) at every change of round, and the others never were.
    ``n`` rows for even ``n`` (row ``i`` is ``0, 1, n-1, 2, n-2, ...`` plus ``i`` modulo ``n``); for odd
    ``n`` those rows and their reverses, ordered so that no row starts with the function that ended
    the row before. :func:`round_orders` relabels the functions cycle by cycle.
    """
    if n < 1:
        raise ValueError(f"need at least one function to order, got n={n}")
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(v + i) % n for v in first] for i in range(n)]
    if n % 2 == 0 or n == 1:
        return rows
    # the reverses, in the order n-2, n-3, ..., 0, n-1: no function ends one row and starts the next
    return rows + [rows[i][::-1] for i in list(range(n - 2, -1, -1)) + [n - 1]]


def round_orders(n: int, rounds: int, seed: int = 0) -> List[List[int]]:
    """The order of each of ``rounds`` rounds of ``n`` functions: cycles of :func:`balanced_orders`,
    each cycle with the functions relabelled by a random permutation (``seed``: the same orders
    every run).

    A complete cycle is balanced whatever the labels. The relabelling is for the last, incomplete
    cycle (and for runs shorter than one cycle, as 15 rounds of 30 functions are): without it, the
    first rows of the design would give each function the same few predecessors in every run, say
    the fast-path modules to the floor and the reference forms to its copy, which is a bias; with it
    they are a random draw. A cycle never starts with the function that ended the one before.
    """
    rows, rng = balanced_orders(n), random.Random(seed)
    orders: List[List[int]] = []
    while len(orders) < rounds:
        label = list(range(n))
        rng.shuffle(label)
        while n > 1 and orders and label[rows[0][0]] == orders[-1][-1]:
            rng.shuffle(label)
        orders.extend([label[i] for i in row] for row in rows)
    return orders[:rounds]


def time_interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int = 21, warmup: int = 2,
                     device: Union[str, torch.device] = "cpu") -> Dict[str, List[float]]:
    """Times (ms) of calling each zero-argument function once per round, **interleaved**, in the
    orders of :func:`round_orders`.

    Each function is first called ``warmup`` times untimed (caches, the allocator's free lists,
    lazy initialisation). Interleaving spreads slow periods of a shared machine over all functions,
    and the balanced orders time every function right after every other one equally often (over
    whole cycles: ``n`` rounds for ``n`` functions, ``2 n`` for odd ``n``; a random draw within an
    incomplete one), so none is favoured by what ran before it. On ``device="cuda"`` the calls are
    timed with CUDA events (see :func:`_timer`). Returns the per-round times of each function, in
    round order, so ratios can be paired round by round (:func:`paired_ratios`).
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    once = _timer(torch.device(device))
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for order in (round_orders(len(names), rounds) if names else []):
        for i in order:
            times[names[i]].append(once(fns[names[i]]))
    return times


def paired_ratios(times: Mapping[str, Sequence[float]], base: Optional[str] = None) -> pd.DataFrame:
    """Per-round ratios to ``base`` (default: the first entry) from :func:`time_interleaved`'s times.

    One row per entry: ``model``, ``median_ms``, ``ratio`` (the median of the round-by-round
    ratios), ``ratio_min``, ``ratio_max``, ``rounds``, and ``ratio_ci_low``, ``ratio_ci_high``: a
    distribution-free 95 % interval for the median ratio (:func:`sca_lib.stats.median_ci`; nan
    under 6 rounds). [min, max] is the spread of single rounds; the interval is what the median
    itself resolves.
    """
    base = next(iter(times)) if base is None else base
    rows = []
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, times[base])]
        low, high = median_ci(ratios)
        rows.append({"model": name, "median_ms": statistics.median(t), "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "rounds": len(t),
                     "ratio_ci_low": low, "ratio_ci_high": high})
    return pd.DataFrame(rows)


def measure_latency(model: nn.Module, input_size: SizeArg = (3, 224, 224), batch_size: int = 1,
                    device: Union[str, torch.device] = "cpu", warmup: int = 2, runs: int = 5) -> float:
    """Median forward time in milliseconds of a batch of ``batch_size`` at ``input_size``.

    ``input_size`` is (C, H, W) or (N, C, H, W) (N is replaced by ``batch_size``). The model is
    moved to ``device`` and run in eval mode under ``torch.inference_mode`` (its training flag is
    restored afterwards; it stays on ``device``). ``warmup`` untimed runs, then ``runs`` timed ones;
    CUDA runs are synchronised. Keep ``runs`` small on CPU: VGG16 at 224x224, batch 32, takes
    seconds per run.
    """
    return compare_latency({"m": model}, input_size, batch_size, device, warmup, runs)["m"]


def _interleaved_times(models: Mapping[str, nn.Module], input_size: SizeArg, batch_size: int,
                       device: Union[str, torch.device], warmup: int, runs: int) -> Dict[str, List[float]]:
    """Every model's forward times (ms), round by round (:func:`time_interleaved`), in eval mode
    under ``torch.inference_mode``."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    device = torch.device(device)
    x = torch.randn(_input_shape(input_size, batch_size), device=device)
    states = {name: m.training for name, m in models.items()}
    try:
        with torch.inference_mode():
            for m in models.values():
                m.to(device).eval()
            return time_interleaved({name: partial(m, x) for name, m in models.items()}, runs, warmup, device)
    finally:
        for name, m in models.items():
            m.train(states[name])


def compare_latency(models: Mapping[str, nn.Module], input_size: SizeArg = (3, 224, 224), batch_size: int = 1,
                    device: Union[str, torch.device] = "cpu", warmup: int = 2, runs: int = 5) -> Dict[str, float]:
    """Median latency (ms) of several models measured **interleaved**: round r times every model once.

    Interleaving spreads slow periods of a shared machine (other processes, thermal throttling)
    over all models, so ratios between them are fairer than from back-to-back measurements. The
    order changes round by round (:func:`round_orders`), so every model is timed right after
    every other one equally often (what ran before leaves its caches, the allocator's state, a
    clock ramping up).
    """
    times = _interleaved_times(models, input_size, batch_size, device, warmup, runs)
    return {name: statistics.median(t) for name, t in times.items()}


def paired_latency(models: Mapping[str, nn.Module], input_size: SizeArg = (3, 224, 224), batch_size: int = 1,
                   device: Union[str, torch.device] = "cpu", warmup: int = 2, runs: int = 21,
                   control: bool = True) -> pd.DataFrame:
    """Latency ratios to the first model, paired round by round, with the spread that says what they resolve.

    The models are timed as :func:`compare_latency` times them (interleaved, balanced orders,
    ``warmup`` untimed calls each). In each round every model's time is divided by the first
    model's time of the same round; a row reports the median of those ratios and their
    [min, max]. With ``control=True`` a copy of the first model is timed too (``"<first> (copy)"``):
    its ratio should be 1, and how far its [min, max] strays from 1 is the smallest effect the
    measurement can resolve. Returns :func:`paired_ratios`'s DataFrame: ``model``, ``median_ms``,
    ``ratio``, ``ratio_min``, ``ratio_max``, ``rounds``, ``ratio_ci_low``, ``ratio_ci_high``.
    """
    models = dict(models)
    if not models:
        raise ValueError("paired_latency needs at least one model")
    first = next(iter(models))
    if control:
        models[f"{first} (copy)"] = copy.deepcopy(models[first])
    return paired_ratios(_interleaved_times(models, input_size, batch_size, device, warmup, runs))


def add_paired_latency(table: pd.DataFrame, models: Mapping[str, nn.Module], input_size: SizeArg = (3, 224, 224),
                       batch_sizes: Sequence[int] = (1,), device: Union[str, torch.device] = "cpu", warmup: int = 3,
                       runs: int = 21) -> pd.DataFrame:
    """``table`` (one row per model, ``model`` column, the first model first: :func:`cost_table`
    with ``latency=False``) with paired latency columns and a ``"<first> (copy)"`` control row.

    For each batch size B (:func:`paired_latency`, ``control=True``): ``latency_ms_b{B}`` (median),
    ``latency_ratio_b{B}`` (median of the per-round ratios to the first model),
    ``latency_ratio_min_b{B}``, ``latency_ratio_max_b{B}``, ``latency_rounds_b{B}`` and the median
    ratio's 95 % interval ``latency_ratio_ci_low_b{B}``, ``latency_ratio_ci_high_b{B}``; also
    ``threads`` and ``latency_input_size``. The control row repeats the first model's other columns.
    Returns a new DataFrame.
    """
    first = next(iter(models))
    if table.iloc[0]["model"] != first:
        raise ValueError(f"add_paired_latency: the table's first row must be the first model {first!r}, "
                         f"got {table.iloc[0]['model']!r}")
    table = pd.concat([table, table.iloc[[0]].assign(model=f"{first} (copy)")], ignore_index=True)
    for b in batch_sizes:
        lat = paired_latency(models, input_size, b, device, warmup, runs, control=True).set_index("model")
        for col, key in (("latency_ms", "median_ms"), ("latency_ratio", "ratio"),
                         ("latency_ratio_min", "ratio_min"), ("latency_ratio_max", "ratio_max"),
                         ("latency_rounds", "rounds"), ("latency_ratio_ci_low", "ratio_ci_low"),
                         ("latency_ratio_ci_high", "ratio_ci_high")):
            table[f"{col}_b{b}"] = [lat.loc[m, key] for m in table["model"]]
    table["threads"] = torch.get_num_threads()
    table["latency_input_size"] = "x".join(map(str, _input_shape(input_size)[1:]))
    return table


def cost_table(models: Mapping[str, nn.Module], input_size: SizeArg = (1, 3, 224, 224),
               batch_sizes: Sequence[int] = (1, 32), device: Union[None, str, torch.device] = None,
               warmup: int = 2, runs: int = 5, latency_input_size: Optional[SizeArg] = None,
               latency: bool = True) -> pd.DataFrame:
    """A tidy cost table (pandas DataFrame), one row per model.

    Columns: ``model``, ``params_M`` and ``trainable_M`` (millions), ``gflops`` (elementwise ops
    included) and ``gflops_fvcore`` (fvcore's default count), both in G (fused multiply-add = 1)
    at ``input_size``; ``attn_params``, ``attn_mflops``, ``attn_mflops_fvcore`` (attention modules only); ``latency_ms_b{B}`` for each batch size
    (median of ``runs`` after ``warmup``, models measured interleaved) at ``latency_input_size``
    (default ``input_size``); ``device``, ``threads``, ``input_size``, ``latency_input_size``.
    ``latency=False`` skips timing (FLOPs and params are exact and machine-independent).
    """
    shape = _input_shape(input_size)
    lat_shape = _input_shape(latency_input_size or input_size)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name, m in models.items():
        p = count_parameters(m)
        c = _costs(m, shape)
        rows.append({
            "model": name,
            "params_M": p["total"] / 1e6,
            "trainable_M": p["trainable"] / 1e6,
            "gflops": c["flops"] / 1e9,
            "gflops_fvcore": c["flops_fvcore"] / 1e9,
            "attn_params": c["attn_params"],
            "attn_mflops": c["attn_flops"] / 1e6,
            "attn_mflops_fvcore": c["attn_flops_fvcore"] / 1e6,
        })
    if latency:
        for b in batch_sizes:
            lat = compare_latency(models, lat_shape[1:], b, dev, warmup, runs)
            for row in rows:
                row[f"latency_ms_b{b}"] = lat[row["model"]]
    for row in rows:
        row.update({"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    "threads": torch.get_num_threads(), "input_size": "x".join(map(str, shape[1:])),
                    "latency_input_size": "x".join(map(str, lat_shape[1:])) if latency else ""})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Side-by-side comparisons at the run mode's budget
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyBudget:
    """How much latency measuring a run mode does (parameters and FLOPs are exact in every mode).

    ``size``: input side in pixels for the timed forwards; ``batch_sizes``: the batches timed;
    ``runs``: timed forwards per model (median), after ``warmup`` untimed ones; ``threads``: the
    intra-op thread count to use (None: torch's default).
    """

    size: int
    batch_sizes: Tuple[int, ...]
    runs: int
    warmup: int = 1
    threads: Optional[int] = None


#: The latency budget of each run mode: ``fast`` is a plumbing check (64x64, one thread, which is
#: stable on shared CI runners), ``cpu`` and ``full`` measure at 224x224, batches 1 and 32.
LATENCY_BUDGETS: Dict[str, LatencyBudget] = {
    "fast": LatencyBudget(size=64, batch_sizes=(1, 2), runs=2, threads=1),
    "cpu": LatencyBudget(size=224, batch_sizes=(1, 32), runs=5),
    "full": LatencyBudget(size=224, batch_sizes=(1, 32), runs=20),
}

#: The columns :func:`compare_costs` keeps, in order (those present); latency columns follow.
COST_COLUMNS = ("model", "params_M", "article_params_M", "params_ratio", "gflops_fvcore", "gflops",
                "article_gflops", "flops_ratio", "attn_params", "attn_mflops")


def latency_budget(mode: Optional[str] = None) -> LatencyBudget:
    """The :data:`LATENCY_BUDGETS` entry of ``mode`` (default: ``$SCA_MODE`` via :func:`sca_lib.config.get_mode`)."""
    return LATENCY_BUDGETS[get_mode() if mode is None else check_mode(mode)]


def add_ratios(table: pd.DataFrame, baseline: int = 0) -> pd.DataFrame:
    """``table`` (from :func:`cost_table`) with ratios to its row ``baseline`` (position), in place.

    Adds ``params_ratio``, ``flops_ratio``, ``flops_fvcore_ratio`` and ``latency_ratio_b{B}`` for
    every ``latency_ms_b{B}`` column. Returns the table.
    """
    base = table.iloc[baseline]
    table["params_ratio"] = table["params_M"] / base["params_M"]
    table["flops_ratio"] = table["gflops"] / base["gflops"]
    table["flops_fvcore_ratio"] = table["gflops_fvcore"] / base["gflops_fvcore"]
    for col in [c for c in table.columns if c.startswith("latency_ms_b")]:
        table["latency_ratio_b" + col[len("latency_ms_b"):]] = table[col] / base[col]
    return table


def compare_costs(models: Mapping[str, nn.Module], mode: Optional[str] = None, *,
                  input_size: SizeArg = (1, 3, 224, 224), article: Optional[Mapping[str, Tuple[float, float]]] = None,
                  ratios: bool = False, device: Union[None, str, torch.device] = None,
                  latency: Optional[bool] = None) -> pd.DataFrame:
    """Parameters, FLOPs and latency of ``models`` side by side, at ``mode``'s latency budget.

    Parameters and FLOPs are exact at ``input_size`` in every mode; latency follows
    :func:`latency_budget` (``mode`` defaults to ``$SCA_MODE``): interleaved medians at
    ``budget.size`` for each of ``budget.batch_sizes``. The budget's thread count is used during
    the measurement only. ``article`` maps model names to the article's ``(params_M, gflops)``
    (columns ``article_params_M``, ``article_gflops``; None for other rows); ``ratios=True`` adds
    ``params_ratio`` and ``flops_ratio`` to the first model. Returns :data:`COST_COLUMNS` (those
    present), the ``latency_ms_b{B}`` columns, ``device`` and ``latency_input_size``.

    ``latency``: time the models (default: in every mode but ``fast``, whose 64 px timings on a
    busy machine are noise; :func:`committed_latency` has the measured ratios). Without it the
    latency columns are left out.
    """
    mode = get_mode() if mode is None else check_mode(mode)
    if latency is None:
        latency = mode != "fast"
    budget = latency_budget(mode)
    threads = torch.get_num_threads()
    if budget.threads:
        torch.set_num_threads(budget.threads)
    try:
        table = cost_table(models, input_size, batch_sizes=budget.batch_sizes, device=device,
                           warmup=budget.warmup, runs=budget.runs, latency_input_size=(3, budget.size, budget.size),
                           latency=latency)
    finally:
        torch.set_num_threads(threads)
    if article is not None:
        unknown = sorted(set(article) - set(models))
        if unknown:
            raise ValueError(f"compare_costs: article numbers for unknown models {unknown}; models are {list(models)}")
        table["article_params_M"] = [article.get(m, (None, None))[0] for m in table["model"]]
        table["article_gflops"] = [article.get(m, (None, None))[1] for m in table["model"]]
    if ratios:
        add_ratios(table)
    timed = [c for c in table.columns if c.startswith("latency_ms_b")]
    extra = ["device", "latency_input_size"] if latency else []
    return table[[c for c in COST_COLUMNS if c in table.columns] + timed + extra]


#: The committed CPU cost table (paired latency with a control row), relative to the repository.
COMMITTED_COSTS = Path("results") / "costs" / "costs_224_cpu.csv"


def committed_latency(backbone: Optional[str] = None) -> Optional[pd.DataFrame]:
    """The committed, paired CPU latency of each backbone's variants (``results/costs/costs_224_cpu.csv``:
    224 px, batch 1, 21 rounds, one thread, a copy of the plain model as the control row).

    Columns ``backbone``, ``model``, ``latency_ms_b1``, ``latency_ratio_b1`` and its ``_min``/``_max``;
    ``backbone`` filters. None where the file is not there (a pip-installed sca_lib has no results);
    regenerate it with ``python benchmarks/bench_backbones.py --extra --batch-sizes 1 --csv
    results/costs/costs_224_cpu.csv``.
    """
    root = repo_root()
    path = None if root is None else root / COMMITTED_COSTS
    if path is None or not path.is_file():
        return None
    table = pd.read_csv(path)
    if backbone is not None:
        table = table[table["backbone"] == backbone]
    cols = ["backbone", "model", "latency_ms_b1", "latency_ratio_b1", "latency_ratio_min_b1", "latency_ratio_max_b1"]
    return table[cols].reset_index(drop=True)
