"""The rest of the attention family, beside the article's module, and the capacity controls.

Every class here takes ``channels`` first and maps (N, C, H, W) -> (N, C, H, W), like
:class:`~sca_lib.attention.DualAttention`, and is built by name with
:func:`sca_lib.attention.create_attention` (so every backbone placement and the ablation grids take
it). The equations each module computes are in its docstring; ``tests/test_family.py`` checks them,
and checks the modules that ``timm`` also has against ``timm`` with copied weights.

- :class:`CBAM` (Woo et al., ECCV 2018): a channel gate from average- and max-pooled descriptors
  through one shared MLP, then a 7x7 spatial gate over the channel-wise mean and max.
- :class:`ECA` (Wang et al., CVPR 2020): a channel gate from a 1-D convolution across the pooled
  channels, its kernel size adapted to C.
- :class:`CoordinateAttention` (Hou et al., CVPR 2021): two direction-aware gates from strip
  pooling along the height and the width.
- :class:`SCACNNAttention` (Chen et al., CVPR 2017): the original SCA-CNN, channel-wise and spatial
  attention conditioned on a query vector and normalised with softmax, in either order.
- :class:`ResidualBottleneck`: not attention. A plain residual 1x1 bottleneck sized to cost what
  the article's module costs (parameters or FLOPs), trained in the same stage at the same place: it
  separates "attention" from "a few more weights at that place" in the studies.

SE (Hu et al., CVPR 2018) is :class:`~sca_lib.attention.DualAttention` with ``paths="channel"``
and scSE (Roy et al., MICCAI 2018) is the same class with ``fusion="add"`` (or ``"max"``); see the
names in :func:`sca_lib.attention.list_attentions`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import feature_map, one_of, positive_int
from .gating import channel_mlp, fast_path, gate_product, plain_layers, spatial_mean
from .attention import AttentionModule, ChannelAttention, LayerType, _check_channels, _reduced_channels

__all__ = ["CBAM", "ECA", "eca_kernel_size", "CoordinateAttention", "SCACNNAttention", "ResidualBottleneck",
           "matched_hidden", "SCA_ORDERS", "SCA_QUERIES"]


class CBAM(AttentionModule):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel, then spatial.

    The paper's equations (F: the input, sigma: the sigmoid, MLP shared by both descriptors)::

        M_c(F) = sigma(MLP(AvgPool(F)) + MLP(MaxPool(F)))                      (N, C, 1, 1)
        M_s(F) = sigma(f7x7([AvgPool_c(F); MaxPool_c(F)]))                     (N, 1, H, W)
        F' = M_c(F) * F,    F'' = M_s(F') * F'

    Pooling is global (adaptive) over H x W for ``M_c`` and over the channels for ``M_s``; the 7x7
    convolution maps the 2 pooled maps to 1, without bias and followed by BatchNorm, as in the
    authors' code and timm's ``CbamModule``. The MLP is ``1x1 conv C -> C/r, ReLU, 1x1 conv
    C/r -> C`` with biases (the authors' ``nn.Linear``). Two details follow the paper and timm
    rather than the authors' code, which stacks [max; mean] and uses BatchNorm momentum 0.01: the
    order [mean; max] and PyTorch's default momentum (the same model up to a permutation of the
    conv's two input channels).

    Args:
        channels: C.
        reduction: r (16 in the paper).
        rd_channels: explicit hidden width, overrides ``reduction``.
        kernel_size: the spatial gate's kernel (7 in the paper; odd).

    Maps: ``channel`` is ``M_c`` (N, C), ``spatial`` is ``M_s`` (N, 1, H, W).
    """

    def __init__(self, channels: int, reduction: int = 16, *, rd_channels: Optional[int] = None,
                 kernel_size: int = 7, act_layer: LayerType = nn.ReLU) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = _check_channels(name, channels)
        kernel_size = positive_int(name, "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd so the map keeps its size, got {kernel_size}")
        self.channel = ChannelAttention(self.channels, reduction, rd_channels=rd_channels, act_layer=act_layer)
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``M_c``: (N, C, H, W) -> (N, C, 1, 1)."""
        mlp = self.channel
        if fast_path(x) and plain_layers(mlp.fc1, mlp.fc2):  # both descriptors through the MLP in one go
            n = x.shape[0]
            both = channel_mlp(torch.cat([spatial_mean(x), x.amax((2, 3))]), mlp.fc1, mlp.act, mlp.fc2)
            return torch.sigmoid(both[:n] + both[n:]).view(n, -1, 1, 1)
        avg = mlp.fc2(mlp.act(mlp.fc1(x.mean((2, 3), keepdim=True))))
        mx = mlp.fc2(mlp.act(mlp.fc1(x.amax((2, 3), keepdim=True))))
        return torch.sigmoid(avg + mx)

    def spatial_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``M_s``: (N, C, H, W) -> (N, 1, H, W)."""
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial_bn(self.spatial_conv(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map(type(self).__name__, x, self.channels, like=self)
        c = self.channel_weights(x)
        y = x * c
        s = self.spatial_weights(y)
        self._keep(c, s)
        return y * s


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA's adaptive kernel size: ``k = |log2(C) / gamma + b / gamma|_odd`` (the integer part, made
    odd by adding 1), as in the paper's code. For C = 64, 256, 512: 3, 5, 5. Below 8 channels this
    gives 1 (no interaction between channels); timm clamps it to at least 3 there."""
    if not gamma > 0:
        raise ValueError(f"eca_kernel_size: gamma must be positive, got {gamma}")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(AttentionModule):
    """Efficient Channel Attention (Wang et al., CVPR 2020): no reduction, a 1-D conv across channels.

    The paper's equations (y: the globally average-pooled channels, C1D_k: a 1-D convolution of
    kernel k across the channel axis, no bias)::

        w = sigma(C1D_k(y)),    out = x * w,    k = |log2(C) / gamma + b / gamma|_odd   (gamma 2, b 1)

    Args:
        channels: C.
        kernel_size: override the adaptive k (odd).
        gamma, b: the paper's constants in the kernel-size rule (2 and 1); see :func:`eca_kernel_size`.

    Maps: ``channel`` is ``w`` (N, C); no spatial map.
    """

    def __init__(self, channels: int, *, kernel_size: Optional[int] = None, gamma: float = 2.0,
                 b: float = 1.0) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = _check_channels(name, channels)
        k = eca_kernel_size(self.channels, gamma, b) if kernel_size is None else positive_int(
            name, "kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd, got {k}")
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, 1, 1)."""
        y = (spatial_mean(x) if fast_path(x) else x.mean((2, 3))).unsqueeze(1)  # (N, 1, C): the channels as a sequence
        return torch.sigmoid(self.conv(y)).transpose(1, 2).unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map(type(self).__name__, x, self.channels, like=self)
        w = self.weights(x)
        self._keep(w, None)
        return x * w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"


class CoordinateAttention(AttentionModule):
    """Coordinate Attention (Hou et al., CVPR 2021): one gate per row and one per column.

    The paper's equations (strip pooling, a shared 1x1 transform F1 with BatchNorm and h-swish,
    then one 1x1 conv per direction)::

        z^h_c(h) = 1/W sum_i x_c(h, i),     z^w_c(w) = 1/H sum_j x_c(j, w)
        f   = hswish(BN(F1([z^h; z^w])))                 concatenated along the spatial axis
        g^h = sigma(F_h(f^h)),  g^w = sigma(F_w(f^w))     split back, (N, C, H, 1) and (N, C, 1, W)
        out_c(i, j) = x_c(i, j) * g^h_c(i) * g^w_c(j)

    The hidden width is ``max(min_hidden, C // reduction)`` (reduction 32, at least 8, as in the
    authors' code); convolutions have biases.

    Maps: ``spatial`` is the gate ``g^h * g^w`` averaged over the channels (N, 1, H, W) and
    ``channel`` the same gate averaged over the positions (N, C): summaries of a gate that is
    per channel and per position.
    """

    def __init__(self, channels: int, reduction: int = 32, *, rd_channels: Optional[int] = None,
                 min_hidden: int = 8) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = _check_channels(name, channels)
        if rd_channels is None:
            reduction = positive_int(name, "reduction", reduction)
            rd_channels = max(positive_int(name, "min_hidden", min_hidden), self.channels // reduction)
        hidden = positive_int(name, "rd_channels", rd_channels)
        self.conv1 = nn.Conv2d(self.channels, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(hidden, self.channels, 1)
        self.conv_w = nn.Conv2d(hidden, self.channels, 1)

    def gates(self, x: torch.Tensor):
        """``(g^h, g^w)``: (N, C, H, 1) and (N, C, 1, W)."""
        h, w = x.shape[-2:]
        z = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], dim=2)
        f = self.act(self.bn1(self.conv1(z)))
        f_h, f_w = torch.split(f, [h, w], dim=2)
        return torch.sigmoid(self.conv_h(f_h)), torch.sigmoid(self.conv_w(f_w.transpose(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map(type(self).__name__, x, self.channels, like=self)
        g_h, g_w = self.gates(x)
        if self.record_maps:
            g = g_h * g_w
            self._keep(g.mean((2, 3)), g.mean(1, keepdim=True))
        return gate_product(x, g_h, g_w) if fast_path(x) else x * g_h * g_w


#: The orders :class:`SCACNNAttention` applies its two attentions in.
SCA_ORDERS = ("cs", "sc")
#: Where :class:`SCACNNAttention` takes its query from when none is passed to ``forward``.
SCA_QUERIES = ("context", "learned")


class SCACNNAttention(AttentionModule):
    """The original SCA-CNN (Chen et al., CVPR 2017): query-conditioned, softmax-normalised attention.

    Built for image captioning, where the query is the LSTM's previous hidden state ``h``. With the
    feature map V as ``C`` channels over ``m = H * W`` locations, the paper's equations are::

        spatial:  a = tanh((W_s V + b_s) (+) W_hs h)            (k, m)   (+): add to every column
                  alpha = softmax(w_i^T a + b_i)                 (m,)     one weight per location
        channel:  v = mean over the m locations of V             (C,)
                  b = tanh((w_c (x) v + b_c) (+) W_hc h)         (k, C)   (x): outer product
                  beta = softmax(w_i'^T b + b_i')                (C,)     one weight per channel
        C-S:      X = f_s(f_c(V, beta), alpha)     S-C:  X = f_c(f_s(V, alpha), beta)
                  (f_c, f_s: channel-wise / location-wise multiplication; in C-S the spatial
                  attention reads the channel-attended map, in S-C the other way round)

    Here ``W_s`` is a 1x1 conv ``C -> k``, ``W_hs`` and ``W_hc`` are linear maps ``d -> k`` and
    ``w_i``, ``w_i'``, ``w_c``, ``b_c`` are k-vectors (``k = C // reduction``). ``b_i`` and ``b_i'``
    are left out: softmax is shift-invariant, so they never change the output and get no gradient.

    **The query for classification.** There is no decoder state, so ``query="context"`` (default)
    uses the image's own pooled features, ``h = mean over locations of V`` (d = C): each image asks
    its own question, as a caption decoder's state summarises the image so far. ``query="learned"``
    is one learned vector (d = ``query_dim``) shared by all images: ``W_hs h`` is then a constant,
    i.e. just another bias, so that option shows what the query adds. ``forward(x, query=h)`` takes
    a real (N, d) query, e.g. a decoder's state.

    **What it needs to train.** Softmax weights sum to 1: a uniform spatial attention multiplies
    every feature by ``1/m`` and a uniform channel attention by ``1/C``, so C-S shrinks the map by
    ``1/(m C)`` (1/2352 for 48 channels on 7x7), and the layers after it (pretrained, BatchNorm
    frozen in the staged recipe) see almost nothing. ``rescale=True`` (default) multiplies
    ``alpha`` by ``m`` and ``beta`` by ``C``, so uniform attention is the identity and the weights
    average 1, as sigmoid gates do; ``rescale=False`` is the paper's literal form (the notebook
    shows what it does to the feature scale).

    Args:
        channels: C.
        reduction: ``k = C // reduction`` (the attention's hidden width).
        rd_channels: explicit k.
        order: ``"cs"`` (channel then spatial, default) or ``"sc"``; see :data:`SCA_ORDERS`.
        query: ``"context"`` or ``"learned"``; see :data:`SCA_QUERIES`.
        query_dim: d for a learned query or a query passed to ``forward`` (default C).
        rescale: keep the feature scale (see above).

    Maps: ``channel`` is ``beta`` (N, C), ``spatial`` is ``alpha`` as (N, 1, H, W), both times
    ``C`` and ``m`` when ``rescale`` (1 = the average weight).
    """

    def __init__(self, channels: int, reduction: int = 8, *, rd_channels: Optional[int] = None, order: str = "cs",
                 query: str = "context", query_dim: Optional[int] = None, rescale: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = _check_channels(name, channels)
        one_of(name, "order", order, SCA_ORDERS, " (channel then spatial, or spatial then channel)")
        one_of(name, "query", query, SCA_QUERIES)
        k = _reduced_channels(name, self.channels, reduction, rd_channels)
        d = self.channels if query_dim is None else positive_int(name, "query_dim", query_dim)
        if query == "context" and d != self.channels:
            raise ValueError(f"{name}: a context query is the pooled features, so query_dim must be C = "
                             f"{self.channels}, got {d}")
        self.order, self.query_kind, self.rescale, self.query_dim, self.hidden = order, query, bool(rescale), d, k
        self.query = nn.Parameter(torch.empty(d)) if query == "learned" else None
        # spatial attention
        self.w_s = nn.Conv2d(self.channels, k, 1)
        self.w_hs = nn.Linear(d, k, bias=False)
        self.w_i = nn.Conv2d(k, 1, 1, bias=False)
        # channel-wise attention
        self.w_c = nn.Parameter(torch.empty(k))
        self.b_c = nn.Parameter(torch.zeros(k))
        self.w_hc = nn.Linear(d, k, bias=False)
        self.w_i_c = nn.Parameter(torch.empty(k))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default for the conv and linear maps; the k-vectors w_c and w_i' normal with
        standard deviation 1/sqrt(k), b_c zero, the learned query normal with standard deviation 0.1. :func:`~sca_lib.attention.init_attention_` keeps this
        (C8's fan_out rule would give the 1-output ``w_i`` a standard deviation of 1.4 and a
        softmax that starts almost one-hot)."""
        for m in (self.w_s, self.w_hs, self.w_i, self.w_hc):
            m.reset_parameters()
        for p in (self.w_c, self.w_i_c):
            nn.init.normal_(p, std=1.0 / math.sqrt(self.hidden))
        nn.init.zeros_(self.b_c)
        if self.query is not None:
            nn.init.normal_(self.query, std=0.1)

    def _query(self, x: torch.Tensor, query: Optional[torch.Tensor]) -> torch.Tensor:
        if query is not None:
            if query.dim() != 2 or query.shape != (x.shape[0], self.query_dim):
                raise ValueError(f"{type(self).__name__}: query must be (N, d) = ({x.shape[0]}, {self.query_dim}), "
                                 f"got {tuple(query.shape)}")
            return query
        if self.query is not None:
            return self.query.expand(x.shape[0], -1)
        return x.mean((2, 3))

    def spatial_weights(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``alpha`` as (N, 1, H, W) (times m when ``rescale``)."""
        n, _, hh, ww = v.shape
        a = torch.tanh(self.w_s(v) + self.w_hs(h)[:, :, None, None])
        alpha = F.softmax(self.w_i(a).flatten(1), dim=1).view(n, 1, hh, ww)
        return alpha * (hh * ww) if self.rescale else alpha

    def channel_weights(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``beta`` as (N, C, 1, 1) (times C when ``rescale``)."""
        pooled = v.mean((2, 3))  # (N, C)
        b = torch.tanh(pooled[:, :, None] * self.w_c + self.b_c + self.w_hc(h)[:, None, :])  # (N, C, k)
        beta = F.softmax((b * self.w_i_c).sum(-1), dim=1)  # (N, C): w_i'^T b for each channel
        beta = beta * self.channels if self.rescale else beta
        return beta[:, :, None, None]

    def forward(self, x: torch.Tensor, query: Optional[torch.Tensor] = None) -> torch.Tensor:
        feature_map(type(self).__name__, x, self.channels, like=self)
        h = self._query(x, query)
        if self.order == "cs":
            beta = self.channel_weights(x, h)
            y = x * beta
            alpha = self.spatial_weights(y, h)
            out = y * alpha
        else:
            alpha = self.spatial_weights(x, h)
            y = x * alpha
            beta = self.channel_weights(y, h)
            out = y * beta
        self._keep(beta, alpha)
        return out

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, k={self.hidden}, order={self.order!r}, query={self.query_kind!r}, "
                f"rescale={self.rescale}")


def matched_hidden(channels: int, reduction: int, by: str) -> int:
    """The hidden width of a :class:`ResidualBottleneck` that costs what ``DualAttention(channels,
    reduction)`` costs, ``by="params"`` or ``by="flops"`` (the nearest width, at least 1).

    Parameters: the dual module has ``2 C k + k + 2 C + 1`` (k = C // r: two 1x1 convs with bias
    and the spatial 1x1 conv C -> 1), the bottleneck ``2 C h + h + C``. FLOPs per position,
    counted as ``sca_lib.profile`` counts them (multiply-adds, pooling reads, elementwise products
    and adds): the dual module about ``4 C`` (pool, spatial conv, two products), the bottleneck
    ``2 C h + C`` (two 1x1 convs, the residual add); the dual module's channel MLP runs once per
    image, not per position, and is left out, so a tie goes to the wider block. The FLOPs match is
    therefore only as good as that omission: measured (``count_flops``), the bottleneck costs 1.16x
    the dual module at the cpu study's place (48 channels, 7x7), 0.75x at 512 channels on 7x7 and
    0.35x at 2048 channels on 7x7, where the dual's MLP dominates; and with widths of 1 or 2 it is
    never closer than about 20 %. ``results/family/costs.md`` has the measured ratios at each
    placement.
    """
    c, k = channels, max(channels // reduction, 1)
    if by == "params":
        target, cost = 2 * c * k + k + 2 * c + 1, (lambda h: 2 * c * h + h + c)
    elif by == "flops":
        target, cost = 4 * c, (lambda h: 2 * c * h + c)
    else:
        raise ValueError(f"matched_hidden: by must be 'params' or 'flops', got {by!r}")
    return min(range(1, 4 * c + 1), key=lambda h: (abs(cost(h) - target), -h))


class ResidualBottleneck(AttentionModule):
    """A capacity control, not attention: ``out = x + W2 act(W1 x)`` (1x1 convs C -> h -> C).

    Placed where attention would go and trained in the same stage (it counts as the "attention"
    parameter group), it adds the same kind of cost with no gate: nothing multiplies the features
    by a weight computed from them. ``W2`` starts at zero (the block starts as the identity, as
    zero-initialised residual branches do). ``create_attention("matched_params", C)`` and
    ``("matched_flops", C)`` size ``h`` with :func:`matched_hidden` to the parameters or the FLOPs
    of the article's module at the same C and reduction.

    Args:
        channels: C.
        hidden: h.
        act_layer: the activation (ReLU).

    Maps: none (both entries None).
    """

    def __init__(self, channels: int, hidden: int, *, act_layer: LayerType = nn.ReLU) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = _check_channels(name, channels)
        self.hidden = positive_int(name, "hidden", hidden)
        self.fc1 = nn.Conv2d(self.channels, self.hidden, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(self.hidden, self.channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming normal (fan_out) for ``W1`` (C8's rule), zero for ``W2`` and both biases."""
        nn.init.kaiming_normal_(self.fc1.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map(type(self).__name__, x, self.channels, like=self)
        self._keep(None, None)
        return x + self.fc2(self.act(self.fc1(x)))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"


def matched_bottleneck(channels: int, reduction: int = 8, *, by: str = "params") -> ResidualBottleneck:
    """A :class:`ResidualBottleneck` costing what ``DualAttention(channels, reduction)`` costs."""
    name = f"matched_{by}"
    channels = _check_channels(name, channels)
    reduction = positive_int(name, "reduction", reduction)
    return ResidualBottleneck(channels, matched_hidden(channels, reduction, by))
