"""Reading and checking a Pascal VOC devkit on disk: where it is, its split lists, class files, XML.

The datasets of :mod:`sca_lib.data.voc` are built on these functions; each one names the file (and
the line) it cannot use, says what it expected, and how to fix it.

Conventions:

- Layout: ``<root>/VOCdevkit/VOC<year>/{JPEGImages,Annotations,ImageSets/Main}``; ``root`` is the
  folder that holds ``VOCdevkit/`` (torchvision's convention).
- Classes: VOC's 20, in VOC's order (:data:`VOC_CLASSES`); a synthetic devkit brings its own 20
  names (read from its ``synthetic.json``).
- Classification labels (the devkit's rule): ``1`` at least one non-``difficult`` instance, ``0``
  only difficult instances (ignored in evaluation), ``-1`` no instance.
- Boxes: VOC stores 1-based inclusive pixel indices; :func:`annotation_objects` returns continuous
  ``xyxy`` pixel edges ``(xmin - 1, ymin - 1, xmax, ymax)``, clipped to the image when they stick
  out of it; an inverted box (``xmax < xmin``) or one wholly outside the image is refused.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
import xml.etree.ElementTree as ET
from xml.etree.ElementTree import ParseError
from xml.etree.ElementTree import parse as _et_parse

import torch
from PIL import Image
from torchvision.datasets import VOCDetection as _TVVOCDetection

__all__ = [
    "annotation_xml",
    "object_labels",
    "VOC_CLASSES",
    "SPLITS",
    "DatasetNotFoundError",
    "BadSampleError",
    "find_devkit",
    "read_classes",
    "read_split",
    "read_class_labels",
    "parse_annotation",
    "annotation_size",
    "annotation_objects",
    "image_labels",
    "load_image",
    "check_image",
    "check_voc_tree",
]

#: VOC's 20 classes in VOC's order (index i <-> detection label i + 1).
VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
SPLITS = ("train", "val", "trainval")
#: The values a devkit class file may hold: positive, negative, only difficult instances (ignored).
LABEL_VALUES = (1, -1, 0)
PathLike = Union[str, Path]
Box = Tuple[float, float, float, float]
_YEAR_DIR = re.compile(r"^VOC(\d{4})$")


class DatasetNotFoundError(FileNotFoundError):
    """The devkit is not where it was expected (the message says where, the layout and the fix)."""


class BadSampleError(RuntimeError):
    """An image or annotation file that cannot be read. The message names the file; so does
    ``.path``."""

    def __init__(self, message: str, path: Optional[PathLike] = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


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


def _is_devkit(folder: Path) -> bool:
    return (folder / "JPEGImages").is_dir() and (folder / "ImageSets" / "Main").is_dir()


def _other_years(root: Path, year: str) -> List[str]:
    """Years of the ``VOC<year>`` devkits found at ``root`` other than ``year``."""
    found = set()
    for folder in (root, root / "VOCdevkit"):
        m = _YEAR_DIR.match(folder.name)
        if m and _is_devkit(folder):
            found.add(m.group(1))
        if folder.is_dir():
            for sub in folder.iterdir():
                m = _YEAR_DIR.match(sub.name)
                if m and _is_devkit(sub):
                    found.add(m.group(1))
    return sorted(found - {year})


def find_devkit(root: PathLike, year: str = "2012") -> Path:
    """The ``VOC<year>`` folder for a dataset ``root``.

    ``root`` is the folder holding ``VOCdevkit/`` (torchvision's convention); the ``VOCdevkit``
    folder itself or the ``VOC<year>`` folder are accepted too (a devkit folder named for another
    year, e.g. ``VOC2012`` asked for as 2007, is not). Raises :class:`DatasetNotFoundError` with
    the expected location, the layout and the fix.
    """
    year = str(year)
    root = Path(root).expanduser()
    candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}"]
    m = _YEAR_DIR.match(root.name)
    if m is None or m.group(1) == year:  # a folder named VOC<other year> is not this year's devkit
        candidates.append(root)
    for cand in candidates:
        if _is_devkit(cand):
            if not (cand / "Annotations").is_dir():
                raise DatasetNotFoundError(
                    f"Pascal VOC devkit at {cand.resolve()} is incomplete: missing Annotations/.\n"
                    + _layout_help(root.resolve(), year))
            return cand
    where = candidates[0].resolve()
    state = "does not exist" if not root.exists() else "exists but holds no VOC devkit"
    others = _other_years(root, year) if root.is_dir() else []
    if others:
        state = (f"holds VOC{', VOC'.join(others)} but not VOC{year}: pass year={others[-1]!r} "
                 f"(command line: --year {others[-1]})")
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


def read_split(devkit: Path, split: str, year: str) -> List[str]:
    """The image ids of ``ImageSets/Main/<split>.txt``; ValueError for an unknown, empty or
    inconsistent split (an id listed twice names the file, the id and both lines)."""
    if split == "test" and year == "2012":
        raise ValueError("VOC2012's test split has no public labels; evaluate on split='val' "
                         "(train on 'train', or on 'trainval' for a final model)")
    path = devkit / "ImageSets" / "Main" / f"{split}.txt"
    if not path.exists():
        have = sorted(p.stem for p in (devkit / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise ValueError(f"unknown split {split!r}: {path} does not exist (splits here: {', '.join(have) or 'none'})")
    ids: List[str] = []
    first_line: Dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if image_id in first_line:
            raise ValueError(f"{path}, line {n}: image id {image_id!r} is listed twice (first on line "
                             f"{first_line[image_id]}); a split lists each image once: remove the duplicate")
        first_line[image_id] = n
        ids.append(image_id)
    if not ids:
        raise ValueError(f"split {split!r} is empty: {path} lists no images")
    return ids


def read_class_labels(devkit: Path, split: str, ids: Sequence[str], classes: Sequence[str]) -> Optional[torch.Tensor]:
    """The ``(len(ids), len(classes))`` int8 labels of ``ImageSets/Main/<class>_<split>.txt``, or
    None when any of those files is absent (then the labels come from the XML annotations).

    Raises :class:`BadSampleError` naming the class file and line for a label other than 1, -1, 0,
    an id that is not in ``<split>.txt`` or listed twice, and an image the file does not list.
    """
    main = devkit / "ImageSets" / "Main"
    files = [main / f"{c}_{split}.txt" for c in classes]
    if not all(f.exists() for f in files):
        return None
    labels = torch.empty((len(ids), len(classes)), dtype=torch.int8)
    row = {name: i for i, name in enumerate(ids)}
    allowed = ", ".join(str(v) for v in LABEL_VALUES)
    for c, f in enumerate(files):
        seen: Dict[str, int] = {}
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[0] not in row:
                raise BadSampleError(f"{f}, line {n}: unexpected line {line!r} (want '<image id> <1|0|-1>' "
                                     f"for an image of {split}.txt)", f)
            if parts[0] in seen:
                raise BadSampleError(f"{f}, line {n}: image {parts[0]!r} is listed twice (first on line "
                                     f"{seen[parts[0]]})", f)
            try:
                value = int(parts[1])
            except ValueError:
                value = None
            if value not in LABEL_VALUES:
                raise BadSampleError(f"{f}, line {n}: label {parts[1]!r} of image {parts[0]!r} is not one of "
                                     f"{allowed} (1 positive, -1 negative, 0 only difficult instances)", f)
            labels[row[parts[0]], c] = value
            seen[parts[0]] = n
        if len(seen) != len(ids):
            missing = next(i for i in ids if i not in seen)
            raise BadSampleError(f"{f} lists {len(seen)} images, {split}.txt lists {len(ids)} "
                                 f"(e.g. {missing!r} has no label in it)", f)
    return labels


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


def annotation_size(ann: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """``(height, width)`` from an annotation's ``<size>``, or None when absent or unreadable."""
    size = ann.get("size", {})
    try:
        hw = (int(float(size["height"])), int(float(size["width"])))
    except (KeyError, TypeError, ValueError):
        return None
    return hw if hw[0] > 0 and hw[1] > 0 else None


def annotation_objects(ann: Dict[str, Any], classes: Sequence[str], path: PathLike) -> List[Tuple[int, Box, bool]]:
    """``(class index, (xmin - 1, ymin - 1, xmax, ymax), difficult)`` for each object of a parsed XML.

    A box sticking out of the image (``<size>``) is clipped to it. An inverted box (``xmax < xmin``
    or ``ymax < ymin``) and one wholly outside the image raise :class:`BadSampleError` naming the
    file, like an unknown class or an unreadable ``<bndbox>``.
    """
    hw = annotation_size(ann)
    out = []
    for i, obj in enumerate(ann["object"]):
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
        if x1 < x0 or y1 < y0:
            raise BadSampleError(
                f"{path}: object #{i} ({name}) has an inverted box xmin={x0:g} ymin={y0:g} xmax={x1:g} "
                f"ymax={y1:g}; VOC boxes need xmin <= xmax and ymin <= ymax (fix the file, or pass "
                f"skip_bad=True to skip the image)", path)
        box = (x0 - 1.0, y0 - 1.0, x1, y1)
        if hw is not None:
            h, w = hw
            box = (min(max(box[0], 0.0), w), min(max(box[1], 0.0), h), min(max(box[2], 0.0), w),
                   min(max(box[3], 0.0), h))
            if box[2] <= box[0] or box[3] <= box[1]:
                raise BadSampleError(
                    f"{path}: object #{i} ({name}) box xmin={x0:g} ymin={y0:g} xmax={x1:g} ymax={y1:g} lies "
                    f"outside the {w}x{h} image (fix the file, or pass skip_bad=True to skip the image)", path)
        difficult = str(obj.get("difficult", "0")).strip() not in ("0", "")
        out.append((c, box, difficult))
    return out


def image_labels(ann: Dict[str, Any], classes: Sequence[str] = VOC_CLASSES, path: PathLike = "?") -> torch.Tensor:
    """The devkit's per-class label of one parsed annotation: ``1`` positive, ``0`` only
    difficult instances (ignored), ``-1`` absent. Shape ``(len(classes),)``, int8."""
    lab = torch.full((len(classes),), -1, dtype=torch.int8)
    for c, _box, difficult in annotation_objects(ann, classes, path):
        if not difficult:
            lab[c] = 1
        elif lab[c] == -1:
            lab[c] = 0
    return lab


def annotation_xml(name: str, folder: str, w: int, h: int, objects: Sequence[dict]) -> bytes:
    """One VOC XML file (the inverse of :func:`parse_annotation`) for ``objects``: dicts with ``name``,
    ``bbox`` (1-based inclusive), ``difficult``, ``truncated``, ``occluded``."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "sca_lib synthetic VOC-format devkit (not Pascal VOC)"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(w)
    ET.SubElement(size, "height").text = str(h)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = obj["name"]
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = str(obj["truncated"])
        ET.SubElement(o, "occluded").text = str(obj["occluded"])
        bb = ET.SubElement(o, "bndbox")
        for key, val in zip(("xmin", "ymin", "xmax", "ymax"), obj["bbox"]):
            ET.SubElement(bb, key).text = str(int(val))
        ET.SubElement(o, "difficult").text = str(obj["difficult"])
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def object_labels(objects: Sequence[dict], classes: Sequence[str]) -> List[int]:
    """The devkit's per-class image label: 1 (a non-difficult instance), 0 (only difficult), -1."""
    labels = [-1] * len(classes)
    for obj in objects:
        c = classes.index(obj["name"])
        if not obj["difficult"]:
            labels[c] = 1
        elif labels[c] == -1:
            labels[c] = 0
    return labels


def load_image(path: Path) -> Image.Image:
    """The RGB image at ``path``; :class:`BadSampleError` naming it when missing or unreadable."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise BadSampleError(f"image file missing: {path}", path) from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for corrupt/truncated files
        raise BadSampleError(f"cannot read image {path}: {e}", path) from None


def check_image(path: Path) -> None:
    """Decode ``path`` cheaply (JPEG draft mode) to find unreadable files; raises BadSampleError."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except FileNotFoundError:
        raise BadSampleError(f"image file missing: {path}", path) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadSampleError(f"cannot read image {path}: {e}", path) from None


def check_voc_tree(root: PathLike, year: str = "2012", splits: Sequence[str] = ("train", "val")) -> List[str]:
    """Problems that make ``root`` not a complete ``VOC<year>`` devkit; an empty list means complete.

    Checks the layout (for that year), that the ``splits`` exist, are non-empty and list each image
    once, and that every image they list has its JPEG and XML file.
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
            ids = read_split(devkit, split, str(year))
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
