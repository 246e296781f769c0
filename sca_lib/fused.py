"""Fused CPU kernels for the dual module's inference forward: opt in, compiled on first use.

The fast path (:mod:`sca_lib.gating`) is plain PyTorch, and plain PyTorch has no operation that
pools a feature map and projects its channels in one read, or multiplies it by a channel gate and
a spatial gate in one pass: a :class:`~sca_lib.DualAttention` forward reads ``x`` three times and
writes it twice. The small C++ kernels here do it in one read (pool + projection) and one read
and one write (the two-gate product), channels first and channels last, on float32 CPU tensors:

- ``pool_project(x, conv)``: ``x.mean((2, 3))`` and the 1x1 convolution ``C -> 1`` in one pass;
- ``gate(x, a, b)``: ``x * a * b`` for a channel gate ``a`` (N, C, 1, 1) and a spatial gate ``b``
  (N, 1, H, W), in the same order of operations as the expression (so the same float result);
- ``dual_forward(x, module)``: the whole module in one call (the two kernels, the channel MLP, the
  gates and their strengths), for the article's layers and the lite module's (ReLU or hard-swish;
  sigmoid or hard-sigmoid gates), saving the Python calls between the steps.

Channels last, the pooling and the projection keep the pooled sums of up to 256 channels in SIMD
registers (AVX-512; 96 channels with AVX2) while the rows stream past; channels first, maps of up to
16x16 keep the projection in registers. Without AVX2 the loops are plain C++ that the compiler
vectorises as it can; :func:`build` makes those builds on any x86 machine, and the tests check them.
Like ATen's own kernels they share the work between torch's intra-op threads (``at::parallel_for``
with OpenMP); a compiler without OpenMP (Apple's clang) gets the same kernels on one thread.

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

from .gating import _layout, records_grad

__all__ = ["use_fused_kernels", "fused_kernels", "fused_enabled", "applies", "pool_project", "gate", "whole_module", "dual_forward", "load", "build"]

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>

// Channels last, a position's C values are one row: the pooled sums run down the columns and the
// projection is one dot product per row. A scalar loop would load and store the column sums for
// every element; with SIMD they stay in registers for a group of up to SCA_MAXG vectors of
// channels (256 channels with AVX-512), each row adding its part of the dot product, so x is read
// once per group and nothing else goes through memory. Machines without AVX2 use the scalar loop.
#if defined(__AVX512F__)
#include <immintrin.h>
#define SCA_LANES 16
#define SCA_MAXG 16
typedef __m512 vf;
typedef __mmask16 vmask;
static inline vmask vtail(int64_t n) { return static_cast<vmask>((1u << n) - 1u); }  // n in 1..16
static inline vf vzero() { return _mm512_setzero_ps(); }
static inline vf vset1(float a) { return _mm512_set1_ps(a); }
static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
static inline vf vload_m(const float* p, vmask m) { return _mm512_maskz_loadu_ps(m, p); }
static inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
static inline void vstore_m(float* p, vf v, vmask m) { _mm512_mask_storeu_ps(p, m, v); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vsum(vf v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SCA_LANES 8
#define SCA_MAXG 12
typedef __m256 vf;
typedef __m256i vmask;
static inline vmask vtail(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf vzero() { return _mm256_setzero_ps(); }
static inline vf vset1(float a) { return _mm256_set1_ps(a); }
static inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
static inline vf vload_m(const float* p, vmask m) { return _mm256_maskload_ps(p, m); }
static inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
static inline void vstore_m(float* p, vf v, vmask m) { _mm256_maskstore_ps(p, m, v); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vsum(vf v) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
#endif

#ifdef SCA_LANES
// One image, channels [k0, k0 + (G - 1) * SCA_LANES + last): sums of each channel over the hw rows
// into p, and each row's dot product with w added to s (set, plus the bias, for the first group).
template <int G, bool FULL>
static void cl_group_(const float* X, const float* W, float* p, float* s, int64_t hw, int64_t c, int64_t k0,
                      int64_t last, bool first, float b0) {
  constexpr bool w_in_registers = 2 * G <= SCA_MAXG;
  const vmask m = vtail(last);
  vf acc[G], w[G];
  for (int v = 0; v < G; ++v) {
    acc[v] = vzero();
    if (w_in_registers) w[v] = v == G - 1 ? vload_m(W + k0 + v * SCA_LANES, m) : vload(W + k0 + v * SCA_LANES);
  }
  const float* row = X + k0;
  const float* wk = W + k0;
  for (int64_t j = 0; j < hw; ++j, row += c) {
    vf d0 = vzero(), d1 = vzero();
    for (int v = 0; v < G; ++v) {
      const vf x = (v == G - 1 && !FULL) ? vload_m(row + v * SCA_LANES, m) : vload(row + v * SCA_LANES);
      const vf wv = w_in_registers ? w[v] : ((v == G - 1 && !FULL) ? vload_m(wk + v * SCA_LANES, m) : vload(wk + v * SCA_LANES));
      acc[v] = vadd(acc[v], x);
      if (v % 2 == 0) d0 = vfma(wv, x, d0); else d1 = vfma(wv, x, d1);
    }
    const float t = vsum(vadd(d0, d1));
    s[j] = first ? t + b0 : s[j] + t;
  }
  for (int v = 0; v < G - 1; ++v) vstore(p + k0 + v * SCA_LANES, acc[v]);
  vstore_m(p + k0 + (G - 1) * SCA_LANES, acc[G - 1], m);
}
template <int G>
static void cl_group(const float* X, const float* W, float* p, float* s, int64_t hw, int64_t c, int64_t k0,
                     int64_t last, bool first, float b0) {
  if (last == SCA_LANES) cl_group_<G, true>(X, W, p, s, hw, c, k0, last, first, b0);
  else cl_group_<G, false>(X, W, p, s, hw, c, k0, last, first, b0);
}

typedef void (*cl_group_fn)(const float*, const float*, float*, float*, int64_t, int64_t, int64_t, int64_t, bool, float);
static const cl_group_fn CL_GROUP[17] = {nullptr, cl_group<1>, cl_group<2>, cl_group<3>, cl_group<4>, cl_group<5>,
                                         cl_group<6>, cl_group<7>, cl_group<8>, cl_group<9>, cl_group<10>, cl_group<11>,
                                         cl_group<12>, cl_group<13>, cl_group<14>, cl_group<15>, cl_group<16>};

// Channels first with a small map (H*W up to SCA_MAXG vectors: 16x16 with AVX-512): the projection
// of one image stays in registers while its C rows stream past, each row adding w_k times itself
// and leaving its sum as the pooled value.
template <int G>
static void cf_small(const float* X, const float* W, float* p, float* s, int64_t hw, int64_t c, float b0, float inv) {
  const vmask m = vtail(hw - (G - 1) * SCA_LANES);
  vf acc[G];
  for (int v = 0; v < G; ++v) acc[v] = vzero();
  const float* row = X;
  for (int64_t k = 0; k < c; ++k, row += hw) {
    const vf wk = vset1(W[k]);
    vf t0 = vzero(), t1 = vzero();
    for (int v = 0; v < G; ++v) {
      const vf x = v == G - 1 ? vload_m(row + v * SCA_LANES, m) : vload(row + v * SCA_LANES);
      acc[v] = vfma(wk, x, acc[v]);
      if (v % 2 == 0) t0 = vadd(t0, x); else t1 = vadd(t1, x);
    }
    p[k] = vsum(vadd(t0, t1)) * inv;
  }
  for (int v = 0; v < G; ++v) {
    float out[SCA_LANES];
    vstore(out, acc[v]);
    const int64_t n = v == G - 1 ? hw - v * SCA_LANES : SCA_LANES;
    for (int64_t l = 0; l < n; ++l) s[v * SCA_LANES + l] = out[l] + b0;
  }
}
typedef void (*cf_small_fn)(const float*, const float*, float*, float*, int64_t, int64_t, float, float);
static const cf_small_fn CF_SMALL[17] = {nullptr, cf_small<1>, cf_small<2>, cf_small<3>, cf_small<4>, cf_small<5>,
                                         cf_small<6>, cf_small<7>, cf_small<8>, cf_small<9>, cf_small<10>, cf_small<11>,
                                         cf_small<12>, cf_small<13>, cf_small<14>, cf_small<15>, cf_small<16>};

// Channels last, the product for rows [j0, j1) of one image with its C <= SCA_MAXG vectors of
// channel weights a held in registers: y = x * a * b_j, multiplied in the expression's order.
template <int G, bool FULL>
static void cl_gate_(const float* X, const float* A, const float* B, float* Y, int64_t j0, int64_t j1, int64_t c) {
  const vmask m = vtail(c - (G - 1) * SCA_LANES);
  vf a[G];
  for (int v = 0; v < G; ++v) a[v] = (v == G - 1 && !FULL) ? vload_m(A + v * SCA_LANES, m) : vload(A + v * SCA_LANES);
  for (int64_t j = j0; j < j1; ++j) {
    const float* row = X + j * c;
    float* out = Y + j * c;
    const vf bv = vset1(B[j]);
    for (int v = 0; v < G; ++v) {
      if (v == G - 1 && !FULL) vstore_m(out + v * SCA_LANES, vmul(vmul(vload_m(row + v * SCA_LANES, m), a[v]), bv), m);
      else vstore(out + v * SCA_LANES, vmul(vmul(vload(row + v * SCA_LANES), a[v]), bv));
    }
  }
}
template <int G>
static void cl_gate(const float* X, const float* A, const float* B, float* Y, int64_t j0, int64_t j1, int64_t c) {
  if (c == G * SCA_LANES) cl_gate_<G, true>(X, A, B, Y, j0, j1, c);
  else cl_gate_<G, false>(X, A, B, Y, j0, j1, c);
}
typedef void (*cl_gate_fn)(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t);
static const cl_gate_fn CL_GATE[17] = {nullptr, cl_gate<1>, cl_gate<2>, cl_gate<3>, cl_gate<4>, cl_gate<5>,
                                       cl_gate<6>, cl_gate<7>, cl_gate<8>, cl_gate<9>, cl_gate<10>, cl_gate<11>,
                                       cl_gate<12>, cl_gate<13>, cl_gate<14>, cl_gate<15>, cl_gate<16>};

// out (N, R) = P (N, C) W^T + bias for the few pooled rows of a batch: each weight row is read once
// and multiplied into four images at a time (four independent sums). On the development machine
// this made the whole call faster than at::linear did, most on wide layers (2048 channels).
static void small_linear(const float* P, int64_t n, int64_t c, const float* W, const float* bias, int64_t r, float* out) {
  const int64_t full = c / SCA_LANES * SCA_LANES;
  const vmask m = vtail(c - full ? c - full : SCA_LANES);
  for (int64_t j = 0; j < r; ++j) {
    const float* w = W + j * c;
    const float b0 = bias ? bias[j] : 0.f;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      const float* p0 = P + i * c;
      vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
      for (int64_t k = 0; k < full; k += SCA_LANES) {
        const vf wv = vload(w + k);
        a0 = vfma(wv, vload(p0 + k), a0);
        a1 = vfma(wv, vload(p0 + c + k), a1);
        a2 = vfma(wv, vload(p0 + 2 * c + k), a2);
        a3 = vfma(wv, vload(p0 + 3 * c + k), a3);
      }
      if (full < c) {
        const vf wv = vload_m(w + full, m);
        a0 = vfma(wv, vload_m(p0 + full, m), a0);
        a1 = vfma(wv, vload_m(p0 + c + full, m), a1);
        a2 = vfma(wv, vload_m(p0 + 2 * c + full, m), a2);
        a3 = vfma(wv, vload_m(p0 + 3 * c + full, m), a3);
      }
      out[i * r + j] = vsum(a0) + b0;
      out[(i + 1) * r + j] = vsum(a1) + b0;
      out[(i + 2) * r + j] = vsum(a2) + b0;
      out[(i + 3) * r + j] = vsum(a3) + b0;
    }
    for (; i < n; ++i) {
      const float* pi = P + i * c;
      vf a0 = vzero(), a1 = vzero();
      int64_t k = 0;
      for (; k + 2 * SCA_LANES <= full; k += 2 * SCA_LANES) {
        a0 = vfma(vload(w + k), vload(pi + k), a0);
        a1 = vfma(vload(w + k + SCA_LANES), vload(pi + k + SCA_LANES), a1);
      }
      for (; k < full; k += SCA_LANES) a0 = vfma(vload(w + k), vload(pi + k), a0);
      if (full < c) a1 = vfma(vload_m(w + full, m), vload_m(pi + full, m), a1);
      out[i * r + j] = vsum(vadd(a0, a1)) + b0;
    }
  }
}
#endif

// The channel MLP's linear layers: the loop above where this build has SIMD, ATen's otherwise.
static torch::Tensor linear(const torch::Tensor& p, const torch::Tensor& w, const torch::Tensor& b, int64_t r) {
  const int64_t n = p.size(0), c = p.size(1);
#ifdef SCA_LANES
  auto out = torch::empty({n, r}, p.options());
  small_linear(p.data_ptr<float>(), n, c, w.data_ptr<float>(), b.numel() ? b.data_ptr<float>() : nullptr, r,
               out.data_ptr<float>());
  return out;
#else
  return at::linear(p, w.view({r, c}), b.numel() ? c10::optional<at::Tensor>(b) : c10::nullopt);
#endif
}

// How many floats one SIMD register of this build holds (1: the scalar loops).
int64_t simd_lanes() {
#ifdef SCA_LANES
  return SCA_LANES;
#else
  return 1;
#endif
}

// x: (N, C, H, W) float32, contiguous in channels-first or channels-last order; weight: the 1x1
// convolution C -> 1 (C float32 values), bias: its bias (one value) or an empty tensor. Returns the
// pooled means (N, C) and the projection w.x + bias (N, 1, H, W), reading x once.
std::vector<torch::Tensor> pool_project(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, bool channels_last) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  TORCH_CHECK(weight.numel() == c && weight.is_contiguous() && weight.scalar_type() == at::kFloat,
              "pool_project: weight must hold C float32 values");
  TORCH_CHECK(bias.numel() <= 1 && (bias.numel() == 0 || bias.scalar_type() == at::kFloat),
              "pool_project: bias must be one float32 value or empty");
  auto pool = torch::empty({n, c}, x.options());
  auto proj = torch::empty({n, 1, x.size(2), x.size(3)}, x.options());
  const float* X = x.data_ptr<float>();
  const float* W = weight.data_ptr<float>();
  float* P = pool.data_ptr<float>();
  float* S = proj.data_ptr<float>();
  const float inv = 1.0f / static_cast<float>(hw), b0 = bias.numel() ? *bias.data_ptr<float>() : 0.f;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* s = S + i * hw;
      float* p = P + i * c;
#ifdef SCA_LANES
      if (!channels_last && hw <= SCA_MAXG * SCA_LANES) {
        CF_SMALL[(hw + SCA_LANES - 1) / SCA_LANES](X + i * c * hw, W, p, s, hw, c, b0, inv);
        continue;
      }
#endif
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
#ifdef SCA_LANES
        const float* xi = X + i * hw * c;
        for (int64_t k0 = 0; k0 < c; k0 += SCA_MAXG * SCA_LANES) {
          const int64_t vectors = std::min<int64_t>(SCA_MAXG, (c - k0 + SCA_LANES - 1) / SCA_LANES);
          const int64_t last = c - k0 - (vectors - 1) * SCA_LANES;
          CL_GROUP[vectors](xi, W, p, s, hw, c, k0, last, k0 == 0, b0);
        }
#else
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
#endif
        for (int64_t k = 0; k < c; ++k) p[k] *= inv;
      }
    }
  });
  return {pool, proj};
}

// y = x * a * b, a: (N, C) channel gate, b: (N, H*W) spatial gate; y in x's memory format, or x itself
// (inplace: each element is read, then overwritten by its product).
torch::Tensor gate(torch::Tensor x, torch::Tensor a, torch::Tensor b, bool channels_last, bool inplace) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  auto y = inplace ? x : torch::empty_like(x);  // empty_like keeps channels last
  const float* X = x.data_ptr<float>();
  const float* A = a.data_ptr<float>();
  const float* B = b.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const int64_t rows = channels_last ? n * hw : n * c, len = channels_last ? c : hw;
  const int64_t per_image = channels_last ? hw : c;  // rows of one image
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, len));
#ifdef SCA_LANES
  if (channels_last && c <= SCA_MAXG * SCA_LANES) {  // the channel weights in registers, an image at a time
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end;) {
        const int64_t i = r / hw, stop = std::min(end, (i + 1) * hw);
        CL_GATE[(c + SCA_LANES - 1) / SCA_LANES](X + i * hw * c, A + i * c, B + i * hw, Y + i * hw * c, r - i * hw,
                                                  stop - i * hw, c);
        r = stop;
      }
    });
    return y;
  }
#endif
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    int64_t i = begin / per_image, q = begin % per_image;  // image, row within it (no division per row)
    for (int64_t r = begin; r < end; ++r) {
      const float* row = X + r * len;
      float* out = Y + r * len;
      if (!channels_last) {  // row r = (image i, channel q): one channel weight, H*W spatial weights
        const float ak = A[r];
        const float* bb = B + i * hw;
#pragma omp simd
        for (int64_t j = 0; j < hw; ++j) out[j] = row[j] * ak * bb[j];
      } else {  // row r = (image i, position q): C channel weights, one spatial weight
        const float* aa = A + i * c;
        const float bj = B[r];
#pragma omp simd
        for (int64_t k = 0; k < c; ++k) out[k] = row[k] * aa[k] * bj;
      }
      if (++q == per_image) q = 0, ++i;
    }
  });
  return y;
}

// The gates through ATen's own (vectorised) kernels, in place: the numbers the Python forward makes.
static void gate_(torch::Tensor& t, int64_t kind, double scale) {  // 0: Sigmoid, 1: Hardsigmoid
  if (kind == 0) t.sigmoid_(); else at::hardsigmoid_(t);
  if (scale != 1.0) t.mul_(scale);
}

// The whole multiplicative dual module: pooling and projection in one read of x, the channel MLP
// (fc1: (R, C) weights, fc2: (C, R), float32 biases or empty; act 0: ReLU, 1: Hardswish), the gates
// (times scale: the identity start's 2), their strengths (1 - t + t * gate) and the product in one pass.
// Returns the output and the two gates before their strengths (N, C, 1, 1) and (N, 1, H, W).
std::vector<torch::Tensor> dual_forward(torch::Tensor x, torch::Tensor conv_w, torch::Tensor conv_b,
                                        torch::Tensor w1, torch::Tensor b1, torch::Tensor w2, torch::Tensor b2,
                                        int64_t act, int64_t gate_kind, double scale, double alpha, double beta,
                                        bool channels_last, bool inplace) {
  const int64_t n = x.size(0), c = x.size(1), r = w1.size(0);
  TORCH_CHECK(w1.numel() == r * c && w2.numel() == c * r && w1.is_contiguous() && w2.is_contiguous() &&
              w1.scalar_type() == at::kFloat && w2.scalar_type() == at::kFloat, "dual_forward: fc weights");
  TORCH_CHECK(b1.numel() == 0 || b1.numel() == r, "dual_forward: fc1 bias");
  TORCH_CHECK(b2.numel() == 0 || b2.numel() == c, "dual_forward: fc2 bias");
  auto pp = pool_project(x, conv_w, conv_b, channels_last);
  auto hidden = linear(pp[0], w1, b1, r);
  if (act == 0) hidden.relu_(); else at::hardswish_(hidden);
  auto cg = linear(hidden, w2, b2, c).view({n, c, 1, 1});
  auto sg = pp[1];
  gate_(cg, gate_kind, scale);
  gate_(sg, gate_kind, scale);
  auto strong = [](const torch::Tensor& g, double t) {  // neutral (1) * (1 - t) + t * gate, as in Python
    return t == 1.0 ? g : g.mul(t).add_(1.0 - t);
  };
  auto a = strong(cg, beta), b = strong(sg, alpha);
  return {gate(x, a.view({n, c}), b.view({n, x.size(2) * x.size(3)}), channels_last, inplace), cg, sg};
}
"""

_NO_BIAS = torch.empty(0)
_STATE: dict = {"enabled": os.environ.get("SCA_GATING", "").strip().lower() == "fused", "module": None, "error": None}


def _flat(t: Optional[torch.Tensor]) -> torch.Tensor:
    """A parameter as the kernels read it (no detach: :func:`applies` rules out autograd, and the C++
    reads the values only)."""
    if t is None:
        return _NO_BIAS
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.detach().float().contiguous()


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


#: The compiler flags of the kernels in use: built for this CPU, with OpenMP, which ``at::parallel_for``
#: needs to share the work between torch's intra-op threads (compiled without it, the loops run on one
#: thread whatever ``torch.set_num_threads`` says).
FLAGS = ("-O3", "-march=native", "-fopenmp")
#: Where the compiler has no OpenMP (Apple's clang): the same kernels on one thread.
SERIAL_FLAGS = ("-O3", "-march=native", "-fopenmp-simd")


def build(flags=FLAGS) -> Any:
    """Compile (or load from torch's extension cache) the kernels with these compiler flags and
    return the extension; raises what the build raised. :func:`load` builds them for this CPU; the
    tests also build them without AVX-512 and without AVX2 (``-mno-avx512f``, ``-mno-avx2``) to
    check the code paths other machines take."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "no CUDA runtime is found": irrelevant for a CPU extension
    try:
        from torch.utils.cpp_extension import load_inline

        tag = hashlib.sha1(" ".join(flags).encode()).hexdigest()[:6]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_inline(name=f"sca_lib_fused_{_cpu_fingerprint()}_{tag}", cpp_sources=_SOURCE,
                               functions=["pool_project", "gate", "simd_lanes", "dual_forward"],
                               extra_cflags=list(flags), extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else [],
                               verbose=False)
    finally:
        logger.setLevel(level)


def load() -> Optional[Any]:
    """The compiled kernels (built on the first call, then loaded from torch's extension cache), or
    None when they cannot be built here; the first failure warns with the compiler's reason."""
    if _STATE["module"] is not None or _STATE["error"] is not None:
        return _STATE["module"]
    try:
        try:
            _STATE["module"] = build()
        except Exception:  # perhaps a compiler without OpenMP: the same kernels on one thread
            _STATE["module"] = build(SERIAL_FLAGS)
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
    if records_grad(x, module):
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return (_STATE["module"] is not None or fused_enabled()) and _layout(x) is not None


def pool_project(x: torch.Tensor, conv: nn.Conv2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(``x.mean((2, 3))`` as (N, C), ``conv(x)`` as (N, 1, H, W)) in one read of ``x``, for a 1x1
    convolution ``C -> 1``. Call only where :func:`applies` is true."""
    return tuple(_STATE["module"].pool_project(x, _flat(conv.weight), _flat(conv.bias), not x.is_contiguous()))


def gate(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``x * a * b`` for a channel gate ``a`` (N, C, 1, 1) and a spatial gate ``b`` (N, 1, H, W), in
    one pass, in ``x``'s memory format (``inplace``: into ``x``, which is returned). Call only where
    :func:`applies` is true."""
    n, c, h, w = x.shape
    if a.shape != (n, c, 1, 1) or a.dtype != torch.float32 or not a.is_contiguous():
        a = a.expand(n, c, 1, 1).float().contiguous()
    if b.shape != (n, 1, h, w) or b.dtype != torch.float32 or not b.is_contiguous():
        b = b.expand(n, 1, h, w).float().contiguous()
    return _STATE["module"].gate(x, a.view(n, c), b.view(n, h * w), not x.is_contiguous(), inplace)


_ACTIVATIONS = {nn.ReLU: 0, nn.Hardswish: 1}
_GATES = {nn.Sigmoid: 0, nn.Hardsigmoid: 1}


def whole_module(module: nn.Module) -> bool:
    """Whether :func:`dual_forward` computes ``module``: its activation is ``nn.ReLU`` or
    ``nn.Hardswish`` and both gates are ``nn.Sigmoid`` or both ``nn.Hardsigmoid`` (the article's
    module and its lite form); other layers keep the two-kernel forward around them."""
    ch, sp = module.channel, module.spatial
    return type(ch.act) in _ACTIVATIONS and type(ch.gate) in _GATES and type(sp.gate) is type(ch.gate)


def dual_forward(x: torch.Tensor, module: nn.Module, inplace: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole forward of a multiplicative :class:`~sca_lib.DualAttention` in one call: pooling and
    projection in one read of ``x``, the channel MLP, the gates and their strengths, and the two-gate
    product in one pass. Returns the output and the channel and spatial gates before their strengths
    (what ``record_maps`` keeps); ``inplace``: the output is ``x`` itself. Call only where
    :func:`applies` and :func:`whole_module` are true."""
    ch, sp = module.channel, module.spatial
    return tuple(_STATE["module"].dual_forward(
        x, _flat(sp.conv.weight), _flat(sp.conv.bias), _flat(ch.fc1.weight), _flat(ch.fc1.bias),
        _flat(ch.fc2.weight), _flat(ch.fc2.bias), _ACTIVATIONS[type(ch.act)], _GATES[type(ch.gate)],
        module.gate_scale, module.alpha, module.beta, not x.is_contiguous(), inplace))
