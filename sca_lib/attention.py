"""Spatial + channel attention modules ("SCA-CNN"-style dual attention), and what counts as attention.

The modules follow the source article (claims C1, C4, C5, C8,
C9, C10, C15). A note on the name: the article calls its module "SCA-CNN", but the SCA-CNN paper
(Chen et al., CVPR 2017, image captioning) conditions its channel-wise and spatial attention on an
LSTM hidden state, normalises with softmax and applies channel then spatial attention in sequence.
The article's module is query-free, sigmoid-gated and parallel: both paths read the same input and
their gates are multiplied. That is closer to scSE (Roy et al., MICCAI 2018, "Concurrent Spatial and
Channel Squeeze & Excitation"), with multiplicative instead of additive/max fusion. The
channel-only variant is a Squeeze-and-Excitation block (Hu et al., CVPR 2018) with reduction 8.

Modules: :class:`ChannelAttention`, :class:`SpatialAttention`, :class:`DualAttention` (with its
``fusion`` rules: multiply, add, max, sequential), :class:`LiteDualAttention`, :class:`AttnResBlock`;
the rest of the family (CBAM, ECA, Coordinate Attention, the original SCA-CNN and the capacity
controls) lives in :mod:`sca_lib.family` and is built by the same factory. Every module that
gates features derives from :class:`AttentionModule`. By name: :func:`create_attention`,
:func:`list_attentions`, :func:`default_reduction`. Which modules are attention (for the profiler
and the freeze groups): ``ATTENTION_TYPES``, :func:`is_attention`, :func:`attention_modules`.
Settings: ``STRENGTHS`` (C10), ``PATHS``. Initialisation: :func:`init_attention_` (C8). Reading the
maps a model's attention computed: :func:`sca_lib.maps.record_attention`.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Callable, Dict, Optional, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import feature_map, one_of, positive_int, real_in
from . import fused
from .gating import (_gate_product, apply_layer, channel_mlp, fast_path, plain_layers, project_channels, records_grad,
                     spatial_mean)

__all__ = [
    "AttentionModule",
    "ChannelAttention",
    "SpatialAttention",
    "DualAttention",
    "LiteDualAttention",
    "AttnResBlock",
    "create_attention",
    "list_attentions",
    "default_reduction",
    "attention_settings",
    "ATTENTION_TYPES",
    "is_attention",
    "attention_modules",
    "init_attention_",
    "STRENGTHS",
    "PATHS",
    "FUSIONS",
    "DESCRIPTIONS",
    "CONTROLS",
]

LayerType = Union[Type[nn.Module], Callable[[], nn.Module]]

#: The article's per-task strengths (claim C10): ``beta`` scales the channel path, ``alpha`` the
#: spatial path. How they enter the formula is our definition, see :class:`DualAttention`.
STRENGTHS: Dict[str, Dict[str, float]] = {
    "classification": {"beta": 0.7, "alpha": 0.3},
    "detection": {"beta": 0.5, "alpha": 0.7},
    "segmentation": {"beta": 0.3, "alpha": 0.8},
}

#: Which paths a :class:`DualAttention` has (its ``paths=`` argument).
PATHS = ("dual", "channel", "spatial")

#: How a two-path :class:`DualAttention` combines its gates (its ``fusion=`` argument).
FUSIONS = ("multiply", "add", "max", "sequential")


def _check_channels(name: str, channels: object) -> int:
    return positive_int(name, "channels", channels, " (the C of an (N, C, H, W) input)")


def _reduced_channels(name: str, channels: int, reduction: int, rd_channels: Optional[int]) -> int:
    if rd_channels is not None:
        return positive_int(name, "rd_channels", rd_channels)
    reduction = positive_int(name, "reduction", reduction)
    if reduction > channels:
        raise ValueError(
            f"{name}: reduction {reduction} is larger than channels {channels}, so the hidden "
            f"layer would have {channels}//{reduction} = 0 channels; use reduction <= {channels} "
            f"or pass rd_channels explicitly"
        )
    return channels // reduction


class AttentionModule(nn.Module):
    """Base of every module that re-weights a feature map (N, C, H, W) -> (N, C, H, W).

    It carries the map recording every member of the family shares: with ``record_maps = True``
    (or inside :func:`sca_lib.maps.record_attention`) the last forward leaves ``last_maps =
    {"channel": (N, C) or None, "spatial": (N, 1, H, W) or None}`` (detached); when it is off nothing
    is stored. What the two entries hold for each module is in its docstring.
    """

    def __init__(self) -> None:
        super().__init__()
        self.record_maps = False
        self.last_maps: Optional[Dict[str, Optional[torch.Tensor]]] = None

    def _keep(self, channel: Optional[torch.Tensor], spatial: Optional[torch.Tensor]) -> None:
        if self.record_maps:
            self.last_maps = {"channel": None if channel is None else channel.detach().flatten(1),
                              "spatial": None if spatial is None else spatial.detach()}


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

    def __init__(self, channels: int, reduction: int = 8, rd_channels: Optional[int] = None,
                 act_layer: LayerType = nn.ReLU, gate_layer: LayerType = nn.Sigmoid) -> None:
        super().__init__()
        self.channels = _check_channels(type(self).__name__, channels)
        hidden = _reduced_channels(type(self).__name__, self.channels, reduction, rd_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(self.channels, hidden, kernel_size=1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden, self.channels, kernel_size=1)
        self.gate = gate_layer()

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, 1, 1) channel weights."""
        if fast_path(x) and plain_layers(self.pool, self.fc1, self.fc2):
            return self.weights_from_pooled(spatial_mean(x))
        return self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))

    def weights_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, C) channel means -> (N, C, 1, 1) channel weights (the MLP as matrix products; a plain
        activation and gate as functions, :func:`sca_lib.gating.apply_layer`)."""
        return apply_layer(self.gate, channel_mlp(pooled, self.fc1, self.act, self.fc2).view(pooled.shape[0], -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map(type(self).__name__, x, self.channels, like=self)
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
        self.conv = nn.Conv2d(self.channels, 1, kernel_size=1)
        self.gate = gate_layer()

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 1, H, W) spatial weights."""
        conv = self.conv
        if fast_path(x) and plain_layers(conv):
            return apply_layer(self.gate, project_channels(x, conv))
        return self.gate(conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map(type(self).__name__, x, self.channels, like=self)
        return x * self.weights(x)


class DualAttention(AttentionModule):
    """Parallel channel + spatial attention (the article's "SCA-CNN" module, claim C1).

    Both paths read the same input ``x``; with default arguments the output is exactly C1::

        out = x * c(x) * s(x)          c: (N, C, 1, 1) channel weights, s: (N, 1, H, W) spatial map

    Strengths (claim C10; the article gives values but not the formula, this is our definition)::

        out = x * (1 - beta + beta * c(x)) * (1 - alpha + alpha * s(x))

    so ``alpha = beta = 1`` is C1 and ``alpha = beta = 0`` is the identity; a strength interpolates
    between "no gating" and the full gate. ``strength="classification"`` etc. picks the article's
    values (:data:`STRENGTHS`).

    Fusion (``fusion=``, two-path modules only; ``c'`` and ``s'`` are the gates after strengths)::

        "multiply"    out = x * c' * s'                         the article (C1)
        "add"         out = x * c' + x * s'                     scSE (Roy et al. 2018); here a
                                                                strength pulls a gate towards 1/2,
                                                                so strength 0 is the identity too
        "max"         out = max(x * c', x * s')                 scSE's max-out variant
        "sequential"  y = x * c'(x);  out = y * s'(y)           channel then spatial, as CBAM orders them

    Args:
        channels: C, the number of input channels (first positional argument, as in timm).
        reduction: channel-path reduction ratio r (hidden width ``C // r``); 8 in C1.
        rd_channels: explicit hidden width, overrides ``reduction``.
        paths: ``"dual"`` (C1), ``"channel"`` (C15's channel-only variant, an SE block) or
            ``"spatial"`` (spatial-only, for ablations); see :data:`PATHS`. The unused path has no
            parameters.
        alpha: spatial strength in [0, 1] (default 1); any real number (Python or NumPy).
        beta: channel strength in [0, 1] (default 1).
        strength: a name from :data:`STRENGTHS`; cannot be combined with alpha/beta.
        fusion: how the two paths combine, one of :data:`FUSIONS` (default ``"multiply"``).
        act_layer: channel-path activation (``nn.ReLU``; ``nn.Hardswish`` in the lite module).
        gate_layer: gate of both paths (``nn.Sigmoid``; ``nn.Hardsigmoid`` in the lite module).
        drop_rate: ``nn.Dropout2d`` probability on the attended output (claim C9); active in
            training only. Note that Dropout2d zeroes whole channels of the *output*.
        identity_init: start as the exact identity. Two sigmoid gates at zero pre-activation scale
            every feature by 0.5 * 0.5 = 0.25, which wrecks a pretrained backbone's features the
            moment the module is inserted. With ``identity_init=True`` the gates are ``2 * gate(z)``
            (range (0, 2) for a sigmoid) and the last layer of each path starts at zero, so
            ``out == x`` at initialisation and the module learns a deviation from identity.
            With ``fusion="add"`` the gates stay ``gate(z)`` (0.5 + 0.5 = 1 at zero).
        inplace: when no gradient is recorded (``torch.no_grad``, ``torch.inference_mode``, or
            nothing requires one), write the output into ``x`` and return ``x``, as
            ``nn.ReLU(inplace=True)`` does: no new tensor, and the product reads and writes the same
            memory. Same numbers as ``inplace=False``. Use it only where nothing else reads ``x``
            afterwards (not on an input that a residual connection adds back: :class:`AttnResBlock`
            refuses it). With a gradient the module works out of place. Fusions ``"multiply"`` and
            ``"sequential"`` only.

    Shapes:
        x: (N, C, H, W) floating point -> (N, C, H, W).

    Initialisation: the constructor keeps PyTorch's default initialisation of the convolutions
    (unless ``identity_init``); :meth:`reset_parameters` and :func:`init_attention_` apply the
    article's C8 initialisation instead (Kaiming normal, fan_out), which saturates the spatial gate
    on large features (notebook 01).

    Attention maps: set ``record_maps = True`` (or use :func:`sca_lib.maps.record_attention`) and the last
    forward leaves ``last_maps = {"channel": (N, C) or None, "spatial": (N, 1, H, W) or None}``
    (detached; with ``identity_init`` the gates range over (0, 2), except under add fusion). When it
    is off nothing is stored.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        *,
        rd_channels: Optional[int] = None,
        paths: str = "dual",
        alpha: Optional[float] = None,
        beta: Optional[float] = None,
        strength: Optional[str] = None,
        fusion: str = "multiply",
        act_layer: LayerType = nn.ReLU,
        gate_layer: LayerType = nn.Sigmoid,
        drop_rate: float = 0.0,
        identity_init: bool = False,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = _check_channels(name, channels)
        one_of(name, "paths", paths, PATHS)
        one_of(name, "fusion", fusion, FUSIONS)
        if fusion != "multiply" and paths != "dual":
            raise ValueError(f"{name}: fusion={fusion!r} combines two paths; paths={paths!r} has one "
                             f"(use fusion='multiply', the default)")
        if strength is not None:
            if alpha is not None or beta is not None:
                raise ValueError(f"{name}: pass either strength={strength!r} or alpha/beta, not both")
            if strength not in STRENGTHS:
                raise ValueError(f"{name}: unknown strength {strength!r}; expected one of {', '.join(STRENGTHS)}")
            alpha, beta = STRENGTHS[strength]["alpha"], STRENGTHS[strength]["beta"]
        if paths == "channel" and alpha is not None and strength is None:
            raise ValueError(f"{name}: alpha scales the spatial path, which paths='channel' does not have")
        if paths == "spatial" and beta is not None and strength is None:
            raise ValueError(f"{name}: beta scales the channel path, which paths='spatial' does not have")
        if inplace and fusion in ("add", "max"):
            raise ValueError(f"{name}: inplace=True writes the output into x, which fusion={fusion!r} still reads "
                             f"after its first product; use fusion='multiply' or 'sequential', or inplace=False")
        self.alpha = real_in(name, "alpha", 1.0 if alpha is None else alpha, 0.0, 1.0)
        self.beta = real_in(name, "beta", 1.0 if beta is None else beta, 0.0, 1.0)
        drop_rate = real_in(name, "drop_rate", drop_rate, 0.0, 1.0, high_open=True)
        self.paths = paths
        self.fusion = fusion
        self.identity_init = bool(identity_init)
        self.inplace = bool(inplace)
        self.gate_scale = 2.0 if self.identity_init and fusion != "add" else 1.0
        self.channel: Optional[ChannelAttention] = None
        self.spatial: Optional[SpatialAttention] = None
        if paths in ("dual", "channel"):
            self.channel = ChannelAttention(channels, reduction, rd_channels=rd_channels, act_layer=act_layer,
                                            gate_layer=gate_layer)
        if paths in ("dual", "spatial"):
            self.spatial = SpatialAttention(channels, gate_layer=gate_layer)
        self.dropout = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
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
            for path, last in ((self.channel, "fc2"), (self.spatial, "conv")):
                if path is not None:
                    nn.init.zeros_(getattr(path, last).weight)
                    nn.init.zeros_(getattr(path, last).bias)

    def _strong(self, gate: torch.Tensor, strength: float) -> torch.Tensor:
        """``gate`` pulled towards its neutral value by ``1 - strength``: 1, or 1/2 under add fusion
        (where two halves make the identity)."""
        if strength == 1.0:
            return gate
        neutral = 0.5 if self.fusion == "add" else 1.0
        return neutral * (1.0 - strength) + strength * gate

    def _gates(self, x: torch.Tensor, path: Optional[nn.Module]) -> Optional[torch.Tensor]:
        if path is None:
            return None
        return self._scaled(path.weights(x))

    def _scaled(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.gate_scale == 1.0 else self.gate_scale * w

    def _in_place(self, x: torch.Tensor) -> bool:
        """Whether this forward writes into ``x``: asked for, and no gradient to record."""
        if not self.inplace or records_grad(x, self):
            return False
        return not x.is_inference() or torch.is_inference_mode_enabled()  # torch forbids it outside

    def _fused_forward(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        """The multiplicative dual module with :mod:`sca_lib.fused`'s kernels (inference only): one
        read of ``x`` for the pooling and the projection, one pass for the product; with the article's
        layers (or the lite module's) the channel MLP and the gates run in the same C++ call."""
        if fused.whole_module(self):
            out, c, s = fused.dual_forward(x, self, inplace)
        else:
            pooled, proj = fused.pool_project(x, self.spatial.conv)
            c, s = self._scaled(self.channel.weights_from_pooled(pooled)), self._scaled(apply_layer(self.spatial.gate, proj))
            out = fused.gate(x, self._strong(c, self.beta), self._strong(s, self.alpha), inplace)
        self._keep(c, s)
        return self._drop(out, inplace)

    def _fused(self, x: torch.Tensor, fast: bool) -> bool:
        if not (fast and self.fusion == "multiply" and fused.applies(x, self)):  # False at once unless switched on
            return False
        ch, sp = self.channel, self.spatial
        return ch is not None and sp is not None and plain_layers(ch.pool, ch.fc1, ch.fc2, sp.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map(type(self).__name__, x, self.channels, like=self)
        fast = fast_path(x)
        inplace = self._in_place(x)
        if self._fused(x, fast):
            return self._fused_forward(x, inplace)
        c = self._gates(x, self.channel)
        if self.fusion == "sequential":
            cw = self._strong(c, self.beta)
            y = x.mul_(cw) if inplace else x * cw
            s = self._gates(y, self.spatial)
            sw = self._strong(s, self.alpha)
            out = y.mul_(sw) if inplace else y * sw
        else:
            s = self._gates(x, self.spatial)
            cw = None if c is None else self._strong(c, self.beta)
            sw = None if s is None else self._strong(s, self.alpha)
            if self.fusion == "multiply":
                if inplace:  # the same products in the same order, into x
                    out = x
                    for gate in (cw, sw):
                        if gate is not None:
                            out = out.mul_(gate)
                elif cw is not None and sw is not None:
                    # the fast path: one full-size allocation instead of two (sca_lib.gating)
                    out = _gate_product(x, cw, sw) if fast else x * cw * sw
                else:
                    out = x * (cw if sw is None else sw)
            elif self.fusion == "add":
                out = torch.mul(x, cw).addcmul_(x, sw) if fast else x * cw + x * sw
            else:  # max
                out = torch.maximum(x * cw, x * sw)
        self._keep(c, s)
        return self._drop(out, inplace)

    def _drop(self, out: torch.Tensor, inplace: bool) -> torch.Tensor:
        """The output dropout (training only), in place when the forward was."""
        if inplace and isinstance(self.dropout, nn.Dropout2d):
            return F.dropout2d(out, self.dropout.p, self.training, inplace=True)
        return apply_layer(self.dropout, out)  # nn.Identity without hooks: out, without a module call

    def extra_repr(self) -> str:
        parts = [f"paths={self.paths!r}"]
        if self.fusion != "multiply":
            parts.append(f"fusion={self.fusion!r}")
        if self.alpha != 1.0 or self.beta != 1.0:
            parts.append(f"alpha={self.alpha}, beta={self.beta}")
        if self.identity_init:
            parts.append("identity_init=True")
        if self.inplace:
            parts.append("inplace=True")
        return ", ".join(parts)


class LiteDualAttention(DualAttention):
    """Lite dual attention for MobileNet (claim C5): a configuration of :class:`DualAttention`.

    Reduction 16 instead of 8, ``nn.Hardswish`` instead of ReLU, ``nn.Hardsigmoid`` on both paths.
    Every other argument is :class:`DualAttention`'s. Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 16, *, act_layer: LayerType = nn.Hardswish,
                 gate_layer: LayerType = nn.Hardsigmoid, **kwargs) -> None:
        super().__init__(channels, reduction, act_layer=act_layer, gate_layer=gate_layer, **kwargs)


from .family import (  # noqa: E402  (the family builds on the classes above)
    CBAM, ECA, CoordinateAttention, SCACNNAttention, matched_bottleneck)

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    # the article's module and its paths (C1, C15)
    "dual": partial(DualAttention, paths="dual"),
    "channel": partial(DualAttention, paths="channel"),
    "spatial": partial(DualAttention, paths="spatial"),
    "lite": partial(LiteDualAttention, paths="dual"),
    "lite_channel": partial(LiteDualAttention, paths="channel"),
    "lite_spatial": partial(LiteDualAttention, paths="spatial"),
    # its fusion rules
    "dual_add": partial(DualAttention, paths="dual", fusion="add"),
    "dual_max": partial(DualAttention, paths="dual", fusion="max"),
    "dual_seq": partial(DualAttention, paths="dual", fusion="sequential"),
    # the family
    "se": partial(DualAttention, paths="channel", reduction=16),
    "scse": partial(DualAttention, paths="dual", fusion="add", reduction=2),
    "scse_max": partial(DualAttention, paths="dual", fusion="max", reduction=2),
    "cbam": CBAM,
    "eca": ECA,
    "coord": CoordinateAttention,
    "sca_cnn": partial(SCACNNAttention, order="cs"),
    "sca_cnn_sc": partial(SCACNNAttention, order="sc"),
    # capacity controls (not attention: no gate; see sca_lib.family.ResidualBottleneck)
    "matched_params": partial(matched_bottleneck, by="params"),
    "matched_flops": partial(matched_bottleneck, by="flops"),
}

#: What each name builds, in a line (the notebook's and the README's table of the family).
DESCRIPTIONS: Dict[str, str] = {
    "dual": "the article's module: x * c(x) * s(x), SE channel gate (r 8) and 1x1-conv spatial gate in parallel",
    "channel": "the article's channel path alone (an SE gate, r 8)",
    "spatial": "the article's spatial path alone (1x1 conv C -> 1, sigmoid)",
    "lite": "the article's lite module for MobileNet (r 16, hard-swish, hard-sigmoid)",
    "lite_channel": "the lite module's channel path alone",
    "lite_spatial": "the lite module's spatial path alone",
    "dual_add": "the article's two gates added: x * c + x * s",
    "dual_max": "the article's two gates, max-out: max(x * c, x * s)",
    "dual_seq": "the article's two gates in sequence: channel, then spatial on the result",
    "se": "Squeeze-and-Excitation (Hu et al. 2018), r 16",
    "scse": "scSE (Roy et al. 2018): x * cSE + x * sSE, r 2",
    "scse_max": "scSE with max-out fusion (Roy et al.'s follow-up), r 2",
    "cbam": "CBAM (Woo et al. 2018): avg+max channel gate, then a 7x7 spatial gate, r 16",
    "eca": "ECA (Wang et al. 2020): 1-D conv across pooled channels, adaptive kernel",
    "coord": "Coordinate Attention (Hou et al. 2021): row and column gates from strip pooling, r 32",
    "sca_cnn": "the original SCA-CNN (Chen et al. 2017): softmax channel then spatial attention, queried",
    "sca_cnn_sc": "the original SCA-CNN, spatial then channel",
    "matched_params": "control: a residual 1x1 bottleneck with the dual module's parameter count, no gate",
    "matched_flops": "control: a residual 1x1 bottleneck with the dual module's FLOPs, no gate",
}

#: The names that are controls, not attention (no gate): their rows are baselines, not family members.
CONTROLS = ("matched_params", "matched_flops")


def list_attentions() -> list:
    """Names accepted by :func:`create_attention` (and by ``build_classifier(attention=...)``),
    the capacity controls included (see :data:`CONTROLS`)."""
    return sorted(_REGISTRY)


def _builder(name: object) -> Callable[..., nn.Module]:
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; expected one of {', '.join(list_attentions())}")
    return _REGISTRY[name.lower()]


def _accepts(builder: Callable[..., nn.Module]) -> set:
    """The keyword names ``create_attention`` may pass to ``builder``: its parameters (a class's
    ``**kwargs`` followed up its parents' ``__init__``), less those its registry entry fixes."""
    fixed = set(getattr(builder, "keywords", {}) or {}) - {"reduction"}  # a name's reduction is a default
    target = getattr(builder, "func", builder)
    names: set = set()
    chain = target.__mro__ if isinstance(target, type) else (target,)
    for owner in chain:
        fn = owner.__init__ if isinstance(owner, type) else owner
        if fn is object.__init__ or fn is nn.Module.__init__:
            break
        params = inspect.signature(fn).parameters
        names |= {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    return names - fixed - {"self", "channels"}


def attention_settings(name: str) -> tuple:
    """The keyword settings ``create_attention(name, C, **settings)`` takes, sorted, e.g.
    ``attention_settings("eca") == ("b", "gamma", "kernel_size")``; whether a module has strengths
    is ``"strength" in attention_settings(name)``."""
    return tuple(sorted(_accepts(_builder(name))))


def default_reduction(name: str) -> Optional[int]:
    """The reduction ratio a module built by ``create_attention(name, C)`` uses when none is given
    (None for a module without one, e.g. ``"eca"``)."""
    param = inspect.signature(_builder(name)).parameters.get("reduction")
    return None if param is None else param.default


def create_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build an attention module by name, timm-style: ``create_attention("dual", 512, reduction=8)``.

    ``name`` is one of :func:`list_attentions` (:data:`DESCRIPTIONS` says what each builds):
    the article's module and its paths (``"dual"``, ``"channel"``, ``"spatial"``, the ``"lite"``
    ones), its fusion rules (``"dual_add"``, ``"dual_max"``, ``"dual_seq"``), the family (``"se"``,
    ``"scse"``, ``"scse_max"``, ``"cbam"``, ``"eca"``, ``"coord"``, ``"sca_cnn"``, ``"sca_cnn_sc"``)
    and the capacity controls (``"matched_params"``, ``"matched_flops"``). ``kwargs`` go to the
    module; one it does not take is an error that lists the ones it does.
    """
    builder = _builder(name)
    accepted = _accepts(builder)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"attention {name!r} takes no {', '.join(unknown)} (or its name fixes it); it accepts "
                         f"{', '.join(sorted(accepted)) or 'no settings'}")
    return builder(channels, **kwargs)


class AttnResBlock(nn.Module):
    """Attention residual block of claim C4: ``out = x + conv3x3(attention(x))``.

    Input and output channels are equal and the spatial size is kept (3x3, padding 1). The
    article's version takes a ``reduction`` argument that it never passes on; here every keyword
    goes to the attention module. Like the article, there is no normalisation or activation after
    the add.

    Args:
        channels: C.
        attention: attention name for :func:`create_attention` (default ``"dual"``).
        identity_init: zero-initialise the 3x3 conv (and start the attention as the identity when
            it has that option), so the block is exactly the identity at initialisation, as
            zero-init residual branches do.
        **attn_kwargs: passed to the attention module.

    Shapes: x: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, attention: str = "dual", identity_init: bool = False, **attn_kwargs) -> None:
        super().__init__()
        self.channels = _check_channels(type(self).__name__, channels)
        if attn_kwargs.get("inplace"):
            raise ValueError(f"{type(self).__name__}: inplace=True would let the attention overwrite x, which the block "
                             "adds back afterwards (x + conv3x3(attention(x))); build it without inplace")
        if identity_init and "identity_init" in attention_settings(attention):
            attn_kwargs["identity_init"] = True  # the zero conv alone already makes the block the identity
        self.attn = create_attention(attention, channels, **attn_kwargs)
        self.conv = nn.Conv2d(self.channels, self.channels, kernel_size=3, padding=1)
        self.identity_init = bool(identity_init)
        if self.identity_init:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def reset_parameters(self) -> None:
        """C8 initialisation of this block only (Kaiming fan_out, zero bias; zero conv if identity_init);
        the attention module gets :func:`init_attention_` (its own ``reset_parameters`` when it has one)."""
        init_attention_(self.attn)
        if self.identity_init:
            nn.init.zeros_(self.conv.weight)
        else:
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map(type(self).__name__, x, self.channels, like=self)
        return x + self.conv(self.attn(x))


#: The module types that count as attention: the profiler's attention columns and the
#: ``"attention"`` parameter group hold these (an :class:`AttnResBlock` with its 3x3 conv).
ATTENTION_TYPES = (AttentionModule, ChannelAttention, SpatialAttention, AttnResBlock)


def is_attention(module: object) -> bool:
    """Whether ``module`` is an attention module (an instance of one of :data:`ATTENTION_TYPES`)."""
    return isinstance(module, ATTENTION_TYPES)


def attention_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """name -> module for every outermost attention module in ``model`` (see :func:`is_attention`).

    Modules inside another attention module (the paths of a :class:`DualAttention`, the attention
    of an :class:`AttnResBlock`) are part of it and not listed; ``""`` names ``model`` itself.
    """
    found: Dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if is_attention(m) and not any(name.startswith(f + ".") or f == "" for f in found):
            found[name] = m
    return found


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
        if is_attention(m) and hasattr(m, "reset_parameters") and id(m) not in handled:
            m.reset_parameters()
            handled.update(id(sub) for sub in m.modules())
    for m in module.modules():
        if id(m) not in handled and isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


# Old names, answered only until sca_lib/__init__.py imports the new ones; not part of the API.
