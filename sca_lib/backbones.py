"""Backbones with attention at any place: VGG16, ResNet50/18, MobileNetV3-Large/Small (claims C3-C5).

One builder, torchvision-style::

    model = build_classifier("vgg16", attention="dual")                 # C3 default placement
    model = build_classifier("resnet50", attention="dual", placement="layer3.1")
    model = build_classifier("mobilenet_v3_large", attention="lite", placement="replace_se")
    list_placements("resnet50")                                        # every valid place, described

How a model is built (the order matters for weights):

1. the plain torchvision model (``torchvision.models.get_model(name, weights=None)``);
2. weights are loaded into it: ``None`` (random init), ``"DEFAULT"`` / a weights name / a torchvision
   weights enum (downloaded by torchvision where there is internet), or a local file holding the
   ``state_dict`` of the *plain* model with any head size (for instance
   ``torch.save(build_classifier("resnet18", num_classes=20).state_dict(), path)``). Everything
   except the classification head is loaded, strictly;
3. the head is replaced by a new ``num_classes`` head;
4. attention modules are inserted (new, randomly initialised; the training engine initialises them
   with :func:`sca_lib.attention.init_attention_`).

Placements (``list_placements(backbone)`` lists them; the default is the article's choice):

- **VGG16 (C3)**: ``"after_conv5_3"`` (default) inserts the module after conv5_3 *and its ReLU*,
  i.e. at ``features[30]``, before the last max-pool. In torchvision ``features[28]`` *is* conv5_3
  and ``features[29]`` its ReLU, so the article's code ``children()[:28] + [attn] + children()[28:]``
  puts the module *before* conv5_3 (after conv5_2's ReLU): that position is offered as
  ``"article_slice"``. Any other ``"after_convB_I"`` / ``"after_poolB"`` is available for ablations.
- **ResNet (C4)**: ``"layer4.1"`` (default) *replaces* that block by an
  :class:`~sca_lib.attention.AttnResBlock` (``x + conv3x3(attn(x))``); any block ``"layerS.B"``
  with equal in/out channels and stride 1 can be replaced. The first block of a stage
  (``"layerS.0"``) changes channels and/or stride, so it is **refused** with an error that names the
  alternatives. Replacing a block discards that block's (pretrained) weights: the AttnResBlock is a
  new random block. Cheap "insert" forms keep every pretrained block: ``"layerS.B.inside"`` puts
  the attention module inside the block on the residual branch, after the last BN and before the
  residual add (where SE and CBAM sit), and ``"after_layerS"`` appends it after a stage. These let
  an ablation separate "attention" from "an extra 3x3 conv". ``"detection"`` is the article's
  detection design: every replaceable block of stages 3 and 4.
- **MobileNetV3 (C5)**: ``"after_features.N"`` adds a module after block N (default: the last
  feature block, ``features.16`` for Large, ``features.12`` for Small, near the output as C14
  recommends); ``"replace_se"`` replaces every built-in Squeeze-and-Excitation block of torchvision's
  MobileNetV3 by the attention module (``"replace_se.N"`` only the one in block N). The article
  gives no placement for MobileNet; its C12 number comes from a Faster R-CNN detector, whose
  attention (C13) sits on the FPN levels, i.e. on the backbone outputs that torchvision's
  ``fasterrcnn_mobilenet_v3_large_fpn`` feeds to the FPN (``features.13`` and ``features.16``).

Parameter groups (:func:`parameter_groups`, for staged training C6): ``"attention"`` (every
:class:`~sca_lib.attention.DualAttention` / :class:`~sca_lib.attention.AttnResBlock`), ``"head"``
(the new last Linear), ``"early"`` and ``"late"`` (the backbone):

- VGG16: early = conv1_1..conv4_3 (C3's frozen part); late = conv5_1..conv5_3 + fc6 + fc7.
- ResNet: early = stem + layer1..layer3; late = layer4.
- MobileNetV3: early = the blocks before the last (stride-32) stage; late = the last stage
  (``features.13-16`` Large, ``features.9-12`` Small) + the pretrained ``classifier.0`` Linear.

Frozen BatchNorm (:func:`set_trainable`): a BatchNorm layer whose parameters are all frozen is put
in eval mode and *kept* there by a forward pre-hook, so a later ``model.train()`` does not update
its running statistics (a frozen layer whose normalisation drifts is not frozen). Unfreezing it
restores normal behaviour.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models.resnet import BasicBlock, Bottleneck

from .attention import AttnResBlock, DualAttention, create_attention, list_attentions

__all__ = [
    "build_classifier",
    "list_backbones",
    "list_placements",
    "default_placement",
    "parameter_groups",
    "set_trainable",
    "attention_modules",
    "GROUPS",
    "AttnBottleneck",
    "AttnBasicBlock",
]

#: The parameter groups of every model built by :func:`build_classifier`.
GROUPS = ("attention", "head", "late", "early")

WeightsArg = Union[None, str, "os.PathLike[str]", WeightsEnum, Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class _Spec:
    name: str
    family: str  # vgg | resnet | mobilenet
    head: str  # module path of the Linear that is replaced by the num_classes head
    default_placement: str
    description: str


_SPECS: Dict[str, _Spec] = {
    "vgg16": _Spec("vgg16", "vgg", "classifier.6", "after_conv5_3",
                   "VGG16 (no BN), 13 convs; C3: attention after conv5_3"),
    "resnet50": _Spec("resnet50", "resnet", "fc", "layer4.1",
                      "ResNet50 (Bottleneck blocks); C4: AttnResBlock replacing layer4.1"),
    "resnet18": _Spec("resnet18", "resnet", "fc", "layer4.1",
                      "ResNet18 (BasicBlock), CPU-friendly; same placements as ResNet50"),
    "mobilenet_v3_large": _Spec("mobilenet_v3_large", "mobilenet", "classifier.3", "after_features.16",
                                "MobileNetV3-Large; C5: lite attention"),
    "mobilenet_v3_small": _Spec("mobilenet_v3_small", "mobilenet", "classifier.3", "after_features.12",
                                "MobileNetV3-Small, CPU-friendly; same placements as Large"),
}


def list_backbones() -> List[str]:
    """Names accepted by :func:`build_classifier`."""
    return list(_SPECS)


def _spec(backbone: str) -> _Spec:
    if not isinstance(backbone, str) or backbone.lower() not in _SPECS:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {', '.join(_SPECS)}")
    return _SPECS[backbone.lower()]


# --------------------------------------------------------------------------------------------
# Inside-the-block attention (SE/CBAM position)
# --------------------------------------------------------------------------------------------


def _adopt(cls: type, block: nn.Module, attn: nn.Module) -> nn.Module:
    """A ``cls`` instance that shares ``block``'s submodules and attributes, plus ``.attn``."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for key, value in block.__dict__.items():
        if key not in new.__dict__:
            new.__dict__[key] = value  # plain attributes (stride, ...)
    for name, child in block.named_children():
        new.add_module(name, child)
    new.train(block.training)
    new.attn = attn
    return new


class AttnBottleneck(Bottleneck):
    """torchvision ``Bottleneck`` with an attention module on the residual branch before the add.

    ``out = relu(attn(bn3(conv3(...))) + identity)``: where Squeeze-and-Excitation (Hu et al., 2018)
    and CBAM (Woo et al., 2018) put their module. All pretrained weights of the block are kept;
    only ``attn`` is new. Build it with :meth:`from_block`. Shapes: as the block it wraps.
    """

    attn: nn.Module

    @classmethod
    def from_block(cls, block: Bottleneck, attn: nn.Module) -> "AttnBottleneck":
        return _adopt(cls, block, attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attn(self.bn3(self.conv3(out)))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class AttnBasicBlock(BasicBlock):
    """torchvision ``BasicBlock`` with an attention module after ``bn2``, before the residual add."""

    attn: nn.Module

    @classmethod
    def from_block(cls, block: BasicBlock, attn: nn.Module) -> "AttnBasicBlock":
        return _adopt(cls, block, attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


# --------------------------------------------------------------------------------------------
# Placements
# --------------------------------------------------------------------------------------------


@dataclass
class _Place:
    kind: str  # insert | replace_block | inside_block | replace_se | preset | invalid
    target: str  # module path (container for insert)
    index: int  # insert after this index of the container (insert only)
    channels: int
    description: str
    members: Tuple[str, ...] = ()  # preset only


def _block_channels(block: nn.Module) -> Tuple[int, int, int]:
    """(in_channels, out_channels, stride) of a torchvision ResNet block."""
    last = block.conv3 if isinstance(block, Bottleneck) else block.conv2
    return block.conv1.in_channels, last.out_channels, block.stride


def _placements(model: nn.Module, spec: _Spec) -> "OrderedDict[str, _Place]":
    """Every placement of ``model`` (a plain torchvision model of ``spec``), including refusals."""
    places: "OrderedDict[str, _Place]" = OrderedDict()
    if spec.family == "vgg":
        block, conv_i, channels, names = 1, 0, 3, {}
        for i, m in enumerate(model.features):
            if isinstance(m, nn.Conv2d):
                conv_i += 1
                channels = m.out_channels
                names[i] = f"conv{block}_{conv_i}"
            elif isinstance(m, nn.ReLU):
                name = names[i - 1]
                places[f"after_{name}"] = _Place(
                    "insert", "features", i, channels,
                    f"after {name} and its ReLU (features[{i - 1}], features[{i}]), "
                    f"{channels} channels")
            elif isinstance(m, nn.MaxPool2d):
                places[f"after_pool{block}"] = _Place(
                    "insert", "features", i, channels,
                    f"after the max-pool closing block {block} (features[{i}]), {channels} channels")
                block, conv_i = block + 1, 0
        a = places["after_conv5_2"]
        places["article_slice"] = _Place(
            "insert", "features", a.index, a.channels,
            "what the article's code does: features.children()[:28] + [attn] + [28:]. features[28] "
            "is conv5_3, so this puts the module BEFORE conv5_3 (same place as after_conv5_2), not "
            "after it as the article's text says")
    elif spec.family == "resnet":
        for s in range(1, 5):
            layer = getattr(model, f"layer{s}")
            for b, block in enumerate(layer):
                path = f"layer{s}.{b}"
                cin, cout, stride = _block_channels(block)
                if cin == cout and stride == 1:
                    places[path] = _Place(
                        "replace_block", path, -1, cout,
                        f"replace {path} ({type(block).__name__}, {cout} ch) by a new AttnResBlock("
                        f"{cout}) = x + conv3x3(attn(x)); discards {path}'s pretrained weights")
                else:
                    places[path] = _Place(
                        "invalid", path, -1, cout,
                        f"{path} changes channels {cin}->{cout} and/or has stride {stride}, but an "
                        f"AttnResBlock keeps channels and size (x + conv3x3(attn(x))), so it cannot "
                        f"replace it. Use '{path}.inside' (attention inside the block, before the "
                        f"residual add), 'after_layer{s}' (after the stage), or replace "
                        f"'layer{s}.1'")
                places[f"{path}.inside"] = _Place(
                    "inside_block", path, -1, cout,
                    f"inside {path}, after its last BN and before the residual add (SE/CBAM "
                    f"position), {cout} ch; keeps every pretrained weight")
            _, cout, _ = _block_channels(layer[-1])
            places[f"after_layer{s}"] = _Place(
                "insert", f"layer{s}", len(layer) - 1, cout,
                f"after stage {s} (appended to layer{s}), {cout} ch; keeps every pretrained weight")
        members = tuple(n for n, p in places.items()
                        if p.kind == "replace_block" and n.startswith(("layer3.", "layer4.")))
        places["detection"] = _Place(
            "preset", "", -1, 0,
            "the article's detection design: replace every block of stages 3 and 4 by an AttnResBlock "
            f"({', '.join(members)}); layer3.0 and layer4.0 change channels/stride and are kept",
            members)
    else:  # mobilenet
        se_members = []
        for i, m in enumerate(model.features):
            cout = m.out_channels
            places[f"after_features.{i}"] = _Place(
                "insert", "features", i, cout,
                f"after features.{i} ({type(m).__name__}), {cout} channels")
            block = getattr(m, "block", None)
            if block is not None:
                for j, sub in enumerate(block):
                    if isinstance(sub, torchvision.ops.SqueezeExcitation):
                        name = f"replace_se.{i}"
                        se_members.append(name)
                        c = sub.fc1.in_channels
                        places[name] = _Place(
                            "replace_se", f"features.{i}.block.{j}", -1, c,
                            f"replace the built-in SE block of features.{i} ({c} expanded channels, "
                            f"reduction 4, ReLU/Hardsigmoid) by the attention module")
        places["replace_se"] = _Place(
            "preset", "", -1, 0,
            f"replace all {len(se_members)} built-in SE blocks ({', '.join(se_members)})",
            tuple(se_members))
    d = places[spec.default_placement]
    d.description = d.description + " (default)"
    return places


def _meta_model(spec: _Spec) -> nn.Module:
    with torch.device("meta"):
        return torchvision.models.get_model(spec.name, weights=None)


def list_placements(backbone: str) -> Dict[str, str]:
    """Valid placement names of ``backbone`` -> what each does (the default says "(default)").

    Example: ``list_placements("vgg16")["after_conv5_3"]``. Presets (``"detection"``,
    ``"replace_se"``) expand to several places; :func:`build_classifier` also takes a list of names.
    """
    spec = _spec(backbone)
    return {n: p.description for n, p in _placements(_meta_model(spec), spec).items() if p.kind != "invalid"}


def default_placement(backbone: str) -> str:
    """The article's placement for ``backbone`` (used when ``placement=None``)."""
    return _spec(backbone).default_placement


def _resolve_placements(places: "OrderedDict[str, _Place]", placement: Union[str, Sequence[str]],
                        spec: _Spec) -> List[str]:
    names = [placement] if isinstance(placement, str) else list(placement)
    if not names:
        raise ValueError("placement is an empty list; pass None for the default or at least one name")
    out: List[str] = []
    for name in names:
        if not isinstance(name, str) or name not in places:
            close = [n for n in places if isinstance(name, str) and name.split(".")[0] in n][:8]
            raise ValueError(
                f"unknown placement {name!r} for {spec.name}; valid ones are listed by "
                f"list_placements({spec.name!r})" + (f", e.g. {', '.join(close)}" if close else
                                                     f", e.g. {', '.join(list(places)[:6])}, ..."))
        p = places[name]
        if p.kind == "invalid":
            raise ValueError(f"placement {name!r} is not valid for {spec.name}: {p.description}")
        out.extend(p.members if p.kind == "preset" else [name])
    if len(set(out)) != len(out):
        raise ValueError(f"placement {placement!r} names the same place twice ({out})")
    blocks = {places[n].target for n in out if places[n].kind in ("replace_block", "inside_block")}
    if len(blocks) < sum(places[n].kind in ("replace_block", "inside_block") for n in out):
        raise ValueError(f"placement {placement!r} both replaces a block and inserts inside it; pick one")
    return out


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def _weights_help(spec: _Spec) -> str:
    enum_names = list(torchvision.models.get_model_weights(spec.name).__members__)
    return (f"weights= expects None (random init), 'DEFAULT' or a weights name ({', '.join(enum_names)}) "
            f"or a torchvision {torchvision.models.get_model_weights(spec.name).__name__} "
            f"member (downloaded by torchvision), or the path of a file saved with "
            f"torch.save(model.state_dict(), path) where model is a plain torchvision {spec.name} "
            f"(torchvision.models.{spec.name}(num_classes=any)) or "
            f"build_classifier({spec.name!r}, attention=None, num_classes=any)")


def _resolve_weights(spec: _Spec, weights: WeightsArg) -> Tuple[Optional[WeightsEnum], Optional[Mapping], str]:
    """-> (torchvision weights enum or None, state_dict or None, description of the source)."""
    if weights is None:
        return None, None, "random init"
    enum_cls = torchvision.models.get_model_weights(spec.name)
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum_cls):
            raise ValueError(f"{spec.name} cannot use {weights} ({type(weights).__name__}); "
                             f"{_weights_help(spec)}")
        return weights, None, str(weights)
    if isinstance(weights, Mapping):
        return None, weights, "a state_dict"
    if isinstance(weights, str) and (weights == "DEFAULT" or weights in enum_cls.__members__):
        return enum_cls.verify(weights), None, weights
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path!r} not found; {_weights_help(spec)}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
            raise ValueError(f"could not read {path!r} as a PyTorch state_dict ({type(e).__name__}: "
                             f"{e}); {_weights_help(spec)}") from None
        if isinstance(obj, Mapping) and not all(torch.is_tensor(v) for v in obj.values()):
            for key in ("state_dict", "model", "model_state_dict"):  # a training checkpoint
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
        if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
            raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state_dict (a dict of "
                             f"tensors); {_weights_help(spec)}")
        return None, obj, path
    raise ValueError(f"unsupported weights {weights!r} ({type(weights).__name__}); {_weights_help(spec)}")


def _listing(keys: Sequence[str], n: int = 6) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _load_backbone(model: nn.Module, state_dict: Mapping[str, torch.Tensor], spec: _Spec, source: str) -> None:
    """Strictly load everything but the head into the plain model; teach on any mismatch."""
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    head = spec.head + "."
    sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listing(shapes, 3)}")
        hint = ""
        if any(any(t in k for t in (".channel.", ".spatial.", ".attn.")) for k in unexpected):
            hint = (" The file looks like the state_dict of a model WITH attention: build the same model "
                    "with build_classifier(...) and call model.load_state_dict(torch.load(path)).")
        raise ValueError(f"weights from {source} do not match a plain torchvision {spec.name} "
                         f"(head {spec.head!r} ignored): {'; '.join(parts)}.{hint} {_weights_help(spec)}")
    model.load_state_dict(sd, strict=False)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(model, parent), name, module)


def _new_head(spec: _Spec, in_features: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(in_features, num_classes)
    if spec.family in ("vgg", "mobilenet"):  # torchvision's init for these heads
        nn.init.normal_(head.weight, 0, 0.01)
        nn.init.zeros_(head.bias)
    return head


def _tag_groups(model: nn.Module, spec: _Spec) -> None:
    """Mark the top-level parts of the backbone with their parameter group (``_sca_group``)."""
    def tag(m: nn.Module, group: str) -> None:
        m._sca_group = group  # type: ignore[attr-defined]

    if spec.family == "vgg":
        conv = 0
        for m in model.features:
            conv += isinstance(m, nn.Conv2d)
            tag(m, "early" if conv <= 10 else "late")  # conv1_1..conv4_3 are the first 10 convs (C3)
        for m in model.classifier:
            tag(m, "late")
    elif spec.family == "resnet":
        for name in ("conv1", "bn1", "layer1", "layer2", "layer3"):
            tag(getattr(model, name), "early")
        tag(model.layer4, "late")
    else:
        last_stage = max(i for i, b in enumerate(model.features) if getattr(b, "_is_cn", False))
        for i, m in enumerate(model.features):
            tag(m, "early" if i < last_stage else "late")
        for m in model.classifier:
            tag(m, "late")
    tag(_get(model, spec.head), "head")


def build_classifier(
    backbone: str,
    attention: Optional[str] = None,
    placement: Union[None, str, Sequence[str]] = None,
    num_classes: int = 20,
    weights: WeightsArg = None,
    **attention_kwargs: Any,
) -> nn.Module:
    """A torchvision classifier with attention modules inserted (claims C3, C4, C5).

    Args:
        backbone: one of :func:`list_backbones` (``"vgg16"``, ``"resnet50"``,
            ``"mobilenet_v3_large"``, ``"resnet18"``, ``"mobilenet_v3_small"``).
        attention: ``None`` (plain backbone) or a name of :func:`sca_lib.attention.list_attentions`
            (``"dual"``, ``"channel"``, ``"spatial"``, ``"lite"``, ...).
        placement: a name (or list of names) from :func:`list_placements`; ``None`` = the article's
            default (:func:`default_placement`).
        num_classes: outputs of the new head (20 for Pascal VOC).
        weights: ``None``, ``"DEFAULT"`` / a weights name / a torchvision weights enum, a path to
            the ``state_dict`` of the plain model (any head size), or such a dict. Loaded before
            the attention is inserted; the head is never loaded.
        **attention_kwargs: passed to every attention module (``reduction``, ``identity_init``,
            ``drop_rate``, ``strength``, ...).

    Returns:
        The torchvision model (``VGG``, ``ResNet`` or ``MobileNetV3``), modified in place:
        x: (N, 3, H, W) -> logits (N, num_classes). ``model.sca_config`` records the arguments
        and the resolved placements.
    """
    spec = _spec(backbone)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (20 for Pascal VOC), got {num_classes!r}")
    if attention is None and (placement is not None or attention_kwargs):
        raise ValueError(f"placement/attention kwargs given but attention=None; pass an attention name "
                         f"({', '.join(list_attentions())}) or drop them")
    if attention is not None and (not isinstance(attention, str) or attention.lower() not in list_attentions()):
        raise ValueError(f"unknown attention {attention!r}; expected None or one of {', '.join(list_attentions())}")
    enum, state_dict, source = _resolve_weights(spec, weights)

    model = torchvision.models.get_model(spec.name, weights=enum)
    if state_dict is not None:
        _load_backbone(model, state_dict, spec, source)
    old_head = _get(model, spec.head)
    _set(model, spec.head, _new_head(spec, old_head.in_features, num_classes))
    _tag_groups(model, spec)

    resolved: List[str] = []
    if attention is not None:
        places = _placements(model, spec)
        resolved = _resolve_placements(places, spec.default_placement if placement is None else placement, spec)
        inserts = []
        for name in resolved:
            p = places[name]
            if p.kind == "replace_block":
                _set(model, p.target, AttnResBlock(p.channels, attention=attention, **attention_kwargs))
            elif p.kind == "inside_block":
                block = _get(model, p.target)
                cls = AttnBottleneck if isinstance(block, Bottleneck) else AttnBasicBlock
                _set(model, p.target, cls.from_block(block, create_attention(attention, p.channels, **attention_kwargs)))
            elif p.kind == "replace_se":
                _set(model, p.target, create_attention(attention, p.channels, **attention_kwargs))
            else:
                inserts.append(p)
        for p in sorted(inserts, key=lambda p: (p.target, -p.index)):  # back to front: indices stay valid
            seq = _get(model, p.target)  # an nn.Sequential, modified in place (keeps its group tag)
            mods = list(seq.children())
            mods.insert(p.index + 1, create_attention(attention, p.channels, **attention_kwargs))
            for key in list(seq._modules):
                del seq._modules[key]
            for i, m in enumerate(mods):
                seq.add_module(str(i), m)
    model.sca_config = {  # type: ignore[attr-defined]
        "backbone": spec.name, "attention": attention, "placement": resolved,
        "num_classes": num_classes, "weights": source, "attention_kwargs": dict(attention_kwargs),
    }
    return model


def attention_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """name -> module for every top-level :class:`DualAttention` / :class:`AttnResBlock` in ``model``."""
    found: Dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, (DualAttention, AttnResBlock)) and not any(name.startswith(f + ".") for f in found):
            found[name] = m
    return found


# --------------------------------------------------------------------------------------------
# Parameter groups and freezing
# --------------------------------------------------------------------------------------------


def _param_group_names(model: nn.Module) -> Dict[str, str]:
    """parameter name -> group, from the tags set by :func:`build_classifier`."""
    result: Dict[str, str] = {}
    seen = set()

    def visit(mod: nn.Module, prefix: str, group: Optional[str]) -> None:
        if isinstance(mod, (DualAttention, AttnResBlock)):
            group = "attention"
        else:
            group = getattr(mod, "_sca_group", group)
        for n, p in mod.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                result[prefix + n] = group  # type: ignore[assignment]
        for n, c in mod.named_children():
            visit(c, prefix + n + ".", group)

    visit(model, "", None)
    orphans = [n for n, g in result.items() if g is None]
    if orphans:
        raise ValueError(
            f"parameter_groups works on models built by sca_lib.build_classifier; these parameters of "
            f"{type(model).__name__} belong to no group: {_listing(orphans)}. Build the model with "
            f"build_classifier(...) or tag the module with `module._sca_group = 'late'` (one of {GROUPS})")
    return result


def parameter_groups(model: nn.Module) -> Dict[str, List[nn.Parameter]]:
    """The parameters of a :func:`build_classifier` model split into ``GROUPS``.

    Returns ``{"attention": [...], "head": [...], "late": [...], "early": [...]}``; every parameter
    is in exactly one list (a group can be empty, e.g. "attention" for a plain model). See the
    module docstring for what each group holds per backbone.
    """
    names = _param_group_names(model)
    params = dict(model.named_parameters())
    groups: Dict[str, List[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, group in names.items():
        groups[group].append(params[name])
    return groups


def _frozen_bn_pre_hook(module: nn.Module, args: Any) -> None:
    if getattr(module, "_sca_frozen_bn", False):
        module.training = False


def set_trainable(model: nn.Module, groups: Iterable[str]) -> nn.Module:
    """Train only ``groups`` (names from ``GROUPS``): ``requires_grad`` True there, False elsewhere.

    BatchNorm layers whose parameters are all frozen are switched to eval mode and stay there after
    ``model.train()`` (a forward pre-hook resets their ``training`` flag), so their running
    statistics stay frozen too. Unfrozen BatchNorm layers follow ``model.training`` again.
    Returns ``model``. Example (C6 stage 1): ``set_trainable(model, ["attention", "head"])``.
    """
    if isinstance(groups, str):
        groups = [groups]
    groups = list(groups)
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(f"unknown parameter group(s) {bad}; expected names from {GROUPS}")
    names = _param_group_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(names[name] in groups)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            frozen = bool(ps) and not any(p.requires_grad for p in ps)
            if frozen:
                if not getattr(m, "_sca_bn_hooked", False):
                    m.register_forward_pre_hook(_frozen_bn_pre_hook)
                    m._sca_bn_hooked = True
                m._sca_frozen_bn = True
                m.eval()
            elif getattr(m, "_sca_frozen_bn", False):
                m._sca_frozen_bn = False
                m.train(model.training)
    return model
