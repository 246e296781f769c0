"""Train a Faster R-CNN with the staged recipe through the same engine as the classifiers.

    python -m sca_lib.train --task detection --mode fast                        # CI plumbing, seconds
    python -m sca_lib.train --task detection --mode cpu --backbone resnet18 --fpn-attention dual
    python -m sca_lib.train --task detection --mode full --attention dual       # a GPU, real VOC
    torchrun --nproc_per_node=2 -m sca_lib.train --task detection --mode fast   # DDP (gloo on CPU)

:class:`DetectionTask` is what :class:`sca_lib.engine.Trainer` asks of a task: a batch is a list of
images and a list of box targets, the loss is the sum of the detector's loss dict (its parts are
logged per epoch as ``train_loss_classifier``, ``train_loss_box_reg``, ``train_loss_objectness``,
``train_loss_rpn_box_reg``), and evaluation is the devkit's VOC detection AP
(:func:`sca_lib.metrics.detection_metrics`: ``mAP`` is VOC2010+ all-point, ``mAP_voc2007`` the
11-point one; ``difficult`` objects are ignored). Everything else is the classifiers' engine: the
stages, clipping, AMP on CUDA, checkpoints every epoch and resumption, the divergence guard, DDP.

Data: :class:`CachedDetection` decodes a VOC-format split once (uint8 in memory) and flips
images and boxes at random for training. Training targets leave ``difficult`` objects out (as
py-faster-rcnn and the devkit protocol do); validation keeps them, flagged, for the AP.

Reference lines (:func:`detection_reference_lines`): the mAP of a *prior-box detector* (for each
class, the mean training box of the class, scored by how often the class occurs: image-blind) and
of *random boxes* (as many per image as the training images have objects, training-box sizes,
random classes and scores; mean, sd and max over draws).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from .data import VOCDetection, detection_collate
from .data.devkit import load_image
from .metrics import detection_metrics

__all__ = ["DetectionTask", "CachedDetection", "detection_reference_lines", "prior_box_detections",
           "random_box_detections"]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class CachedDetection(Dataset):
    """A :class:`~sca_lib.data.VOCDetection` split decoded once into memory (uint8 images).

    Items: ``(image (3, H, W) float32 in [0, 1], target)`` with ``target = {"boxes": (K, 4) float32
    xyxy, "labels": (K,) int64 in 1..C, "difficult": (K,) bool, "image_id": int}``, what
    torchvision's detectors take (they resize and normalise inside). ``train=True`` flips image and
    boxes horizontally with probability 1/2 (torch's global RNG, so the engine's seeds fix it).
    ``limit`` keeps the first N images.
    """

    def __init__(self, dataset: VOCDetection, train: bool = False, limit: Optional[int] = None,
                 progress: bool = False) -> None:
        n = len(dataset) if limit is None else min(int(limit), len(dataset))
        it = range(n)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"decoding {dataset.split} ({n} images)", leave=False)
        self.images: List[torch.Tensor] = []
        self.targets: List[Dict[str, Any]] = []
        for i in it:
            img = load_image(dataset.image_path(i))
            self.images.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous())
            t = dataset.load_target(i)
            self.targets.append({"boxes": t["boxes"], "labels": t["labels"], "difficult": t["difficult"], "image_id": i})
        self.train = bool(train)
        self.classes: Tuple[str, ...] = tuple(dataset.classes)
        self.ids = list(dataset.ids[:n])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        img = self.images[index].float().div_(255.0)
        t = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in self.targets[index].items()}
        if self.train and bool(torch.rand(()) < 0.5):
            img = img.flip(-1)
            w = img.shape[-1]
            b = t["boxes"]
            t["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1) if len(b) else b
        return img, t


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


def _gather_lists(items: List[Any], idx: List[int], n: int, info: Any) -> List[Any]:
    """Items computed by each rank for its ``idx``, back in dataset order on every rank."""
    if not getattr(info, "distributed", False):
        return items
    parts: List[Any] = [None] * info.world_size
    dist.all_gather_object(parts, list(zip(idx, items)))
    out: List[Any] = [None] * n
    for part in parts:
        for i, item in part:
            out[i] = item
    return out


class DetectionTask:
    """What the engine does with detection batches (see the module docstring).

    Args:
        num_classes: object classes without the background (20 for VOC).
        class_names: for ``ap_by_class`` in the metrics.
        iou_threshold: the AP's overlap (0.5, VOC).
    """

    name = "detection"
    collate_fn = staticmethod(detection_collate)
    channels_last = False

    def __init__(self, num_classes: int = 20, class_names: Optional[Sequence[str]] = None,
                 iou_threshold: float = 0.5) -> None:
        self.num_classes = int(num_classes)
        self.class_names = None if class_names is None else list(class_names)
        self.iou_threshold = float(iou_threshold)

    @staticmethod
    def _train_targets(targets: Sequence[Dict[str, Any]], device: torch.device) -> List[Dict[str, torch.Tensor]]:
        out = []
        for t in targets:
            keep = ~t["difficult"] if "difficult" in t else torch.ones(len(t["labels"]), dtype=torch.bool)
            out.append({"boxes": torch.as_tensor(t["boxes"])[keep].to(device, torch.float32).reshape(-1, 4),
                        "labels": t["labels"][keep].to(device)})
        return out

    def train_loss(self, trainer: Any, batch: Any) -> Tuple[torch.Tensor, int, Dict[str, torch.Tensor]]:
        images, targets = batch
        images = [im.to(trainer.device, non_blocking=True) for im in images]
        with torch.autocast("cuda", dtype=torch.float16, enabled=trainer.amp):
            losses = trainer.ddp_model(images, self._train_targets(targets, trainer.device))
        loss = sum(losses.values())
        return loss, len(images), {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def predict(self, trainer: Any, dataset: Dataset) -> Tuple[List[Dict[str, torch.Tensor]], List[Dict[str, Any]]]:
        """(detections, ground truths) for every image of ``dataset``, in order, on every rank."""
        n = len(dataset)  # type: ignore[arg-type]
        idx = list(range(trainer.dist.rank, n, trainer.dist.world_size))
        dets, gts = [], []
        loader = DataLoader(Subset(dataset, idx), batch_size=max(1, trainer.batch_size), collate_fn=detection_collate,
                            num_workers=trainer.num_workers)
        for images, targets in loader:
            with torch.autocast("cuda", dtype=torch.float16, enabled=trainer.amp):
                out = trainer.model([im.to(trainer.device) for im in images])
            dets.extend({k: v.detach().float().cpu() if k != "labels" else v.cpu() for k, v in o.items()} for o in out)
            gts.extend({"boxes": torch.as_tensor(t["boxes"]).reshape(-1, 4), "labels": t["labels"],
                        "difficult": t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool))}
                       for t in targets)
        return _gather_lists(dets, idx, n, trainer.dist), _gather_lists(gts, idx, n, trainer.dist)

    def evaluate(self, trainer: Any, dataset: Dataset) -> Dict[str, Any]:
        from .engine import DivergenceError

        dets, gts = self.predict(trainer, dataset)
        bad = sum(int(not bool(torch.isfinite(d["scores"]).all() and torch.isfinite(d["boxes"]).all())) for d in dets)
        if bad:
            raise DivergenceError(f"evaluation produced non-finite boxes or scores for {bad} of {len(dets)} images "
                                  f"({trainer._where()}); {trainer._kept()}. Lower the learning rate, then rerun.")
        m = detection_metrics(dets, gts, self.num_classes, self.class_names, self.iou_threshold)
        m07 = detection_metrics(dets, gts, self.num_classes, None, self.iou_threshold, method="voc2007")
        m["mAP_voc2007"] = m07["mAP"]
        m["top1"] = None
        m["detections_per_image"] = m["num_detections"] / max(len(dets), 1)
        trainer.last_eval = {"detections": dets, "ground_truths": gts}
        return m


# --------------------------------------------------------------------------------------------
# Reference lines
# --------------------------------------------------------------------------------------------


def _targets_and_sizes(dataset: Any) -> Tuple[List[Dict[str, Any]], List[Tuple[int, int]]]:
    if isinstance(dataset, CachedDetection):
        return dataset.targets, [tuple(im.shape[-2:]) for im in dataset.images]
    targets, sizes = [], []
    for i in range(len(dataset)):
        t = dataset.load_target(i)
        targets.append(t)
        sizes.append(tuple(t["size"]))
    return targets, sizes


def prior_box_detections(train_targets: Sequence[Dict[str, Any]], train_sizes: Sequence[Tuple[int, int]],
                         val_sizes: Sequence[Tuple[int, int]], num_classes: int = 20) -> List[Dict[str, torch.Tensor]]:
    """An image-blind detector: on every image, for each class seen in training, one box, the
    class's mean training box in relative coordinates, scored by the share of training images
    that hold the class (ties broken by class order)."""
    rel: Dict[int, List[np.ndarray]] = {c: [] for c in range(1, num_classes + 1)}
    freq = np.zeros(num_classes + 1)
    for t, (h, w) in zip(train_targets, train_sizes):
        keep = ~t["difficult"].numpy().astype(bool) if "difficult" in t else np.ones(len(t["labels"]), bool)
        labels = t["labels"].numpy()[keep]
        for b, c in zip(np.asarray(t["boxes"], dtype=np.float64).reshape(-1, 4)[keep], labels):
            rel[int(c)].append(b / np.array([w, h, w, h]))
        for c in set(labels.tolist()):
            freq[int(c)] += 1
    freq /= max(len(train_targets), 1)
    classes = [c for c in rel if rel[c]]
    mean = {c: np.mean(rel[c], axis=0) for c in classes}
    out = []
    for h, w in val_sizes:
        boxes = np.array([mean[c] * np.array([w, h, w, h]) for c in classes]).reshape(-1, 4)
        scores = np.array([freq[c] - 1e-6 * c for c in classes])
        out.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores, dtype=torch.float32),
                    "labels": torch.tensor(classes, dtype=torch.int64)})
    return out


def random_box_detections(train_targets: Sequence[Dict[str, Any]], train_sizes: Sequence[Tuple[int, int]],
                          val_sizes: Sequence[Tuple[int, int]], num_classes: int = 20, seed: int = 0
                          ) -> List[Dict[str, torch.Tensor]]:
    """Chance: on each image as many boxes as a training image has objects on average (rounded up),
    sizes drawn from the training boxes (relative), uniform positions, classes and scores."""
    rng = np.random.default_rng(seed)
    rw: List[float] = []
    rh: List[float] = []
    count = 0
    for t, (h, w) in zip(train_targets, train_sizes):
        b = np.asarray(t["boxes"], dtype=np.float64).reshape(-1, 4)
        rw.extend(((b[:, 2] - b[:, 0]) / w).tolist())
        rh.extend(((b[:, 3] - b[:, 1]) / h).tolist())
        count += len(b)
    rel_w, rel_h = (np.array(rw), np.array(rh)) if rw else (np.array([0.3]), np.array([0.3]))
    k = max(1, math.ceil(count / max(len(train_targets), 1)))
    out = []
    for h, w in val_sizes:
        j = rng.integers(0, len(rel_w), k)
        bw, bh = rel_w[j] * w, rel_h[j] * h
        x1, y1 = rng.uniform(0, 1, k) * (w - bw), rng.uniform(0, 1, k) * (h - bh)
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1)
        out.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                    "scores": torch.tensor(rng.random(k), dtype=torch.float32),
                    "labels": torch.tensor(rng.integers(1, num_classes + 1, k), dtype=torch.int64)})
    return out


def detection_reference_lines(train_set: Any, val_set: Any, num_classes: int = 20, draws: int = 20) -> Dict[str, float]:
    """Chance and trivial-detector mAP (VOC2010, fractions) of a split: ``chance_mAP`` (random boxes,
    mean over ``draws``), ``chance_mAP_sd``, ``chance_mAP_max``, ``chance_draws``, ``prior_mAP``
    (the prior-box detector). Reads targets and image sizes, never model outputs."""
    tt, ts = _targets_and_sizes(train_set)
    vt, vs = _targets_and_sizes(val_set)
    gts = [{"boxes": t["boxes"], "labels": t["labels"], "difficult": t["difficult"]} for t in vt]
    chance = np.array([detection_metrics(random_box_detections(tt, ts, vs, num_classes, seed=s), gts, num_classes)["mAP"]
                       for s in range(int(draws))])
    prior = detection_metrics(prior_box_detections(tt, ts, vs, num_classes), gts, num_classes)["mAP"]
    return {"chance_mAP": float(chance.mean()), "chance_mAP_sd": float(chance.std(ddof=1)) if draws > 1 else 0.0,
            "chance_mAP_max": float(chance.max()), "chance_draws": int(draws), "prior_mAP": float(prior)}
