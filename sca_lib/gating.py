"""The attention modules' fast path: the same arithmetic in fewer passes over the feature map.

A gate is cheap to compute (a pooled vector through a small MLP, or one 1x1 convolution to a single
map) and cheap to apply (one multiplication per element), so on a CPU an attention module's time
is mostly memory traffic and allocation: every full-size temporary is one more write of the
feature map, and in a process whose allocator has returned the memory to the system, one more
round of page faults. The reference forms in :mod:`sca_lib.attention` and :mod:`sca_lib.family`
(``x * c * s``, 1x1 convolutions on a 1x1 map) read as the equations do; this module computes
the same numbers with fewer passes:

- :func:`spatial_mean`: global average pooling as a sum times ``1 / (H W)``, whose backward
  broadcasts the gradient instead of dividing a full-size tensor (``mean``'s backward does);
- :func:`channel_mlp`: the channel path's two 1x1 convolutions on the pooled (N, C, 1, 1) map as
  two matrix products on (N, C) (``F.linear`` with the convolutions' own weights);
- :func:`project_channels`: a 1x1 convolution C -> 1 (the spatial path) as one batched
  matrix-vector product, in the input's memory format (channels first or channels last);
- :func:`gate_product`: ``x * a * b`` for two broadcast gates with one full-size allocation in the
  forward pass (``torch.mul`` then an in-place multiply) and a backward pass that saves ``x``, ``a``
  and ``b`` instead of the product ``x * a``; its reductions are batched matrix products.

The modules take the fast path by default when it applies (:func:`fast_path`: a 4-D tensor that is
contiguous in channels-first or channels-last order, not under ``torch.jit`` tracing or scripting,
so fvcore's FLOP count and TorchScript see the reference operations, and not channels last under
``torch.compile``, where inductor fuses the reference form better; ``torch.export`` records the fast
path's operations), and where the layers it reads are plain (:func:`plain_layers`: no hooks, no
pruning, no QAT or parametrized subclasses). :func:`reference_gating` switches it
off, for tests (the two paths agree to float rounding, outputs and gradients) and benchmarks.
``benchmarks/bench_modules.py`` measures both against the memory floor. For inference on a CPU,
:mod:`sca_lib.fused` goes further with two opt-in C++ kernels (``SCA_GATING=fused``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module

__all__ = ["fast_path", "plain_layers", "reference_gating", "spatial_mean", "channel_mlp", "project_channels", "gate_product", "records_grad", "apply_layer"]

#: The fast path is on unless ``SCA_GATING=reference`` is set when sca_lib is imported: the studies
#: committed before the fast path trained with the reference form, whose float operations run in
#: another order; with this setting a rerun follows the same arithmetic.
_ENABLED = os.environ.get("SCA_GATING", "fast").strip().lower() != "reference"


@contextlib.contextmanager
def reference_gating(enabled: bool = True) -> Iterator[None]:
    """Inside this block the attention modules compute their reference form (``enabled=False``:
    the fast path, the default outside). Not thread-safe: it sets a module-level switch."""
    global _ENABLED
    before = _ENABLED
    _ENABLED = not enabled
    try:
        yield
    finally:
        _ENABLED = before


def _layout(x: torch.Tensor) -> Optional[str]:
    """``"cf"`` (contiguous channels first), ``"cl"`` (contiguous channels last) or None."""
    if x.is_contiguous():
        return "cf"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "cl"
    return None


def records_grad(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether autograd records a forward of ``module`` on ``x``: grad mode is on and ``x`` or one of
    the module's parameters requires a gradient. Where it does not, the fused kernels and in-place
    forwards may run."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def fast_path(x: torch.Tensor) -> bool:
    """Whether the modules take the fast path for ``x``: switched on (see :func:`reference_gating`),
    not tracing or scripting, ``x`` 4-D, not empty and contiguous in channels-first or channels-last order, and
    not channels last under ``torch.compile``, where inductor fuses the reference form's
    elementwise work itself and beat the compiled fast path (forward+backward 2.05-2.62x the floor
    against 3.34-3.90x, ``results/performance/README.md``)."""
    if not _ENABLED or torch.jit.is_tracing() or torch.jit.is_scripting() or x.dim() != 4 or x.numel() == 0:
        return False
    layout = _layout(x)
    if layout == "cl" and torch.compiler.is_compiling():
        return False
    return layout is not None


_PLAIN_LAYERS = (nn.Conv2d, nn.AdaptiveAvgPool2d)


def _global_hooks() -> bool:
    """Whether global forward hooks or pre-hooks are registered (``nn.modules.module.register_module_forward_hook``)."""
    return bool(_nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks)


def plain_layers(*layers: nn.Module) -> bool:
    """Whether the fast path may use these layers' weights without calling them: each is exactly an
    ``nn.Conv2d`` or ``nn.AdaptiveAvgPool2d`` (not a subclass, such as a QAT or parametrized conv)
    with no forward hooks or pre-hooks of its own, and no global ones are registered. Pruning,
    hook-based weight norm and FLOP counters work through such hooks; with them the modules call
    their layers (the reference form)."""
    if _global_hooks():
        return False
    for m in layers:  # a loop, not all(...) over a generator: this runs on every forward (1 us less)
        if type(m) not in _PLAIN_LAYERS or m._forward_hooks or m._forward_pre_hooks:
            return False
    return True


#: Activation and gate layers whose forward is exactly one functional call (of any ``inplace``
#: setting: the values are the same).
_FUNCTIONAL = {nn.ReLU: F.relu, nn.Hardswish: F.hardswish, nn.Sigmoid: torch.sigmoid,
               nn.Hardsigmoid: F.hardsigmoid, nn.SiLU: F.silu, nn.Tanh: torch.tanh, nn.Identity: lambda t: t}


def _functional(layer: nn.Module):
    """The functional form of ``layer`` if it is a plain activation or gate layer, else None."""
    f = _FUNCTIONAL.get(type(layer))
    if f is None or layer._forward_hooks or layer._forward_pre_hooks or _global_hooks():
        return None
    return f


def apply_layer(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``layer(t)``, calling the functional form of a plain activation or gate layer directly.

    On a small map a module call costs about as much as the operation (2-5 us of Python each, and
    the dual module makes four: its activation, two gates and the dropout); for an exact
    ``nn.ReLU``, ``nn.Hardswish``, ``nn.Sigmoid``, ``nn.Hardsigmoid``, ``nn.SiLU``, ``nn.Tanh`` or
    ``nn.Identity`` with no hooks of its own and no global ones this calls ``F.relu`` (etc.) on ``t``
    (the identity returns ``t``): the same numbers, and ``t`` is never modified in place. Any other
    layer, a subclass, or one with hooks, is called as a module.
    """
    f = _functional(layer)
    return layer(t) if f is None else f(t)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean((2, 3))`` as ``x.sum((2, 3)) * (1 / (H W))``: (N, C, H, W) -> (N, C), equal to float
    rounding; the backward pass broadcasts the (N, C) gradient without a full-size division. Without
    gradients (and in float16, whose sum would overflow) it is ``x.mean((2, 3))``."""
    if not torch.is_grad_enabled() or x.dtype == torch.float16:  # a float16 sum overflows past 65504
        return x.mean((2, 3))
    return x.sum((2, 3)) * (1.0 / (x.shape[2] * x.shape[3]))


def channel_mlp(pooled: torch.Tensor, fc1: nn.Conv2d, act: nn.Module, fc2: nn.Conv2d) -> torch.Tensor:
    """``fc2(act(fc1(p)))`` for 1x1 convolutions on a pooled map, as matrix products.

    ``pooled``: (N, C) (or (N, C, 1, 1)); returns (N, C_out). Equal to running the convolutions on
    the (N, C, 1, 1) map, to float rounding.
    """
    h = F.linear(pooled.flatten(1), fc1.weight.flatten(1), fc1.bias)
    f = _functional(act)  # elementwise: the same numbers on (N, C')
    h = f(h) if f is not None else act(h[:, :, None, None]).flatten(1)  # a layer sees the reference's (N, C', 1, 1)
    return F.linear(h, fc2.weight.flatten(1), fc2.bias)


def project_channels(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution with one output channel, ``conv(x)``, as a batched matrix-vector product.

    (N, C, H, W) -> (N, 1, H, W). Channels first: ``w^T X_n`` for each image's (C, H*W) matrix;
    channels last: ``X w`` on the (N*H*W, C) matrix. Other layouts fall back to ``conv(x)``.
    """
    n, c, h, w = x.shape
    layout = _layout(x)
    if layout is None:
        return conv(x)
    weight, bias = conv.weight.view(1, c), conv.bias
    if layout == "cf":
        rows = x.view(n, c, h * w)
        if bias is None:
            return torch.bmm(weight.expand(n, 1, c), rows).view(n, 1, h, w)
        return torch.baddbmm(bias.view(1, 1, 1), weight.expand(n, 1, c), rows).view(n, 1, h, w)
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    s = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias.view(1, 1), rows, weight.t())
    return s.view(n, h, w, 1).permute(0, 3, 1, 2)


def _pair_grads(u: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                need_a: bool, need_b: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``sum(u * a * b)`` with respect to ``a`` and ``b`` (``u = grad * x``).

    Two cases are batched matrix-vector products without a temporary: a channel gate (N, C, 1, 1)
    with a spatial gate (N, 1, H, W), and a row gate (N, C, H, 1) with a column gate (N, C, 1, W);
    other shapes reduce ``u * other`` with a sum. Each product is written as a row vector times a
    matrix (``v^T U``, the matrix transposed where needed): on the CPU ``torch.bmm`` of a matrix
    times a column vector (``U v``) is several times slower than the same product written the other
    way round (``benchmarks/bench_matvec.py``, ``results/performance/matvec_cpu.md``).
    """
    n, c, h, w = u.shape
    layout = _layout(u)
    ga = gb = None
    if a.shape == (n, c, 1, 1) and b.shape == (n, 1, h, w) and layout is not None:
        if layout == "cf":  # u as (N, C, HW)
            uv = u.view(n, c, h * w)
            if need_a:
                ga = torch.bmm(b.reshape(n, 1, h * w), uv.transpose(1, 2)).view(n, c, 1, 1)
            if need_b:
                gb = torch.bmm(a.reshape(n, 1, c), uv).view(n, 1, h, w)
        else:  # u as (N, HW, C)
            uv = u.permute(0, 2, 3, 1).reshape(n, h * w, c)
            if need_a:
                ga = torch.bmm(b.reshape(n, 1, h * w), uv).view(n, c, 1, 1)
            if need_b:
                gb = torch.bmm(a.reshape(n, 1, c), uv.transpose(1, 2)).view(n, 1, h, w)
        return ga, gb
    if a.shape == (n, c, h, 1) and b.shape == (n, c, 1, w) and layout == "cf":
        if need_a:
            ga = torch.matmul(b.reshape(n, c, 1, w), u.transpose(2, 3)).view(n, c, h, 1)
        if need_b:
            gb = torch.matmul(a.reshape(n, c, 1, h), u)
        return ga, gb
    if need_a:
        ga = (u * b).sum_to_size(a.shape)
    if need_b:
        gb = (u * a).sum_to_size(b.shape)
    return ga, gb


def _product(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x * a * b`` in one allocation: ``torch.mul`` then an in-place multiply (out of place when
    ``b`` would promote the dtype, as a float32 gate on a float16 map does)."""
    out = torch.mul(x, a)
    return out.mul_(b) if torch.promote_types(out.dtype, b.dtype) == out.dtype else out * b


class _GateProduct(torch.autograd.Function):
    """``x * a * b``: one allocation forward; saves the inputs, not the intermediate ``x * a``.

    Backward: the fast reductions of :func:`_pair_grads`, or, when the backward pass itself is
    differentiated (``create_graph=True``, a gradient penalty), the plain out-of-place formulas.
    Forward mode (``jvp``) and ``torch.func`` transforms are supported.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _product(x, a, b)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, a, b = ctx.saved_tensors
        need_x, need_a, need_b = ctx.needs_input_grad
        if torch.is_grad_enabled() or torch._C._functorch.is_batchedtensor(grad):
            # differentiable (double backward) and vmap-safe: no out= and no in-place ops
            return (grad * a * b if need_x else None,
                    (grad * x * b).sum_to_size(a.shape) if need_a else None,
                    (grad * x * a).sum_to_size(b.shape) if need_b else None)
        grad = grad.contiguous(memory_format=torch.channels_last if _layout(x) == "cl" else torch.contiguous_format)
        dtype = grad.dtype  # the product's (promoted) dtype; autograd casts each gradient back to its input's
        x, a, b = x.to(dtype), a.to(dtype), b.to(dtype)
        u = ga = gb = None
        if need_a or need_b:
            u = torch.mul(grad, x)
            ga, gb = _pair_grads(u, a, b, need_a, need_b)
        gx = None
        if need_x:
            reuse = u is not None and u.dtype == x.dtype and u.shape == x.shape
            gx = torch.mul(grad, a, out=u) if reuse else torch.mul(grad, a)
            gx = gx.mul_(b)
        return gx, ga, gb

    @staticmethod
    def jvp(ctx, tx: Optional[torch.Tensor], ta: Optional[torch.Tensor], tb: Optional[torch.Tensor]) -> torch.Tensor:
        x, a, b = ctx.saved_tensors
        terms = [t for t in (None if tx is None else tx * a * b, None if ta is None else x * ta * b,
                             None if tb is None else x * a * tb) if t is not None]
        return sum(terms[1:], terms[0]) if terms else torch.zeros_like(_product(x, a, b))


def _broadcasts(gate: torch.Tensor, shape: torch.Size) -> bool:
    """Whether ``gate`` broadcasts to ``shape`` without changing it (dimensions matched from the right)."""
    return gate.dim() <= len(shape) and all(g == 1 or g == s for g, s in zip(reversed(gate.shape), reversed(shape)))


def gate_product(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x * a * b`` for gates ``a`` and ``b`` that broadcast against ``x`` (N, C, H, W).

    The same values and gradients as the expression, with one full-size tensor allocated in the
    forward pass instead of two, and the inputs saved for the backward pass instead of ``x * a``.
    Used by the fast path only (see :func:`fast_path`); call it on tensors of ``x``'s shape or
    gates of size 1 along some of its dimensions.
    """
    if not (_broadcasts(a, x.shape) and _broadcasts(b, x.shape)):
        raise ValueError(f"gate_product: gates must broadcast to x's shape {tuple(x.shape)}, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    return _gate_product(x, a, b)


def _gate_product(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`gate_product` without its check, for callers whose gates broadcast by construction."""
    if torch.compiler.is_compiling():  # inductor fuses the plain product into one pass itself
        return x * a * b
    if torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or b.requires_grad):
        return _GateProduct.apply(x, a, b)
    return _product(x, a, b)  # nothing to differentiate: skip the autograd.Function's overhead (about 20 us)
