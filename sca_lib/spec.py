"""One list of attention settings: :class:`AttentionSpec`.

What attention a model gets and where: the module kind, its placement in the backbone and its
knobs. The training config holds one, the command line's flags, the ablation grid's
normalisation, the run hash and the report's columns are all generated from its fields, so a new
setting is one new field here (with its help text) and nothing else.

Flat form: in configs and result files the spec is stored as top-level keys (``"attention"`` for
the kind, then one key per other field), e.g. ``{"attention": "dual", "placement": "features.12",
"reduction": 8, ...}``; :meth:`AttentionSpec.to_flat` / :meth:`AttentionSpec.from_flat` convert.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .attention import list_attentions

__all__ = ["AttentionSpec", "SPEC_KEYS"]


def _opt_str(text: str) -> Optional[str]:
    return None if text.strip().lower() in ("none", "null", "") else text


def _opt_int(text: str) -> Optional[int]:
    return None if text.strip().lower() in ("none", "null", "") else int(text)


def _opt_float(text: str) -> Optional[float]:
    return None if text.strip().lower() in ("none", "null", "") else float(text)


def _placement(text: str) -> Optional[Union[str, Tuple[str, ...]]]:
    text = text.strip()
    if text.lower() in ("none", "null", "", "default"):
        return None
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    return parts[0] if len(parts) == 1 else parts


def _knob(default: Any, help: str, parse: Any, flag_kind: str = "value") -> Any:
    return field(default=default, metadata={"help": help, "parse": parse, "flag": flag_kind})


@dataclass(frozen=True)
class AttentionSpec:
    """What attention a model gets, where, and how it is set (all JSON-serialisable).

    Args:
        kind: ``None`` (a plain model) or a name from ``sca_lib.attention.list_attentions()``.
        placement: ``None`` (the backbone's default), a name from
            ``sca_lib.backbones.list_placements(backbone)``, or several names.
        reduction: channel-path reduction ratio (``None``: the module's default, 8; 16 for lite).
        strength: a C10 strength name from ``sca_lib.attention.STRENGTHS`` (or set alpha/beta).
        alpha / beta: spatial / channel path strengths in [0, 1] (``None``: 1).
        drop_rate: attention dropout (C9 uses 0.1).
        identity_init: start every attention module as the identity.
    """

    kind: Optional[str] = _knob(None, "dual, channel, spatial, lite, se, cbam, scse, eca, coord, sca_cnn, ... "
                                      "(sca_lib.attention.list_attentions()) or none (a plain model)", _opt_str)
    placement: Optional[Union[str, Tuple[str, ...]]] = _knob(
        None, "where the module goes: a name (or comma-separated names) from list_placements(backbone)", _placement)
    reduction: Optional[int] = _knob(None, "reduction ratio (default: the module's, 8 for dual; 16 for lite, se and cbam; "
                                            "none for eca)", _opt_int)
    strength: Optional[str] = _knob(None, "C10 strength: classification | detection | segmentation", _opt_str)
    alpha: Optional[float] = _knob(None, "spatial-path strength in [0, 1] (default 1)", _opt_float)
    beta: Optional[float] = _knob(None, "channel-path strength in [0, 1] (default 1)", _opt_float)
    drop_rate: float = _knob(0.0, "attention dropout (C9 uses 0.1)", float)
    identity_init: bool = _knob(False, "start every attention module as the identity", bool, "switch")

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.kind is not None:
            if not isinstance(self.kind, str):
                raise ValueError(f"AttentionSpec.kind must be an attention name or None, got {self.kind!r}")
            set_(self, "kind", self.kind.strip().lower())
            if self.kind in ("none", "plain", ""):
                set_(self, "kind", None)
            elif self.kind not in list_attentions():
                raise ValueError(f"unknown attention {self.kind!r}; expected one of {', '.join(list_attentions())} "
                                 f"or None (a plain model)")
        if isinstance(self.placement, list):
            set_(self, "placement", tuple(self.placement))
        if isinstance(self.placement, tuple) and len(self.placement) == 1:
            set_(self, "placement", self.placement[0])
        if self.reduction is not None:
            if isinstance(self.reduction, bool) or not isinstance(self.reduction, numbers.Integral) \
                    or int(self.reduction) < 1:
                raise ValueError(f"AttentionSpec.reduction must be a positive int or None, got {self.reduction!r}")
            set_(self, "reduction", int(self.reduction))
        for name in ("alpha", "beta", "drop_rate"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"AttentionSpec.{name} must be a number, got {v!r} ({type(v).__name__})")
            set_(self, name, float(v))  # NumPy scalars become plain floats (JSON, hashing)
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"AttentionSpec.{name} must be in [0, 1] (the path's strength), got {v}")
        if self.strength is not None and (self.alpha is not None or self.beta is not None):
            raise ValueError("AttentionSpec: give a strength name or alpha/beta, not both")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"AttentionSpec.drop_rate must be in [0, 1), got {self.drop_rate}")
        set_(self, "identity_init", bool(self.identity_init))
        if self.kind is None:
            knobs = {k: v for k, v in self.knobs().items() if v != _DEFAULTS[k]}
            if knobs:
                raise ValueError(
                    f"a plain model (attention None) takes no attention settings, got {knobs}; "
                    f"set an attention (e.g. 'dual') or drop them"
                )

    # -- the flat form -------------------------------------------------------------------------
    def knobs(self) -> Dict[str, Any]:
        """Every field but ``kind``, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "kind"}

    def to_flat(self) -> Dict[str, Any]:
        """``{"attention": kind, "placement": ..., ...}`` (tuples as lists): the config/result-file form."""
        out: Dict[str, Any] = {"attention": self.kind}
        for k, v in self.knobs().items():
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "AttentionSpec":
        """The spec from a flat dict's :data:`SPEC_KEYS` (other keys are ignored; missing ones default)."""
        kw = {("kind" if k == "attention" else k): flat[k] for k in SPEC_KEYS if k in flat}
        return cls(**kw)

    @staticmethod
    def split_flat(flat: Mapping[str, Any]) -> Tuple["AttentionSpec", Dict[str, Any]]:
        """``(spec, rest)``: the spec from the flat keys and every other key untouched."""
        return AttentionSpec.from_flat(flat), {k: v for k, v in flat.items() if k not in SPEC_KEYS}

    # -- what a model needs ----------------------------------------------------------------------
    def module_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for every attention module (only the ones that are set)."""
        if self.kind is None:
            return {}
        kw: Dict[str, Any] = {}
        for k in ("reduction", "strength", "alpha", "beta"):
            if getattr(self, k) is not None:
                kw[k] = getattr(self, k)
        if self.drop_rate:
            kw["drop_rate"] = self.drop_rate
        if self.identity_init:
            kw["identity_init"] = True
        return kw

    def label(self) -> str:
        """A short human label, e.g. ``"dual"``, ``"none"``."""
        return self.kind or "none"

    # -- the command line ------------------------------------------------------------------------
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, kind_default: Optional[str] = "dual") -> None:
        """One ``--<field>`` flag per field (``--attention`` for the kind)."""
        group = parser.add_argument_group("attention (sca_lib.spec.AttentionSpec)")
        for f in dataclasses.fields(AttentionSpec):
            flag = "--attention" if f.name == "kind" else "--" + f.name.replace("_", "-")
            if f.metadata["flag"] == "switch":
                group.add_argument(flag, dest=f"spec_{f.name}", action="store_true", help=f.metadata["help"])
            else:
                default = kind_default if f.name == "kind" else f.default
                shown = f" (default {default})" if default not in (None, 0.0) else ""
                group.add_argument(flag, dest=f"spec_{f.name}", type=f.metadata["parse"], default=default,
                                   metavar=("attention" if f.name == "kind" else f.name).upper(),
                                   help=f.metadata["help"] + shown)

    @staticmethod
    def from_args(args: argparse.Namespace) -> "AttentionSpec":
        return AttentionSpec(**{f.name: getattr(args, f"spec_{f.name}") for f in dataclasses.fields(AttentionSpec)})


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AttentionSpec)}

#: The flat keys of a spec, in order: ``"attention"`` (the kind), then the knobs.
SPEC_KEYS: Tuple[str, ...] = ("attention",) + tuple(f.name for f in dataclasses.fields(AttentionSpec)
                                                    if f.name != "kind")
