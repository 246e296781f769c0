"""What a CPU protocol can afford: training throughput and the map every placement sees, per image size.

    OMP_NUM_THREADS=1 python benchmarks/bench_protocol.py                  # both CPU backbones, 96-224 px
    python benchmarks/bench_protocol.py --sizes 112 128 --threads 1 2 --json out.json

For each backbone (``mobilenet_v3_small``, ``resnet18``) and image size it prints

- the spatial size of the feature map at every placement (``sca_lib.backbones.list_placements``;
  a placement group is left out, its members are listed), the default placement marked ``*``;
- training throughput of the plain network: images/s of forward + masked BCE + backward + SGD step
  over the whole network, batch 32, random inputs, at each ``--threads`` setting (median of
  ``--repeats`` timed steps after two warm-up steps).

Map sizes come from forward hooks on the plain model's blocks (a placement after, inside or
replacing the SE of a block sees that block's output resolution), so they do not depend on the
attention kind.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Dict, List, Tuple

import torch

from sca_lib.backbones import build_classifier, default_placement, list_placements
from sca_lib.losses import masked_bce_with_logits

BACKBONES = ("mobilenet_v3_small", "resnet18")


def _module_path(placement: str) -> str:
    """The block whose output resolution a placement sees."""
    for prefix in ("after_", "replace_se."):
        if placement.startswith(prefix):
            rest = placement[len(prefix):]
            return rest if prefix == "after_" else f"features.{rest}"
    return placement.removesuffix(".inside")


def map_sizes(backbone: str, image_size: int) -> Dict[str, Tuple[int, int]]:
    """Placement -> (h, w) of the feature map it sees at ``image_size`` px (groups left out)."""
    model = build_classifier(backbone, num_classes=20, weights=None).eval()
    names = [p for p in list_placements(backbone) if p not in ("replace_se", "detection")]
    modules = dict(model.named_modules())
    shapes: Dict[str, Tuple[int, int]] = {}
    hooks = []
    for p in names:
        path = _module_path(p)
        if path not in modules:
            raise KeyError(f"placement {p!r}: no module {path!r} in {backbone}")
        hooks.append(modules[path].register_forward_hook(
            lambda m, i, o, p=p: shapes.__setitem__(p, tuple(o.shape[-2:]))))
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    for h in hooks:
        h.remove()
    return shapes


def throughput(backbone: str, image_size: int, threads: int, batch: int = 32, repeats: int = 4) -> float:
    """Training images/s (whole plain network, SGD) at ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_classifier(backbone, num_classes=20, weights=None).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, image_size, image_size)
    y = (torch.rand(batch, 20) < 0.1).float()
    ign = torch.zeros(batch, 20, dtype=torch.bool)
    times: List[float] = []
    for step in range(repeats + 2):
        t0 = time.perf_counter()
        loss = masked_bce_with_logits(model(x), y, ign)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[96, 112, 128, 160, 224])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    out: Dict[str, Dict] = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"}
    for bb in args.backbones:
        default = default_placement(bb)
        sizes = {s: map_sizes(bb, s) for s in args.sizes}
        print(f"\n{bb}: feature-map size per placement (* = default)")
        print(f"{'placement':22s}" + "".join(f"{s:>9d}px" for s in args.sizes))
        for p in sizes[args.sizes[0]]:
            mark = "*" if p == default else " "
            print(f"{mark}{p:21s}" + "".join(f"{'%dx%d' % sizes[s][p]:>11s}" for s in args.sizes))
        out[bb] = {"default": default, "maps": {s: {p: list(v) for p, v in m.items()} for s, m in sizes.items()}}
        if args.no_throughput:
            continue
        print(f"{bb}: training images/s (batch 32, whole network)")
        ips: Dict[str, float] = {}
        for s in args.sizes:
            for t in args.threads:
                ips[f"{s}px/{t}t"] = v = throughput(bb, s, t, repeats=args.repeats)
                print(f"  {s:4d} px, {t} thread(s): {v:7.1f} images/s", flush=True)
        out[bb]["images_per_s"] = ips
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
