"""Parameter groups and freezing for staged training (claim C6).

Every model built by :func:`sca_lib.backbones.build_classifier` splits its parameters into
``GROUPS``: ``"attention"`` (every attention module, :func:`sca_lib.attention.is_attention`),
``"head"`` (the new last Linear), ``"early"`` and ``"late"`` (the backbone):

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

from typing import Any, Dict, Iterable, List, Optional, Tuple

from torch import nn

from .attention import is_attention
from .placements import block_stride

__all__ = ["GROUPS", "tag_groups", "model_groups", "parameter_groups", "set_trainable"]

#: The parameter groups of every model built by :func:`~sca_lib.backbones.build_classifier`.
GROUPS = ("attention", "head", "late", "early")


def tag_groups(model: nn.Module, family: str, head: str) -> None:
    """Mark the top-level parts of a plain torchvision ``model`` of ``family`` (vgg, resnet or
    mobilenet) with their group (attribute ``_sca_group``); ``head`` is the head's module path."""
    def tag(m: nn.Module, group: str) -> None:
        m._sca_group = group  # type: ignore[attr-defined]

    if family == "vgg":
        conv = 0
        for m in model.features:
            conv += isinstance(m, nn.Conv2d)
            tag(m, "early" if conv <= 10 else "late")  # conv1_1..conv4_3 are the first 10 convs (C3)
        for m in model.classifier:
            tag(m, "late")
    elif family == "resnet":
        for name in ("conv1", "bn1", "layer1", "layer2", "layer3"):
            tag(getattr(model, name), "early")
        tag(model.layer4, "late")
    else:  # mobilenet: the last stage starts at the last block that halves the resolution
        last_stage = max(i for i, b in enumerate(model.features) if block_stride(b) > 1)
        for i, m in enumerate(model.features):
            tag(m, "early" if i < last_stage else "late")
        for m in model.classifier:
            tag(m, "late")
    tag(model.get_submodule(head), "head")


def _listing(keys: List[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _param_group_names(model: nn.Module) -> Dict[str, str]:
    """parameter name -> group, from the tags set by :func:`tag_groups`."""
    result: Dict[str, str] = {}
    seen = set()

    def visit(mod: nn.Module, prefix: str, group: Optional[str]) -> None:
        group = "attention" if is_attention(mod) else getattr(mod, "_sca_group", group)
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


def model_groups(model: nn.Module) -> Tuple[str, ...]:
    """The group names of ``model``: ``GROUPS`` for a classifier, ``model.sca_groups`` where the
    builder set them (a detector: :data:`sca_lib.detection.DETECTION_GROUPS`)."""
    return tuple(getattr(model, "sca_groups", GROUPS))


def parameter_groups(model: nn.Module) -> Dict[str, List[nn.Parameter]]:
    """The parameters of a :func:`~sca_lib.backbones.build_classifier` model split into ``GROUPS``
    (a :func:`~sca_lib.detection.build_detector` model: into ``DETECTION_GROUPS``).

    Returns ``{"attention": [...], "head": [...], "late": [...], "early": [...]}``; every parameter
    is in exactly one list (a group can be empty, e.g. "attention" for a plain model). See the
    module docstring for what each group holds per backbone.
    """
    names = _param_group_names(model)
    params = dict(model.named_parameters())
    groups: Dict[str, List[nn.Parameter]] = {g: [] for g in model_groups(model)}
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
    valid = model_groups(model)
    bad = [g for g in groups if g not in valid]
    if bad:
        raise ValueError(f"unknown parameter group(s) {bad}; expected names from {valid}")
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
