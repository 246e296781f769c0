"""One builder for every backbone: VGG16, ResNet50/18, MobileNetV3-Large/Small with attention (C3-C5).

torchvision-style::

    model = build_classifier("vgg16", attention="dual")                 # C3 default placement
    model = build_classifier("resnet50", attention="dual", placement="layer3.1")
    model = build_classifier("mobilenet_v3_large", attention="lite", placement="replace_se")
    model = build_classifier("resnet18", AttentionSpec("dual", placement="layer4.1.inside"))
    list_placements("resnet50")                                        # every valid place, described

How a model is built (the order matters for weights):

1. the plain torchvision model (``torchvision.models.get_model(name, weights=None)``);
2. weights are loaded into it: ``None`` (random init), ``"DEFAULT"`` / a weights name / a torchvision
   weights enum (downloaded by torchvision where there is internet), or a local file holding the
   ``state_dict`` of the *plain* model with any head size (for instance
   ``torch.save(build_classifier("resnet18", num_classes=20).state_dict(), path)``). Everything
   except the classification head is loaded, strictly; a file with NaN or inf values is refused;
3. the head is replaced by a new ``num_classes`` head;
4. attention modules are inserted (new, randomly initialised; the training engine initialises them
   with :func:`sca_lib.attention.init_attention_`).

Where attention can go: :mod:`sca_lib.placements`. Parameter groups and freezing for staged
training: :mod:`sca_lib.groups`. ``model.sca_config`` records what was built (see
:func:`build_classifier`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from ._checks import float_tensor, positive_int
from .attention import default_reduction, list_attentions
from .groups import tag_groups
from .placements import Place, apply_placements, placement_table, resolve_placements
from .spec import AttentionSpec

__all__ = [
    "build_classifier",
    "list_backbones",
    "list_placements",
    "default_placement",
    "normalise_spec",
]

WeightsArg = Union[None, str, "os.PathLike[str]", WeightsEnum, Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class _Backbone:
    name: str
    family: str  # vgg | resnet | mobilenet
    head: str  # module path of the Linear that is replaced by the num_classes head
    default_placement: str
    description: str


_BACKBONES: Dict[str, _Backbone] = {
    "vgg16": _Backbone("vgg16", "vgg", "classifier.6", "after_conv5_3",
                       "VGG16 (no BN), 13 convs; C3: attention after conv5_3"),
    "resnet50": _Backbone("resnet50", "resnet", "fc", "layer4.1",
                          "ResNet50 (Bottleneck blocks); C4: AttnResBlock replacing layer4.1"),
    "resnet18": _Backbone("resnet18", "resnet", "fc", "layer4.1",
                          "ResNet18 (BasicBlock), CPU-friendly; same placements as ResNet50"),
    "mobilenet_v3_large": _Backbone("mobilenet_v3_large", "mobilenet", "classifier.3", "after_features.16",
                                    "MobileNetV3-Large; C5: lite attention"),
    "mobilenet_v3_small": _Backbone("mobilenet_v3_small", "mobilenet", "classifier.3", "after_features.12",
                                    "MobileNetV3-Small, CPU-friendly; same placements as Large"),
}


def list_backbones() -> List[str]:
    """Names accepted by :func:`build_classifier`."""
    return list(_BACKBONES)


def _backbone(backbone: str) -> _Backbone:
    if not isinstance(backbone, str) or backbone.lower() not in _BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {', '.join(_BACKBONES)}")
    return _BACKBONES[backbone.lower()]


def _places(bb: _Backbone, model: Optional[nn.Module] = None) -> "OrderedDict[str, Place]":
    if model is None:
        with torch.device("meta"):
            model = torchvision.models.get_model(bb.name, weights=None)
    return placement_table(model, bb.family, bb.default_placement)


def list_placements(backbone: str) -> Dict[str, str]:
    """Valid placement names of ``backbone`` -> what each does (the default says "(default)").

    Example: ``list_placements("vgg16")["after_conv5_3"]``. Placement groups (``"detection"``,
    ``"replace_se"``) expand to several places; :func:`build_classifier` also takes a list of names.
    """
    return {n: p.description for n, p in _places(_backbone(backbone)).items() if p.kind != "invalid"}


@functools.lru_cache(maxsize=None)
def _placement_names(name: str) -> Tuple[str, ...]:
    return tuple(list_placements(name))


def default_placement(backbone: str) -> str:
    """The article's placement for ``backbone`` (used when ``placement=None``)."""
    return _backbone(backbone).default_placement


def normalise_spec(spec: AttentionSpec, backbone: str) -> AttentionSpec:
    """``spec`` checked against ``backbone`` and with its defaults made explicit, so equal models
    compare and hash equal: a plain model carries no knobs; an attention model's placement ``None``
    becomes the backbone's default placement and its reduction ``None`` the module's default.
    Unknown backbones and placement names raise ValueError listing the valid ones."""
    bb = _backbone(backbone)
    if spec.kind is None:
        return AttentionSpec()
    names = [spec.placement] if isinstance(spec.placement, str) else list(spec.placement or [])
    valid = _placement_names(bb.name)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown placement(s) {unknown} for {bb.name}; expected names from "
                         f"sca_lib.backbones.list_placements({bb.name!r}): {', '.join(valid)}")
    return dataclasses.replace(
        spec, placement=spec.placement if spec.placement is not None else bb.default_placement,
        reduction=spec.reduction if spec.reduction is not None else default_reduction(spec.kind))


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def _weights_help(bb: _Backbone) -> str:
    enum_cls = torchvision.models.get_model_weights(bb.name)
    return (f"weights= expects None (random init), 'DEFAULT' or a weights name ({', '.join(enum_cls.__members__)}) "
            f"or a torchvision {enum_cls.__name__} member (downloaded by torchvision), or the path of a file "
            f"saved with torch.save(model.state_dict(), path) where model is a plain torchvision {bb.name} "
            f"(torchvision.models.{bb.name}(num_classes=any)) or "
            f"build_classifier({bb.name!r}, attention=None, num_classes=any)")


def _resolve_weights(bb: _Backbone, weights: WeightsArg) -> Tuple[Optional[WeightsEnum], Optional[Mapping], str]:
    """-> (torchvision weights enum or None, state_dict or None, description of the source)."""
    if weights is None:
        return None, None, "random init"
    enum_cls = torchvision.models.get_model_weights(bb.name)
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum_cls):
            raise ValueError(f"{bb.name} cannot use {weights} ({type(weights).__name__}); {_weights_help(bb)}")
        return weights, None, str(weights)
    if isinstance(weights, Mapping):
        return None, weights, "a state_dict"
    if isinstance(weights, str) and (weights == "DEFAULT" or weights in enum_cls.__members__):
        return enum_cls.verify(weights), None, weights
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        return None, load_state_dict_file(path, _weights_help(bb)), path
    raise ValueError(f"unsupported weights {weights!r} ({type(weights).__name__}); {_weights_help(bb)}")


def load_state_dict_file(path: str, advice: str, what: str = "weights") -> Mapping[str, torch.Tensor]:
    """The ``state_dict`` saved at ``path`` (a training checkpoint's ``state_dict`` / ``model`` /
    ``model_state_dict`` entry too); a missing, unreadable or non-state_dict file raises an error
    that ends with ``advice``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path!r} not found; {advice}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"could not read {path!r} as a PyTorch state_dict ({type(e).__name__}: "
                         f"{e}); {advice}") from None
    if isinstance(obj, Mapping) and not all(torch.is_tensor(v) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):  # a training checkpoint
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state_dict (a dict of "
                         f"tensors); {advice}")
    return obj


def _listing(keys: Sequence[str], n: int = 6) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _check_finite(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or inf (e.g. saved from a run that diverged), naming the first tensor."""
    for key, value in sd.items():
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise ValueError(
                    f"weights from {source} hold non-finite values: tensor {key!r} {tuple(value.shape)} has "
                    f"{bad} NaN/inf of {value.numel()} (the first such tensor). The file is broken, e.g. saved "
                    f"from a training run that diverged; re-create it (or pass weights=None for random init)")


def _load_backbone(model: nn.Module, state_dict: Mapping[str, torch.Tensor], bb: _Backbone, source: str) -> None:
    """Strictly load everything but the head into the plain model; teach on any mismatch."""
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    head = bb.head + "."
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
        raise ValueError(f"weights from {source} do not match a plain torchvision {bb.name} "
                         f"(head {bb.head!r} ignored): {'; '.join(parts)}.{hint} {_weights_help(bb)}")
    _check_finite(sd, source)
    model.load_state_dict(sd, strict=False)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _new_head(bb: _Backbone, in_features: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(in_features, num_classes)
    if bb.family in ("vgg", "mobilenet"):  # torchvision's init for these heads
        nn.init.normal_(head.weight, 0, 0.01)
        nn.init.zeros_(head.bias)
    return head


def _check_images(model: nn.Module, args: Tuple[Any, ...]) -> None:
    """Forward pre-hook of every built model: a clear error for integer (or non-tensor) image batches."""
    if args:
        name = getattr(model, "sca_config", {}).get("backbone", type(model).__name__)
        float_tensor(f"build_classifier({name!r}) model", args[0], "(N, 3, H, W)", like=model)


def _attention_args(attention: Union[None, str, AttentionSpec], placement: Any,
                    kwargs: Dict[str, Any]) -> Tuple[Optional[str], Any, Dict[str, Any]]:
    """(kind, placement, module kwargs) from either a name + placement + kwargs or an AttentionSpec."""
    if isinstance(attention, AttentionSpec):
        if placement is not None or kwargs:
            raise ValueError(
                "build_classifier got an AttentionSpec and also placement=/attention keywords; put them in "
                "the spec instead, e.g. dataclasses.replace(spec, placement='layer4.1', reduction=16)")
        return attention.kind, attention.placement, attention.module_kwargs()
    if attention is None and (placement is not None or kwargs):
        raise ValueError(f"placement/attention kwargs given but attention=None; pass an attention name "
                         f"({', '.join(list_attentions())}) or drop them")
    if attention is not None and (not isinstance(attention, str) or attention.lower() not in list_attentions()):
        raise ValueError(f"unknown attention {attention!r}; expected None, an AttentionSpec or one of "
                         f"{', '.join(list_attentions())}")
    return attention, placement, dict(kwargs)


def build_classifier(
    backbone: str,
    attention: Union[None, str, AttentionSpec] = None,
    placement: Union[None, str, Sequence[str]] = None,
    num_classes: int = 20,
    *,
    weights: WeightsArg = None,
    **attention_kwargs: Any,
) -> nn.Module:
    """A torchvision classifier with attention modules inserted (claims C3, C4, C5).

    Args:
        backbone: one of :func:`list_backbones` (``"vgg16"``, ``"resnet50"``,
            ``"mobilenet_v3_large"``, ``"resnet18"``, ``"mobilenet_v3_small"``).
        attention: ``None`` (plain backbone), a name of :func:`sca_lib.attention.list_attentions`
            (``"dual"``, ``"channel"``, ``"spatial"``, ``"lite"``, ...), or an
            :class:`~sca_lib.spec.AttentionSpec` (then placement and knobs come from the spec).
        placement: a name (or list of names) from :func:`list_placements`; ``None`` = the article's
            default (:func:`default_placement`).
        num_classes: outputs of the new head (20 for Pascal VOC).
        weights: keyword-only, as in torchvision. ``None``, ``"DEFAULT"`` / a weights name / a
            torchvision weights enum, a path to the ``state_dict`` of the plain model (any head
            size), or such a dict. Loaded before the attention is inserted; the head never is.
        **attention_kwargs: passed to every attention module (``reduction``, ``identity_init``,
            ``drop_rate``, ``strength``, ...).

    Returns:
        The torchvision model (``VGG``, ``ResNet`` or ``MobileNetV3``), modified in place:
        x: (N, 3, H, W) float -> logits (N, num_classes); an integer image batch is refused with a
        TypeError. ``model.sca_config`` records what was built: ``backbone``, ``attention`` (the
        name or None), ``placement`` (the resolved placement names, groups expanded), ``modules``
        (placement name -> module path of its attention module, e.g. ``{"after_conv5_3":
        "features.30"}``), ``reduction`` (the resolved ratio; None for a plain model), ``head``
        (the head's module path, e.g. ``"classifier.6"``), ``num_classes``, ``weights`` (the
        source) and ``attention_kwargs``.
    """
    bb = _backbone(backbone)
    num_classes = positive_int("build_classifier", "num_classes", num_classes, " (20 for Pascal VOC)")
    kind, placement, kwargs = _attention_args(attention, placement, attention_kwargs)
    enum, state_dict, source = _resolve_weights(bb, weights)

    model = torchvision.models.get_model(bb.name, weights=enum)
    if state_dict is not None:
        _load_backbone(model, state_dict, bb, source)
    old_head = model.get_submodule(bb.head)
    parent, _, leaf = bb.head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, _new_head(bb, old_head.in_features, num_classes))
    tag_groups(model, bb.family, bb.head)

    resolved: List[str] = []
    modules: Dict[str, str] = {}
    if kind is not None:
        places = _places(bb, model)
        resolved = resolve_placements(places, bb.default_placement if placement is None else placement, bb.name)
        modules = apply_placements(model, places, resolved, kind, kwargs)
    reduction = None if kind is None else kwargs.get("reduction", default_reduction(kind))
    model.sca_config = {  # type: ignore[attr-defined]
        "backbone": bb.name, "attention": kind, "placement": resolved, "modules": modules,
        "reduction": reduction, "head": bb.head, "num_classes": num_classes, "weights": source,
        "attention_kwargs": kwargs,
    }
    model.register_forward_pre_hook(_check_images)
    return model
