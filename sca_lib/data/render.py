"""Drawing the synthetic devkit's images: the shape and skin vocabulary, and :func:`render_sample`.

Two variants, each with 20 classes of its own:

- ``"target"`` (the VOC stand-in): 1 to 3 small objects per image, multi-label. A class is a
  conjunction of a *shape* (disc, square, triangle, star, cross) and a *skin* (solid red, solid
  blue, yellow/black stripes, magenta/white checks): 5 x 4 = 20 classes. Neither cue alone names
  the class, because distractors carry class shapes in other skins and other shapes in class skins,
  on a cluttered, textured background. Some objects are ``difficult`` (tiny or mostly occluded),
  some ``truncated`` by the border. Attention has something to do: find the few small regions that
  matter ("where") and tell the conjunction of cues apart ("what").
- ``"source"`` (a local stand-in for ImageNet pre-training): one larger object per image, single
  label, 20 *other* classes (shapes ring, hexagon, arrow, crescent, tee x skins green, purple, grid,
  dots), same kind of clutter. Pre-train a backbone on it, transfer to ``"target"``.

Image ``i`` of a variant depends only on ``(seed, variant, i)`` and :data:`GENERATOR_VERSION`.
:mod:`sca_lib.data.synthetic` sizes the data set and writes it to disk as a VOC devkit.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:  # only a type hint: synthetic.py imports this module
    from .synthetic import SyntheticConfig

__all__ = [
    "GENERATOR_VERSION",
    "VARIANTS",
    "TARGET_CLASSES",
    "SOURCE_CLASSES",
    "synthetic_classes",
    "check_variant",
    "render_sample",
]

#: Bump when the drawing changes: it is part of every image's seed and of the up-to-date check.
GENERATOR_VERSION = 1
VARIANTS = ("target", "source")

# --------------------------------------------------------------------------------------------
# Appearance vocabulary
# --------------------------------------------------------------------------------------------
TARGET_SHAPES = ("disc", "square", "triangle", "star", "cross")
TARGET_SKINS = ("red", "blue", "striped", "checked")
SOURCE_SHAPES = ("ring", "hexagon", "arrow", "crescent", "tee")
SOURCE_SKINS = ("green", "purple", "grid", "dotted")
# Shapes and skins that never name a class of either variant.
FREE_SHAPES = ("ellipse", "ell", "semicircle", "diamond")
FREE_SKINS = ("grey", "brown", "orange", "noise")

TARGET_CLASSES: Tuple[str, ...] = tuple(f"{k}-{s}" for s in TARGET_SHAPES for k in TARGET_SKINS)
SOURCE_CLASSES: Tuple[str, ...] = tuple(f"{k}-{s}" for s in SOURCE_SHAPES for k in SOURCE_SKINS)

# Distractors of each variant: (shapes, skins) pairs that are never a class of that variant.
_DISTRACTORS = {
    # right shape, wrong skin / wrong shape, right skin / neither
    "target": (
        (TARGET_SHAPES, FREE_SKINS + SOURCE_SKINS),
        (FREE_SHAPES + SOURCE_SHAPES, TARGET_SKINS),
        (FREE_SHAPES + SOURCE_SHAPES, FREE_SKINS + SOURCE_SKINS),
    ),
    "source": (
        (SOURCE_SHAPES, FREE_SKINS + TARGET_SKINS),
        (FREE_SHAPES + TARGET_SHAPES, SOURCE_SKINS),
        (FREE_SHAPES + TARGET_SHAPES, FREE_SKINS + TARGET_SKINS),
    ),
}

_SOLID_HSV = {  # hue, (sat lo, hi), (val lo, hi)
    "red": (0.0, (0.65, 0.95), (0.55, 0.95)),
    "blue": (0.62, (0.6, 0.95), (0.5, 0.95)),
    "green": (0.33, (0.55, 0.9), (0.45, 0.85)),
    "purple": (0.80, (0.45, 0.8), (0.45, 0.85)),
    "grey": (0.0, (0.0, 0.08), (0.35, 0.8)),
    "brown": (0.07, (0.5, 0.8), (0.3, 0.5)),
    "orange": (0.09, (0.7, 0.95), (0.75, 1.0)),
}


def synthetic_classes(variant: str = "target") -> Tuple[str, ...]:
    """The 20 class names of a variant, in label order."""
    check_variant(variant)
    return TARGET_CLASSES if variant == "target" else SOURCE_CLASSES


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown synthetic variant {variant!r}; expected one of {', '.join(VARIANTS)}")


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
def _star(n: int, inner: float) -> np.ndarray:
    a = np.arange(2 * n) * math.pi / n - math.pi / 2
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _ngon(n: int, phase: float = -math.pi / 2) -> np.ndarray:
    a = np.arange(n) * 2 * math.pi / n + phase
    return np.stack([np.cos(a), np.sin(a)], 1)


def _ellipse(ax: float = 1.0, ay: float = 1.0, n: int = 40, a0: float = 0.0, a1: float = 2 * math.pi) -> np.ndarray:
    a = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2 * math.pi - 1e-6)
    return np.stack([ax * np.cos(a), ay * np.sin(a)], 1)


_W = 0.36  # arm half-width of cross / tee / ell
# Each shape: list of (polygon in [-1, 1]^2, fill) drawn in order; fill 0 cuts a hole.
_SHAPES = {
    "disc": lambda r: [(_ellipse(1, r.uniform(0.85, 1.0)), 255)],
    "square": lambda r: [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [0.85, 0.85 * r.uniform(0.85, 1.0)], 255)],
    "triangle": lambda r: [(_ngon(3) * [1, 1] + [0, 0.2], 255)],
    "star": lambda r: [(_star(5, 0.45), 255)],
    "cross": lambda r: [(np.array([[-_W, -1], [_W, -1], [_W, -_W], [1, -_W], [1, _W], [_W, _W], [_W, 1],
                                   [-_W, 1], [-_W, _W], [-1, _W], [-1, -_W], [-_W, -_W]]), 255)],
    "ring": lambda r: [(_ellipse(1, 1), 255), (_ellipse(0.55, 0.55), 0)],
    "hexagon": lambda r: [(_ngon(6, 0.0), 255)],
    "arrow": lambda r: [(np.array([[-1, -0.3], [0.1, -0.3], [0.1, -0.8], [1, 0], [0.1, 0.8], [0.1, 0.3],
                                   [-1, 0.3]]), 255)],
    "crescent": lambda r: [(_ellipse(1, 1), 255), (_ellipse(0.85, 0.85) + [0.45, 0], 0)],
    "tee": lambda r: [(np.array([[-1, -1], [1, -1], [1, -1 + 2 * _W], [_W, -1 + 2 * _W], [_W, 1], [-_W, 1],
                                 [-_W, -1 + 2 * _W], [-1, -1 + 2 * _W]]), 255)],
    "ellipse": lambda r: [(_ellipse(1, r.uniform(0.35, 0.55)), 255)],
    "ell": lambda r: [(np.array([[-0.8, -1], [-0.8 + 2 * _W * 0.8, -1], [-0.8 + 2 * _W * 0.8, 1 - 2 * _W * 0.8],
                                 [0.8, 1 - 2 * _W * 0.8], [0.8, 1], [-0.8, 1]]), 255)],
    "semicircle": lambda r: [(_ellipse(1, 1, 24, 0, math.pi) - [0, 0.4], 255)],
    "diamond": lambda r: [(np.array([[0, -1], [0.55, 0], [0, 1], [-0.55, 0]]), 255)],
}


def _shape_mask(shape: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """A (side, side) uint8 mask of ``shape``, randomly rotated, anti-aliased."""
    ss = 3  # supersampling
    big = side * ss
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    theta = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    half = (big - 1) / 2.0
    for poly, fill in _SHAPES[shape](rng):
        pts = (np.asarray(poly, dtype=np.float64) @ rot.T) * half * 0.98 + half
        draw.polygon([tuple(p) for p in pts], fill=fill)
    return np.asarray(img.resize((side, side), Image.BOX))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _stripes(h: int, w: int, rng: np.random.Generator, period: float) -> np.ndarray:
    theta = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, period)
    return (((xx * math.cos(theta) + yy * math.sin(theta) + phase) % period) < period / 2).astype(np.float32)


def _checks(h: int, w: int, rng: np.random.Generator, cell: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ox, oy = rng.uniform(0, cell, 2)
    return ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2).astype(np.float32)


def _two_tone(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _skin(skin: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An (h, w, 3) float32 RGB texture for ``skin``."""
    j = rng.uniform(-0.12, 0.12)  # brightness jitter
    if skin in _SOLID_HSV:
        hue, (s0, s1), (v0, v1) = _SOLID_HSV[skin]
        c = _hsv(hue + rng.uniform(-0.025, 0.025), rng.uniform(s0, s1), rng.uniform(v0, v1))
        out = np.broadcast_to(c, (h, w, 3)).astype(np.float32)
        # a soft shading gradient so solids are not perfectly flat
        g = np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-18, 18)
        return out + g
    if skin == "striped":  # yellow / near-black stripes
        t = _stripes(h, w, rng, rng.uniform(4.0, 6.5))
        return _two_tone(t, _hsv(0.15 + rng.uniform(-0.02, 0.02), 0.9, 0.95 + j / 3), _hsv(0.0, 0.0, 0.12))
    if skin == "checked":  # magenta / white checks
        t = _checks(h, w, rng, rng.uniform(3.0, 5.0))
        return _two_tone(t, _hsv(0.87, 0.8, 0.85 + j / 3), _hsv(0.0, 0.0, 0.97))
    if skin == "grid":  # white grid lines on dark blue-green
        yy, xx = np.mgrid[0:h, 0:w]
        p = int(rng.integers(4, 7))
        t = (((xx % p) == 0) | ((yy % p) == 0)).astype(np.float32)
        return _two_tone(t, _hsv(0.5, 0.7, 0.35), _hsv(0.0, 0.0, 0.95))
    if skin == "dotted":  # black dots on orange-yellow
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        p = rng.uniform(4.0, 6.0)
        d = np.hypot((xx % p) - p / 2, (yy % p) - p / 2)
        t = (d < p * 0.28).astype(np.float32)
        return _two_tone(t, _hsv(0.12, 0.75, 0.9), _hsv(0.0, 0.0, 0.08))
    if skin == "noise":  # multicoloured speckle
        base = rng.uniform(60, 200, 3).astype(np.float32)
        return base + rng.normal(0, 45, (h, w, 3)).astype(np.float32)
    raise KeyError(skin)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A cluttered, textured (h, w, 3) float32 background."""
    low = rng.uniform(40, 210, (3, 3, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
    # texture patches in random colours (never a class's exact skin)
    for _ in range(int(rng.integers(2, 5))):
        ph, pw = int(rng.integers(h // 5, h // 2 + 1)), int(rng.integers(w // 5, w // 2 + 1))
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        kind = rng.integers(3)
        if kind == 0:
            t = _stripes(ph, pw, rng, rng.uniform(2.5, 8.0))
        elif kind == 1:
            t = _checks(ph, pw, rng, rng.uniform(2.0, 7.0))
        else:
            t = (rng.random((ph, pw)) < 0.5).astype(np.float32)
        c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
        a = rng.uniform(0.25, 0.6)
        img[y:y + ph, x:x + pw] = (1 - a) * img[y:y + ph, x:x + pw] + a * _two_tone(t, c0, c1)
    # lines and arcs
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 9))):
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        pts = [(float(rng.uniform(-10, w + 10)), float(rng.uniform(-10, h + 10))) for _ in range(2)]
        if rng.random() < 0.6:
            draw.line(pts, fill=col, width=int(rng.integers(1, 3)))
        else:
            x0, y0 = min(p[0] for p in pts), min(p[1] for p in pts)
            x1, y1 = max(p[0] for p in pts), max(p[1] for p in pts)
            draw.arc([x0, y0, x1 + 2, y1 + 2], float(rng.uniform(0, 360)), float(rng.uniform(0, 360)),
                     fill=col, width=int(rng.integers(1, 3)))
    return np.asarray(pil, dtype=np.float32)


@dataclass
class _Layer:
    mask: np.ndarray  # (s, s) uint8 coverage
    skin: np.ndarray  # (s, s, 3) float32
    x: int  # top-left corner, may be negative or past the border (truncation)
    y: int
    cls: Optional[int] = None  # class index for objects, None for distractors / occluders


def _make_layer(shape: str, skin: str, side: int, x: int, y: int, rng: np.random.Generator,
                cls: Optional[int] = None) -> _Layer:
    side = max(int(side), 4)
    return _Layer(_shape_mask(shape, side, rng), _skin(skin, side, side, rng), int(x), int(y), cls)


def _paste_region(layer: _Layer, h: int, w: int):
    """Clipped slices (image, layer) where the layer lands on an (h, w) canvas, or None."""
    s = layer.mask.shape[0]
    x0, y0 = max(layer.x, 0), max(layer.y, 0)
    x1, y1 = min(layer.x + s, w), min(layer.y + s, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - layer.y, y1 - layer.y), slice(x0 - layer.x, x1 - layer.x))


def _composite(canvas: np.ndarray, layer: _Layer) -> None:
    reg = _paste_region(layer, *canvas.shape[:2])
    if reg is None:
        return
    (iy, ix), (ly, lx) = reg
    a = layer.mask[ly, lx].astype(np.float32)[..., None] / 255.0
    canvas[iy, ix] = canvas[iy, ix] * (1 - a) + layer.skin[ly, lx] * a


def _full_mask(layer: _Layer, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    reg = _paste_region(layer, h, w)
    if reg is not None:
        (iy, ix), (ly, lx) = reg
        m[iy, ix] = layer.mask[ly, lx] > 127
    return m


def render_sample(cfg: SyntheticConfig, index: int) -> Tuple[Image.Image, List[dict]]:
    """Draw image ``index`` of ``cfg``: the RGB image and its objects.

    Each object is ``{"name", "bbox": (xmin, ymin, xmax, ymax) 1-based inclusive VOC pixels,
    "difficult", "truncated", "occluded"}``. Depends only on ``(cfg, index)``.
    """
    variant_code = VARIANTS.index(cfg.variant)
    rng = np.random.default_rng([int(cfg.seed), variant_code, int(index), GENERATOR_VERSION])
    lo, hi = cfg.size_range
    w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    short = min(w, h)
    classes = synthetic_classes(cfg.variant)
    shapes, skins = (TARGET_SHAPES, TARGET_SKINS) if cfg.variant == "target" else (SOURCE_SHAPES, SOURCE_SKINS)
    canvas = _background(h, w, rng)

    def distractor(side: float, x: int, y: int) -> _Layer:
        pool_shapes, pool_skins = _DISTRACTORS[cfg.variant][int(rng.integers(3))]
        return _make_layer(pool_shapes[int(rng.integers(len(pool_shapes)))],
                           pool_skins[int(rng.integers(len(pool_skins)))], side, x, y, rng)

    # 1. distractors underneath the objects
    below: List[_Layer] = []
    for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
        side = short * rng.uniform(0.12, 0.34)
        below.append(distractor(side, int(rng.uniform(-side / 3, w - side * 2 / 3)),
                                int(rng.uniform(-side / 3, h - side * 2 / 3))))
    # 2. objects, placed with little overlap between them
    n_obj = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    objects: List[_Layer] = []
    boxes: List[Tuple[float, float, float, float]] = []
    for k in range(n_obj):
        if k > 0 and rng.random() < 0.25:  # another instance of a class already present
            cls = objects[int(rng.integers(len(objects)))].cls
        else:
            cls = int(rng.integers(len(classes)))
        tiny = rng.random() < cfg.p_tiny
        side = short * rng.uniform(*(cfg.tiny_scale if tiny else cfg.object_scale))
        side = max(side, 6.0)
        for _attempt in range(20):
            # allow up to ~30% of the object past the border (VOC's "truncated")
            x = rng.uniform(-0.3 * side, w - 0.7 * side)
            y = rng.uniform(-0.3 * side, h - 0.7 * side)
            b = (x, y, x + side, y + side)
            if all(_iou(b, o) < 0.05 for o in boxes):
                break
        boxes.append(b)
        shape, skin = shapes[cls // len(skins)], skins[cls % len(skins)]
        assert classes[cls] == f"{skin}-{shape}"
        objects.append(_make_layer(shape, skin, side, int(round(x)), int(round(y)), rng, cls=cls))
    # 3. occluders drawn over some objects
    above: List[_Layer] = []
    for obj in objects:
        if rng.random() < cfg.p_occlude:
            s = obj.mask.shape[0]
            side = s * rng.uniform(0.7, 1.1)
            ang = rng.uniform(0, 2 * math.pi)
            dist = s * rng.uniform(0.25, 0.6)
            cx, cy = obj.x + s / 2 + dist * math.cos(ang), obj.y + s / 2 + dist * math.sin(ang)
            above.append(distractor(side, int(cx - side / 2), int(cy - side / 2)))

    for layer in below + objects + above:
        _composite(canvas, layer)
    canvas += rng.normal(0, rng.uniform(3, 9), canvas.shape).astype(np.float32)
    image = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")

    # 4. annotations from what is visible
    annotations = annotate(objects, above, classes, h, w, small=0.14 * short)
    return image, annotations


def annotate(objects: List[_Layer], above: List[_Layer], classes: Tuple[str, ...], h: int, w: int,
             small: float) -> List[dict]:
    """VOC annotations of ``objects`` (composited in order, ``above`` over them) from what is visible.

    An object with fewer than 4 visible pixels is left out; one whose visible box is under
    ``small`` pixels on its longer side, or less than half visible, is ``difficult``.
    """
    stack = objects + above
    annotations = []
    for i, obj in enumerate(objects):
        area_full = float((obj.mask > 127).sum())
        vis = _full_mask(obj, h, w)
        in_frame = float(vis.sum())
        for later in stack[i + 1:]:
            vis &= ~_full_mask(later, h, w)
        area_vis = float(vis.sum())
        if area_full == 0 or area_vis < 4:
            continue  # nothing left to annotate (drawn, but invisible)
        ys, xs = np.nonzero(vis)
        bbox = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        frac_vis = area_vis / area_full
        truncated = in_frame < 0.97 * area_full
        occluded = area_vis < 0.9 * in_frame
        too_small = max(bbox[2] - bbox[0] + 1, bbox[3] - bbox[1] + 1) < small
        difficult = bool(too_small or frac_vis < 0.5)
        annotations.append({"name": classes[obj.cls], "bbox": bbox, "difficult": int(difficult),
                            "truncated": int(truncated), "occluded": int(occluded)})
    return annotations


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
