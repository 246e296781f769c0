"""What does attention cost a Faster R-CNN? Inference latency with / without, measured side by side.

The article's C12 table gives inference times of 45 -> 48 ms (ResNet50, +SCA) and 28 -> 30 ms
(MobileNetV3, +Lite) without saying on what hardware, at what image size or batch. Absolute
milliseconds therefore cannot be compared; the ratio (with / without attention, about 1.07 in both
rows) can. For each trunk this script builds the plain detector and the attention variants, then
times them **interleaved** with a copy of the plain detector (round r runs every model once, in an
order that changes round by round so that each runs right after every other one equally often,
:func:`sca_lib.profile.paired_latency`), so a busy machine
slows all of them alike, and prints each median and the median of its per-round ratios to the plain
one with [min, max]; the copy's ratio should be 1, its spread is what the run resolves.

    python benchmarks/bench_detection.py                                  # both C12 trunks, 800 px, CPU
    python benchmarks/bench_detection.py --device cuda --runs 20          # on a GPU
    python benchmarks/bench_detection.py --backbones mobilenet_v3_large --image-size 320 --runs 3

Weights are random (nothing is downloaded). The trunk's cost does not depend on weight values, but
the number of boxes the RPN's NMS keeps and the box head scores does; with random weights it varies
from model to model and would swamp the ratio. So every detector here keeps every proposal
(``rpn_nms_thresh=1.0``, ``rpn_score_thresh=0``: ``rpn_post_nms_top_n_test`` = 1000 per image whatever
the scores) and every scored box (``box_score_thresh=0``): the heads do the same work in every variant, as with trained
weights on a busy image. Parameters come with each row (exact counts).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Dict, List, Tuple

import torch

from sca_lib.detection import build_detector, list_detector_backbones
from sca_lib.profile import count_parameters, paired_latency

#: The article's C12 rows: (plain ms, with attention ms).
ARTICLE_C12 = {"resnet50": (45.0, 48.0), "mobilenet_v3_large": (28.0, 30.0)}

#: (label, build_detector keywords) per trunk; the plain detector comes first.
VARIANTS: Dict[str, List[Tuple[str, dict]]] = {
    "resnet50": [("plain", {}),
                 ("+C4: AttnResBlock x7, stages 3-4", {"attention": "dual"}),
                 ("+C13: dual on every FPN level", {"fpn_attention": "dual"}),
                 ("+C4 +C13", {"attention": "dual", "fpn_attention": "dual"})],
    "mobilenet_v3_large": [("plain", {}),
                           ("+lite after features.16", {"attention": "lite"}),
                           ("+C13: lite on every FPN level", {"fpn_attention": "lite"})],
    "resnet18": [("plain", {}), ("+dual replacing layer3.1", {"attention": "dual", "placement": "layer3.1"}),
                 ("+C13: dual on every FPN level", {"fpn_attention": "dual"})],
    "mobilenet_v3_small": [("plain", {}), ("+lite after features.12", {"attention": "lite"}),
                           ("+C13: lite on every FPN level", {"fpn_attention": "lite"})],
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="*", default=list(ARTICLE_C12), choices=list_detector_backbones())
    parser.add_argument("--image-size", type=int, default=800, help="H = W of the input image (default 800)")
    parser.add_argument("--min-size", type=int, default=None, help="the detector's resize (default: --image-size)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--runs", type=int, default=7, help="paired rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model first")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = args.min_size or args.image_size
    start = time.perf_counter()
    print(f"Faster R-CNN inference, {args.image_size}x{args.image_size} input resized to {size}, batch "
          f"{args.batch_size}, {device}, {torch.get_num_threads()} threads, median [min, max] of {args.runs} paired rounds")
    for backbone in args.backbones:
        torch.manual_seed(0)
        same_work = {"rpn_nms_thresh": 1.0, "rpn_score_thresh": 0.0, "box_score_thresh": 0.0}
        models = {label: build_detector(backbone, min_size=size, max_size=max(size, 1333), detector_kwargs=same_work,
                                        **kw) for label, kw in VARIANTS[backbone]}
        t = paired_latency(models, (3, args.image_size, args.image_size), args.batch_size, device,
                           args.warmup, args.runs, control=True).set_index("model")
        print(f"\n== {backbone} ==")
        print(f"{'model':40s} {'params M':>9s} {'ms':>9s} {'ratio [min, max]':>22s}")
        for label, r in t.iterrows():
            m = models.get(label, models["plain"])
            print(f"{label:40s} {count_parameters(m)['total'] / 1e6:9.2f} {r['median_ms']:9.1f} "
                  f"{r['ratio']:7.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]")
        if backbone in ARTICLE_C12:
            a, b = ARTICLE_C12[backbone]
            print(f"{'article (C12), hardware unstated':40s} {'':>9s} {a:5.0f}->{b:.0f} {b / a:7.3f}")
        del models
    print(f"\n{time.perf_counter() - start:.0f} s on {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
