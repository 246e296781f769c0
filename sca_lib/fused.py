"""Fused CPU kernels for the dual module's inference forward: opt in, compiled on first use.

The fast path (:mod:`sca_lib.gating`) is plain PyTorch, and plain PyTorch has no operation that
pools a feature map and projects its channels in one read, or multiplies it by a channel gate and
a spatial gate in one pass: a :class:`~sca_lib.DualAttention` forward reads ``x`` three times and
writes it twice. The two small C++ kernels here do it in one read (pool + projection) and one read
and one write (the two-gate product), channels first and channels last, on float32 CPU tensors:

- ``pool_project(x, conv)``: ``x.mean((2, 3))`` and the 1x1 convolution ``C -> 1`` in one pass;
- ``gate(x, a, b)``: ``x * a * b`` for a channel gate ``a`` (N, C, 1, 1) and a spatial gate ``b``
  (N, 1, H, W), in the same order of operations as the expression (so the same float result).

They are for inference only (no autograd): :class:`~sca_lib.DualAttention` uses them when they are
switched on, nothing needs a gradient, and the module is the plain multiplicative dual module
(both paths; any strengths, identity start or gate layers). Everything else keeps the fast path.

Switch them on with ``SCA_GATING=fused`` in the environment (read when sca_lib is imported) or
:func:`use_fused_kernels`. The first use compiles them with the machine's C++ compiler through
``torch.utils.cpp_extension`` (about 20 s on a 2-core machine; cached in torch's extension folder,
``$TORCH_EXTENSIONS_DIR``, and built for this CPU: ``-march=native``, one build per CPU type). With
no compiler they stay off and a warning says why. ``benchmarks/bench_modules.py --fused`` measures
them against the floor.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import warnings
from typing import Any, Iterator, Optional, Tuple

import torch
from torch import nn

from .gating import _layout

__all__ = ["use_fused_kernels", "fused_kernels", "fused_enabled", "applies", "pool_project", "gate", "load"]

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>

// x: (N, C, H, W) float32, contiguous in channels-first or channels-last order. Returns the
// pooled means (N, C) and the projection w.x + bias (N, 1, H, W), reading x once.
std::vector<torch::Tensor> pool_project(torch::Tensor x, torch::Tensor w, double bias, bool channels_last) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  auto pool = torch::empty({n, c}, x.options());
  auto proj = torch::empty({n, 1, x.size(2), x.size(3)}, x.options());
  const float* X = x.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  float* P = pool.data_ptr<float>();
  float* S = proj.data_ptr<float>();
  const float inv = 1.0f / static_cast<float>(hw), b0 = static_cast<float>(bias);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* s = S + i * hw;
      float* p = P + i * c;
      if (!channels_last) {  // rows of H*W values, one per channel
        for (int64_t j = 0; j < hw; ++j) s[j] = b0;
        for (int64_t k = 0; k < c; ++k) {
          const float* row = X + (i * c + k) * hw;
          const float wk = W[k];
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < hw; ++j) {
            const float v = row[j];
            acc += v;
            s[j] += wk * v;
          }
          p[k] = acc * inv;
        }
      } else {  // rows of C values, one per position
        for (int64_t k = 0; k < c; ++k) p[k] = 0.f;
        for (int64_t j = 0; j < hw; ++j) {
          const float* row = X + (i * hw + j) * c;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t k = 0; k < c; ++k) {
            const float v = row[k];
            dot += W[k] * v;
            p[k] += v;
          }
          s[j] = dot + b0;
        }
        for (int64_t k = 0; k < c; ++k) p[k] *= inv;
      }
    }
  });
  return {pool, proj};
}

// y = x * a * b, a: (N, C) channel gate, b: (N, H*W) spatial gate; y in x's memory format.
torch::Tensor gate(torch::Tensor x, torch::Tensor a, torch::Tensor b, bool channels_last) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  auto y = torch::empty_like(x);  // keeps channels last
  const float* X = x.data_ptr<float>();
  const float* A = a.data_ptr<float>();
  const float* B = b.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const int64_t rows = channels_last ? n * hw : n * c, len = channels_last ? c : hw;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, len));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = X + r * len;
      float* out = Y + r * len;
      if (!channels_last) {  // row r = (image i, channel k): one channel weight, H*W spatial weights
        const float ak = A[r];
        const float* bb = B + (r / c) * hw;
#pragma omp simd
        for (int64_t j = 0; j < hw; ++j) out[j] = row[j] * ak * bb[j];
      } else {  // row r = (image i, position j): C channel weights, one spatial weight
        const float* aa = A + (r / hw) * c;
        const float bj = B[r];
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) out[k] = row[k] * aa[k] * bj;
      }
    }
  });
  return y;
}
"""

_STATE: dict = {"enabled": os.environ.get("SCA_GATING", "").strip().lower() == "fused", "module": None, "error": None}


def _cpu_fingerprint() -> str:
    """What the compiled code depends on: this CPU's instruction set (it is built with
    ``-march=native``), the torch version and the source."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = platform.processor()
    key = "\n".join([flags, platform.machine(), torch.__version__, _SOURCE])
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def load() -> Optional[Any]:
    """The compiled kernels (built on the first call, then loaded from torch's extension cache), or
    None when they cannot be built here; the first failure warns with the compiler's reason."""
    if _STATE["module"] is not None or _STATE["error"] is not None:
        return _STATE["module"]
    try:
        logger = logging.getLogger("torch.utils.cpp_extension")
        level = logger.level
        logger.setLevel(logging.ERROR)  # "no CUDA runtime is found": irrelevant for a CPU extension
        try:
            from torch.utils.cpp_extension import load_inline

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _STATE["module"] = load_inline(
                    name=f"sca_lib_fused_{_cpu_fingerprint()}", cpp_sources=_SOURCE, functions=["pool_project", "gate"],
                    extra_cflags=["-O3", "-march=native", "-fopenmp-simd"], verbose=False)
        finally:
            logger.setLevel(level)
    except Exception as exc:  # no compiler, no ninja, a sandbox without a writable cache, ...
        _STATE["error"] = f"{type(exc).__name__}: {str(exc).strip()[-600:]}"
        warnings.warn("sca_lib.fused: the fused CPU kernels could not be built, so the modules keep their fast "
                      "path (same numbers, slower). They need a C++ compiler (g++ or clang) and ninja "
                      "(pip install ninja) and a writable $TORCH_EXTENSIONS_DIR. The build said: "
                      f"{_STATE['error']}", RuntimeWarning, stacklevel=2)
    return _STATE["module"]


def use_fused_kernels(enabled: bool = True) -> bool:
    """Switch the fused kernels on (building them now if needed) or off, for this process.

    Returns whether they are in use: False when switched off or when they cannot be built (a
    warning then says why). ``SCA_GATING=fused`` switches them on at import time."""
    _STATE["enabled"] = bool(enabled)
    return fused_enabled()


@contextlib.contextmanager
def fused_kernels(enabled: bool = True) -> Iterator[bool]:
    """Inside this block the fused kernels are on (``enabled=False``: off); yields whether they are
    in use. Not thread-safe: it sets a module-level switch."""
    before = _STATE["enabled"]
    try:
        yield use_fused_kernels(enabled)
    finally:
        _STATE["enabled"] = before


def fused_enabled() -> bool:
    """Whether the fused kernels are switched on and built (building them on the first call)."""
    return bool(_STATE["enabled"]) and load() is not None


def applies(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether ``module``'s forward on ``x`` may use the kernels: switched on and built, a float32
    CPU tensor contiguous in either layout, nothing that needs a gradient, not being compiled,
    traced or scripted (the kernels are opaque to those)."""
    if not _STATE["enabled"] or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4 or x.numel() == 0:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return (_STATE["module"] is not None or fused_enabled()) and _layout(x) is not None


def pool_project(x: torch.Tensor, conv: nn.Conv2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(``x.mean((2, 3))`` as (N, C), ``conv(x)`` as (N, 1, H, W)) in one read of ``x``, for a 1x1
    convolution ``C -> 1``. Call only where :func:`applies` is true."""
    w = conv.weight.detach().reshape(-1)
    bias = float(conv.bias.detach()) if conv.bias is not None else 0.0
    return tuple(_STATE["module"].pool_project(x, w.float().contiguous(), bias, not x.is_contiguous()))


def gate(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x * a * b`` for a channel gate ``a`` (N, C, 1, 1) and a spatial gate ``b`` (N, 1, H, W), in
    one pass, in ``x``'s memory format. Call only where :func:`applies` is true."""
    n, c, h, w = x.shape
    if a.shape != (n, c, 1, 1) or a.dtype != torch.float32 or not a.is_contiguous():
        a = a.expand(n, c, 1, 1).float().contiguous()
    if b.shape != (n, 1, h, w) or b.dtype != torch.float32 or not b.is_contiguous():
        b = b.expand(n, 1, h, w).float().contiguous()
    return _STATE["module"].gate(x, a.view(n, c), b.view(n, h * w), not x.is_contiguous())
