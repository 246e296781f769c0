"""Pascal VOC datasets: multi-label classification and detection, read from a VOC devkit tree.

Both datasets read the devkit's own layout (``<root>/VOCdevkit/VOC2012/...``), so they read real
VOC2012 and the synthetic devkit of :mod:`sca_lib.data.synthetic` alike. The files are read and
checked by :mod:`sca_lib.data.devkit` (XML parsed by torchvision's
``VOCDetection.parse_voc_xml``); box-aware transforms come from :mod:`sca_lib.data.transforms`.

- Classification (the devkit's rule): for each class an image is *positive* if it has at least one
  non-``difficult`` instance, *ignored* (devkit label 0) if all its instances are ``difficult``,
  *negative* otherwise. Ignored labels count neither way in evaluation.
- Detection: continuous ``xyxy`` boxes ``(xmin - 1, ymin - 1, xmax, ymax)`` (pixel edges, clipped
  to the image), the convention torchvision's detectors and transforms expect. Labels are ``1..20``;
  ``0`` is the background of torchvision's detectors.
- Splits come from ``ImageSets/Main/{split}.txt``. VOC2012's test set has no public labels, so
  evaluation uses ``val``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .devkit import (
    BadSampleError,
    annotation_objects,
    annotation_size,
    check_image,
    find_devkit,
    image_labels,
    load_image,
    parse_annotation,
    read_class_labels,
    read_classes,
    read_split,
)
from .transforms import classification_transforms, detection_transforms

__all__ = ["VOCClassification", "VOCDetection"]

PathLike = Union[str, Path]


class _VOCBase(Dataset):
    def __init__(self, root: PathLike, year: str, split: str, classes: Optional[Sequence[str]],
                 skip_bad: bool) -> None:
        self.root = Path(root)
        self.year = str(year)
        self.split = split
        self.devkit = find_devkit(self.root, self.year)
        self.classes: Tuple[str, ...] = tuple(classes) if classes is not None else read_classes(self.devkit)
        self.ids: List[str] = read_split(self.devkit, split, self.year)
        self.skip_bad = skip_bad
        #: ``(file, reason)`` for every sample skipped by ``skip_bad``.
        self.skipped: List[Tuple[str, str]] = []

    @property
    def is_synthetic(self) -> bool:
        """True for a devkit written by :mod:`sca_lib.data.synthetic`."""
        return (self.devkit / "synthetic.json").exists()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_path(self, index: int) -> Path:
        return self.devkit / "JPEGImages" / f"{self.ids[index]}.jpg"

    def annotation_path(self, index: int) -> Path:
        return self.devkit / "Annotations" / f"{self.ids[index]}.xml"

    def _filter_bad(self, check: Callable[[int], None]) -> None:
        """With skip_bad: drop samples for which ``check`` raises BadSampleError; count them."""
        if not self.skip_bad:
            return
        keep = []
        for i in range(len(self.ids)):
            try:
                check(i)
                keep.append(i)
            except BadSampleError as e:
                self.skipped.append((e.path or "?", str(e)))
        self._keep(keep)
        if self.skipped:
            warnings.warn(f"{type(self).__name__}({self.split}): skipped {len(self.skipped)} bad sample(s) "
                          f"of {len(self.skipped) + len(self.ids)}; first: {self.skipped[0][1]}", stacklevel=3)
        if not self.ids:
            raise ValueError(f"split {self.split!r} of {self.devkit} is empty after skipping "
                             f"{len(self.skipped)} bad sample(s)")

    def _keep(self, keep: List[int]) -> None:
        self.ids = [self.ids[i] for i in keep]

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.ids)

    def load_annotation(self, index: int) -> Dict[str, Any]:
        """The parsed XML of sample ``index`` (torchvision's dict layout, ``object`` a list)."""
        return parse_annotation(self.annotation_path(index))

    def __repr__(self) -> str:
        kind = "synthetic" if self.is_synthetic else "VOC"
        return (f"{type(self).__name__}(root={str(self.root)!r}, year={self.year!r}, split={self.split!r}, "
                f"n={len(self)}, {kind}, classes={self.num_classes})")


class VOCClassification(_VOCBase):
    """Pascal VOC multi-label classification: an image -> 20 binary labels and an ignore mask.

    Labels follow the devkit (``ImageSets/Main/{class}_{split}.txt``, falling back to the XML
    annotations when those files are absent): positive when the image has a non-difficult
    instance of the class, ignored when all its instances are difficult, negative otherwise.

    Args:
        root: folder holding ``VOCdevkit/`` (also accepted: ``VOCdevkit/`` or ``VOC<year>/``).
        year: devkit year, ``"2012"``.
        split: ``"train"``, ``"val"`` or ``"trainval"`` (VOC2012 ``test`` has no public labels).
        transform: applied to the PIL image; default ``classification_transforms()`` (to a float
            tensor in [0, 1], no resize: real VOC images differ in size, so pass
            ``classification_transforms(size=...)`` to batch them).
        classes: override the class list (default: VOC's, or a synthetic devkit's own).
        skip_bad: check every image up front; skip unreadable ones and count them in
            ``self.skipped`` instead of raising :class:`BadSampleError` when they are loaded.

    Returns per item ``(image, target, ignore)``: ``image`` (3, H, W) float32; ``target`` (20,)
    float32 multi-hot; ``ignore`` (20,) bool, True where the label must not count.
    ``self.labels`` holds every image's devkit labels as an (N, 20) int8 tensor of 1 / 0 / -1.
    """

    def __init__(self, root: PathLike, year: str = "2012", split: str = "train",
                 transform: Optional[Callable] = None, classes: Optional[Sequence[str]] = None,
                 skip_bad: bool = False) -> None:
        super().__init__(root, year, split, classes, skip_bad)
        self.transform = transform if transform is not None else classification_transforms()
        self.labels = self._read_labels()
        self._filter_bad(lambda i: check_image(self.image_path(i)))

    def _keep(self, keep: List[int]) -> None:
        super()._keep(keep)
        self.labels = self.labels[keep]

    def _read_labels(self) -> torch.Tensor:
        labels = read_class_labels(self.devkit, self.split, self.ids, self.classes)
        if labels is not None:
            return labels
        # no per-class files: derive the labels from the XML annotations
        rows, keep = [], []
        for i in range(len(self.ids)):
            try:
                rows.append(image_labels(self.load_annotation(i), self.classes, self.annotation_path(i)))
                keep.append(i)
            except BadSampleError as e:
                if not self.skip_bad:
                    raise
                self.skipped.append((e.path or "?", str(e)))
        self.ids = [self.ids[i] for i in keep]
        return torch.stack(rows) if rows else torch.empty((0, len(self.classes)), dtype=torch.int8)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self.transform(load_image(self.image_path(index)))
        lab = self.labels[index]
        return image, (lab == 1).to(torch.float32), lab == 0


class VOCDetection(_VOCBase):
    """Pascal VOC detection for torchvision's detectors (Faster R-CNN & co.).

    Not torchvision's class of the same name (which returns raw XML dicts): this one returns
    tensors in the layout torchvision's detection models train on.

    Args:
        root, year, split, classes: as :class:`VOCClassification`.
        transforms: a ``torchvision.transforms.v2`` callable ``(image, target) -> (image, target)``
            that keeps boxes consistent; default ``detection_transforms()`` (to a float tensor in
            [0, 1]). See :func:`detection_transforms` for resize / flip / normalise.
        include_difficult: keep ``difficult`` objects (flagged in ``target["difficult"]``); the
            VOC protocol keeps them for evaluation, where they are ignored.
        skip_bad: parse every annotation and check every image up front; skip bad samples and
            count them in ``self.skipped`` instead of raising :class:`BadSampleError`.

    Returns per item ``(image, target)``: ``image`` (3, H, W) float32 and ``target`` =
    ``{"boxes": BoundingBoxes (K, 4) float32 xyxy, "labels": (K,) int64 in 1..20,
    "difficult": (K,) bool, "image_id": int}``. Batch with :func:`detection_collate`.
    """

    def __init__(self, root: PathLike, year: str = "2012", split: str = "train",
                 transforms: Optional[Callable] = None, classes: Optional[Sequence[str]] = None,
                 include_difficult: bool = True, skip_bad: bool = False) -> None:
        super().__init__(root, year, split, classes, skip_bad)
        self.transforms = transforms if transforms is not None else detection_transforms()
        self.include_difficult = include_difficult

        def check(i: int) -> None:
            annotation_objects(self.load_annotation(i), self.classes, self.annotation_path(i))
            check_image(self.image_path(i))

        self._filter_bad(check)

    def load_target(self, index: int) -> Dict[str, Any]:
        """The untransformed target of sample ``index`` (no image decoding), plus ``"size"``
        ``(height, width)`` from the XML."""
        path = self.annotation_path(index)
        ann = self.load_annotation(index)
        objs = annotation_objects(ann, self.classes, path)
        if not self.include_difficult:
            objs = [o for o in objs if not o[2]]
        hw = annotation_size(ann)
        boxes = torch.tensor([o[1] for o in objs], dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": boxes,
            "labels": torch.tensor([o[0] + 1 for o in objs], dtype=torch.int64),
            "difficult": torch.tensor([o[2] for o in objs], dtype=torch.bool),
            "image_id": index,
            "size": hw,
        }

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        image = load_image(self.image_path(index))
        t = self.load_target(index)
        target = {
            "boxes": tv_tensors.BoundingBoxes(t["boxes"], format="XYXY", canvas_size=(image.height, image.width)),
            "labels": t["labels"],
            "difficult": t["difficult"],
            "image_id": index,
        }
        return self.transforms(image, target)
