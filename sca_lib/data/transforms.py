"""Transforms and collation for the VOC datasets: PIL image -> float tensor, boxes moved with it.

Both pipelines are ``torchvision.transforms.v2`` compositions, so a detection pipeline resizes and
flips ``tv_tensors.BoundingBoxes`` together with the image.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torchvision.transforms import v2

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "classification_transforms",
    "detection_transforms",
    "detection_collate",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _finish_pipeline(ops: List[Any], train: bool, normalize: bool, mean: Sequence[float],
                     std: Sequence[float]) -> v2.Compose:
    """Append the steps both pipelines share: random flip (train), float conversion, normalisation."""
    if train:
        ops.append(v2.RandomHorizontalFlip())
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        ops.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(ops)


def classification_transforms(size: Union[int, Tuple[int, int], None] = None, train: bool = False,
                              normalize: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                              std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """PIL image -> (3, H, W) float32 tensor.

    ``size``: resize to ``(size, size)`` (or ``(h, w)``) by squashing, not cropping: a crop could
    cut away the only instance of a class and leave its label wrong. ``train`` adds a random
    horizontal flip; ``normalize`` subtracts ``mean`` and divides by ``std`` (ImageNet's).
    """
    ops: List[Any] = [v2.ToImage()]
    if size is not None:
        ops.append(v2.Resize((size, size) if isinstance(size, int) else tuple(size), antialias=True))
    return _finish_pipeline(ops, train, normalize, mean, std)


def detection_transforms(size: Union[int, Tuple[int, int], None] = None, train: bool = False,
                         normalize: bool = False, max_size: Optional[int] = None,
                         mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """``(image, target) -> (image, target)`` with boxes kept consistent by ``transforms.v2``.

    ``size``: an int resizes the shorter side (keeping the aspect ratio, capped by ``max_size``),
    a pair resizes to exactly ``(h, w)``. ``train`` adds a random horizontal flip. ``normalize``
    applies mean/std; leave it off for torchvision's detectors, which normalise internally.
    """
    ops: List[Any] = [v2.ToImage()]
    if size is not None:
        ops.append(v2.Resize(size if isinstance(size, int) else tuple(size), max_size=max_size, antialias=True))
    return _finish_pipeline(ops, train, normalize, mean, std)


def detection_collate(batch: Sequence[Tuple[Any, Dict[str, Any]]]) -> Tuple[List[Any], List[Dict[str, Any]]]:
    """Collate ``(image, target)`` pairs into ``(list of images, list of targets)``: images differ
    in size and targets in object count, which is what torchvision's detectors take."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
