"""Calibrate the cpu detection protocol: train one plain Faster R-CNN per setting and print its curve.

    OMP_NUM_THREADS=1 python benchmarks/calibrate_detection.py                          # the protocol itself
    OMP_NUM_THREADS=1 python benchmarks/calibrate_detection.py --min-size 128 --max-size 160
    OMP_NUM_THREADS=1 python benchmarks/calibrate_detection.py --schedule single --lr 0.02 --epochs 3 --min-size 128 --max-size 160

Every run is the plain detector (no attention) of the cpu mode (MobileNetV3-Small FPN trunk from
the cpu stand-in, :data:`sca_lib.studies.DETECTION_CPU_PROTOCOL`) with the options given on top:
the input size (``--min-size`` / ``--max-size``, torchvision's resize), the schedule (``staged``
with ``--lrs`` over ``--epochs`` stages, or ``single`` at ``--lr`` for ``--epochs`` epochs in all)
and the number of training / validation images. It prints, per epoch, the learning rate, training
loss, the classifier and objectness losses, the fraction of clipped steps, images/s and val mAP
(VOC2010+ all-point, IoU 0.5), then the run's chance and prior-box lines; each run's summary is
appended as JSON to ``--out``. The table in data/README.md ("Detection on the CPU") came from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sca_lib.studies import DETECTION_CPU_PROTOCOL
from sca_lib.train import TrainConfig, train_detector


def _floats(text: str):
    return [float(x) for x in text.split(",")]


def _ints(text: str):
    return [int(x) for x in text.split(",")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    det = DETECTION_CPU_PROTOCOL["detector"]
    p.add_argument("--schedule", choices=["staged", "single"], default="staged")
    p.add_argument("--epochs", type=_ints, default=DETECTION_CPU_PROTOCOL["stage_epochs"],
                   help="staged: three stage lengths (default 1,1,2); single: one number, the epochs")
    p.add_argument("--lrs", type=_floats, default=DETECTION_CPU_PROTOCOL["stage_lrs"],
                   help="staged: three learning rates (default 0.01,0.01,0.001)")
    p.add_argument("--lr", type=float, default=DETECTION_CPU_PROTOCOL["single_lr"], help="single: the learning rate")
    p.add_argument("--min-size", type=int, default=det["min_size"])
    p.add_argument("--max-size", type=int, default=det["max_size"])
    p.add_argument("--train-images", type=int, default=None, help="default: all 1,600")
    p.add_argument("--val-images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="runs/calibrate_detection", help="checkpoints and logs, one folder a run")
    p.add_argument("--out", default="runs/calibrate_detection/rows.jsonl", help="appends one JSON row a run")
    a = p.parse_args(argv)
    if a.schedule == "staged" and (len(a.epochs) != 3 or len(a.lrs) != 3):
        p.error(f"--schedule staged takes three --epochs and three --lrs, got {a.epochs} and {a.lrs}")
    if a.schedule == "single" and len(a.epochs) != 1:
        p.error(f"--schedule single takes one --epochs number, got {a.epochs}")

    detector = {**det, "min_size": a.min_size, "max_size": a.max_size}
    kw = dict(attention=None, schedule=a.schedule, detector=detector, train_images=a.train_images,
              val_images=a.val_images, seed=a.seed)
    if a.schedule == "single":
        kw.update(stage_epochs=[a.epochs[0], 0, 0], single_lr=a.lr)
    else:
        kw.update(stage_epochs=a.epochs, stage_lrs=a.lrs)
    cfg = TrainConfig.from_mode("cpu", **{**DETECTION_CPU_PROTOCOL, **kw})
    name = (f"{a.schedule}-{'-'.join(map(str, a.epochs))}-lr{'-'.join(map(str, a.lrs if a.schedule == 'staged' else [a.lr]))}"
            f"-{a.min_size}px-n{a.train_images or 'all'}-s{a.seed}")
    t0 = time.perf_counter()
    s = train_detector(cfg, Path(a.out_dir) / name, progress=False)
    print(f"{name}  ({torch.get_num_threads()} threads, {platform.machine()})")
    print("epoch  lr      loss   cls    obj    clip  img/s  val mAP %")
    for h in s["history"]:
        print(f"{h['epoch']:>5}  {h['lr']:<6g}  {h['train_loss']:.3f}  {h['train_loss_classifier']:.3f}  "
              f"{h['train_loss_objectness']:.3f}  {h['clip_fraction']:.2f}  {h['images_per_s']:5.1f}  {100 * h['mAP']:6.2f}")
    ref = s["reference"]
    print(f"final val mAP {100 * s['mAP']:.2f} %; chance {100 * ref['chance_mAP']:.3f} %, prior-box "
          f"{100 * ref['prior_mAP']:.3f} %; wall {time.perf_counter() - t0:.0f} s")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps({"name": name, "mAP": s["mAP"], "reference": ref, "wall_time_s": s["wall_time_s"],
                            "history": [{k: h[k] for k in ("epoch", "lr", "train_loss", "clip_fraction", "mAP")}
                                        for h in s["history"]], "config": s["config"]}) + "\n")


if __name__ == "__main__":
    main()
