"""Spatial + channel attention modules ("SCA-CNN"-style dual attention).

The modules follow the source article (see ``../shared/seed/README.md``, claims C1, C4, C5, C8,
C9, C10, C15). A note on the name: the article calls its module "SCA-CNN", but the SCA-CNN paper
(Chen et al., CVPR 2017, image captioning) conditions its channel-wise and spatial attention on an
LSTM hidden state, normalises with softmax and applies channel then spatial attention in sequence.
The article's module is query-free, sigmoid-gated and parallel: both paths read the same input and
their gates are multiplied. That is closer to scSE (Roy et al., MICCAI 2018, "Concurrent Spatial and
Channel Squeeze & Excitation"), with multiplicative instead of additive/max fusion. The
channel-only variant is a Squeeze-and-Excitation block (Hu et al., CVPR 2018) with reduction 8.

Public names: :class:`ChannelAttention`, :class:`SpatialAttention`, :class:`DualAttention`,
:class:`LiteDualAttention`, :class:`AttnResBlock`, :func:`create_attention`,
:func:`list_attentions`, :func:`init_attention_`, :func:`record_attention`, ``STRENGTH_PRESETS``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional, Type, Union

import torch
from torch import nn

__all__ = [
    "ChannelAttention",
    "SpatialAttention",
    "DualAttention",
    "LiteDualAttention",
    "AttnResBlock",
    "create_attention",
    "list_attentions",
    "default_reduction",
    "init_attention_",
    "record_attention",
    "STRENGTH_PRESETS",
    "MODES",
]

LayerType = Union[Type[nn.Module], Callable[[], nn.Module]]

#: The article's per-task strengths (claim C10): ``beta`` scales the channel path, ``alpha`` the
#: spatial path. How they enter the formula is our definition, see :class:`DualAttention`.
STRENGTH_PRESETS: Dict[str, Dict[str, float]] = {
    "classification": {"beta": 0.7, "alpha": 0.3},
    "detection": {"beta": 0.5, "alpha": 0.7},
    "segmentation": {"beta": 0.3, "alpha": 0.8},
}

#: Which paths a :class:`DualAttention` has.
MODES = ("dual", "channel", "spatial")


def _check_channels(name: str, channels: object) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(
            f"{name} expects `channels` to be a positive int (the C of an (N, C, H, W) input), "
            f"got {channels!r}"
        )
    return channels


def _check_input(name: str, x: torch.Tensor, channels: int) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{name} expects a 4-D input (N, C, H, W), got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) for a single image"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} expects {channels} channels, got {x.shape[1]} (input shape {tuple(x.shape)}); "
            f"build it with {name}({x.shape[1]}) for this feature map"
        )


def _reduced_channels(name: str, channels: int, reduction: int, rd_channels: Optional[int]) -> int:
    if rd_channels is not None:
        if isinstance(rd_channels, bool) or not isinstance(rd_channels, int) or rd_channels < 1:
            raise ValueError(f"{name} expects `rd_channels` to be a positive int, got {rd_channels!r}")
        return rd_channels
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"{name} expects `reduction` to be a positive int, got {reduction!r}")
    if reduction > channels:
        raise ValueError(
            f"{name}: reduction {reduction} is larger than channels {channels}, so the hidden "
            f"layer would have {channels}//{reduction} = 0 channels; use reduction <= {channels} "
            f"or pass rd_channels explicitly"
        )
    return channels // reduction


class ChannelAttention(nn.Module):
    """Channel path of claim C1 ("what"): a Squeeze-and-Excitation gate.

    ``AdaptiveAvgPool2d(1) -> 1x1 conv C->C/r -> act -> 1x1 conv C/r->C -> gate``.

    Args:
        channels: C, the number of input channels.
        reduction: r, hidden width is ``channels // reduction`` (8 in C1, 16 in the lite C5).
        rd_channels: explicit hidden width; overrides ``reduction``.
        act_layer: activation between the two 1x1 convs (``nn.ReLU``; ``nn.Hardswish`` in C5).
        gate_layer: gate producing the weights (``nn.Sigmoid``; ``nn.Hardsigmoid`` in C5).

    Shapes:
        ``weights(x)``: (N, C, H, W) -> (N, C, 1, 1), values in the gate's range.
        ``forward(x)``: (N, C, H, W) -> (N, C, H, W), ``x * weights(x)``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        rd_channels: Optional[int] = None,
        act_layer: LayerType = nn.ReLU,
        gate_layer: LayerType = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = _check_channels(type(self).__name__, channels)
        hidden = _reduced_channels(type(self).__name__, channels, reduction, rd_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.gate = gate_layer()

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, 1, 1) channel weights."""
        return self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, x, self.channels)
        return x * self.weights(x)


class SpatialAttention(nn.Module):
    """Spatial path of claim C1 ("where"): ``1x1 conv C->1 -> gate``.

    Shapes:
        ``weights(x)``: (N, C, H, W) -> (N, 1, H, W), one weight per position.
        ``forward(x)``: (N, C, H, W) -> (N, C, H, W), ``x * weights(x)``.
    """

    def __init__(self, channels: int, gate_layer: LayerType = nn.Sigmoid) -> None:
        super().__init__()
        self.channels = _check_channels(type(self).__name__, channels)
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)
        self.gate = gate_layer()

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 1, H, W) spatial weights."""
        return self.gate(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, x, self.channels)
        return x * self.weights(x)


def _check_strength(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"DualAttention (and LiteDualAttention) expects `{name}` in [0, 1], got {value!r}")
    return float(value)


class DualAttention(nn.Module):
    """Parallel channel + spatial attention (the article's "SCA-CNN" module, claim C1).

    Both paths read the same input ``x``; with default arguments the output is exactly C1::

        out = x * c(x) * s(x)          c: (N, C, 1, 1) channel weights, s: (N, 1, H, W) spatial map

    Strengths (claim C10; the article gives values but not the formula, this is our definition)::

        out = x * (1 - beta + beta * c(x)) * (1 - alpha + alpha * s(x))

    so ``alpha = beta = 1`` is C1 and ``alpha = beta = 0`` is the identity; a strength interpolates
    between "no gating" and the full gate. ``strength="classification"`` etc. picks the article's
    presets (:data:`STRENGTH_PRESETS`).

    Args:
        channels: C, the number of input channels (first positional argument, as in timm).
        reduction: channel-path reduction ratio r (hidden width ``C // r``); 8 in C1.
        rd_channels: explicit hidden width, overrides ``reduction``.
        mode: ``"dual"`` (C1), ``"channel"`` (C15's channel-only variant, an SE block) or
            ``"spatial"`` (spatial-only, for ablations). The unused path has no parameters.
        alpha: spatial strength in [0, 1] (default 1).
        beta: channel strength in [0, 1] (default 1).
        strength: a preset name from :data:`STRENGTH_PRESETS`; cannot be combined with alpha/beta.
        act_layer: channel-path activation (``nn.ReLU``; ``nn.Hardswish`` in the lite module).
        gate_layer: gate of both paths (``nn.Sigmoid``; ``nn.Hardsigmoid`` in the lite module).
        drop_rate: ``nn.Dropout2d`` probability on the attended output (claim C9); active in
            training only. Note that Dropout2d zeroes whole channels of the *output*.
        identity_init: start as the exact identity. Two sigmoid gates at zero pre-activation scale
            every feature by 0.5 * 0.5 = 0.25, which wrecks a pretrained backbone's features the
            moment the module is inserted. With ``identity_init=True`` the gates are ``2 * gate(z)``
            (range (0, 2) for a sigmoid) and the last layer of each path starts at zero, so
            ``out == x`` at initialisation and the module learns a deviation from identity.

    Shapes:
        x: (N, C, H, W) -> (N, C, H, W).

    Initialisation: the constructor keeps PyTorch's default initialisation of the convolutions
    (unless ``identity_init``); :meth:`reset_parameters` and :func:`init_attention_` apply the
    article's C8 initialisation instead (Kaiming normal, fan_out), which saturates the spatial gate
    on large features (notebook 01).

    Attention maps: set ``record_maps = True`` (or use :func:`record_attention`) and the last
    forward leaves ``last_maps = {"channel": (N, C) or None, "spatial": (N, 1, H, W) or None}``
    (detached; with ``identity_init`` the gates range over (0, 2)). When it is off nothing is stored.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        *,
        rd_channels: Optional[int] = None,
        mode: str = "dual",
        alpha: Optional[float] = None,
        beta: Optional[float] = None,
        strength: Optional[str] = None,
        act_layer: LayerType = nn.ReLU,
        gate_layer: LayerType = nn.Sigmoid,
        drop_rate: float = 0.0,
        identity_init: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = _check_channels(name, channels)
        if mode not in MODES:
            raise ValueError(f"{name}: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if strength is not None:
            if alpha is not None or beta is not None:
                raise ValueError(f"{name}: pass either strength={strength!r} or alpha/beta, not both")
            if strength not in STRENGTH_PRESETS:
                raise ValueError(
                    f"{name}: unknown strength preset {strength!r}; expected one of "
                    f"{', '.join(STRENGTH_PRESETS)}"
                )
            alpha, beta = STRENGTH_PRESETS[strength]["alpha"], STRENGTH_PRESETS[strength]["beta"]
        if mode == "channel" and alpha is not None and strength is None:
            raise ValueError(f"{name}: alpha scales the spatial path, which mode='channel' does not have")
        if mode == "spatial" and beta is not None and strength is None:
            raise ValueError(f"{name}: beta scales the channel path, which mode='spatial' does not have")
        self.alpha = _check_strength("alpha", 1.0 if alpha is None else alpha)
        self.beta = _check_strength("beta", 1.0 if beta is None else beta)
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"{name} expects `drop_rate` in [0, 1), got {drop_rate!r}")
        self.mode = mode
        self.identity_init = bool(identity_init)
        self.gate_scale = 2.0 if self.identity_init else 1.0
        self.channel: Optional[ChannelAttention] = None
        self.spatial: Optional[SpatialAttention] = None
        if mode in ("dual", "channel"):
            self.channel = ChannelAttention(
                channels, reduction, rd_channels=rd_channels, act_layer=act_layer, gate_layer=gate_layer
            )
        if mode in ("dual", "spatial"):
            self.spatial = SpatialAttention(channels, gate_layer=gate_layer)
        self.dropout = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.record_maps = False
        self.last_maps: Optional[Dict[str, Optional[torch.Tensor]]] = None
        if self.identity_init:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Claim C8's initialisation on this module only: Kaiming normal (fan_out), zero bias.

        With ``identity_init`` the last layer of each path is then zeroed so the module is the
        identity at initialisation.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.identity_init:
            last = [self.channel.fc2 if self.channel is not None else None,
                    self.spatial.conv if self.spatial is not None else None]
            for conv in last:
                if conv is not None:
                    nn.init.zeros_(conv.weight)
                    nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, x, self.channels)
        out = x
        c = s = None
        if self.channel is not None:
            c = self.gate_scale * self.channel.weights(x)
            out = out * (c if self.beta == 1.0 else (1.0 - self.beta) + self.beta * c)
        if self.spatial is not None:
            s = self.gate_scale * self.spatial.weights(x)
            out = out * (s if self.alpha == 1.0 else (1.0 - self.alpha) + self.alpha * s)
        if self.record_maps:
            self.last_maps = {
                "channel": None if c is None else c.detach().flatten(1),
                "spatial": None if s is None else s.detach(),
            }
        return self.dropout(out)

    def extra_repr(self) -> str:
        parts = [f"mode={self.mode!r}"]
        if self.alpha != 1.0 or self.beta != 1.0:
            parts.append(f"alpha={self.alpha}, beta={self.beta}")
        if self.identity_init:
            parts.append("identity_init=True")
        return ", ".join(parts)


class LiteDualAttention(DualAttention):
    """Lite dual attention for MobileNet (claim C5): a configuration of :class:`DualAttention`.

    Reduction 16 instead of 8, ``nn.Hardswish`` instead of ReLU, ``nn.Hardsigmoid`` on both paths.
    Every other argument is :class:`DualAttention`'s. Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        *,
        act_layer: LayerType = nn.Hardswish,
        gate_layer: LayerType = nn.Hardsigmoid,
        **kwargs,
    ) -> None:
        super().__init__(channels, reduction, act_layer=act_layer, gate_layer=gate_layer, **kwargs)


def _lite(mode: str) -> Callable[..., DualAttention]:
    def build(channels: int, **kw) -> DualAttention:
        return LiteDualAttention(channels, mode=mode, **kw)

    return build


def _dual(mode: str) -> Callable[..., DualAttention]:
    def build(channels: int, **kw) -> DualAttention:
        return DualAttention(channels, mode=mode, **kw)

    return build


_REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    "dual": _dual("dual"),
    "channel": _dual("channel"),
    "spatial": _dual("spatial"),
    "lite": _lite("dual"),
    "lite_channel": _lite("channel"),
    "lite_spatial": _lite("spatial"),
}


def list_attentions() -> list:
    """Names accepted by :func:`create_attention` (and by ``build_classifier(attention=...)``)."""
    return sorted(_REGISTRY)


def default_reduction(name: str) -> int:
    """The reduction ratio a module built by ``create_attention(name, C)`` uses when none is given."""
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; expected one of {', '.join(list_attentions())}")
    return 16 if name.lower().startswith("lite") else 8


def create_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build an attention module by name, timm-style: ``create_attention("dual", 512, reduction=8)``.

    ``name`` is one of :func:`list_attentions`: ``"dual"``, ``"channel"``, ``"spatial"`` (the
    :class:`DualAttention` modes), ``"lite"``, ``"lite_channel"``, ``"lite_spatial"`` (the
    :class:`LiteDualAttention` modes). ``kwargs`` go to the module.
    """
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; expected one of {', '.join(list_attentions())}")
    return _REGISTRY[name.lower()](channels, **kwargs)


class AttnResBlock(nn.Module):
    """Attention residual block of claim C4: ``out = x + conv3x3(attention(x))``.

    Input and output channels are equal and the spatial size is kept (3x3, padding 1). The
    article's version takes a ``reduction`` argument that it never passes on; here every keyword
    goes to the attention module. Like the article, there is no normalisation or activation after
    the add.

    Args:
        channels: C.
        attention: attention name for :func:`create_attention` (default ``"dual"``).
        identity_init: zero-initialise the 3x3 conv (and start the attention as the identity), so
            the block is exactly the identity at initialisation, as zero-init residual branches do.
        **attn_kwargs: passed to the attention module.

    Shapes: x: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, attention: str = "dual", identity_init: bool = False, **attn_kwargs) -> None:
        super().__init__()
        self.channels = _check_channels(type(self).__name__, channels)
        self.attn = create_attention(attention, channels, identity_init=identity_init, **attn_kwargs)
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.identity_init = bool(identity_init)
        if self.identity_init:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def reset_parameters(self) -> None:
        """C8 initialisation of this block only (Kaiming fan_out, zero bias; zero conv if identity_init)."""
        self.attn.reset_parameters()
        if self.identity_init:
            nn.init.zeros_(self.conv.weight)
        else:
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, x, self.channels)
        return x + self.conv(self.attn(x))


def init_attention_(module: nn.Module) -> nn.Module:
    """Claim C8's initialisation, applied only to ``module`` (in place; returns it).

    Kaiming normal (``mode="fan_out"``) for every Conv2d weight, zero bias. Attention modules and
    :class:`AttnResBlock` keep their ``identity_init`` (last layers zeroed). The article's snippet
    loops over ``model.modules()``, i.e. every conv of the backbone too, which overwrites ImageNet
    weights; call this on the new modules only, e.g. ``init_attention_(model.attn)``.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"init_attention_ expects an nn.Module, got {type(module).__name__}")
    handled = set()
    for m in module.modules():
        if isinstance(m, (DualAttention, AttnResBlock)) and id(m) not in handled:
            m.reset_parameters()
            handled.update(id(sub) for sub in m.modules())
    for m in module.modules():
        if id(m) in handled:
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[Dict[str, Dict[str, Optional[torch.Tensor]]]]:
    """Record the attention maps of every :class:`DualAttention` in ``model`` during forwards.

    Usage::

        with record_attention(model) as maps:
            model(images)
        maps["features.30"]["spatial"]   # (N, 1, H, W)
        maps["features.30"]["channel"]   # (N, C)

    The dict maps each module's name (``""`` when ``model`` itself is the attention module) to its
    last maps. Recording is switched off again on exit; outside the block nothing is stored.
    """
    mods = {n: m for n, m in model.named_modules() if isinstance(m, DualAttention)}
    if not mods:
        raise ValueError(
            f"record_attention found no DualAttention module in {type(model).__name__}; "
            f"build the model with an attention (e.g. build_classifier(..., attention='dual'))"
        )
    maps: Dict[str, Dict[str, Optional[torch.Tensor]]] = {}
    handles = []
    previous = {n: m.record_maps for n, m in mods.items()}
    for n, m in mods.items():
        m.record_maps = True

        def hook(mod, _inp, _out, _name=n):
            maps[_name] = mod.last_maps

        handles.append(m.register_forward_hook(hook))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
        for n, m in mods.items():
            m.record_maps = previous[n]
            m.last_maps = None
