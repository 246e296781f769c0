"""Pascal VOC datasets: multi-label classification and detection, read from a VOC devkit tree.

Both datasets read the devkit's own layout (``<root>/VOCdevkit/VOC2012/...``), so they read real
VOC2012 and the synthetic devkit of :mod:`sca_lib.data.synthetic` alike. XML is parsed by
torchvision (``torchvision.datasets.VOCDetection.parse_voc_xml``); box-aware transforms come from
``torchvision.transforms.v2``.

Conventions:

- Classes: VOC's 20, in VOC's order (:data:`VOC_CLASSES`); a synthetic devkit brings its own 20
  names (read from its ``synthetic.json``).
- Classification (the devkit's rule): for each class an image is *positive* if it has at least one
  non-``difficult`` instance, *ignored* (devkit label 0) if all its instances are ``difficult``,
  *negative* otherwise. Ignored labels count neither way in evaluation.
- Detection boxes: VOC stores 1-based inclusive pixel indices; we return continuous ``xyxy``
  coordinates ``(xmin - 1, ymin - 1, xmax, ymax)`` (pixel edges), the convention torchvision's
  detectors and transforms expect. Labels are ``1..20``; ``0`` is the background of torchvision's
  detectors.
- Splits come from ``ImageSets/Main/{split}.txt``. VOC2012's test set has no public labels, so
  evaluation uses ``val``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from xml.etree.ElementTree import ParseError
from xml.etree.ElementTree import parse as _et_parse

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import VOCDetection as _TVVOCDetection
from torchvision.transforms import v2

__all__ = [
    "VOC_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetNotFoundError",
    "BadSampleError",
    "VOCClassification",
    "VOCDetection",
    "classification_transforms",
    "detection_transforms",
    "detection_collate",
    "default_data_dir",
    "find_devkit",
    "check_voc_tree",
    "read_classes",
    "parse_annotation",
    "image_labels",
]

#: VOC's 20 classes in VOC's order (index i <-> detection label i + 1).
VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "trainval")
_REPO_ROOT = Path(__file__).resolve().parents[2]
PathLike = Union[str, Path]


class DatasetNotFoundError(FileNotFoundError):
    """The devkit is not where it was expected (the message says where, the layout and the fix)."""


class BadSampleError(RuntimeError):
    """An image or annotation file that cannot be read. The message names the file; so does
    ``.path``."""

    def __init__(self, message: str, path: Optional[PathLike] = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


def default_data_dir() -> Path:
    """Where data lives: ``$SCA_DATA_DIR`` if set, else the repository's ``data/`` (when running
    from a clone), else ``./data``."""
    env = os.environ.get("SCA_DATA_DIR")
    if env:
        return Path(env)
    if (_REPO_ROOT / "pyproject.toml").exists() and (_REPO_ROOT / "sca_lib").is_dir():
        return _REPO_ROOT / "data"
    return Path.cwd() / "data"


def _layout_help(root: Path, year: str) -> str:
    return (
        "Required layout:\n"
        f"  {root}/VOCdevkit/VOC{year}/JPEGImages/<id>.jpg\n"
        f"  {root}/VOCdevkit/VOC{year}/Annotations/<id>.xml\n"
        f"  {root}/VOCdevkit/VOC{year}/ImageSets/Main/{{train,val,trainval}}.txt\n"
        "Get real VOC2012 (2 GB, MD5-checked):\n"
        f"  python -m sca_lib.data download-voc --root {root}\n"
        "or generate the synthetic VOC-format stand-in (seconds, no internet):\n"
        "  python -m sca_lib.data synthetic --root data     (or: make data)\n"
        "and pass the folder that holds VOCdevkit/ as root (see data/README.md)."
    )


def find_devkit(root: PathLike, year: str = "2012") -> Path:
    """The ``VOC<year>`` folder for a dataset ``root``.

    ``root`` is the folder holding ``VOCdevkit/`` (torchvision's convention); the ``VOCdevkit``
    folder itself or the ``VOC<year>`` folder are accepted too. Raises
    :class:`DatasetNotFoundError` with the expected location, the layout and the fix.
    """
    year = str(year)
    root = Path(root).expanduser()
    candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root]
    for cand in candidates:
        if (cand / "JPEGImages").is_dir() and (cand / "ImageSets" / "Main").is_dir():
            missing = [d for d in ("Annotations",) if not (cand / d).is_dir()]
            if missing:
                raise DatasetNotFoundError(
                    f"Pascal VOC devkit at {cand.resolve()} is incomplete: missing {', '.join(missing)}/.\n"
                    + _layout_help(root.resolve(), year))
            return cand
    where = candidates[0].resolve()
    state = "does not exist" if not root.exists() else "exists but holds no VOC devkit"
    raise DatasetNotFoundError(
        f"Pascal VOC {year} not found: expected the devkit at {where} (root {root.resolve()} {state}).\n"
        + _layout_help(root.resolve(), year))


def read_classes(devkit: PathLike) -> Tuple[str, ...]:
    """The class names of a devkit: a synthetic devkit's own 20 (``synthetic.json``), else VOC's."""
    marker = Path(devkit) / "synthetic.json"
    if marker.exists():
        try:
            return tuple(json.loads(marker.read_text(encoding="utf-8"))["classes"])
        except (ValueError, KeyError) as e:
            raise BadSampleError(f"cannot read the class list from {marker}: {e}", marker) from None
    return VOC_CLASSES


def _read_split(devkit: Path, split: str, year: str) -> List[str]:
    if split == "test" and year == "2012":
        raise ValueError("VOC2012's test split has no public labels; evaluate on split='val' "
                         "(train on 'train', or on 'trainval' for a final model)")
    path = devkit / "ImageSets" / "Main" / f"{split}.txt"
    if not path.exists():
        have = sorted(p.stem for p in (devkit / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise ValueError(f"unknown split {split!r}: {path} does not exist (splits here: {', '.join(have) or 'none'})")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split {split!r} is empty: {path} lists no images")
    return ids


def parse_annotation(path: PathLike) -> Dict[str, Any]:
    """Parse one VOC XML file with torchvision's parser; returns the ``annotation`` dict.

    ``objects`` is always a list. Raises :class:`BadSampleError` naming the file when it is
    missing, malformed, or lacks ``object/name`` or ``bndbox`` fields.
    """
    path = Path(path)
    try:
        tree = _et_parse(str(path))
    except FileNotFoundError:
        raise BadSampleError(f"annotation file missing: {path}", path) from None
    except (ParseError, OSError) as e:
        raise BadSampleError(f"malformed annotation XML {path}: {e}", path) from None
    ann = _TVVOCDetection.parse_voc_xml(tree.getroot()).get("annotation")
    if not isinstance(ann, dict):
        raise BadSampleError(f"malformed annotation XML {path}: no <annotation> root element", path)
    objects = ann.get("object", [])
    if isinstance(objects, dict):
        objects = [objects]
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or "name" not in obj or not isinstance(obj.get("bndbox"), dict):
            raise BadSampleError(f"malformed annotation XML {path}: object #{i} lacks <name> or <bndbox>", path)
    ann["object"] = objects
    return ann


def _objects(ann: Dict[str, Any], classes: Sequence[str], path: PathLike):
    """(class index, (xmin-1, ymin-1, xmax, ymax), difficult) for each object of a parsed XML."""
    out = []
    for obj in ann["object"]:
        name = str(obj["name"]).strip()
        try:
            c = classes.index(name)
        except ValueError:
            raise BadSampleError(f"{path}: object class {name!r} is not one of this dataset's classes "
                                 f"({', '.join(classes)})", path) from None
        bb = obj["bndbox"]
        try:
            x0, y0, x1, y1 = (float(bb[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (KeyError, ValueError, TypeError) as e:
            raise BadSampleError(f"malformed annotation XML {path}: bad <bndbox> {bb!r} ({e})", path) from None
        difficult = str(obj.get("difficult", "0")).strip() not in ("0", "")
        out.append((c, (x0 - 1.0, y0 - 1.0, x1, y1), difficult))
    return out


def image_labels(ann: Dict[str, Any], classes: Sequence[str] = VOC_CLASSES, path: PathLike = "?") -> torch.Tensor:
    """The devkit's per-class label of one parsed annotation: ``1`` positive, ``0`` only
    difficult instances (ignored), ``-1`` absent. Shape ``(len(classes),)``, int8."""
    lab = torch.full((len(classes),), -1, dtype=torch.int8)
    for c, _box, difficult in _objects(ann, classes, path):
        if not difficult:
            lab[c] = 1
        elif lab[c] == -1:
            lab[c] = 0
    return lab


def _load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise BadSampleError(f"image file missing: {path}", path) from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for corrupt/truncated files
        raise BadSampleError(f"cannot read image {path}: {e}", path) from None


def _check_image(path: Path) -> None:
    """Decode ``path`` cheaply (JPEG draft mode) to find unreadable files; raises BadSampleError."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except FileNotFoundError:
        raise BadSampleError(f"image file missing: {path}", path) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadSampleError(f"cannot read image {path}: {e}", path) from None


class _VOCBase(Dataset):
    def __init__(self, root: PathLike, year: str, split: str, classes: Optional[Sequence[str]],
                 skip_bad: bool) -> None:
        self.root = Path(root)
        self.year = str(year)
        self.split = split
        self.devkit = find_devkit(self.root, self.year)
        self.classes: Tuple[str, ...] = tuple(classes) if classes is not None else read_classes(self.devkit)
        self.ids: List[str] = _read_split(self.devkit, split, self.year)
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
        self._filter_bad(lambda i: _check_image(self.image_path(i)))

    def _keep(self, keep: List[int]) -> None:
        super()._keep(keep)
        self.labels = self.labels[keep]

    def _read_labels(self) -> torch.Tensor:
        main = self.devkit / "ImageSets" / "Main"
        files = [main / f"{c}_{self.split}.txt" for c in self.classes]
        if all(f.exists() for f in files):
            labels = torch.empty((len(self.ids), len(self.classes)), dtype=torch.int8)
            row = {name: i for i, name in enumerate(self.ids)}
            for c, f in enumerate(files):
                seen = 0
                for line in f.read_text(encoding="utf-8").splitlines():
                    parts = line.split()
                    if len(parts) != 2 or parts[0] not in row:
                        if parts:
                            raise BadSampleError(f"{f}: unexpected line {line!r} (want '<image id> <1|0|-1>' "
                                                 f"for an image of {self.split}.txt)", f)
                        continue
                    labels[row[parts[0]], c] = int(parts[1])
                    seen += 1
                if seen != len(self.ids):
                    raise BadSampleError(f"{f} lists {seen} images, {self.split}.txt lists {len(self.ids)}", f)
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
        image = self.transform(_load_image(self.image_path(index)))
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
            _objects(self.load_annotation(i), self.classes, self.annotation_path(i))
            _check_image(self.image_path(i))

        self._filter_bad(check)

    def load_target(self, index: int) -> Dict[str, Any]:
        """The untransformed target of sample ``index`` (no image decoding), plus ``"size"``
        ``(height, width)`` from the XML."""
        path = self.annotation_path(index)
        ann = self.load_annotation(index)
        objs = _objects(ann, self.classes, path)
        if not self.include_difficult:
            objs = [o for o in objs if not o[2]]
        size = ann.get("size", {})
        try:
            hw = (int(float(size["height"])), int(float(size["width"])))
        except (KeyError, TypeError, ValueError):
            hw = None
        boxes = torch.tensor([o[1] for o in objs], dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": boxes,
            "labels": torch.tensor([o[0] + 1 for o in objs], dtype=torch.int64),
            "difficult": torch.tensor([o[2] for o in objs], dtype=torch.bool),
            "image_id": index,
            "size": hw,
        }

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        image = _load_image(self.image_path(index))
        t = self.load_target(index)
        target = {
            "boxes": tv_tensors.BoundingBoxes(t["boxes"], format="XYXY", canvas_size=(image.height, image.width)),
            "labels": t["labels"],
            "difficult": t["difficult"],
            "image_id": index,
        }
        return self.transforms(image, target)


# --------------------------------------------------------------------------------------------
# Transforms and collation
# --------------------------------------------------------------------------------------------
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


def check_voc_tree(root: PathLike, year: str = "2012", splits: Sequence[str] = ("train", "val")) -> List[str]:
    """Problems that make ``root`` not a complete devkit; an empty list means it is complete.

    Checks the layout, that the ``splits`` exist and are non-empty, and that every image they list
    has its JPEG and XML file.
    """
    try:
        devkit = find_devkit(root, year)
    except DatasetNotFoundError as e:
        return [str(e).splitlines()[0]]
    problems = []
    jpgs = set(os.listdir(devkit / "JPEGImages"))
    xmls = set(os.listdir(devkit / "Annotations"))
    for split in splits:
        try:
            ids = _read_split(devkit, split, str(year))
        except ValueError as e:
            problems.append(str(e))
            continue
        miss_j = [i for i in ids if f"{i}.jpg" not in jpgs]
        miss_x = [i for i in ids if f"{i}.xml" not in xmls]
        if miss_j:
            problems.append(f"{len(miss_j)} image(s) of {split}.txt missing from {devkit / 'JPEGImages'} (e.g. {miss_j[0]}.jpg)")
        if miss_x:
            problems.append(f"{len(miss_x)} annotation(s) of {split}.txt missing from {devkit / 'Annotations'} (e.g. {miss_x[0]}.xml)")
    return problems
