"""Training throughput: the engine (sca_lib.engine.Trainer) against a bare loop, side by side.

    python benchmarks/bench_train.py                       # mobilenet_v3_small, cpu-mode data, 96 px
    python benchmarks/bench_train.py --backbone resnet18 --image-size 64 --images 256 --epochs 2

Both train the same model (whole network, SGD momentum 0.9, masked BCE) on the same in-memory data
for the same epochs. The bare loop is::

    for x, y, ignore in loader:
        loss = masked_bce_with_logits(model(x), y, ignore)
        opt.zero_grad(); loss.backward(); opt.step()

The engine adds what it always does: gradient clipping (C7) with per-step norm bookkeeping, the
divergence guard, a tqdm bar, per-step and per-epoch logs, and an atomic checkpoint after every
epoch. Evaluation is switched off on both sides (it is not training). Runs alternate
(bare, engine, bare, engine, ...) so that a busy machine slows both alike; the medians are compared.
Engine images/s counts the whole epoch, checkpoint and log writing included.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sca_lib.backbones import build_classifier
from sca_lib.groups import parameter_groups, set_trainable
from sca_lib.engine import Trainer
from sca_lib.losses import masked_bce_with_logits
from sca_lib.schedule import single_stage_schedule
from sca_lib.train import TrainConfig, build_datasets


def bare_loop(model, dataset, epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """images/s of the bare loop (whole network)."""
    set_trainable(model, ["attention", "head", "late", "early"])
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                          weight_decay=1e-4)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y, ignore in loader:
            loss = masked_bce_with_logits(model(x), y, ignore)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def engine(model, dataset, epochs: int, batch_size: int, lr: float, seed: int, out_dir: Path) -> float:
    """images/s of the engine (whole epochs: training, clipping, logs, checkpoint)."""
    trainer = Trainer(model, parameter_groups(model), single_stage_schedule(epochs, lr), dataset, None,
                      out_dir=out_dir, batch_size=batch_size, set_trainable=set_trainable, seed=seed,
                      progress=True)
    s = trainer.fit(resume=False)
    images = sum(r["train_images"] for r in s["history"])
    return images / s["wall_time_s"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="mobilenet_v3_small")
    ap.add_argument("--attention", default="dual")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--images", type=int, default=320, help="training images (cpu-mode synthetic devkit)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = ap.parse_args(argv)

    cfg = TrainConfig.from_mode("cpu", backbone=a.backbone, attention=a.attention, image_size=a.image_size,
                                  train_images=a.images, val_images=8, weights=None)
    train_set, _, classes = build_datasets(cfg, verbose=True)
    torch.manual_seed(0)
    start = build_classifier(a.backbone, attention=a.attention, num_classes=len(classes))
    bare, eng = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            bare.append(bare_loop(copy.deepcopy(start), train_set, a.epochs, a.batch_size, 0.001, r))
            eng.append(engine(copy.deepcopy(start), train_set, a.epochs, a.batch_size, 0.001, r,
                              Path(tmp) / f"run{r}"))
            print(f"repeat {r + 1}/{a.repeats}: bare {bare[-1]:.1f} images/s, engine {eng[-1]:.1f} images/s",
                  flush=True)
    b, e = statistics.median(bare), statistics.median(eng)
    result = {
        "backbone": a.backbone, "attention": a.attention, "image_size": a.image_size, "images": len(train_set),
        "batch_size": a.batch_size, "epochs": a.epochs, "repeats": a.repeats,
        "bare_images_per_s": b, "engine_images_per_s": e, "overhead": 1 - e / b,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(), "command": "python benchmarks/bench_train.py " + " ".join(argv or sys.argv[1:]),
    }
    print(f"{a.backbone}+{a.attention} @ {a.image_size} px, {len(train_set)} images x {a.epochs} epochs, "
          f"batch {a.batch_size}, {torch.get_num_threads()} threads: bare {b:.1f} images/s, engine {e:.1f} "
          f"images/s, engine overhead {100 * (1 - e / b):+.1f}% (median of {a.repeats})")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
