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
epoch. Evaluation is switched off on both sides (it is not training). Each round runs the bare
loop, the engine and the bare loop again as a control (``bare (copy)``, whose ratio should be 1:
its spread is the smallest overhead the run resolves), in an order that changes round by round so that
each is run right after each other one equally often (``sca_lib.profile.round_orders``);
``--warmup`` rounds run first and are not counted (the allocator, the data's first pass). The
result is the median of the per-round ratios with [min, max]. Engine images/s counts the whole
epoch, checkpoint and log writing included. One intra-op thread by default (``--threads``).
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
from sca_lib.profile import round_orders
from sca_lib.engine import Trainer
from sca_lib.losses import masked_bce_with_logits
from sca_lib.schedule import single_stage_schedule
from sca_lib.train import TrainConfig, build_datasets


def bare_loop(model, dataset, epochs: int, batch_size: int, lr: float, seed: int, device: str = "cpu") -> float:
    """images/s of the bare loop (whole network). On CUDA it does what the engine does there: fp16
    autocast with a gradient scaler, channels_last model and inputs, pinned memory, synchronised
    before the clock stops."""
    cuda = torch.device(device).type == "cuda"
    set_trainable(model, ["attention", "head", "late", "early"])
    model.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                          weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, pin_memory=cuda,
                        generator=torch.Generator().manual_seed(seed))
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y, ignore in loader:
            x, y, ignore = (v.to(device, non_blocking=True) for v in (x, y, ignore))
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                loss = masked_bce_with_logits(model(x), y, ignore)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            n += x.shape[0]
    if cuda:
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0)


def engine(model, dataset, epochs: int, batch_size: int, lr: float, seed: int, out_dir: Path,
           device: str = "cpu") -> float:
    """images/s of the engine (whole epochs: training, clipping, logs, checkpoint)."""
    trainer = Trainer(model, parameter_groups(model), single_stage_schedule(epochs, lr), dataset, None,
                      out_dir=out_dir, batch_size=batch_size, set_trainable=set_trainable, seed=seed,
                      progress=True, device=device)
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
    ap.add_argument("--repeats", type=int, default=5, help="counted rounds")
    ap.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (then fp16 autocast and channels_last on both sides)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = ap.parse_args(argv)

    if a.repeats < 1 or a.warmup < 0:
        ap.error(f"need --repeats >= 1 and --warmup >= 0, got {a.repeats} and {a.warmup}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = TrainConfig.from_mode("cpu", backbone=a.backbone, attention=a.attention, image_size=a.image_size,
                                  train_images=a.images, val_images=8, weights=None)
    train_set, _, classes = build_datasets(cfg, verbose=True)
    torch.manual_seed(0)
    start = build_classifier(a.backbone, attention=a.attention, num_classes=len(classes))
    rates = {"bare": [], "engine": [], "bare (copy)": []}
    with tempfile.TemporaryDirectory() as tmp:
        def bare(r):
            return bare_loop(copy.deepcopy(start), train_set, a.epochs, a.batch_size, 0.001, r, a.device)

        runs = {"bare": bare,
                "engine": lambda r: engine(copy.deepcopy(start), train_set, a.epochs, a.batch_size, 0.001, r,
                                           Path(tmp) / f"run{r}", a.device),
                "bare (copy)": bare}
        names = list(runs)
        for r, order in enumerate(round_orders(len(runs), a.warmup + a.repeats)):
            got = {names[i]: runs[names[i]](r) for i in order}
            label = f"warm-up {r + 1}/{a.warmup}" if r < a.warmup else f"round {r - a.warmup + 1}/{a.repeats}"
            print(f"{label}: " + ", ".join(f"{k} {v:.1f} images/s" for k, v in got.items()), flush=True)
            if r >= a.warmup:
                for k, v in got.items():
                    rates[k].append(v)
    # overhead per round: the engine's time per image over the bare loop's, minus 1
    over = [b / e - 1 for b, e in zip(rates["bare"], rates["engine"])]
    control = [b / c - 1 for b, c in zip(rates["bare"], rates["bare (copy)"])]
    b, e = statistics.median(rates["bare"]), statistics.median(rates["engine"])
    result = {
        "backbone": a.backbone, "attention": a.attention, "image_size": a.image_size, "images": len(train_set),
        "batch_size": a.batch_size, "epochs": a.epochs, "repeats": a.repeats, "warmup": a.warmup,
        "bare_images_per_s": b, "engine_images_per_s": e,
        # time per image of the engine over the bare loop's, minus 1 (positive: the engine is slower)
        "time_overhead": statistics.median(over), "time_overhead_min": min(over), "time_overhead_max": max(over),
        "control": statistics.median(control), "control_min": min(control), "control_max": max(control),
        "device": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(), "command": "python benchmarks/bench_train.py " + " ".join(argv or sys.argv[1:]),
    }
    print(f"{a.backbone}+{a.attention} @ {a.image_size} px, {len(train_set)} images x {a.epochs} epochs, "
          f"batch {a.batch_size}, {torch.get_num_threads()} threads: bare {b:.1f} images/s, engine {e:.1f} "
          f"images/s; engine time per image over the bare loop's: {100 * result['time_overhead']:+.1f}% "
          f"[{100 * min(over):+.1f}, {100 * max(over):+.1f}]; control (bare vs bare): "
          f"{100 * result['control']:+.1f}% [{100 * min(control):+.1f}, {100 * max(control):+.1f}] "
          f"(median [min, max] of {a.repeats} rounds after {a.warmup} warm-up)")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
