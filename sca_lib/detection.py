"""Faster R-CNN detectors with attention (claims C4, C10, C12, C13), built on torchvision.

torchvision-style::

    model = build_detector("resnet50", weights_backbone="DEFAULT")                 # plain, ImageNet trunk
    model = build_detector("resnet50", attention="dual")                           # C4: stages 3-4 replaced
    model = build_detector("mobilenet_v3_large", fpn_attention="lite")             # C13 on every FPN level
    model = build_detector("resnet18", attention="dual", placement="layer3.1",     # a CPU-sized detector
                           weights_backbone="data/pretrained/resnet18-....pt", min_size=128, max_size=160)
    list_detector_backbones()

How a detector is built (the order matters for weights, as in :func:`~sca_lib.backbones.build_classifier`):

1. the classification trunk: :func:`~sca_lib.backbones.build_classifier` with no attention, loading
   ``weights_backbone`` (ImageNet weights by name or enum, a local ``state_dict`` of the plain
   classifier, e.g. a synthetic stand-in, or None);
2. its BatchNorm layers become ``torchvision.ops.FrozenBatchNorm2d`` when the trunk is pretrained
   (``frozen_bn=None`` follows torchvision's builders: frozen when any weights are given; detection
   batches of 2-8 images are too small for batch statistics);
3. torchvision's ``BackboneWithFPN`` over the trunk's stages (exactly the pyramid of
   ``fasterrcnn_resnet50_fpn`` / ``fasterrcnn_mobilenet_v3_large_fpn``), then torchvision's
   ``FasterRCNN`` with ``num_classes`` (21 for Pascal VOC: 20 classes + background);
4. ``weights`` (a whole plain detector: torchvision's COCO weights by enum or name, or a local
   ``state_dict`` of ``build_detector(..., attention=None).state_dict()``) are loaded; a box
   predictor of another class count is left out and stays new, as a classifier's head;
5. attention: in the trunk at any classification placement (``list_placements`` names them; the
   paths are those of the classifier, under ``backbone.body``), and/or C13's
   :class:`FPNAttention` after the FPN.

The article's module (and its fusion variants) defaults to the article's detection strengths (C10:
``alpha=0.7``, ``beta=0.5``); pass ``strength=`` or ``alpha=`` / ``beta=`` to override (``alpha=1,
beta=1`` is C1's plain product). The rest of the family (``"cbam"``, ``"eca"``, ...) has no strengths
and is built as it is.

Placement defaults: ResNet ``"detection"`` (C4: every block of stages 3 and 4 that keeps its
channels and stride is replaced by an :class:`~sca_lib.attention.AttnResBlock`; ``layer3.0`` and
``layer4.0`` change both, so they stay); MobileNetV3 the classifier's default (after the last
feature block). On MobileNetV3 a placement ``after_features.N`` wraps block N (``nn.Sequential(block,
attention)``) instead of inserting a module after it, so the block indices that torchvision's FPN
taps do not shift; the FPN then sees the attended map when it taps block N.

Parameter groups (:data:`DETECTION_GROUPS`, for :func:`sca_lib.groups.set_trainable` and staged
training): ``attention`` (every attention module, the FPN's included), ``fpn``, ``rpn``,
``roi_heads``, and the trunk's ``late`` / ``early`` split of the classifier.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ._checks import feature_map, positive_int
from .attention import attention_settings, create_attention, list_attentions
from .backbones import _backbone, _places, build_classifier, load_state_dict_file
from .placements import apply_placements, resolve_placements
from .spec import AttentionSpec

__all__ = [
    "build_detector",
    "list_detector_backbones",
    "default_detector_placement",
    "FPNAttention",
    "BackboneWithAttentiveFPN",
    "freeze_batchnorm_",
    "DETECTION_GROUPS",
    "DETECTION_STAGE_GROUPS",
    "DETECTOR_WEIGHTS",
]

#: The parameter groups of a detector built by :func:`build_detector`.
DETECTION_GROUPS = ("attention", "fpn", "rpn", "roi_heads", "late", "early")

#: C6's three stages for a detector: the new parts (attention, FPN, RPN, ROI heads) first, then
#: the late trunk, then everything.
DETECTION_STAGE_GROUPS = (("attention", "fpn", "rpn", "roi_heads"),
                          ("attention", "fpn", "rpn", "roi_heads", "late"),
                          ("attention", "fpn", "rpn", "roi_heads", "late", "early"))

#: torchvision's whole-detector weights per trunk (COCO, 91 classes), for ``weights=``.
DETECTOR_WEIGHTS = {
    "resnet50": "FasterRCNN_ResNet50_FPN_Weights",
    "mobilenet_v3_large": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
}

_DETECTOR_BACKBONES = ("resnet50", "resnet18", "mobilenet_v3_large", "mobilenet_v3_small")

WeightsArg = Union[None, str, "os.PathLike[str]", WeightsEnum, Mapping[str, torch.Tensor]]


def list_detector_backbones() -> List[str]:
    """Trunks :func:`build_detector` accepts: ResNet50 and MobileNetV3-Large (the article's C12
    rows, torchvision's ``fasterrcnn_resnet50_fpn`` / ``fasterrcnn_mobilenet_v3_large_fpn``
    pyramids) and their CPU-sized kin ResNet18 and MobileNetV3-Small (the same pyramids, built the
    same way)."""
    return list(_DETECTOR_BACKBONES)


def _detector_backbone(backbone: str) -> str:
    if not isinstance(backbone, str) or backbone.lower() not in _DETECTOR_BACKBONES:
        raise ValueError(f"unknown detector backbone {backbone!r}; expected one of {', '.join(_DETECTOR_BACKBONES)}")
    return backbone.lower()


def default_detector_placement(backbone: str) -> str:
    """Where :func:`build_detector` puts trunk attention when ``placement=None``: C4's
    ``"detection"`` group on a ResNet, the classifier's default on MobileNetV3."""
    name = _detector_backbone(backbone)
    bb = _backbone(name)
    return "detection" if bb.family == "resnet" else bb.default_placement


# --------------------------------------------------------------------------------------------
# C13: attention on every pyramid level, with cross-scale fusion
# --------------------------------------------------------------------------------------------


class FPNAttention(nn.Module):
    """Attention on every FPN level with top-down cross-scale fusion (claim C13).

    With ``P_1 .. P_L`` the pyramid from fine to coarse (torchvision's order: ``"0"``, ``"1"``, ...,
    ``"pool"``) and ``A`` the attention module::

        out_L = A(P_L)
        out_l = A(P_l) + bilinear_resize(out_{l+1}, size of P_l)        for l = L-1 .. 1

    The article's snippet loops over the levels in the order it receives them and adds the resized
    previous *output* (so each level carries everything coarser than it); its text says the
    previous level is *upsampled*, so the loop here runs from the coarsest level down. The input
    must hold exactly ``levels``, in that order (torchvision's, fine to coarse); another order or
    set of keys is refused. ``fusion=False`` keeps only the per-level attention.

    Strengths: the attention module's own defaults (C1's plain product, alpha = beta = 1) unless
    ``attention_kwargs`` say otherwise; :func:`build_detector` passes C10's detection strengths.

    Args:
        channels: the FPN's width (256 in torchvision).
        levels: the pyramid's keys from fine to coarse, e.g. ``("0", "1", "2", "3", "pool")``.
        attention: a name from :func:`sca_lib.attention.list_attentions`.
        shared: one module for every level (the article's ``self.attn``; default) or one per level.
        fusion: add the resized coarser output (C13) or not.
        **attention_kwargs: passed to the attention module(s).

    Shapes: an ordered dict ``{level: (N, channels, H_l, W_l)}`` -> the same keys and shapes.
    """

    def __init__(self, channels: int, levels: Sequence[str], attention: str = "dual", *, shared: bool = True,
                 fusion: bool = True, **attention_kwargs: Any) -> None:
        super().__init__()
        self.channels = positive_int("FPNAttention", "channels", channels, " (the FPN's out_channels)")
        self.levels = tuple(str(k) for k in levels)
        if not self.levels or len(set(self.levels)) != len(self.levels):
            raise ValueError(f"FPNAttention expects distinct pyramid level names, fine to coarse, got {levels!r}")
        self.shared, self.fusion = bool(shared), bool(fusion)
        if self.shared:
            self.attn = create_attention(attention, self.channels, **attention_kwargs)
        else:
            self.attns = nn.ModuleDict({k: create_attention(attention, self.channels, **attention_kwargs)
                                        for k in self.levels})

    def module_for(self, level: str) -> nn.Module:
        """The attention module applied to ``level``."""
        return self.attn if self.shared else self.attns[level]

    def forward(self, features: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        if not isinstance(features, Mapping):
            raise TypeError(f"FPNAttention expects the FPN's ordered dict of levels {self.levels}, got "
                            f"{type(features).__name__}")
        if tuple(features) != self.levels:
            raise ValueError(f"FPNAttention was built for levels {self.levels} (fine to coarse) but got "
                             f"{tuple(features)}; build it with levels=tuple(fpn_output.keys())")
        out: Dict[str, torch.Tensor] = {}
        coarser: Optional[torch.Tensor] = None
        for key in reversed(self.levels):
            x = features[key]
            feature_map(f"FPNAttention level {key!r}", x, self.channels)
            y = self.module_for(key)(x)
            if self.fusion and coarser is not None:
                y = y + F.interpolate(coarser, size=y.shape[-2:], mode="bilinear", align_corners=False)
            out[key] = y
            coarser = y
        return OrderedDict((k, out[k]) for k in self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, shared={self.shared}, fusion={self.fusion}"


class BackboneWithAttentiveFPN(BackboneWithFPN):
    """torchvision's ``BackboneWithFPN`` with an optional C13 :class:`FPNAttention` after the FPN
    (``fpn_attention``, None for the plain pyramid). Keys of ``body`` and ``fpn`` are torchvision's,
    so a plain detector's weights load unchanged."""

    fpn_attention: Optional[FPNAttention]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fpn_attention = None

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.fpn(self.body(x))
        if self.fpn_attention is not None:
            x = self.fpn_attention(x)
        return x


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def freeze_batchnorm_(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a ``torchvision.ops.FrozenBatchNorm2d`` with
    the same statistics and affine parameters (in place; returns ``module``). What torchvision's
    detection builders do to a pretrained trunk."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight.detach() if child.affine else torch.ones(child.num_features))
                frozen.bias.copy_(child.bias.detach() if child.affine else torch.zeros(child.num_features))
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            if hasattr(child, "_sca_group"):
                frozen._sca_group = child._sca_group  # type: ignore[attr-defined]
            setattr(module, name, frozen)
        else:
            freeze_batchnorm_(child)
    return module


def _pyramid(trunk: nn.Module, family: str) -> Tuple[nn.Module, Dict[str, str], List[int]]:
    """(module the body is cut from, return_layers, in_channels_list): torchvision's FPN taps."""
    if family == "resnet":
        c = trunk.fc.in_features  # 2048 (ResNet50) or 512 (ResNet18)
        return trunk, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [c // 8, c // 4, c // 2, c]
    features = trunk.features
    stage = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    taps = [stage[-2], stage[-1]]
    return features, {str(k): str(v) for v, k in enumerate(taps)}, [features[k].out_channels for k in taps]


def _weights_enum_cls(name: str):
    return getattr(torchvision.models.detection, DETECTOR_WEIGHTS[name]) if name in DETECTOR_WEIGHTS else None


def _detector_weights_help(name: str) -> str:
    enum = DETECTOR_WEIGHTS.get(name)
    named = (f"'DEFAULT' / a member of torchvision.models.detection.{enum} (COCO, downloaded by torchvision), "
             if enum else "")
    return (f"weights= expects None, {named}or the path of a file saved with "
            f"torch.save(build_detector({name!r}, attention=None, num_classes=any).state_dict(), path)")


def _detector_state_dict(name: str, weights: WeightsArg) -> Tuple[Optional[Mapping[str, torch.Tensor]], str]:
    if weights is None:
        return None, "none"
    enum_cls = _weights_enum_cls(name)
    if isinstance(weights, WeightsEnum):
        if enum_cls is None or not isinstance(weights, enum_cls):
            raise ValueError(f"a {name} detector cannot use {weights}; {_detector_weights_help(name)}")
        return weights.get_state_dict(progress=True, check_hash=True), str(weights)
    if isinstance(weights, Mapping):
        return weights, "a state_dict"
    if isinstance(weights, str) and enum_cls is not None and (weights == "DEFAULT" or weights in enum_cls.__members__):
        w = enum_cls.verify(weights)
        return w.get_state_dict(progress=True, check_hash=True), str(w)
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        return load_state_dict_file(path, _detector_weights_help(name), "detector weights"), path
    raise ValueError(f"unsupported detector weights {weights!r}; {_detector_weights_help(name)}")


def _load_detector(model: nn.Module, sd: Mapping[str, torch.Tensor], name: str, source: str) -> None:
    """Strictly load a plain detector's weights; a box predictor of another class count stays new."""
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    own = model.state_dict()
    predictor = "roi_heads.box_predictor."
    if any(k.startswith(predictor) and k in own and own[k].shape != v.shape for k, v in sd.items()):
        sd = {k: v for k, v in sd.items() if not k.startswith(predictor)}
        own = {k: v for k, v in own.items() if not k.startswith(predictor)}
    # BatchNorm's counter is absent from frozen BatchNorm (and from torchvision's files)
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
                 for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches", shapes)) if keys]
        hint = ""
        if any(".attn." in k or "fpn_attention" in k or k.endswith(".conv.weight") for k in unexpected):
            hint = (" The file looks like a detector WITH attention: build the same detector (same attention, "
                    "placement, fpn_attention) and call model.load_state_dict(torch.load(path)).")
        raise ValueError(f"detector weights from {source} do not match a plain {name} Faster R-CNN of this "
                         f"configuration: {'; '.join(parts)}.{hint} {_detector_weights_help(name)}")
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"detector weights from {source} hold NaN/inf in {k!r}; re-create the file")
    model.load_state_dict(sd, strict=False)


def _strength_kwargs(kwargs: Dict[str, Any], kind: Optional[str]) -> Dict[str, Any]:
    """C10's detection strengths for a module that has strengths (the article's and its fusion
    variants), unless the caller set a strength or alpha/beta; other modules get ``kwargs`` as given."""
    if any(kwargs.get(k) is not None for k in ("strength", "alpha", "beta")):
        return dict(kwargs)
    if kind is None or "strength" not in attention_settings(kind):
        return dict(kwargs)
    return {**kwargs, "strength": "detection"}


def _attention_kind(value: Union[None, str], what: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in list_attentions():
        raise ValueError(f"unknown {what} {value!r}; expected None or one of {', '.join(list_attentions())}")
    return value.lower()


def _apply_trunk_attention(body: nn.Module, name: str, family: str, placement: Any, kind: str,
                           kwargs: Dict[str, Any]) -> Tuple[List[str], Dict[str, str]]:
    """Attention into the detector's trunk (``backbone.body``) at classifier placements."""
    bb = _backbone(name)
    places = _places(bb)  # the classifier's table (module paths relative to the classifier)
    resolved = resolve_placements(places, placement, name)
    if family == "resnet":  # the body keeps the classifier's child names: conv1, ..., layer4
        paths = apply_placements(body, places, resolved, kind, kwargs)
        return resolved, {n: f"backbone.body.{p}" for n, p in paths.items()}
    paths: Dict[str, str] = {}
    rest = OrderedDict()
    for n in resolved:  # the body's children are the classifier's features.0, features.1, ...
        p = places[n]
        if p.kind == "insert":
            key = str(p.index)
            if key not in body:
                raise ValueError(f"placement {n!r} is after the last block the FPN taps ({list(body)[-1]}); "
                                 f"pick a placement from list_placements({name!r}) up to that block")
            attn = create_attention(kind, p.channels, **kwargs)
            wrapped = nn.Sequential(body[key], attn)
            if hasattr(body[key], "_sca_group"):
                wrapped._sca_group = body[key]._sca_group  # type: ignore[attr-defined]
            body[key] = wrapped
            paths[n] = f"backbone.body.{key}.1"
        else:
            rest[n] = dataclasses.replace(p, target=p.target[len("features."):])
    if rest:
        sub = apply_placements(body, rest, list(rest), kind, kwargs)
        paths.update({n: f"backbone.body.{p}" for n, p in sub.items()})
    return resolved, {n: paths[n] for n in resolved}


def _tag_detector(model: FasterRCNN) -> None:
    model.backbone.fpn._sca_group = "fpn"  # type: ignore[attr-defined]
    model.rpn._sca_group = "rpn"  # type: ignore[attr-defined]
    model.roi_heads._sca_group = "roi_heads"  # type: ignore[attr-defined]
    model.sca_groups = DETECTION_GROUPS  # type: ignore[attr-defined]


def build_detector(
    backbone: str = "resnet50",
    attention: Union[None, str, AttentionSpec] = None,
    placement: Union[None, str, Sequence[str]] = None,
    *,
    fpn_attention: Optional[str] = None,
    fpn_shared: bool = True,
    fpn_fusion: bool = True,
    num_classes: int = 21,
    weights: WeightsArg = None,
    weights_backbone: Any = None,
    frozen_bn: Optional[bool] = None,
    anchor_sizes: Optional[Sequence[int]] = None,
    box_head_size: int = 1024,
    min_size: int = 800,
    max_size: int = 1333,
    detector_kwargs: Optional[Dict[str, Any]] = None,
    **attention_kwargs: Any,
) -> FasterRCNN:
    """A torchvision Faster R-CNN with an FPN, and attention in the trunk and/or on the pyramid.

    Args:
        backbone: one of :func:`list_detector_backbones`.
        attention: trunk attention: None, a name from :func:`sca_lib.attention.list_attentions`, or
            an :class:`~sca_lib.spec.AttentionSpec` (then placement and knobs come from it).
        placement: a name (or names) from :func:`sca_lib.backbones.list_placements`; None =
            :func:`default_detector_placement` (C4's ``"detection"`` group on a ResNet).
        fpn_attention: C13: None, or an attention name put on every pyramid level
            (:class:`FPNAttention`); ``fpn_shared`` (one module for all levels, the article's) and
            ``fpn_fusion`` (the cross-scale sum) set it.
        num_classes: with the background: 21 for Pascal VOC.
        weights: a whole plain detector (see the module docstring); ``weights_backbone``: the
            trunk, anything :func:`~sca_lib.backbones.build_classifier`'s ``weights`` accepts.
        frozen_bn: freeze the trunk's BatchNorm (None: when any weights are given).
        anchor_sizes: one anchor size per pyramid level for a ResNet (default 32, 64, 128, 256,
            512, torchvision's); MobileNetV3 levels each get all of them (torchvision's design).
            Smaller images want smaller anchors.
        box_head_size: width of the box head's two fully connected layers (torchvision: 1024, 12.8 M
            parameters in the first alone; a CPU-sized detector uses less).
        min_size, max_size: torchvision's resize of every input (800 / 1333 by default).
        detector_kwargs: more keyword arguments for ``torchvision.models.detection.FasterRCNN``
            (e.g. ``rpn_pre_nms_top_n_test``, ``box_detections_per_img``).
        **attention_kwargs: for every attention module, the trunk's and the FPN's alike
            (``reduction``, ``strength``, ``alpha``, ``beta``, ``drop_rate``, ``identity_init``);
            C10's detection strengths by default.

    Returns:
        ``torchvision.models.detection.FasterRCNN``: ``model(images, targets)`` in training mode
        returns the loss dict, ``model(images)`` in eval mode the detections (boxes in input
        pixels, labels 1..num_classes-1, scores). ``model.sca_config`` records what was built
        (backbone, attention, placement, modules, fpn_attention, num_classes, weights, ...).
    """
    name = _detector_backbone(backbone)
    bb = _backbone(name)
    num_classes = positive_int("build_detector", "num_classes", num_classes, " (21 for VOC: 20 classes + background)")
    if isinstance(attention, AttentionSpec):
        if placement is not None or attention_kwargs:
            raise ValueError("build_detector got an AttentionSpec and also placement=/attention keywords; put them "
                             "in the spec instead")
        kind, placement, kwargs = attention.kind, attention.placement, attention.module_kwargs()
    else:
        kind, kwargs = _attention_kind(attention, "attention"), dict(attention_kwargs)
        if kind is None and placement is not None:
            raise ValueError(f"placement={placement!r} given but attention=None; pass an attention name "
                             f"({', '.join(list_attentions())}) or drop placement")
    fpn_kind = _attention_kind(fpn_attention, "fpn_attention")
    if kind is None and fpn_kind is None and kwargs:
        raise ValueError(f"attention keywords {sorted(kwargs)} given but no attention; set attention= or fpn_attention=")
    trunk_kwargs, fpn_kwargs = _strength_kwargs(kwargs, kind), _strength_kwargs(kwargs, fpn_kind)

    trunk = build_classifier(name, attention=None, weights=weights_backbone)
    trunk_source = trunk.sca_config["weights"]
    if frozen_bn is None:
        frozen_bn = weights is not None or weights_backbone is not None
    if frozen_bn:
        freeze_batchnorm_(trunk)
    cut, return_layers, in_channels = _pyramid(trunk, bb.family)
    fpn_backbone = BackboneWithAttentiveFPN(cut, return_layers, in_channels, 256, extra_blocks=LastLevelMaxPool())
    levels = list(return_layers.values()) + ["pool"]
    sizes = tuple(int(s) for s in (anchor_sizes or (32, 64, 128, 256, 512)))
    if bb.family == "resnet":
        if len(sizes) != len(levels):
            raise ValueError(f"anchor_sizes needs one size per pyramid level ({len(levels)}: {levels}), got {sizes}")
        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(levels))
    else:
        anchors = AnchorGenerator((sizes,) * len(levels), ((0.5, 1.0, 2.0),) * len(levels))
    extra = dict(detector_kwargs or {})
    if bb.family == "mobilenet":
        extra.setdefault("rpn_score_thresh", 0.05)  # torchvision's MobileNetV3 detector
    box_head_size = positive_int("build_detector", "box_head_size", box_head_size)
    if box_head_size != 1024:
        resolution = 7  # torchvision's MultiScaleRoIAlign output
        extra["box_head"] = TwoMLPHead(256 * resolution ** 2, box_head_size)
        extra["box_predictor"] = FastRCNNPredictor(box_head_size, num_classes)
    model = FasterRCNN(fpn_backbone, num_classes=None if box_head_size != 1024 else num_classes,
                       rpn_anchor_generator=anchors, min_size=min_size, max_size=max_size, **extra)
    sd, source = _detector_state_dict(name, weights)
    if sd is not None:
        _load_detector(model, sd, name, source)

    resolved: List[str] = []
    modules: Dict[str, str] = {}
    if kind is not None:
        where = default_detector_placement(name) if placement is None else placement
        resolved, modules = _apply_trunk_attention(fpn_backbone.body, name, bb.family, where, kind, trunk_kwargs)
    if fpn_kind is not None:
        fpn_backbone.fpn_attention = FPNAttention(256, levels, fpn_kind, shared=fpn_shared, fusion=fpn_fusion,
                                                  **fpn_kwargs)
    _tag_detector(model)
    model.sca_config = {  # type: ignore[attr-defined]
        "task": "detection", "backbone": name, "attention": kind, "placement": resolved, "modules": modules,
        "fpn_attention": fpn_kind, "fpn_shared": bool(fpn_shared) if fpn_kind else None,
        "fpn_fusion": bool(fpn_fusion) if fpn_kind else None,
        "pyramid": levels, "num_classes": num_classes, "weights": source, "weights_backbone": trunk_source,
        "frozen_bn": bool(frozen_bn), "attention_kwargs": (trunk_kwargs if kind else fpn_kwargs) if (kind or fpn_kind) else {},
        "anchor_sizes": list(sizes), "box_head_size": box_head_size, "min_size": min_size, "max_size": max_size,
    }
    return model
