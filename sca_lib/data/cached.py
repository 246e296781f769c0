"""A classification data set decoded and resized once, kept in memory: :class:`CachedImages`.

Small data sets (the synthetic devkits of the ``fast`` and ``cpu`` modes) are read for many epochs;
caching the decoded, resized images as uint8 takes JPEG decoding out of every epoch.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch.utils.data import Dataset

from .transforms import IMAGENET_MEAN, IMAGENET_STD, classification_transforms

__all__ = ["CachedImages"]


class CachedImages(Dataset):
    """A VOC classification set decoded and resized once, kept in memory as uint8.

    Items are ``(image (3, S, S) float32, normalised with ImageNet's mean/std, target (C,) float32,
    ignore (C,) bool)``, exactly what ``classification_transforms(S, train, normalize=True)`` gives,
    with the random horizontal flip (``train=True``) drawn from torch's global RNG (so seeds and
    resumed runs reproduce it). For the small synthetic sets of the ``fast``/``cpu`` modes this
    removes JPEG decoding from every epoch; 800 images at 96 px take 22 MB.

    ``dataset`` yields ``(image, target, ignore)`` and has a ``transform`` attribute (as
    :class:`~sca_lib.data.VOCClassification` does, or a ``Subset`` given one); it must not be empty.
    """

    def __init__(self, dataset: Dataset, image_size: int, train: bool) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError(
                f"cannot cache an empty {'training' if train else 'validation'} set "
                f"(a {type(dataset).__name__} of 0 images): ask for at least one image (e.g. "
                "--train-images / --val-images of 1 or more, or a split that lists images)")
        base_tf = getattr(dataset, "transform", None)
        dataset.transform = classification_transforms(image_size)  # type: ignore[attr-defined]
        try:
            items = [dataset[i] for i in range(n)]
        finally:
            dataset.transform = base_tf  # type: ignore[attr-defined]
        self.images = torch.stack([(x * 255).round().to(torch.uint8) for x, _, _ in items])
        self.targets = torch.stack([t for _, t, _ in items])
        self.ignore = torch.stack([g for _, _, g in items])
        self.train = train
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.train and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        x = (x.float() / 255.0 - self.mean) / self.std
        return x, self.targets[i], self.ignore[i]
