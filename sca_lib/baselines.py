"""Reference lines for a split: what chance and a trivial predictor score on it.

A result means something only next to these. For a multi-label split with targets ``(N, C)`` and
the devkit's ignore mask:

- **chance mAP**: the mAP of random scores (uniform, independent per image and class), as mean,
  standard deviation and maximum over ``draws`` draws. It is not 1/C: the AP of a random ranking is
  about the share of positives of the class, plus a small-sample bonus.
- **prior**: the best image-blind predictor. Every image gets the same scores, the log-odds of each
  class's frequency on the *training* split. Its validation loss (the training loss, masked BCE
  summed over labels) is the number a model must beat to have learned anything from the pixels;
  its mAP is that of a ranking that ignores the image (ties keep the input order).

:func:`labels_of` reads ``(targets, ignore)`` from the library's classification data sets.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Subset

from .losses import masked_bce_with_logits
from .metrics import mean_average_precision, top1_accuracy

__all__ = ["chance_map", "chance_top1", "class_prior", "prior_logits", "prior_loss", "reference_lines", "labels_of"]


def _np(x: Any, dtype=None) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(dtype)


def chance_map(targets: Any, ignore: Optional[Any] = None, draws: int = 200, seed: int = 0) -> Dict[str, float]:
    """mAP of uniform random scores: ``{"mean", "sd", "max", "draws"}`` over ``draws`` draws (in [0, 1])."""
    y = _np(targets, np.float64)
    ig = None if ignore is None else _np(ignore, bool)
    rng = np.random.default_rng(seed)
    maps = np.array([mean_average_precision(rng.random(y.shape), y, ig) for _ in range(int(draws))])
    return {"mean": float(maps.mean()), "sd": float(maps.std(ddof=1)) if draws > 1 else 0.0,
            "max": float(maps.max()), "draws": int(draws)}


def chance_top1(targets: Any, ignore: Optional[Any] = None) -> float:
    """Expected top-1 accuracy of random scores (exact): for each image with a positive label, its
    positives over its counted labels, averaged over those images."""
    y = _np(targets, np.float64)
    keep = np.ones_like(y, dtype=bool) if ignore is None else ~_np(ignore, bool)
    pos = ((y > 0.5) & keep).sum(1)
    have = pos > 0
    return float((pos[have] / keep.sum(1)[have]).mean()) if have.any() else float("nan")


def class_prior(targets: Any, ignore: Optional[Any] = None, eps: float = 1e-4) -> np.ndarray:
    """Each class's share of positives among its counted labels, clipped to ``[eps, 1 - eps]``: (C,)."""
    y = _np(targets, np.float64)
    keep = np.ones_like(y) if ignore is None else (~_np(ignore, bool)).astype(np.float64)
    p = (y * keep).sum(0) / np.maximum(keep.sum(0), 1.0)
    return np.clip(p, eps, 1.0 - eps)


def prior_logits(train_targets: Any, train_ignore: Optional[Any] = None) -> np.ndarray:
    """The image-blind predictor's logits (C,): log-odds of the training split's class frequencies."""
    p = class_prior(train_targets, train_ignore)
    return np.log(p / (1.0 - p))


def prior_loss(train_targets: Any, train_ignore: Optional[Any], val_targets: Any, val_ignore: Optional[Any] = None,
               reduction: str = "sum_per_image") -> float:
    """The validation loss (masked BCE) of the image-blind prior predictor."""
    y = torch.as_tensor(_np(val_targets, np.float32))
    logits = torch.as_tensor(prior_logits(train_targets, train_ignore), dtype=torch.float32).expand_as(y)
    ig = None if val_ignore is None else torch.as_tensor(_np(val_ignore, bool))
    return float(masked_bce_with_logits(logits, y, ig, reduction=reduction))


def reference_lines(train: Tuple[Any, Any], val: Tuple[Any, Any], draws: int = 200,
                    reduction: str = "sum_per_image") -> Dict[str, float]:
    """Chance and prior numbers for a split, from ``(targets, ignore)`` of the train and val sets.

    Keys: ``chance_mAP`` (mean), ``chance_mAP_sd``, ``chance_mAP_max``, ``chance_draws``,
    ``chance_top1``, ``prior_mAP``, ``prior_top1``, ``prior_val_loss`` (fractions, like the metrics).
    """
    (ty, tig), (vy, vig) = train, val
    chance = chance_map(vy, vig, draws=draws)
    logits = prior_logits(ty, tig)
    y = _np(vy, np.float64)
    ig = None if vig is None else _np(vig, bool)
    blind = np.broadcast_to(logits, y.shape)
    return {
        "chance_mAP": chance["mean"], "chance_mAP_sd": chance["sd"], "chance_mAP_max": chance["max"],
        "chance_draws": chance["draws"], "chance_top1": chance_top1(y, ig),
        "prior_mAP": float(mean_average_precision(blind, y, ig)), "prior_top1": float(top1_accuracy(blind, y, ig)),
        "prior_val_loss": prior_loss(ty, tig, vy, vig, reduction=reduction),
    }


def labels_of(dataset: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(targets (N, C) float, ignore (N, C) bool)`` of a classification data set, without decoding images.

    Reads ``CachedImages.targets/.ignore`` or ``VOCClassification.labels`` (1 / 0 / -1; a ``Subset``
    of either is followed to its indices); any other data set is iterated.
    """
    idx = None
    while isinstance(dataset, Subset):
        idx = list(dataset.indices) if idx is None else [dataset.indices[i] for i in idx]
        dataset = dataset.dataset
    if hasattr(dataset, "targets") and hasattr(dataset, "ignore"):
        y, ig = dataset.targets.float(), dataset.ignore.bool()
    elif hasattr(dataset, "labels"):
        lab = torch.as_tensor(dataset.labels)
        y, ig = (lab == 1).float(), lab == 0
    else:
        items = [dataset[i] for i in range(len(dataset))]
        y = torch.stack([torch.as_tensor(it[1]) for it in items]).float()
        ig = torch.stack([torch.as_tensor(it[2]) for it in items]).bool() if len(items[0]) > 2 \
            else torch.zeros_like(y, dtype=torch.bool)
    return (y, ig) if idx is None else (y[idx], ig[idx])
