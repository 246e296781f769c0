"""What does attention cost each backbone? Ratios (with attention / without) measured side by side.

For every backbone, the plain model and the same model with the article's default attention (plus,
with ``--extra``, the other placements the notebooks discuss) are profiled in one run: parameters
and FLOPs are exact counts at ``--input-size`` (fvcore, one fused multiply-add = one FLOP, shown with
and without elementwise ops). Latency (``sca_lib.profile.paired_latency``): the models of one
backbone and a copy of the plain model are timed interleaved, round r running each once in an order
that changes round by round (``sca_lib.profile.round_orders``: each model right after every other one
equally often), after ``--warmup`` untimed calls each; every round's time is divided
by the plain model's time of the same round, and the table gives the median of those ratios with
[min, max] over ``--runs`` rounds. The copy (``plain (copy)``) should be 1: its spread is the
smallest effect the run resolves. One intra-op thread by default (on a shared host, more threads
make the spread, not the model, the measurement).

    python benchmarks/bench_backbones.py                                  # all backbones, 224x224, b1+b32
    python benchmarks/bench_backbones.py --backbones resnet18 --batch-sizes 1 --runs 5
    python benchmarks/bench_backbones.py --extra --batch-sizes 1 --csv results/costs/costs_224_cpu.csv   # committed

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

from sca_lib.backbones import build_classifier, list_backbones
from sca_lib.profile import add_paired_latency, add_ratios, cost_table

#: The article's C11 table (Pascal VOC2012 classification; its parameter counts are not 20-class).
ARTICLE_C11 = {
    ("vgg16", None): (138.0, 15.5), ("vgg16", "dual"): (139.0, 15.7),
    ("resnet50", None): (25.5, 4.1), ("resnet50", "dual"): (26.1, 4.3),
}

#: The lite module replacing MobileNetV3-L's SE blocks with ``inplace=True``: safe there, because each
#: block's depthwise output is read by its SE block alone.
IN_PLACE = "+lite replacing the 8 SE blocks, inplace=True"
#: (attention, placement, label) variants per backbone; the first is the default, the rest --extra.
VARIANTS = {
    "vgg16": [("dual", None, "+dual after conv5_3 (C3)"),
              ("channel", None, "+channel-only after conv5_3 (C15)")],
    "resnet50": [("dual", None, "+AttnResBlock replacing layer4.1 (C4)"),
                 ("dual", "layer4.1.inside", "+dual inside layer4.1 (SE position)"),
                 ("dual", "after_layer4", "+dual after layer4"),
                 ("dual", "detection", "+AttnResBlock x7, stages 3-4 (C4 detection)")],
    "resnet18": [("dual", None, "+AttnResBlock replacing layer4.1"),
                 ("dual", "layer4.1.inside", "+dual inside layer4.1")],
    "mobilenet_v3_large": [("lite", None, "+lite after features.16 (C5)"),
                           ("lite", "replace_se", "+lite replacing the 8 SE blocks"),
                           ("lite", "replace_se", IN_PLACE),
                           ("lite_channel", None, "+lite channel-only after features.16 (C15)")],
    "mobilenet_v3_small": [("lite", None, "+lite after features.12"),
                           ("lite", "replace_se", "+lite replacing the 9 SE blocks")],
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="*", default=list_backbones(), choices=list_backbones())
    parser.add_argument("--input-size", type=int, default=224, help="H = W of the input (default 224)")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--runs", type=int, default=21, help="paired rounds (each times every model once)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per model before the rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--extra", action="store_true", help="also the non-default placements")
    parser.add_argument("--no-latency", action="store_true", help="params and FLOPs only (seconds)")
    parser.add_argument("--csv", type=Path, default=None, help="write the table here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = (1, 3, args.input_size, args.input_size)
    tables = []
    start = time.perf_counter()
    for backbone in args.backbones:
        torch.manual_seed(0)
        variants = VARIANTS[backbone] if args.extra else VARIANTS[backbone][:1]
        models = {"plain": build_classifier(backbone, num_classes=args.num_classes)}
        for attention, placement, label in variants:
            kwargs = {"inplace": True} if label == IN_PLACE else {}
            models[label] = build_classifier(backbone, attention, placement=placement, num_classes=args.num_classes,
                                             **kwargs)
        t = cost_table(models, size, device=device, latency=False)
        t.insert(0, "backbone", backbone)
        t.insert(2, "attention", [None] + [v[0] for v in variants])
        t.insert(3, "placement", [None] + [str(list(m.sca_config["placement"])) for m in list(models.values())[1:]])
        add_ratios(t)  # to the plain model
        if not args.no_latency:
            t = add_paired_latency(t, models, (3, args.input_size, args.input_size), args.batch_sizes, device,
                                       args.warmup, args.runs)
        keys = [(backbone, None)] + [(backbone, v[0]) if v[1] is None else (None, None) for v in variants]
        keys += [(None, None)] * (len(t) - len(keys))
        t["article_params_M"] = [ARTICLE_C11.get(k, (None, None))[0] for k in keys]
        t["article_gflops"] = [ARTICLE_C11.get(k, (None, None))[1] for k in keys]
        tables.append(t)
        cols = ["model", "params_M", "gflops_fvcore", "gflops", "params_ratio", "flops_fvcore_ratio", "flops_ratio"]
        cols += [c for c in t.columns if c.startswith("latency_") and c != "latency_input_size"]
        cols = [c for c in cols if c in t.columns]
        print(f"\n== {backbone} ({args.num_classes} classes, {args.input_size}x{args.input_size}, {device}, "
              f"{torch.get_num_threads()} threads) ==", flush=True)
        print(t[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
        del models
    table = pd.concat(tables, ignore_index=True)
    print(f"\n{len(table)} rows in {time.perf_counter() - start:.0f} s on {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False, float_format="%.4f")
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
