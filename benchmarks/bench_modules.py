"""How close is each attention module to the memory floor? Every module, alone, at four feature-map shapes.

A gate is elementwise work: its floor is about one read and one write of the feature map, plus the
reads its pooled and 1x1 paths need. For each shape, memory format (channels first, channels last)
and pass this script times, interleaved round by round in balanced orders, each function timed right
after every other one equally often (``sca_lib.profile.time_interleaved``, ``round_orders``):

- ``forward``: under ``torch.inference_mode``, modules in eval mode; the floor is ``x.clone()``
  plus one read pass (``x.sum()``), the cost of producing a new tensor the size of ``x``;
- ``forward+backward``: modules in train mode, ``x`` requiring grad, a fixed output gradient; the
  floor is ``x * y`` forward and backward (both requiring grad), the cheapest gated product. Every
  round starts with no gradients (``x.grad``, ``y.grad`` and the module's own set to None, as a
  training step after ``zero_grad(set_to_none=True)`` does), so no row adds into old gradients;

every module of the family with its fast path (``sca_lib.gating``, the default) and its reference
form (``<name> (reference)``), timm's modules where timm has one (``timm:<name>``), and a second copy
of the floor (``floor (copy)``): its ratio should be 1, and its [min, max] is the smallest effect
the measurement resolves. Each row is the median of the per-round ratios to the floor, with
[min, max]. ``--cold`` also times the first forward of the dual module in fresh processes against
its warm forward. ``--breakdown`` instead times each step of the dual module's forward (pool, channel
MLP, projection, sigmoid, product) against the floor: where the time goes.

Allocation is part of the cost on a CPU: glibc returns large freed blocks to the system, and the
next call pays the page faults again. ``--allocator retain`` reruns the script with
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set so freed memory stays in the process
(what jemalloc or tcmalloc do by default); ``default`` leaves glibc as it is. The tables say which.

    python benchmarks/bench_modules.py --threads 1 --cold --out results/performance    # the committed tables
    python benchmarks/bench_modules.py --threads 1 --allocator retain --out results/performance
    python benchmarks/bench_modules.py --shapes 8x64x56x56 --modules dual --rounds 5   # seconds
    python benchmarks/bench_modules.py --modules dual --compile --shapes 32x256x28x28 8x64x56x56   # torch.compile
    python benchmarks/bench_modules.py --device cuda --out results/performance         # on a GPU (CUDA events)
    python benchmarks/bench_modules.py --breakdown --allocator retain --out results/performance   # step by step
    python benchmarks/bench_modules.py --fused --inplace --modules dual lite --no-timm --passes forward --allocator retain --out results/performance
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import pandas as pd
import torch

from sca_lib import fused
from sca_lib.attention import create_attention
from sca_lib.gating import reference_gating
from sca_lib.profile import paired_ratios, time_interleaved

SHAPES = ((8, 512, 14, 14), (8, 2048, 7, 7), (32, 256, 28, 28), (8, 64, 56, 56))
MODULES = ("dual", "lite", "channel", "spatial", "dual_add", "dual_seq", "se", "scse", "cbam", "eca", "coord",
           "sca_cnn")
FORMATS = {"channels_first": torch.contiguous_format, "channels_last": torch.channels_last}
#: glibc settings that keep freed memory in the process (``--allocator retain``): blocks up to 32 MiB
#: (glibc's largest mmap threshold) come from the heap, and the heap is not trimmed back.
RETAIN = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 25), "MALLOC_TRIM_THRESHOLD_": str(2 ** 36)}


def timm_module(name: str, channels: int):
    """timm's module equivalent to our ``name`` (same widths), or None where timm has none."""
    from timm.layers.cbam import CbamModule
    from timm.layers.coord_attn import CoordAttn
    from timm.layers.eca import EcaModule
    from timm.layers.squeeze_excite import SEModule
    builders = {"se": lambda c: SEModule(c, rd_channels=c // 16),
                "cbam": lambda c: CbamModule(c, rd_channels=c // 16, mlp_bias=True),
                "eca": lambda c: EcaModule(c),
                "coord": lambda c: CoordAttn(c, rd_channels=max(8, c // 32), bias=True)}
    return builders[name](channels) if name in builders else None


def _forward(module, x, reference: bool = False) -> Callable[[], object]:
    def run():
        with reference_gating(reference):
            return module(x)
    return run


def _forward_fused(module, x, call: bool = True) -> Callable[[], object]:
    """The module's forward with :mod:`sca_lib.fused`'s kernels switched on for the call only
    (``call=False``: ``module.forward(x)``, without ``nn.Module.__call__``)."""
    forward = module if call else module.forward

    def run():
        fused._STATE["enabled"] = True
        try:
            return forward(x)
        finally:
            fused._STATE["enabled"] = False
    return run


def _forward_backward(module, x, grad, reference: bool = False) -> Callable[[], object]:
    def run():
        x.grad = None
        module.zero_grad(set_to_none=True)  # as the engine's training step: no accumulation into old gradients
        with reference_gating(reference):
            out = module(x)
        out.backward(grad)
    return run


def _floor(x: torch.Tensor) -> Callable[[], object]:
    return lambda: (x.clone(), x.sum())


def _product(x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor) -> Callable[[], object]:
    def run():
        x.grad = y.grad = None
        (x * y).backward(grad)
    return run


def _in_place_modules(modules, channels: int, device: str) -> Dict[str, torch.nn.Module]:
    """``inplace=True`` copies of the dual and lite modules for ``--inplace`` rows. They start as the
    identity (``identity_init``: both gates exactly 1), so writing into ``x`` round after round leaves
    it as it was and every row keeps timing the same input; the work per call is the same as with
    trained weights (plus two multiplications of the small gates by 2)."""
    return {f"{n} (in place)": create_attention(n, channels, identity_init=True, inplace=True).to(device).eval()
            for n in ("dual", "lite") if n in modules}


def measure(shape, fmt: str, pass_: str, modules, rounds: int, warmup: int, device: str,
            with_timm: bool = True, compile_: bool = False, fused_: bool = False,
            inplace: bool = False) -> pd.DataFrame:
    """One block: the floor, its copy, and every module (fast, reference, timm's) at one setting."""
    torch.manual_seed(0)
    memory_format = FORMATS[fmt]
    x = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
    grad = torch.randn(shape, device=device).contiguous(memory_format=memory_format)
    fns: Dict[str, Callable[[], object]] = {}
    built = {name: create_attention(name, shape[1]).to(device) for name in modules}
    if with_timm:
        built.update({f"timm:{n}": m.to(device) for n in modules if (m := timm_module(n, shape[1])) is not None})
    compiled = {}
    if compile_:  # torch.compile of the fast path and of the reference form (compiled during the warm-up)
        from torch import _dynamo
        _dynamo.reset()  # every block compiles afresh: cached entries of earlier blocks would hit the limit
        _dynamo.config.recompile_limit = 64  # fast/reference x grad modes recompile the same forward
        for n in modules:
            compiled[f"{n} (compiled)"] = (torch.compile(built[n]), False)
            compiled[f"{n} (compiled reference)"] = (torch.compile(built[n]), True)
    if pass_ == "forward":
        fns["floor"], fns["floor (copy)"] = _floor(x), _floor(x)  # the same input: the same cache state
        for name, m in built.items():
            m.eval()
            fns[name] = _forward(m, x)
            if not name.startswith("timm:"):
                fns[f"{name} (reference)"] = _forward(m, x, reference=True)
        for name, (m, reference) in compiled.items():
            fns[name] = _forward(m, x, reference)
        if fused_:  # the opt-in kernels, where the module can use them
            for name in (n for n in ("dual", "lite") if n in built):
                fns[f"{name} (fused)"] = _forward_fused(built[name], x)
        if inplace:  # writing into x (identity start: x keeps its values)
            for name, m in _in_place_modules(modules, shape[1], device).items():
                fns[name] = _forward(m, x)
                if fused_:
                    fns[name.replace("(in place)", "(fused, in place)")] = _forward_fused(m, x)
            before = x.clone()
        with torch.inference_mode():
            times = time_interleaved(fns, rounds, warmup, device)
        if inplace and not torch.equal(x, before):
            raise RuntimeError("the in-place rows changed x: the other rows timed another input")
    else:
        xg, y = x.clone().requires_grad_(), x.clone().normal_().requires_grad_()
        fns["floor"] = _product(xg, y, grad)
        fns["floor (copy)"] = _product(xg, y, grad)
        for name, m in built.items():
            m.train()
            fns[name] = _forward_backward(m, xg, grad)
            if not name.startswith("timm:"):
                fns[f"{name} (reference)"] = _forward_backward(m, xg, grad, reference=True)
        for name, (m, reference) in compiled.items():
            fns[name] = _forward_backward(m, xg, grad, reference)
        times = time_interleaved(fns, rounds, warmup, device)
    table = paired_ratios(times, base="floor")
    speedup = {name: paired_ratios({name: times[name], "ref": times[f"{name} (reference)"]}, base="ref")["ratio"][0]
               for name in built if f"{name} (reference)" in times}
    table["vs_reference"] = table["model"].map(speedup)
    table.insert(0, "shape", "x".join(map(str, shape)))
    table.insert(1, "mbytes", x.numel() * x.element_size() / 1e6)
    table.insert(2, "format", fmt)
    table.insert(3, "pass", pass_)
    return table


_COLD_PROBE = """
import json, time, torch
torch.set_num_threads({threads})
from sca_lib.attention import create_attention
from sca_lib.gating import reference_gating
shape, which = {shape!r}, {which!r}
x = torch.randn(shape)
m = create_attention("dual", shape[1]).eval()
def call():
    if which == "floor":
        return x.clone(), x.sum()
    with reference_gating(which == "dual (reference)"):
        return m(x)
times = []
with torch.inference_mode():
    for _ in range(30):
        t = time.perf_counter(); call(); times.append((time.perf_counter() - t) * 1000)
print(json.dumps(times))
"""


def breakdown(shape, fmt: str, rounds: int, warmup: int, device: str, fused_: bool = False) -> pd.DataFrame:
    """Where the dual module's forward time goes: each step of its fast path timed alone, paired with
    the floor, the whole module and a bare read pass (``x.sum()``) in the same rounds."""
    from sca_lib.gating import channel_mlp, gate_product, project_channels, spatial_mean

    torch.manual_seed(0)
    x = torch.randn(shape, device=device).contiguous(memory_format=FORMATS[fmt])
    m = create_attention("dual", shape[1]).to(device).eval()
    ch, sp = m.channel, m.spatial
    with torch.inference_mode():
        pooled, c, s = spatial_mean(x), ch.weights(x), sp.weights(x)
    fns: Dict[str, Callable[[], object]] = {
        "floor": _floor(x), "floor (copy)": _floor(x), "read pass (x.sum)": lambda: x.sum(),
        "dual (whole module)": _forward(m, x),
        "1. pool (spatial_mean)": lambda: spatial_mean(x),
        "2. channel MLP + sigmoid": lambda: ch.gate(channel_mlp(pooled, ch.fc1, ch.act, ch.fc2)),
        "3. projection (project_channels)": lambda: project_channels(x, sp.conv),
        "4. spatial sigmoid": lambda: sp.gate(s),
        "5. product (gate_product)": lambda: gate_product(x, c, s),
    }
    if fused_:
        fns["dual (fused)"] = _forward_fused(m, x)
        fns["1+3. pool + projection (fused)"] = lambda: fused.pool_project(x, sp.conv)
        fns["5. product (fused)"] = lambda: fused.gate(x, c, s)
        # what separates the steps from the module: the kernels back to back, the whole C++ call,
        # and the module's Python around it
        fns["1+3, 5 (fused kernels back to back)"] = lambda: (fused.pool_project(x, sp.conv), fused.gate(x, c, s))
        fns["fused.dual_forward (one C++ call)"] = lambda: fused.dual_forward(x, m)
        fns["module.forward (fused, no __call__)"] = _forward_fused(m, x, call=False)
    with torch.inference_mode():
        times = time_interleaved(fns, rounds, warmup, device)
    table = paired_ratios(times, base="floor")
    table.insert(0, "shape", "x".join(map(str, shape)))
    table.insert(1, "mbytes", x.numel() * x.element_size() / 1e6)
    table.insert(2, "format", fmt)
    return table


def breakdown_markdown(table: pd.DataFrame) -> str:
    lines = []
    for (shape, fmt), block in table.groupby(["shape", "format"], sort=False):
        lines += [f"\n#### {shape} ({block['mbytes'].iloc[0]:.1f} MB), {'CF' if fmt == 'channels_first' else 'CL'}\n",
                  "| step | median ms | / floor [min, max] |", "|---|---:|---:|"]
        lines += [f"| {r['model']} | {r['median_ms']:.3f} | {_fmt(r)} |" for _, r in block.iterrows()]
    return "\n".join(lines) + "\n"


def _probe(shape, which: str, threads: int, retain: bool) -> List[float]:
    """The times of 30 forwards in a fresh process, glibc's defaults or :data:`RETAIN`."""
    code = _COLD_PROBE.format(threads=threads, shape=tuple(shape), which=which)
    env = {k: v for k, v in os.environ.items() if k not in RETAIN}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, **RETAIN} if retain else env)
    import json
    return json.loads(out.stdout.strip().splitlines()[-1])


def cold_forward(shapes, processes: int, threads: int) -> pd.DataFrame:
    """Forwards in a fresh process against warm ones, ``processes`` pairs of fresh processes.

    ``cold``: the median of the first 10 forwards of a fresh process with glibc's default settings
    (what a script or a notebook sees); ``first``: the first of them alone (one-time costs every
    operation pays, the floor's included); ``warm``: the median of forwards 21-30 of a fresh
    process whose allocator keeps freed memory (:data:`RETAIN`).
    """
    rows = []
    for shape in shapes:
        for which in ("floor", "dual", "dual (reference)"):
            first, cold, warm = [], [], []
            for _ in range(processes):
                cold_t = _probe(shape, which, threads, retain=False)
                warm_t = _probe(shape, which, threads, retain=True)
                first.append(cold_t[0])
                cold.append(statistics.median(cold_t[:10]))
                warm.append(statistics.median(warm_t[20:]))
            ratios = [c / w for c, w in zip(cold, warm)]
            rows.append({"shape": "x".join(map(str, shape)), "model": which, "first_ms": statistics.median(first),
                         "cold_ms": statistics.median(cold), "warm_ms": statistics.median(warm),
                         "cold_over_warm": statistics.median(ratios), "ratio_min": min(ratios),
                         "ratio_max": max(ratios), "processes": processes})
    return pd.DataFrame(rows)


def _fmt(r) -> str:
    return f"{r['ratio']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}]"


def markdown(table: pd.DataFrame) -> str:
    """One table per pass: a row per module, a column per (shape, format), ratio [min, max] to the floor."""
    out = []
    for pass_, t in table.groupby("pass", sort=False):
        cols = list(dict.fromkeys(zip(t["shape"], t["format"])))
        floor = "clone + one read pass" if pass_ == "forward" else "x * y forward and backward"
        out.append(f"### {pass_}: time / floor ({floor}), median [min, max] over paired rounds\n")
        out.append("| module | " + " | ".join(f"{s} {'CF' if f == 'channels_first' else 'CL'}" for s, f in cols) + " |")
        out.append("|---|" + "---:|" * len(cols))
        floor_ms = {c: t[(t["shape"] == c[0]) & (t["format"] == c[1]) & (t["model"] == "floor")].iloc[0]["median_ms"]
                    for c in cols}
        out.append("| floor (ms) | " + " | ".join(f"{floor_ms[c]:.3f}" for c in cols) + " |")
        for model in dict.fromkeys(t["model"]):
            if model == "floor":
                continue
            cells = []
            for s, f in cols:
                r = t[(t["shape"] == s) & (t["format"] == f) & (t["model"] == model)]
                cells.append(_fmt(r.iloc[0]) if len(r) else "")
            out.append(f"| `{model}` | " + " | ".join(cells) + " |")
        out.append("")
        fast = t.dropna(subset=["vs_reference"])
        if len(fast):
            out.append(f"Fast path / reference form ({pass_}, median of paired rounds): " + ", ".join(
                f"`{m}` {g['vs_reference'].min():.2f}-{g['vs_reference'].max():.2f}"
                for m, g in fast.groupby("model", sort=False)) + ".\n")
    return "\n".join(out)


def _allocator() -> str:
    """``"retain"`` when this process runs with :data:`RETAIN` (``--allocator retain``, or the variables set
    by hand), else ``"default"``: what the tables and file names say."""
    return "retain" if all(os.environ.get(k) == v for k, v in RETAIN.items()) else "default"


def _provenance(args, wall: float) -> str:
    allocator = "retain (" + ", ".join(f"{k}={v}" for k, v in RETAIN.items()) + ")" if _allocator() == "retain" \
        else "glibc defaults"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({platform.machine()})"
    return (f"{wall:.0f} s, torch {torch.__version__}, {device}, {torch.get_num_threads()} intra-op thread(s), "
            f"allocator: {allocator}, {args.rounds} paired rounds after {args.warmup} warm-up calls each")


def _write(args, argv, kind: str, table: pd.DataFrame, title: str, provenance: str, body: str) -> str:
    """``table`` as ``<stem>.csv`` and ``title`` + the command + ``body`` as ``<stem>.md`` under ``--out``;
    the stem names the device, the allocator, ``kind`` and ``--fused``. Returns the stem."""
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"modules_{'cuda' if args.device.startswith('cuda') else 'cpu'}_{_allocator()}{kind}"
    stem += "_fused" if args.fused else ""
    table.to_csv(args.out / f"{stem}.csv", index=False)
    cmd = "python benchmarks/bench_modules.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / f"{stem}.md").write_text(
        f"# {title}\n\nRegenerate: `{cmd}`. Measured: {provenance}; on the development machine, a shared 2-core "
        "x86_64 VM with no GPU unless the device says otherwise.\n\n" + body)
    return stem


def _breakdown_main(args, shapes, start: float, argv) -> int:
    blocks = []
    for shape in shapes:
        for fmt in args.formats:
            blocks.append(breakdown(shape, fmt, args.rounds, args.warmup, args.device, args.fused))
            print(f"  breakdown {'x'.join(map(str, shape)):14s} {fmt}", file=sys.stderr, flush=True)
    table = pd.concat(blocks, ignore_index=True)
    provenance = _provenance(args, time.perf_counter() - start)
    text = breakdown_markdown(table)
    print(text)
    print(f"[{provenance}]")
    if args.out:
        _write(args, argv, "_breakdown", table, "Where the dual module's forward time goes", provenance,
               "Each step of the fast path (`sca_lib.gating`) timed alone, in the same paired rounds as the floor "
               "(`x.clone()` + `x.sum()`), a bare read pass and the whole module; ratios to the floor, median "
               "[min, max]. The steps sum to about the whole module; a step near the read pass costs one read of "
               "`x`, the product one read and one write.\n" + text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="*", default=["x".join(map(str, s)) for s in SHAPES],
                        help="NxCxHxW feature-map shapes")
    parser.add_argument("--modules", nargs="*", default=list(MODULES))
    parser.add_argument("--formats", nargs="*", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--passes", nargs="*", default=["forward", "forward+backward"],
                        choices=["forward", "forward+backward"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: stable on a shared host; 0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timed with CUDA events)")
    parser.add_argument("--allocator", choices=["default", "retain"], default="default",
                        help="retain: rerun with glibc settings that keep freed memory in the process")
    parser.add_argument("--cold", action="store_true", help="also time the first forward in fresh processes")
    parser.add_argument("--cold-processes", type=int, default=5)
    parser.add_argument("--no-timm", action="store_true", help="skip timm's modules")
    parser.add_argument("--compile", action="store_true",
                        help="also torch.compile each module (fast path and reference form; compiled in the warm-up)")
    parser.add_argument("--fused", action="store_true",
                        help="also time the dual and lite modules with sca_lib.fused's opt-in C++ kernels (forward, CPU)")
    parser.add_argument("--inplace", action="store_true",
                        help="also time the dual and lite modules with inplace=True (forward; with --fused also fused)")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead: time each step of the dual module's forward against the floor")
    parser.add_argument("--out", type=Path, default=None, help="write modules_<device>_<allocator>.{csv,md} here")
    args = parser.parse_args(argv)
    if args.allocator == "retain" and any(os.environ.get(k) != v for k, v in RETAIN.items()):
        # glibc reads these at start: rerun this script, with the same interpreter flags, in a fresh process
        cmd = [sys.executable, *sys.orig_argv[1:]] if argv is None else [sys.executable, __file__, *argv]
        os.execve(sys.executable, cmd, {**os.environ, **RETAIN})
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
        if any(len(s) != 4 for s in shapes):
            raise ValueError
    except ValueError:
        parser.error(f"--shapes takes NxCxHxW, e.g. 8x64x56x56; got {args.shapes}")
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown modules {unknown}; choose from {', '.join(MODULES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fused:
        if args.device != "cpu":
            parser.error("--fused: the fused kernels are CPU kernels; drop --device or --fused")
        if not fused.use_fused_kernels(True):
            parser.error("--fused: the kernels could not be built here (see the warning above)")
        fused.use_fused_kernels(False)  # on for the (fused) rows' calls only
    start = time.perf_counter()
    if args.breakdown:
        return _breakdown_main(args, shapes, start, argv)
    blocks: List[pd.DataFrame] = []
    for shape in shapes:
        for fmt in args.formats:
            for pass_ in args.passes:
                blocks.append(measure(shape, fmt, pass_, args.modules, args.rounds, args.warmup, args.device,
                                      with_timm=not args.no_timm, compile_=args.compile, fused_=args.fused,
                                      inplace=args.inplace))
                print(f"  {pass_:16s} {'x'.join(map(str, shape)):14s} {fmt}", file=sys.stderr, flush=True)
    table = pd.concat(blocks, ignore_index=True)
    cold = cold_forward(shapes, args.cold_processes, args.threads) if args.cold and args.device == "cpu" else None
    wall = time.perf_counter() - start
    text = markdown(table)
    if cold is not None:
        text += ("\n### Cold forward: the first 10 forwards of a fresh process (glibc defaults, median) / warm "
                 "forwards (21-30 of a fresh process with the retain settings, median); median [min, max] over "
                 f"{args.cold_processes} pairs of processes. `first`: the very first forward alone.\n\n"
                 "| shape | module | first ms | cold ms | warm ms | cold / warm |\n"
                 "|---|---|---:|---:|---:|---:|\n" + "\n".join(
                     f"| {r['shape']} | `{r['model']}` | {r['first_ms']:.2f} | {r['cold_ms']:.3f} | {r['warm_ms']:.3f} | "
                     f"{r['cold_over_warm']:.2f} [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] |"
                     for _, r in cold.iterrows()) + "\n")
    provenance = _provenance(args, wall)
    print(text)
    print(f"[{provenance}]")
    if args.out:
        stem = _write(args, argv, "_compiled" if args.compile else "", table,
                      "Each attention module against the memory floor", provenance,
                      "Ratios are paired round by round (every function once per round, in orders that time each right after every "
                      "other one equally often: `sca_lib.profile.round_orders`) "
                      "and the table gives the median with [min, max]; `floor (copy)` is the floor timed a second "
                      "time, the spread any row must exceed to mean something. `(reference)` rows are the same "
                      "module computing its reference form (`sca_lib.gating.reference_gating`); `timm:` rows are "
                      "timm's modules at the same widths; `(fused)` rows use the opt-in C++ kernels of "
                      "`sca_lib.fused` (`--fused`); `(in place)` rows are modules built with `inplace=True` "
                      "(`--inplace`), which write the output into `x`: identity-start copies, whose gates are exactly "
                      "1, so `x` keeps its values from round to round (the script checks it). "
                      "CF: channels first, CL: channels last.\n\n" + text)
        if cold is not None:
            cold.to_csv(args.out / f"{stem}_cold.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
