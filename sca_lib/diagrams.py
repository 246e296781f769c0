"""Where the attention goes: a diagram of a backbone with its attention placement highlighted.

:func:`placement_diagram` draws a torchvision backbone that :func:`sca_lib.build_classifier`
supports as a left-to-right chain of its units, in forward order, and marks where a placement puts
the attention module::

    sca_lib.placement_diagram("vgg16")                          # the default, after conv5_3
    sca_lib.placement_diagram("vgg16", "article_slice")         # where the article's code puts it
    sca_lib.placement_diagram("resnet50", "detection")          # 7 blocks replaced by AttnResBlock
    sca_lib.placement_diagram("mobilenet_v3_large", "replace_se")

The units are VGG16's convs (each with its ReLU) and max-pools (``conv1_1`` ... ``pool5``),
ResNet's stem and blocks (``stem``, ``layer1.0`` ... ``layer4.N``) and MobileNetV3's feature
blocks (``features.0`` ... ``features.N``), then the classification head. Below a unit is its
output shape C x H x W for an ``image_size`` x ``image_size`` image, wherever it differs from the
previous unit's (computed by a forward on the meta device: no weights, no arithmetic, well under a
second).

What is highlighted comes from the placement table (:mod:`sca_lib.placements`), by each place's
kind: an ``insert`` is a new box after the unit it follows; a ``replace_block`` recolours the block
and names the :class:`~sca_lib.attention.AttnResBlock` that takes its place; an ``inside_block``
(attention inside a ResNet block, before the residual add) and a ``replace_se`` (MobileNetV3's
built-in SE replaced) are a marker inside the block. Groups (``"detection"``, ``"replace_se"``)
expand to their members. :func:`placement_layout` returns the same chain as data.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import torch
import torchvision
from torch import nn

from ._checks import positive_int
from .backbones import _backbone
from .placements import Place, placement_table, resolve_placements

if TYPE_CHECKING:  # matplotlib is imported when a diagram is drawn, not with sca_lib
    from matplotlib.axes import Axes

__all__ = ["Unit", "Box", "backbone_units", "placement_layout", "placement_diagram", "module_steps", "module_diagram", "COLOURS"]

#: Fill colours of the diagram, by box or marker kind.
COLOURS = {
    "unit": "#dde4ee",  # a unit of the backbone, kept as it is
    "head": "#f2e6c9",  # the classification head (build_classifier gives it num_classes outputs)
    "insert": "#c44e52",  # a new attention module inserted after a unit
    "replace_block": "#dd8452",  # a block replaced by a new AttnResBlock
    "inside_block": "#55a868",  # attention inside a block, before its residual add
    "replace_se": "#8172b3",  # the block's built-in SE replaced by the attention module
}

_LEGEND = {
    "unit": "backbone unit (kept)",
    "head": "classification head (new)",
    "insert": "attention module inserted (new)",
    "replace_block": "block replaced by a new AttnResBlock",
    "inside_block": "attention inside the block, before the residual add",
    "replace_se": "built-in SE block replaced by the attention module",
}


@dataclass(frozen=True)
class Unit:
    """One unit of a backbone's chain: its name (``"conv5_3"``, ``"layer4.1"``, ``"features.16"``,
    ``"stem"``, ``"head"``), the module paths of the plain torchvision model it covers (a VGG conv
    covers its ReLU too), and its output shape (C, H, W) (None for the head)."""

    name: str
    paths: Tuple[str, ...]
    shape: Optional[Tuple[int, int, int]]


@dataclass(frozen=True)
class Box:
    """One box of the diagram, in forward order. ``kind``: ``"unit"``, ``"head"``, ``"insert"``
    (a new attention module after the box before it) or ``"replace_block"`` (a block replaced by an
    AttnResBlock). ``name``: the unit's name (for an insert: the unit it follows). ``placement``:
    the placement name that made it an insert / a replaced block. ``markers``: (kind, placement)
    pairs drawn inside the box (``"inside_block"``, ``"replace_se"``). ``shape``: output (C, H, W)."""

    kind: str
    name: str
    label: str
    shape: Optional[Tuple[int, int, int]]
    placement: Optional[str] = None
    markers: Tuple[Tuple[str, str], ...] = ()


def _units(model: nn.Module, family: str) -> List[Tuple[str, List[str]]]:
    """(name, module paths) of every unit of the plain torchvision ``model``, in forward order."""
    units: List[Tuple[str, List[str]]] = []
    if family == "vgg":
        block, conv = 1, 0
        for i, m in enumerate(model.features):
            if isinstance(m, nn.Conv2d):
                conv += 1
                units.append((f"conv{block}_{conv}", [f"features.{i}"]))
            elif isinstance(m, nn.MaxPool2d):
                units.append((f"pool{block}", [f"features.{i}"]))
                block, conv = block + 1, 0
            else:  # the conv's ReLU
                units[-1][1].append(f"features.{i}")
        units.append(("head", ["avgpool", "classifier"]))
    elif family == "resnet":
        units.append(("stem", ["conv1", "bn1", "relu", "maxpool"]))
        for s in range(1, 5):
            units.extend((f"layer{s}.{b}", [f"layer{s}.{b}"]) for b in range(len(getattr(model, f"layer{s}"))))
        units.append(("head", ["avgpool", "fc"]))
    else:  # mobilenet
        units.extend((f"features.{i}", [f"features.{i}"]) for i in range(len(model.features)))
        units.append(("head", ["avgpool", "classifier"]))
    return units


@functools.lru_cache(maxsize=16)
def _structure(name: str, image_size: int) -> Tuple[Tuple[Unit, ...], "OrderedDict[str, Place]"]:
    """The units of backbone ``name`` with their output shapes at ``image_size``, and its placement table."""
    bb = _backbone(name)
    with torch.device("meta"):  # structure only: no weights are allocated or initialised
        model = torchvision.models.get_model(bb.name, weights=None)
    places = placement_table(model, bb.family, bb.default_placement)
    units = _units(model, bb.family)
    shapes = {}
    hooks = [model.get_submodule(paths[-1]).register_forward_hook(
        lambda m, i, o, key=name_: shapes.__setitem__(key, tuple(o.shape[1:])))
        for name_, paths in units if name_ != "head"]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, image_size, image_size, device="meta"))
    except RuntimeError as e:
        raise ValueError(f"placement_diagram: image_size {image_size} is too small for {bb.name} "
                         f"({type(e).__name__}: {e}); its feature maps shrink 32 times, use 32 or more") from None
    finally:
        for h in hooks:
            h.remove()
    return tuple(Unit(n, tuple(p), shapes.get(n)) for n, p in units), places


def backbone_units(backbone: str, image_size: int = 224) -> List[Unit]:
    """The units of ``backbone`` (one of :func:`sca_lib.list_backbones`) in forward order, each with
    the module paths it covers and its output shape (C, H, W) at ``image_size`` x ``image_size``."""
    bb = _backbone(backbone)
    image_size = positive_int("placement_diagram", "image_size", image_size, " (the input's height = width)")
    return list(_structure(bb.name, image_size)[0])


def _unit_of(units: Sequence[Unit], path: str) -> Unit:
    """The unit covering module ``path`` (or a submodule of one of its paths)."""
    for u in units:
        if any(path == p or path.startswith(p + ".") for p in u.paths):
            return u
    raise LookupError(f"no unit of the diagram covers module {path!r}")  # the table and _units disagree


def _resolve(backbone: str, placement: Union[None, str, Sequence[str]], image_size: int):
    bb = _backbone(backbone)
    image_size = positive_int("placement_diagram", "image_size", image_size, " (the input's height = width)")
    units, places = _structure(bb.name, image_size)
    names = resolve_placements(places, bb.default_placement if placement is None else placement, bb.name)
    return bb, units, places, names


def placement_layout(backbone: str, placement: Union[None, str, Sequence[str]] = None,
                     image_size: int = 224) -> List[Box]:
    """The boxes :func:`placement_diagram` draws, in forward order (see :class:`Box`).

    ``placement``: None (the backbone's :func:`~sca_lib.default_placement`), a name of
    :func:`~sca_lib.list_placements` or a list of names; groups expand to their members. Unknown
    backbones and placements raise the ValueError that :func:`~sca_lib.build_classifier` raises.
    """
    _, units, places, names = _resolve(backbone, placement, image_size)
    inserts = {u.name: [] for u in units}  # unit name -> placements inserted after it
    replaced, markers = {}, {u.name: [] for u in units}
    for n in names:
        p = places[n]
        if p.kind == "insert":
            inserts[_unit_of(units, f"{p.target}.{p.index}").name].append(n)
        elif p.kind == "replace_block":
            replaced[_unit_of(units, p.target).name] = n
        else:  # inside_block, replace_se
            markers[_unit_of(units, p.target).name].append((p.kind, n))
    boxes: List[Box] = []
    for u in units:
        if u.name in replaced:
            boxes.append(Box("replace_block", u.name, f"{u.name}\nAttnResBlock", u.shape, replaced[u.name]))
        else:
            boxes.append(Box("head" if u.name == "head" else "unit", u.name, u.name, u.shape,
                             markers=tuple(markers[u.name])))
        boxes.extend(Box("insert", u.name, "attention", u.shape, n) for n in inserts[u.name])
    return boxes


def _title(bb_name: str, placement: Union[None, str, Sequence[str]], names: Sequence[str], default: str,
           image_size: int) -> str:
    asked = [default] if placement is None else [placement] if isinstance(placement, str) else list(placement)
    what = ", ".join(f"'{n}'" for n in asked)
    if placement is None or asked == [default]:
        what += " (default)"
    if len(names) > len(asked):
        what += f" = {len(names)} places"
    return f"{bb_name}: attention at {what}\n(output C×H×W of each unit for a {image_size}×{image_size} image)"


def placement_diagram(backbone: str, placement: Union[None, str, Sequence[str]] = None,
                      ax: Optional["Axes"] = None, image_size: int = 224) -> "Axes":
    """Draw ``backbone`` as a chain of its units with the attention of ``placement`` highlighted.

    Args:
        backbone: one of :func:`sca_lib.list_backbones` (``"vgg16"``, ``"resnet50"``,
            ``"resnet18"``, ``"mobilenet_v3_large"``, ``"mobilenet_v3_small"``).
        placement: None (the backbone's :func:`~sca_lib.default_placement`), a name of
            :func:`~sca_lib.list_placements` (groups such as ``"detection"`` and ``"replace_se"``
            expand to their members) or a list of names, as :func:`sca_lib.build_classifier` takes.
        ax: the matplotlib Axes to draw on; None makes a new figure whose width grows with the
            number of units.
        image_size: the input's height = width, for the shapes written under the units.

    Returns:
        The Axes. Its patches carry gids: ``"unit:NAME"`` (a kept unit or the head),
        ``"insert:PLACEMENT"`` (an inserted module), ``"replace_block:PLACEMENT"`` (a replaced
        block), ``"inside_block:PLACEMENT"`` / ``"replace_se:PLACEMENT"`` (the markers); the shape
        texts ``"shape:NAME"``.

    Raises:
        ValueError: an unknown backbone or placement (naming the valid ones), a placement the
            backbone refuses (with the reason), or an ``image_size`` too small for the backbone.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch
    from matplotlib.lines import Line2D

    bb, _, _, names = _resolve(backbone, placement, image_size)
    boxes = placement_layout(bb.name, names, image_size)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(22.0, max(8.0, 0.5 * len(boxes) + 1.8)), 4.4))
    step, width, height, fs = 1.0, 0.8, 2.6, 10
    mid = height / 2
    ax.text(-0.35, mid, f"input\n3×{image_size}×{image_size}", rotation=90, ha="right", va="center",
            fontsize=fs, color="0.3")
    shown, used = None, set()
    for k, box in enumerate(boxes):
        x = k * step
        small = box.kind == "insert"
        h = height * 0.62 if small else height
        y0 = (height - h) / 2
        face = COLOURS[box.kind]
        gid = f"unit:{box.name}" if box.kind in ("unit", "head") else f"{box.kind}:{box.placement}"
        edge = COLOURS[box.markers[0][0]] if box.markers else "0.35" if box.kind in ("unit", "head") else face
        ax.add_patch(FancyBboxPatch((x, y0), width, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor=face, edgecolor=edge, linewidth=2.0 if box.markers else 1.0, gid=gid))
        used.add(box.kind)
        dark = box.kind in ("insert", "replace_block")
        ax.text(x + width / 2, mid, box.label, rotation=90, ha="center", va="center", fontsize=fs,
                color="white" if dark else "black", fontweight="bold" if dark else "normal")
        for j, (kind, name) in enumerate(box.markers):
            ax.add_patch(FancyBboxPatch((x + 0.14, height - 0.5 - 0.45 * j), width - 0.28, 0.32,
                                        boxstyle="round,pad=0.02,rounding_size=0.06", facecolor=COLOURS[kind],
                                        edgecolor="white", linewidth=0.8, gid=f"{kind}:{name}", zorder=3))
            used.add(kind)
        if box.kind == "insert":
            ax.text(x + width / 2, height + 0.1, box.placement, ha="center", va="bottom", fontsize=fs,
                    color=COLOURS["insert"])
        if box.shape is not None and box.shape != shown:
            ax.text(x + width / 2, -0.12, "×".join(map(str, box.shape)), rotation=90, ha="center", va="top",
                    fontsize=fs, color="0.2", gid=f"shape:{box.name}")
        if box.shape is not None:
            shown = box.shape
        if k + 1 < len(boxes):
            ax.annotate("", xy=(x + step, mid), xytext=(x + width, mid),
                        arrowprops=dict(arrowstyle="-|>", color="0.45", lw=0.9, shrinkA=0, shrinkB=0,
                                        mutation_scale=7))
    handles = [Patch(facecolor=COLOURS[k], edgecolor="0.35", label=_LEGEND[k])
               for k in ("unit", "head", "insert", "replace_block") if k in used]
    handles += [Line2D([], [], marker="s", linestyle="", markersize=9, markerfacecolor=COLOURS[k],
                       markeredgecolor="white", label=_LEGEND[k]) for k in ("inside_block", "replace_se") if k in used]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(handles)),
              frameon=False, fontsize=fs)
    ax.set_xlim(-1.0, len(boxes) * step)
    ax.set_ylim(-2.0, height + 0.8)
    ax.axis("off")
    ax.set_title(_title(bb.name, placement, names, bb.default_placement, image_size), fontsize=11)
    return ax


# --------------------------------------------------------------------------------------------
# Inside the module
# --------------------------------------------------------------------------------------------

_FUSION_SYMBOL = {"multiply": "×", "add": "+", "max": "max", "sequential": "×"}


def _layer_name(layer: nn.Module) -> str:
    return {"ReLU": "ReLU", "Sigmoid": "σ (sigmoid)", "Hardswish": "hard-swish",
            "Hardsigmoid": "hard-sigmoid"}.get(type(layer).__name__, type(layer).__name__)


def module_steps(module: nn.Module) -> "OrderedDict[str, List[Tuple[str, str]]]":
    """The computation of a :class:`~sca_lib.DualAttention` (or :class:`~sca_lib.LiteDualAttention`)
    as data: ``{"channel": [(step, output shape), ...], "spatial": [...], "output": [...]}``, read
    from the module's own layers (widths, activations, gates, strengths, fusion). A path the module
    does not have is absent."""
    from .attention import DualAttention

    if not isinstance(module, DualAttention):
        raise TypeError(f"module_diagram draws a DualAttention (or LiteDualAttention), got {type(module).__name__}; "
                        "build one with sca_lib.create_attention('dual', channels) or a 'lite'/'channel'/'spatial' name")
    c = module.channels
    scale = "2·" if module.gate_scale != 1.0 else ""
    steps: "OrderedDict[str, List[Tuple[str, str]]]" = OrderedDict()
    if module.channel is not None:
        ch = module.channel
        hidden = ch.fc1.out_channels
        gate = f"{scale}{_layer_name(ch.gate)}"
        if module.beta != 1.0:
            gate += f"\nstrength β={module.beta:g}"
        steps["channel"] = [("global\naverage pool", f"{c}×1×1"), (f"1×1 conv {c}→{hidden}", f"{hidden}×1×1"),
                            (_layer_name(ch.act), f"{hidden}×1×1"), (f"1×1 conv {hidden}→{c}", f"{c}×1×1"),
                            (gate, f"c: {c}×1×1")]
    if module.spatial is not None:
        sp = module.spatial
        gate = f"{scale}{_layer_name(sp.gate)}"
        if module.alpha != 1.0:
            gate += f"\nstrength α={module.alpha:g}"
        source = "x × c" if module.fusion == "sequential" and module.channel is not None else "x"
        steps["spatial"] = [(f"1×1 conv {c}→1\non {source}", "1×H×W"), (gate, "s: 1×H×W")]
    both = module.channel is not None and module.spatial is not None
    rule = {"multiply": "y = x ⊙ c ⊙ s", "add": "y = x ⊙ c\n+ x ⊙ s", "max": "y = max(x ⊙ c,\nx ⊙ s)",
            "sequential": "y = (x ⊙ c)\n⊙ s(x ⊙ c)"}[module.fusion] if both else \
        ("y = x ⊙ c" if module.channel is not None else "y = x ⊙ s")
    out = [(rule, f"{c}×H×W")]
    if not isinstance(module.dropout, nn.Identity):
        out.append((f"channel dropout\np={module.dropout.p:g}", f"{c}×H×W"))
    steps["output"] = out
    return steps


def module_diagram(module: nn.Module, ax: Optional["Axes"] = None) -> "Axes":
    """Draw what a :class:`~sca_lib.DualAttention` computes: the channel path (pool, bottleneck MLP,
    gate) on top, the spatial path (1x1 convolution to one map, gate) below, and how the gates meet
    the input, each step with its output shape, all read from ``module`` itself.

    Returns the Axes; its step boxes carry gids ``"channel:K"``, ``"spatial:K"``, ``"output:K"``
    (K: the step's index) and the input box ``"input"``. Raises ``TypeError`` for other modules.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    steps = module_steps(module)
    longest = max(len(v) for k, v in steps.items() if k != "output") if len(steps) > 1 else 1
    if ax is None:
        _, ax = plt.subplots(figsize=(2.1 * (longest + 3), 4.2))
    w, h, gap, fs = 1.7, 0.95, 0.4, 10
    rows = {"channel": 2.3, "spatial": -0.1}
    mid = 1.1

    def box(x, y, text, shape, gid, face):
        dark = face == COLOURS["insert"]
        ax.add_patch(FancyBboxPatch((x, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor=face, edgecolor="0.35", gid=gid))
        ax.text(x + w / 2, y + 0.12, text, ha="center", va="center", fontsize=fs, linespacing=1.1,
                color="white" if dark else "black")
        ax.text(x + w / 2, y - 0.32, shape, ha="center", va="center", fontsize=fs - 1,
                color="0.92" if dark else "0.3")

    def arrow(x0, y0, x1, y1):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="0.4", lw=1.0, shrinkA=0, shrinkB=0, mutation_scale=9))

    box(0.0, mid, "input x", f"{module.channels}×H×W", "input", COLOURS["unit"])
    end = (longest + 1) * (w + gap)
    for path in ("channel", "spatial"):
        if path not in steps:
            continue
        y = rows[path]
        arrow(w, mid, w + gap, y)
        for k, (text, shape) in enumerate(steps[path]):
            x = (k + 1) * (w + gap)
            gate = k == len(steps[path]) - 1
            box(x, y, text, shape, f"{path}:{k}", COLOURS["insert"] if gate else "white")
            if k:
                arrow(x - gap, y, x, y)
        arrow((len(steps[path]) + 1) * (w + gap) - gap, y, end, mid + (0.25 if path == "channel" else -0.25))
    arrow(w, mid, end, mid)  # x itself goes to the fusion
    for k, (text, shape) in enumerate(steps["output"]):
        x = end + k * (w + gap)
        box(x, mid, text, shape, f"output:{k}", COLOURS["head"])
        if k:
            arrow(x - gap, mid, x, mid)
    ax.set_xlim(-0.2, end + len(steps["output"]) * (w + gap))
    ax.set_ylim(-0.75, 3.0)
    ax.axis("off")
    paths = " + ".join(p for p in ("channel", "spatial") if p in steps)
    ax.set_title(f"{type(module).__name__}({module.channels}): {paths} path(s), fusion "
                 f"'{module.fusion}' (red: the gates)", fontsize=11)
    return ax
