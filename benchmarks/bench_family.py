"""What does each member of the attention family cost? Side by side, at the article's placements.

For every backbone, the plain model and the same model with each family member at one placement
(the article's default placement; for MobileNetV3-Small the cpu study's placement at the cpu
study's 112 px) are profiled in one run: parameters and FLOPs are exact (fvcore, one fused
multiply-add = one FLOP, elementwise ops included, ``sca_lib.profile.cost_table``); latency
(``sca_lib.profile.add_paired_latency``): the models of one backbone and a copy of the plain model
timed interleaved in balanced orders (each right after every other one equally often) after ``--warmup`` untimed calls, each round's time divided
by the plain model's of the same round: the median ratio with [min, max] over ``--runs`` rounds.
The copy's row says what the run resolves.

    python benchmarks/bench_family.py --runs 21 --out results/family     # the committed table
    python benchmarks/bench_family.py --backbones mobilenet_v3_small --no-latency    # seconds

Nothing is downloaded: weights are random (cost does not depend on weight values).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from sca_lib.attention import DESCRIPTIONS
from sca_lib.backbones import build_classifier, default_placement
from sca_lib.profile import add_paired_latency, add_ratios, cost_table

#: The modules profiled, in the table's order: the article's module, its fusion rules, the family, the controls.
MODULES = ("dual", "dual_add", "dual_max", "dual_seq", "se", "scse", "cbam", "eca", "coord", "sca_cnn",
           "matched_params", "matched_flops")

#: (backbone, placement, input side): the article's placements at 224 px (on ResNet50 also inside
#: layer4.1, SE's position, where the row is the module's own cost), and the cpu study's placement
#: on MobileNetV3-Small at its 112 px.
SETUPS = (
    ("vgg16", None, 224),
    ("resnet50", None, 224),
    ("resnet50", "layer4.1.inside", 224),
    ("mobilenet_v3_large", None, 224),
    ("mobilenet_v3_small", "after_features.8", 112),
)
BACKBONES = tuple(dict.fromkeys(s[0] for s in SETUPS))


def family_costs(backbone: str, placement, size: int, modules=MODULES, latency: bool = True, runs: int = 21,
                 warmup: int = 3, device: str = "cpu") -> pd.DataFrame:
    """The plain model and one model per module at ``placement`` (None: the backbone's default) and
    ``size`` px, with ratios to the plain model."""
    torch.manual_seed(0)
    models = {"plain": build_classifier(backbone, num_classes=20)}
    for name in modules:
        models[name] = build_classifier(backbone, name, placement=placement, num_classes=20)
    table = add_ratios(cost_table(models, (1, 3, size, size), device=device, latency=False))
    if latency:
        table = add_paired_latency(table, models, (3, size, size), (1,), device, warmup, runs)
    table.insert(0, "backbone", backbone)
    table.insert(1, "placement", placement or default_placement(backbone))
    return table


def markdown(table: pd.DataFrame) -> str:
    """One block per backbone: module, what it is, parameters and MFLOPs it adds, ratios."""
    out = []
    for _, t in table.groupby(["backbone", "placement"], sort=False):
        backbone = t.iloc[0]["backbone"]
        base = t.iloc[0]
        out.append(f"### {backbone}, module at `{base['placement']}`, input {base['input_size']}\n")
        out.append(f"Plain model: {base['params_M']:.3f} M parameters, {base['gflops']:.3f} GFLOPs"
                   + (f", {base['latency_ms_b1']:.1f} ms (batch 1)" if "latency_ms_b1" in t else "") + ".\n")
        lat = "latency_ratio_b1" in t
        out.append("| module | what it is | + parameters | + MFLOPs | params x | FLOPs x |" + (" latency x [min, max] |" if lat else ""))
        out.append("|---|---|---:|---:|---:|---:|" + ("---:|" if lat else ""))
        for _, r in t.iloc[1:].iterrows():
            extra = (r["params_M"] - base["params_M"]) * 1e6
            mflops = (r["gflops"] - base["gflops"]) * 1e3
            what = DESCRIPTIONS.get(r["model"], "control: the plain model timed again (should be 1)")
            row = (f"| `{r['model']}` | {what} | {extra:,.0f} | {mflops:.3f} | "
                   f"{r['params_ratio']:.4f} | {r['flops_ratio']:.4f} |")
            out.append(row + (f" {r['latency_ratio_b1']:.3f} [{r['latency_ratio_min_b1']:.2f}, "
                              f"{r['latency_ratio_max_b1']:.2f}] |" if lat else ""))
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="*", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--runs", type=int, default=21, help="paired rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per model first")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-latency", action="store_true", help="params and FLOPs only (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="write costs.csv and costs.md here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    table = pd.concat([family_costs(b, placement, size, latency=not args.no_latency, runs=args.runs,
                                    warmup=args.warmup, device=args.device)
                       for b, placement, size in SETUPS if b in args.backbones], ignore_index=True)
    wall = time.perf_counter() - start
    text = markdown(table)
    print(text)
    print(f"[{wall:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}, "
          f"{args.device}]")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "costs.csv", index=False)
        cmd = "python benchmarks/bench_family.py " + " ".join(sys.argv[1:] if argv is None else argv)
        where = (f"Measured on {torch.cuda.get_device_name(args.device)} (CUDA events)." if args.device.startswith("cuda")
                 else "CPU only (shared machine); GPU latency: not measured yet (`--device cuda`).")
        (args.out / "costs.md").write_text(
            "# What each attention module costs, at the article's placements\n\n"
            f"Regenerate: `{cmd}` ({wall:.0f} s on {'a GPU machine' if args.device.startswith('cuda') else 'the development machine: a shared 2-core x86_64 VM, no GPU'}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)).\n\n"
            "Parameters and FLOPs are exact and machine-independent (fvcore, one fused multiply-add = one FLOP, "
            "activations, gates, pooling and elementwise products included), 20-class heads. Latency (batch 1): all "
            "models of a backbone and a copy of the plain model timed interleaved in balanced orders (each right after "
            "every other one equally often) after "
            f"{args.warmup} warm-up calls each; per round, each time over the plain model's; the median with [min, max] "
            f"over {args.runs} rounds; `plain (copy)` is the control. {where} On ResNet50 the article's placement replaces `layer4.1` with an "
            "attention residual block (the module plus a 3x3 conv), so every row there carries that conv's 37.7 M "
            "parameters; the `layer4.1.inside` block shows the modules' own cost at the same depth.\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
