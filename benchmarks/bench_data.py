"""Is data loading a bottleneck? Data-loader throughput, and how hard the synthetic devkit is.

Two measurements:

``throughput`` (the default measurement): images per second through a ``DataLoader`` for the classification and
the detection dataset, with 0 and 2 worker processes, printed side by side, plus the synthetic
generator's own speed. Each cell is the median of ``--repeats`` full passes after one warm-up pass,
with their [min, max], so it measures decoding + transforms + collation, not the page cache filling up.

    python benchmarks/bench_data.py                         # synthetic target-cpu devkit, 96 px
    python benchmarks/bench_data.py --mode fast --repeats 1
    python benchmarks/bench_data.py --root data --size 224  # real VOC2012 (val split)

``baseline``: the "not trivially saturated" check of the synthetic devkit. A plain torchvision
classifier (``weights=None``: random init, nothing downloaded) is trained from scratch on the
train split with masked BCE (difficult-only labels ignored) and its val mAP is printed after every
epoch. It should land well below 100%.

    python benchmarks/bench_data.py baseline --arch resnet18 --epochs 15 --size 96

The mAP here is the plain mean of scikit-learn's per-class average precision over the non-ignored
images (classes without a positive are skipped); ``sca_lib.metrics`` has the devkit's exact AP.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from sca_lib.data import (
    VOCClassification,
    VOCDetection,
    classification_transforms,
    detection_collate,
    detection_transforms,
    ensure_synthetic,
    generate_synthetic_voc,
    make_config,
)


def _root(args) -> Path:
    if args.root is not None:
        return Path(args.root)
    return ensure_synthetic("target", args.mode, verbose=True)


def _rate(loader: DataLoader, repeats: int) -> Tuple[float, float, float]:
    """Images per second over ``repeats`` passes after a warm-up pass: (median, min, max)."""
    for _ in loader:  # warm-up: worker start-up, page cache
        pass
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for batch in loader:
            n += len(batch[0])
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), min(rates), max(rates)


def throughput(args) -> int:
    root = _root(args)
    split = args.split
    cls = VOCClassification(root, split=split, transform=classification_transforms(args.size, train=True, normalize=True))
    det = VOCDetection(root, split=split, transforms=detection_transforms(args.size, train=True))
    print(f"data: {cls!r}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, intra-op threads {torch.get_num_threads()}; batch {args.batch_size}, "
          f"{args.size} px, median [min, max] of {args.repeats} pass(es)")
    rows = []
    for name, ds, collate in (("classification", cls, None), ("detection", det, detection_collate)):
        rates = []
        for workers in args.workers:
            loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=workers,
                                collate_fn=collate, persistent_workers=workers > 0)
            rates.append(_rate(loader, args.repeats))
        rows.append((name, rates))
    head = "".join(f"{f'{w} workers':>24}" for w in args.workers)
    print(f"\n{'images/s':<16}{head}")
    for name, rates in rows:
        print(f"{name:<16}" + "".join(f"{f'{med:.0f} [{lo:.0f}, {hi:.0f}]':>24}" for med, lo, hi in rates))
    # the generator itself
    cfg = make_config("target", "fast", n_train=args.gen_images, n_val=0)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_synthetic_voc(tmp, cfg)
        dt = time.perf_counter() - t0
    print(f"{'generation':<16}{args.gen_images / dt:>14.0f}   (synthetic target devkit, written to disk, 1 process)")
    return 0


def _cached(root: Path, split: str, size: int):
    ds = VOCClassification(root, split=split, transform=classification_transforms(size, normalize=True))
    xs, ys, igs = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.stack(ys), torch.stack(igs)


def _map(scores: torch.Tensor, y: torch.Tensor, ignore: torch.Tensor) -> float:
    from sklearn.metrics import average_precision_score

    aps = []
    for c in range(y.shape[1]):
        keep = ~ignore[:, c]
        if y[keep, c].sum() > 0:
            aps.append(average_precision_score(y[keep, c].numpy(), scores[keep, c].numpy()))
    return 100.0 * float(np.mean(aps))


def baseline(args) -> int:
    import torchvision

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = _root(args)
    t0 = time.perf_counter()
    xtr, ytr, itr = _cached(root, "train", args.size)
    xva, yva, iva = _cached(root, "val", args.size)
    print(f"{root}: {len(xtr)} train / {len(xva)} val images at {args.size} px "
          f"(decoded in {time.perf_counter() - t0:.1f} s); {args.arch}, weights=None, {args.epochs} epochs")
    model = getattr(torchvision.models, args.arch)(weights=None, num_classes=ytr.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    bs = args.batch_size
    steps = args.epochs * ((len(xtr) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        total = 0.0
        for i in range(0, len(xtr), bs):
            idx = perm[i:i + bs]
            x, y, ign = xtr[idx], ytr[idx], itr[idx]
            flip = torch.rand(len(x)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y, reduction="none")
            loss = (loss * ~ign).sum() / (~ign).sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(x)
        model.eval()
        with torch.no_grad():
            scores = torch.cat([model(xva[i:i + 256]) for i in range(0, len(xva), 256)])
        print(f"epoch {epoch + 1:>3}: train loss {total / len(xtr):.3f}, val mAP {_map(scores, yva, iva):5.1f}% "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    with torch.no_grad():
        model.eval()
        scores = torch.cat([model(xtr[i:i + 256]) for i in range(0, len(xtr), 256)])
    print(f"train mAP {_map(scores, ytr, itr):.1f}% (how far the model fits what it saw)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("measurement", nargs="?", choices=("throughput", "baseline"), default="throughput")
    parser.add_argument("--root", default=None, help="dataset root (holds VOCdevkit/); default: the synthetic devkit")
    parser.add_argument("--mode", default="cpu", type=str.lower, choices=("fast", "cpu"),
                        help="run mode whose synthetic devkit to read when --root is not given")
    parser.add_argument("--split", default="val")
    parser.add_argument("--size", type=int, default=96, help="image side after resizing (px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gen-images", type=int, default=200, help="images to generate for the generator's speed")
    parser.add_argument("--arch", default="resnet18", help="baseline: a torchvision.models builder name")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="baseline: torch intra-op threads (0: default)")
    args = parser.parse_args(argv)
    return throughput(args) if args.measurement == "throughput" else baseline(args)


if __name__ == "__main__":
    sys.exit(main())
