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
import functools
import json
import platform
import time
from pathlib import Path
from typing import Dict, Iterator, List

import torch

from sca_lib import train as train_module
from sca_lib.data import synthetic
from sca_lib.train import TrainConfig, train_classifier


@contextlib.contextmanager
def knob(confusers: int, **settings) -> Iterator[None]:
    """Version 2's target devkits get ``confusers`` per image (and ``settings``) while the block runs."""
    defaults, sizes = synthetic.V2_DEFAULTS["target"], synthetic.V2_SIZES["target"]["cpu"]
    old, old_sizes = dict(defaults), dict(sizes)
    sizes.update({k: settings.pop(k) for k in ("n_train", "n_val") if k in settings})
    defaults.update(settings, confusers=int(confusers))
    try:
        yield
    finally:
        defaults.clear()
        defaults.update(old)
        sizes.clear()
        sizes.update(old_sizes)


def _stages(epochs: int) -> tuple:
    """``epochs`` split into three stage lengths like the cpu mode's (3, 4, 3) (a single stage trains their sum)."""
    a, b = round(epochs * 0.3), round(epochs * 0.4)
    return (a, b, epochs - a - b)


def run_one(args: argparse.Namespace, confusers: int, seed: int) -> Dict:
    over: Dict = dict(backbone=args.backbone, attention=None, image_size=args.image_size, seed=seed,
                      data_root=str(args.data_root), stage_epochs=_stages(args.epochs))
    if args.train_images:
        over["train_images"] = args.train_images
    if args.lr is not None:
        over["single_lr"] = args.lr
    if args.no_clip:
        over["max_grad_norm"] = None
    if args.loss_reduction:
        over["loss_reduction"] = args.loss_reduction
    if args.bn_policy:
        over["bn_policy"] = args.bn_policy
    if args.probe:
        over["schedule"] = [{"name": "probe", "epochs": args.epochs, "lr": args.probe_lr, "groups": ["head"]}]
    else:
        over["schedule"] = "single"
    cfg = TrainConfig.from_mode("cpu", data_version=2, **over)
    kind = "probe" if args.probe else "single"
    settings = {"object_scale": tuple(args.object_scale)} if args.object_scale else {}
    if args.n_train:
        settings["n_train"] = args.n_train
    scale = "-o{:g}-{:g}".format(*args.object_scale) if args.object_scale else ""
    scale += (f"-lr{args.lr:g}" if args.lr is not None else "") + ("-noclip" if args.no_clip else "")
    scale += f"-{args.loss_reduction}" if args.loss_reduction else ""
    scale += f"-bn{args.bn_policy}" if args.bn_policy else ""
    scale += f"-{args.optimizer}" if args.optimizer != "sgd" else ""
    scale += f"-n{args.n_train}" if args.n_train else ""
    out_dir = Path(args.data_root) / "runs" / f"{args.backbone}-{args.image_size}px-c{confusers}{scale}-{kind}-s{seed}"
    t0 = time.perf_counter()
    trainer = train_module.Trainer
    if args.optimizer != "sgd":  # TrainConfig has no optimizer field (yet): the engine's is swapped in
        train_module.Trainer = functools.partial(trainer, optimizer=args.optimizer)
    try:
        with knob(confusers, **settings):
            s = train_classifier(cfg, out_dir, resume=False, progress=False)
    finally:
        train_module.Trainer = trainer
    ref = s["reference"]
    cfgd = s["config"]
    return {
        "confusers": confusers, "object_scale": list(synthetic.make_config("target", "cpu", version=2, **settings).object_scale),
        "n_train": args.n_train or synthetic.V2_SIZES["target"]["cpu"]["n_train"],
        "train_images": cfgd.get("train_images"),
        "schedule": kind, "lr": cfgd["single_lr"], "optimizer": args.optimizer, "max_grad_norm": cfgd["max_grad_norm"],
        "clip_fraction": s.get("clip_fraction"), "loss_reduction": cfgd["loss_reduction"],
        "mAP_before_bn": s.get("mAP_before_bn"), "backbone": args.backbone, "image_size": args.image_size,
        "epochs": args.epochs, "seed": seed, "mAP": s["mAP"], "top1": s["top1"], "val_loss": s["val_loss"],
        "chance_mAP": ref["chance_mAP"], "chance_mAP_max": ref["chance_mAP_max"], "prior_mAP": ref["prior_mAP"],
        "prior_val_loss": ref["prior_val_loss"], "wall_time_s": s["wall_time_s"],
        "session_time_s": time.perf_counter() - t0, "images_per_s": s["images_per_s"],
        "threads": torch.get_num_threads(), "weights": s.get("weights"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
    }


def _row(r: Dict) -> str:
    return (f"{r['confusers']:>9d} {'%g-%g' % tuple(r['object_scale']):>9s} {r['schedule']:>7s} "
            f"{r['backbone']:>19s} {r['seed']:>4d} {100 * r['mAP']:7.1f} "
            f"{100 * r['chance_mAP']:7.1f} {100 * r['chance_mAP_max']:6.1f} {100 * r['prior_mAP']:7.1f} "
            f"{r['val_loss']:8.2f} {r['prior_val_loss']:8.2f} {r['session_time_s']:7.0f} {r['images_per_s']:6.0f}")


HEADER = (f"{'confusers':>9s} {'obj_scale':>9s} {'sched':>7s} {'backbone':>19s} {'seed':>4s} {'mAP%':>7s} "
          f"{'chance%':>7s} "
          f"{'max%':>6s} {'prior%':>7s} {'val_loss':>8s} {'prior_L':>8s} {'wall_s':>7s} {'img/s':>6s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--confusers", nargs="+", type=int, default=[0, 2, 4])
    ap.add_argument("--backbone", default="mobilenet_v3_small")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=10, help="default 10, the cpu mode's (3 + 4 + 3)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--n-train", type=int, default=None, help="generate this many training images (default 1600)")
    ap.add_argument("--train-images", type=int, default=None, help="use the first N training images")
    ap.add_argument("--object-scale", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                    help="object side as a fraction of the shorter image side (default: version 2's)")
    ap.add_argument("--lr", type=float, default=None, help="single-stage learning rate (default: the mode's)")
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="default: the engine's (SGD)")
    ap.add_argument("--no-clip", action="store_true", help="no gradient clipping (max_grad_norm=None)")
    ap.add_argument("--loss-reduction", default=None, choices=["mean", "sum_per_image"],
                    help="the masked BCE's reduction (default: the cpu mode's, mean)")
    ap.add_argument("--bn-policy", default=None, choices=["reestimate", "keep"],
                    help="BatchNorm before the final evaluation (default: the cpu mode's, reestimate)")
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
