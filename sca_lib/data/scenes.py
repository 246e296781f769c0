"""Drawing version 2 of the synthetic devkit: small objects in cluttered scenes, with confusers.

Version 1 (:mod:`sca_lib.data.render`) drew one to three fairly large objects; a network could
name them from a 3x3 map. Version 2 is built so that *where* matters:

- **Small objects** (20-34 % of the shorter image side by default; tiny ones, marked
  ``difficult``, 8-11 %) in images of 112-144 px per side: at a 112 px input an object covers one
  to two cells of the 7x7 map a stride-16 placement sees.
- **Confusers, the difficulty knob** (``SyntheticConfig.confusers``, a count per image). A
  confuser is a *phantom class*: a class absent from the image whose two cues are both drawn, at
  two different places: its shape in another skin, and its skin on another shape (never making a
  class of either variant). An image with a red ellipse and a grey disc holds "red" and "disc"
  but no ``red-disc``: a model that only asks *whether* a cue is present scores it; one that asks
  what is *at* a place does not. Confusers have the objects' sizes, so size tells nothing, and
  are drawn under the objects after their occluders, so the knob changes no object and no label.
- **Clutter**: the version-1 background (colour gradients, texture patches, lines and arcs,
  noise) plus ``distractors`` shapes that share no cue with any class, and occluders of the same
  kind over some objects.

The ``target`` variant keeps version 1's 20 classes (shapes disc, square, triangle, star, cross x
skins red, blue, striped, checked). The ``source`` variant (pre-training, one object per image)
shares the *primitives* but not the label space: its 20 classes pair target shapes with the source
skins (green, purple, grid, dotted) and the source shapes (ring, hexagon, arrow, crescent, tee)
with the target skins, half of each pairing (:data:`SOURCE_CLASSES_V2`), so a network pre-trained
on it has seen every target shape and skin but never a target class. Neither variant ever draws a
class of the other as a distractor.

Image ``i`` depends only on ``(seed, variant, i, version)``; the VOC annotations (``difficult``,
``truncated``, ``occluded``, boxes from what is visible) follow version 1's rules.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Tuple

import numpy as np
from PIL import Image

from .render import (
    FREE_SHAPES,
    FREE_SKINS,
    SOURCE_SHAPES,
    SOURCE_SKINS,
    TARGET_SHAPES,
    TARGET_SKINS,
    VARIANTS,
    _background,
    _composite,
    _iou,
    _Layer,
    _make_layer,
    annotate,
)

if TYPE_CHECKING:  # only a type hint: synthetic.py imports this module
    from .synthetic import SyntheticConfig

__all__ = ["SCENE_VERSION", "TARGET_CLASSES_V2", "SOURCE_CLASSES_V2", "scene_classes", "render_scene"]

#: The devkit version this module draws (part of every image's seed).
SCENE_VERSION = 2


def _pairs(shapes: Tuple[str, ...], skins: Tuple[str, ...], half: bool) -> List[Tuple[str, str]]:
    """(shape, skin) pairs in label order; ``half`` keeps those with an even ``i + j`` (a checkerboard)."""
    return [(sh, sk) for i, sh in enumerate(shapes) for j, sk in enumerate(skins) if not half or (i + j) % 2 == 0]


_CLASS_PAIRS: Dict[str, List[Tuple[str, str]]] = {
    "target": [(sh, sk) for sh in TARGET_SHAPES for sk in TARGET_SKINS],  # version 1's order
    "source": _pairs(TARGET_SHAPES, SOURCE_SKINS, True) + _pairs(SOURCE_SHAPES, TARGET_SKINS, True),
}
TARGET_CLASSES_V2: Tuple[str, ...] = tuple(f"{sk}-{sh}" for sh, sk in _CLASS_PAIRS["target"])
SOURCE_CLASSES_V2: Tuple[str, ...] = tuple(f"{sk}-{sh}" for sh, sk in _CLASS_PAIRS["source"])

_ALL_SHAPES = TARGET_SHAPES + SOURCE_SHAPES + FREE_SHAPES
_ALL_SKINS = TARGET_SKINS + SOURCE_SKINS + FREE_SKINS


def scene_classes(variant: str) -> Tuple[str, ...]:
    """The 20 class names of a version-2 variant, in label order."""
    return TARGET_CLASSES_V2 if variant == "target" else SOURCE_CLASSES_V2


#: (shape, skin) pairs no distractor ever is: a class of either variant.
_FORBIDDEN = frozenset(_CLASS_PAIRS["target"]) | frozenset(_CLASS_PAIRS["source"])


def _cue_sets(variant: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(shapes, skins) that are a cue of some class of ``variant``."""
    pairs = _CLASS_PAIRS[variant]
    return (tuple(sh for sh in _ALL_SHAPES if any(p[0] == sh for p in pairs)),
            tuple(sk for sk in _ALL_SKINS if any(p[1] == sk for p in pairs)))


def _pick(rng: np.random.Generator, items: Tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _place(rng: np.random.Generator, side: float, w: int, h: int, boxes: List[Tuple[float, ...]],
           border: float = 0.3) -> Tuple[float, float]:
    """A top-left corner for a ``side`` square overlapping ``boxes`` little (up to ``border`` of it
    may stick out of the image)."""
    for _attempt in range(20):
        x = rng.uniform(-border * side, w - (1 - border) * side)
        y = rng.uniform(-border * side, h - (1 - border) * side)
        b = (x, y, x + side, y + side)
        if all(_iou(b, o) < 0.05 for o in boxes):
            break
    boxes.append(b)
    return x, y


def render_scene(cfg: "SyntheticConfig", index: int) -> Tuple[Image.Image, List[dict]]:
    """Draw image ``index`` of a version-2 ``cfg``: the RGB image and its VOC objects (as
    :func:`sca_lib.data.render.render_sample` returns them). Depends only on ``(cfg, index)``."""
    rng = np.random.default_rng([int(cfg.seed), VARIANTS.index(cfg.variant), int(index), SCENE_VERSION])
    lo, hi = cfg.size_range
    w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    short = min(w, h)
    pairs = _CLASS_PAIRS[cfg.variant]
    classes = scene_classes(cfg.variant)
    cue_shapes, cue_skins = _cue_sets(cfg.variant)
    free_shapes = tuple(s for s in _ALL_SHAPES if s not in cue_shapes)
    free_skins = tuple(s for s in _ALL_SKINS if s not in cue_skins)
    canvas = _background(h, w, rng)

    def neutral(side: float, x: float, y: float) -> _Layer:
        """A shape sharing no cue with any class of this variant."""
        return _make_layer(_pick(rng, free_shapes), _pick(rng, free_skins), side, int(x), int(y), rng)

    # 1. clutter: shapes that share no cue with a class, anywhere, under everything else
    below: List[_Layer] = []
    for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
        side = short * rng.uniform(0.1, 0.3)
        below.append(neutral(side, rng.uniform(-side / 3, w - side * 2 / 3), rng.uniform(-side / 3, h - side * 2 / 3)))
    # 2. the objects, little overlap between them
    boxes: List[Tuple[float, ...]] = []
    objects: List[_Layer] = []
    for k in range(int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))):
        if k > 0 and rng.random() < 0.25:  # another instance of a class already present
            cls = objects[int(rng.integers(len(objects)))].cls
        else:
            cls = int(rng.integers(len(classes)))
        tiny = rng.random() < cfg.p_tiny
        side = max(short * rng.uniform(*(cfg.tiny_scale if tiny else cfg.object_scale)), 6.0)
        x, y = _place(rng, side, w, h, boxes)
        shape, skin = pairs[cls]
        objects.append(_make_layer(shape, skin, side, int(round(x)), int(round(y)), rng, cls=cls))
    # 3. occluders (sharing no cue) over some objects, drawn before the knob acts: the objects and
    # their annotations do not depend on it
    above: List[_Layer] = []
    for obj in objects:
        if rng.random() < cfg.p_occlude:
            s = obj.mask.shape[0]
            side, ang, dist = s * rng.uniform(0.7, 1.1), rng.uniform(0, 2 * math.pi), s * rng.uniform(0.25, 0.6)
            cx, cy = obj.x + s / 2 + dist * math.cos(ang), obj.y + s / 2 + dist * math.sin(ang)
            above.append(neutral(side, cx - side / 2, cy - side / 2))
    # 4. confusers: per phantom class (absent from the image), its shape in another skin and its
    # skin on another shape (never a class of either variant), each at a place of its own, the
    # size of an object
    present = {o.cls for o in objects}
    absent = [c for c in range(len(classes)) if c not in present]
    confusers: List[_Layer] = []
    for _ in range(cfg.confusers):
        shape, skin = pairs[absent[int(rng.integers(len(absent)))]]
        for cue_shape, cue_skin in ((shape, None), (None, skin)):
            for _attempt in range(20):  # never a class of either variant
                sh = cue_shape or _pick(rng, free_shapes + tuple(s for s in _ALL_SHAPES if s != shape))
                sk = cue_skin or _pick(rng, free_skins + tuple(s for s in _ALL_SKINS if s != skin))
                if (sh, sk) not in _FORBIDDEN:
                    break
            else:
                sh, sk = (shape, _pick(rng, free_skins)) if cue_shape else (_pick(rng, free_shapes), skin)
            side = max(short * rng.uniform(*cfg.object_scale), 6.0)
            x, y = _place(rng, side, w, h, boxes)
            confusers.append(_make_layer(sh, sk, side, int(round(x)), int(round(y)), rng))

    for layer in below + confusers + objects + above:
        _composite(canvas, layer)
    canvas += rng.normal(0, rng.uniform(3, 9), canvas.shape).astype(np.float32)
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")
    # 5. annotations from what is visible; under 12 % of the shorter side is difficult
    return image, annotate(objects, above, classes, h, w, small=0.12 * short)
