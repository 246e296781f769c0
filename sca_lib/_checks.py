"""Argument and input checks whose errors say what was expected and how to fix it.

Shared by the attention modules and the classifier builder. Numbers may be Python or NumPy
scalars (``np.float32(0.5)``, ``np.int64(8)``); booleans are refused where a number is expected.
"""

from __future__ import annotations

import numbers

from typing import Optional

import torch

__all__ = ["positive_int", "real_in", "one_of", "float_tensor", "feature_map"]


def positive_int(owner: str, arg: str, value: object, hint: str = "") -> int:
    """``value`` as an int if it is a positive integer, else a ValueError naming ``owner`` and ``arg``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{owner} expects `{arg}` to be a positive int{hint}, got {value!r}")
    return int(value)


def real_in(owner: str, arg: str, value: object, low: float, high: float, high_open: bool = False) -> float:
    """``value`` as a float if it is a real number in [low, high] (or [low, high) with ``high_open``)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if ok:
        ok = low <= float(value) < high if high_open else low <= float(value) <= high
    if not ok:
        interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{owner} expects `{arg}` in {interval}, got {value!r}")
    return float(value)


def one_of(owner: str, arg: str, value: object, choices: "tuple", hint: str = "") -> None:
    """A ValueError naming ``owner``, ``arg`` and the valid ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(f"{owner}: unknown {arg} {value!r}; expected one of {', '.join(choices)}{hint}")


def _first_parameter(module: "torch.nn.Module") -> "Optional[torch.Tensor]":
    """The first parameter of ``module`` (depth first), without ``parameters()``'s generator
    machinery: this runs on every forward of every attention module (1 us instead of 4)."""
    stack = [module]
    while stack:
        m = stack.pop()
        for p in m._parameters.values():
            if p is not None:
                return p
        stack.extend(c for c in reversed(list(m._modules.values())) if c is not None)
    return None


def float_tensor(owner: str, x: object, shape: str = "(N, C, H, W)", like: "Optional[torch.nn.Module]" = None) -> None:
    """A TypeError unless ``x`` is a floating-point tensor (integer images must be converted first)
    and, outside autocast, of the same dtype as the parameters of ``like`` (when given)."""
    if not torch.is_tensor(x):
        raise TypeError(f"{owner} expects a torch.Tensor of shape {shape}, got a {type(x).__name__}; "
                        f"convert it with torch.as_tensor(x).float()")
    if not x.is_floating_point():
        raise TypeError(
            f"{owner} expects a floating-point input (torch.float32, or float16/bfloat16 under autocast), "
            f"got dtype {x.dtype}; convert it with x.float() (uint8 images: x.float() / 255, then normalise)"
        )
    param = _first_parameter(like) if like is not None else None
    if param is not None and x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{owner} has {param.dtype} weights but got a {x.dtype} input; convert the input with "
                        f"x.to({param.dtype}) (or the model with model.to({x.dtype}), or run under torch.autocast)")


def feature_map(owner: str, x: object, channels: int, like: "Optional[torch.nn.Module]" = None) -> None:
    """A clear error unless ``x`` is a float (N, ``channels``, H, W) tensor (of ``like``'s dtype)."""
    float_tensor(owner, x, like=like)
    if x.dim() != 4:
        raise ValueError(
            f"{owner} expects a 4-D input (N, C, H, W), got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0) for a single image"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{owner} expects {channels} channels, got {x.shape[1]} (input shape {tuple(x.shape)}); "
            f"build it with {owner}({x.shape[1]}) for this feature map"
        )
