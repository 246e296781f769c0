"""Calibrate the synthetic devkit's difficulty knob: the plain single-stage baseline at several values.

    OMP_NUM_THREADS=1 python benchmarks/calibrate_synthetic.py --confusers 0 2 4
    OMP_NUM_THREADS=1 python benchmarks/calibrate_synthetic.py --confusers 2 --probe --backbone resnet18

For each value of ``confusers`` (version 2's knob: phantom classes per image, see
``sca_lib.data.scenes``) it generates the cpu-size target devkit with that value and trains the
plain network (no attention) from the cpu stand-in with ``--schedule`` (default ``single``: the whole
network at the mode's single-stage learning rate; ``--probe``: a linear probe, the head alone on the
frozen stand-in). It prints one row per run: knob, val mAP, chance mAP (random scores: mean and
max over 200 draws), the image-blind prior's mAP and validation loss, the run's validation loss,
wall time and images/s, and appends each row as JSON to ``--out``.

Runs go one at a time under ``--data-root`` (default ``data/calibration``; the stand-in is cached
there and built on first use). The knob is set by replacing version 2's default for the run's
duration: the calibrated value belongs in ``sca_lib.data.synthetic.V2_DEFAULTS``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path
from typing import Dict, Iterator, List

import torch

from sca_lib.data import synthetic
from sca_lib.train import TrainConfig, train_classifier


@contextlib.contextmanager
def knob(confusers: int) -> Iterator[None]:
    """Version 2's target devkits get ``confusers`` per image while the block runs."""
    old = synthetic.V2_DEFAULTS["target"]["confusers"]
    synthetic.V2_DEFAULTS["target"]["confusers"] = int(confusers)
    try:
        yield
    finally:
        synthetic.V2_DEFAULTS["target"]["confusers"] = old


def _stages(epochs: int) -> tuple:
    """``epochs`` split into the three stage lengths (a single stage trains their sum)."""
    a = round(epochs * 4 / 14)
    b = (epochs - a) // 2
    return (a, b, epochs - a - b)


def run_one(args: argparse.Namespace, confusers: int, seed: int) -> Dict:
    over: Dict = dict(backbone=args.backbone, attention=None, image_size=args.image_size, seed=seed,
                      data_root=str(args.data_root), stage_epochs=_stages(args.epochs))
    if args.train_images:
        over["train_images"] = args.train_images
    if args.probe:
        over["schedule"] = [{"name": "probe", "epochs": args.epochs, "lr": args.probe_lr, "groups": ["head"]}]
    else:
        over["schedule"] = "single"
    cfg = TrainConfig.from_mode("cpu", **over)
    kind = "probe" if args.probe else "single"
    out_dir = Path(args.data_root) / "runs" / f"{args.backbone}-{args.image_size}px-c{confusers}-{kind}-s{seed}"
    t0 = time.perf_counter()
    with knob(confusers):
        s = train_classifier(cfg, out_dir, resume=False, progress=False)
    ref = s["reference"]
    return {
        "confusers": confusers, "schedule": kind, "backbone": args.backbone, "image_size": args.image_size,
        "epochs": args.epochs, "seed": seed, "mAP": s["mAP"], "top1": s["top1"], "val_loss": s["val_loss"],
        "chance_mAP": ref["chance_mAP"], "chance_mAP_max": ref["chance_mAP_max"], "prior_mAP": ref["prior_mAP"],
        "prior_val_loss": ref["prior_val_loss"], "wall_time_s": s["wall_time_s"],
        "session_time_s": time.perf_counter() - t0, "images_per_s": s["images_per_s"],
        "threads": torch.get_num_threads(), "weights": s.get("weights"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
    }


def _row(r: Dict) -> str:
    return (f"{r['confusers']:>9d} {r['schedule']:>7s} {r['backbone']:>19s} {r['seed']:>4d} {100 * r['mAP']:7.1f} "
            f"{100 * r['chance_mAP']:7.1f} {100 * r['chance_mAP_max']:6.1f} {100 * r['prior_mAP']:7.1f} "
            f"{r['val_loss']:8.2f} {r['prior_val_loss']:8.2f} {r['session_time_s']:7.0f} {r['images_per_s']:6.0f}")


HEADER = (f"{'confusers':>9s} {'sched':>7s} {'backbone':>19s} {'seed':>4s} {'mAP%':>7s} {'chance%':>7s} "
          f"{'max%':>6s} {'prior%':>7s} {'val_loss':>8s} {'prior_L':>8s} {'wall_s':>7s} {'img/s':>6s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--confusers", nargs="+", type=int, default=[0, 2, 4])
    ap.add_argument("--backbone", default="mobilenet_v3_small")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--train-images", type=int, default=None, help="use the first N training images")
    ap.add_argument("--probe", action="store_true", help="train the head alone on the frozen stand-in")
    ap.add_argument("--probe-lr", type=float, default=0.01)
    ap.add_argument("--data-root", type=Path, default=Path("data") / "calibration")
    ap.add_argument("--out", type=Path, default=None, help="append each row here as JSON")
    args = ap.parse_args()
    rows: List[Dict] = []
    print(HEADER, flush=True)
    for c in args.confusers:
        for seed in args.seeds:
            r = run_one(args, c, seed)
            rows.append(r)
            print(_row(r), flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
