"""Where attention can go in each backbone family, and the blocks that carry it (claims C3-C5).

:func:`placement_table` lists every place of a plain torchvision model (:func:`sca_lib.backbones.list_placements`
shows them by backbone name); :func:`resolve_placements` checks a request against the table and
expands placement groups; :func:`apply_placements` puts the modules in.

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
  residual add (where SE and CBAM sit; :class:`AttnBottleneck`, :class:`AttnBasicBlock`), and
  ``"after_layerS"`` appends it after a stage. These let an ablation separate "attention" from
  "an extra 3x3 conv". The group ``"detection"`` is the article's detection design: every
  replaceable block of stages 3 and 4.
- **MobileNetV3 (C5)**: ``"after_features.N"`` adds a module after block N (default: the last
  feature block, ``features.16`` for Large, ``features.12`` for Small, near the output as C14
  recommends); the group ``"replace_se"`` replaces every built-in Squeeze-and-Excitation block of
  torchvision's MobileNetV3 by the attention module (``"replace_se.N"`` only the one in block N).
  The article gives no placement for MobileNet; its C12 number comes from a Faster R-CNN detector,
  whose attention (C13) sits on the FPN levels, i.e. on the backbone outputs that torchvision's
  ``fasterrcnn_mobilenet_v3_large_fpn`` feeds to the FPN (``features.13`` and ``features.16``).

A placement *group* (kind ``"group"``) is a named set of placements that expands to its members.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .attention import AttnResBlock, create_attention

__all__ = ["AttnBottleneck", "AttnBasicBlock", "Place", "KINDS", "placement_table", "resolve_placements",
           "apply_placements", "block_stride"]

#: What a placement does: insert a module into an ``nn.Sequential``, replace a ResNet block by an
#: AttnResBlock, put a module inside a ResNet block, replace a built-in SE block, name a group of
#: placements, or refuse (with the reason as its description).
KINDS = ("insert", "replace_block", "inside_block", "replace_se", "group", "invalid")


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
# The placement table
# --------------------------------------------------------------------------------------------


@dataclass
class Place:
    """One named placement: its kind (one of :data:`KINDS`), the module path it acts on (the
    container for ``insert``), the index to insert after (``insert`` only), the channel count the
    attention module gets, a description, and the member placements of a ``group``."""

    kind: str
    target: str
    index: int
    channels: int
    description: str
    members: Tuple[str, ...] = ()


def block_stride(module: nn.Module) -> int:
    """The largest stride of any convolution in ``module`` (2 for a block that halves the resolution)."""
    strides = [max(m.stride) for m in module.modules() if isinstance(m, nn.Conv2d)]
    return max(strides, default=1)


def _block_channels(block: nn.Module) -> Tuple[int, int, int]:
    """(in_channels, out_channels, stride) of a torchvision ResNet block."""
    last = block.conv3 if isinstance(block, Bottleneck) else block.conv2
    return block.conv1.in_channels, last.out_channels, block.stride


def _vgg_places(model: nn.Module, places: "OrderedDict[str, Place]") -> None:
    block, conv_i, channels, names = 1, 0, 3, {}
    for i, m in enumerate(model.features):
        if isinstance(m, nn.Conv2d):
            conv_i += 1
            channels = m.out_channels
            names[i] = f"conv{block}_{conv_i}"
        elif isinstance(m, nn.ReLU):
            name = names[i - 1]
            places[f"after_{name}"] = Place(
                "insert", "features", i, channels,
                f"after {name} and its ReLU (features[{i - 1}], features[{i}]), {channels} channels")
        elif isinstance(m, nn.MaxPool2d):
            places[f"after_pool{block}"] = Place(
                "insert", "features", i, channels,
                f"after the max-pool closing block {block} (features[{i}]), {channels} channels")
            block, conv_i = block + 1, 0
    a = places["after_conv5_2"]
    places["article_slice"] = Place(
        "insert", "features", a.index, a.channels,
        "what the article's code does: features.children()[:28] + [attn] + [28:]. features[28] "
        "is conv5_3, so this puts the module BEFORE conv5_3 (same place as after_conv5_2), not "
        "after it as the article's text says")


def _resnet_places(model: nn.Module, places: "OrderedDict[str, Place]") -> None:
    for s in range(1, 5):
        layer = getattr(model, f"layer{s}")
        for b, block in enumerate(layer):
            path = f"layer{s}.{b}"
            cin, cout, stride = _block_channels(block)
            if cin == cout and stride == 1:
                places[path] = Place(
                    "replace_block", path, -1, cout,
                    f"replace {path} ({type(block).__name__}, {cout} ch) by a new AttnResBlock("
                    f"{cout}) = x + conv3x3(attn(x)); discards {path}'s pretrained weights")
            else:
                places[path] = Place(
                    "invalid", path, -1, cout,
                    f"{path} changes channels {cin}->{cout} and/or has stride {stride}, but an "
                    f"AttnResBlock keeps channels and size (x + conv3x3(attn(x))), so it cannot "
                    f"replace it. Use '{path}.inside' (attention inside the block, before the "
                    f"residual add), 'after_layer{s}' (after the stage), or replace 'layer{s}.1'")
            places[f"{path}.inside"] = Place(
                "inside_block", path, -1, cout,
                f"inside {path}, after its last BN and before the residual add (SE/CBAM "
                f"position), {cout} ch; keeps every pretrained weight")
        _, cout, _ = _block_channels(layer[-1])
        places[f"after_layer{s}"] = Place(
            "insert", f"layer{s}", len(layer) - 1, cout,
            f"after stage {s} (appended to layer{s}), {cout} ch; keeps every pretrained weight")
    members = tuple(n for n, p in places.items()
                    if p.kind == "replace_block" and n.startswith(("layer3.", "layer4.")))
    places["detection"] = Place(
        "group", "", -1, 0,
        "the article's detection design: replace every block of stages 3 and 4 by an AttnResBlock "
        f"({', '.join(members)}); layer3.0 and layer4.0 change channels/stride and are kept", members)


def _mobilenet_places(model: nn.Module, places: "OrderedDict[str, Place]") -> None:
    se_members = []
    for i, m in enumerate(model.features):
        cout = m.out_channels
        places[f"after_features.{i}"] = Place(
            "insert", "features", i, cout, f"after features.{i} ({type(m).__name__}), {cout} channels")
        for j, sub in enumerate(getattr(m, "block", ())):
            if isinstance(sub, torchvision.ops.SqueezeExcitation):
                name = f"replace_se.{i}"
                se_members.append(name)
                c = sub.fc1.in_channels
                places[name] = Place(
                    "replace_se", f"features.{i}.block.{j}", -1, c,
                    f"replace the built-in SE block of features.{i} ({c} expanded channels, "
                    f"reduction 4, ReLU/Hardsigmoid) by the attention module")
    places["replace_se"] = Place(
        "group", "", -1, 0, f"replace all {len(se_members)} built-in SE blocks ({', '.join(se_members)})",
        tuple(se_members))


_FAMILIES = {"vgg": _vgg_places, "resnet": _resnet_places, "mobilenet": _mobilenet_places}


def placement_table(model: nn.Module, family: str, default: str) -> "OrderedDict[str, Place]":
    """Every placement of ``model`` (a plain torchvision model of ``family``: vgg, resnet or
    mobilenet), refusals included; ``default``'s description gets " (default)"."""
    places: "OrderedDict[str, Place]" = OrderedDict()
    _FAMILIES[family](model, places)
    places[default].description += " (default)"
    return places


def resolve_placements(places: "OrderedDict[str, Place]", placement: Union[str, Sequence[str]],
                       backbone: str) -> List[str]:
    """The placement names that ``placement`` (a name or several) stands for, groups expanded.

    A ValueError names the valid placements (``list_placements(backbone)``) for an unknown name and
    the reason for a refused one; the same place twice, or replacing a block and inserting inside
    it, is refused too.
    """
    names = [placement] if isinstance(placement, str) else list(placement)
    if not names:
        raise ValueError("placement is an empty list; pass None for the default or at least one name")
    out: List[str] = []
    for name in names:
        if not isinstance(name, str) or name not in places:
            close = [n for n in places if isinstance(name, str) and name.split(".")[0] in n][:8]
            raise ValueError(
                f"unknown placement {name!r} for {backbone}; valid ones are listed by "
                f"list_placements({backbone!r})" + (f", e.g. {', '.join(close)}" if close else
                                                    f", e.g. {', '.join(list(places)[:6])}, ..."))
        p = places[name]
        if p.kind == "invalid":
            raise ValueError(f"placement {name!r} is not valid for {backbone}: {p.description}")
        out.extend(p.members if p.kind == "group" else [name])
    if len(set(out)) != len(out):
        raise ValueError(f"placement {placement!r} names the same place twice ({out})")
    blocks = {places[n].target for n in out if places[n].kind in ("replace_block", "inside_block")}
    if len(blocks) < sum(places[n].kind in ("replace_block", "inside_block") for n in out):
        raise ValueError(f"placement {placement!r} both replaces a block and inserts inside it; pick one")
    return out


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(model, parent), name, module)


def apply_placements(model: nn.Module, places: "OrderedDict[str, Place]", names: Sequence[str],
                     attention: str, attention_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Put a new ``attention`` module (or AttnResBlock) at each placement of ``names`` (resolved
    names, see :func:`resolve_placements`), in place. Returns placement name -> module path of the
    new attention module (e.g. ``{"after_conv5_3": "features.30"}``)."""
    kw = dict(attention_kwargs or {})
    new: Dict[int, str] = {}  # id(new module) -> placement name
    inserts = []
    for name in names:
        p = places[name]
        if p.kind == "replace_block":
            module = AttnResBlock(p.channels, attention=attention, **kw)
            _set(model, p.target, module)
        elif p.kind == "inside_block":
            block = _get(model, p.target)
            cls = AttnBottleneck if isinstance(block, Bottleneck) else AttnBasicBlock
            module = create_attention(attention, p.channels, **kw)
            _set(model, p.target, cls.from_block(block, module))
        elif p.kind == "replace_se":
            module = create_attention(attention, p.channels, **kw)
            _set(model, p.target, module)
        else:
            module = create_attention(attention, p.channels, **kw)
            inserts.append((p, module))
        new[id(module)] = name
    for p, module in sorted(inserts, key=lambda pm: (pm[0].target, -pm[0].index)):  # back to front
        seq = _get(model, p.target)  # an nn.Sequential, modified in place (keeps its group tag)
        mods = list(seq.children())
        mods.insert(p.index + 1, module)
        for key in list(seq._modules):
            del seq._modules[key]
        for i, m in enumerate(mods):
            seq.add_module(str(i), m)
    paths = {new[id(m)]: path for path, m in model.named_modules() if id(m) in new}
    return {name: paths[name] for name in names}
