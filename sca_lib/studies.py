"""What an ablation runs: studies, the named grids of them, and the grid points they expand to.

A :class:`Study` asks one question by varying one knob (``Study.knob``: a column of the results,
e.g. ``"attention"`` or ``"reduction"``); a :class:`Grid` names the training mode its runs use,
the seeds and its studies; :data:`GRIDS` holds the named grids (``fast``, ``quick``, ``cpu``,
``full``). :func:`build_grid` expands a grid into its points, each with a normalised config (the
dict the training side takes) and its run id.

A grid point's config: ``{"mode": "fast"|"cpu"|"full", "backbone": ..., "seed": int, "attention":
..., <the other sca_lib.spec.SPEC_KEYS>, "schedule": "staged"|"single"}`` plus ``"quick": True``
for the ``quick`` grid.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ._io import json_hash
from .backbones import normalise_spec
from .spec import AttentionSpec

__all__ = ["Study", "Grid", "GRIDS", "build_grid", "normalise", "find_study", "config_hash"]


@dataclass(frozen=True)
class Study:
    """A named set of grid points that answer one question by varying one knob.

    Args:
        name: the study's name (a results column value, e.g. ``"placement"``).
        question: what the study asks, for tables and figures.
        knob: the config key whose value names a setting within the study (``"attention"``,
            ``"placement"``, ``"reduction"``, ...).
        variants: one dict per setting, each overriding the grid's base config.
        backbones: the backbones every setting is trained on.
        baseline: what the report compares each setting with: ``"plain"`` (the same backbone
            without attention, trained with the study's schedule) or ``"first"`` (the study's
            first setting).
        seeds: the study's seeds when it runs fewer than its grid's (a costly secondary study).
    """

    name: str
    question: str
    knob: str
    variants: Tuple[Dict[str, Any], ...]
    backbones: Tuple[str, ...]
    baseline: str = "first"
    seeds: Optional[Tuple[int, ...]] = None

    def __post_init__(self) -> None:
        if self.baseline not in ("plain", "first"):
            raise ValueError(f"Study {self.name!r}: baseline must be 'plain' or 'first', got {self.baseline!r}")

    @property
    def schedule(self) -> str:
        """The schedule every setting shares (``"staged"`` when they differ or none is named)."""
        found = {v.get("schedule", "staged") for v in self.variants}
        return found.pop() if len(found) == 1 else "staged"


@dataclass(frozen=True)
class Grid:
    """A named ablation grid: the training mode its runs use, the seeds and the studies.

    ``quick=True`` marks the grid's configs with ``"quick": True`` (the training side's shorter
    budget for the README's main job). ``primary`` declares, before anything runs, the primary
    comparisons as ``(study, setting)`` pairs (a setting is compared with its study's baseline; e.g.
    ``("variants", "dual")``). A grid that declares them needs at least 5 seeds; the report then
    Holm-corrects the primary comparisons as one family and all other comparisons as another, and
    calls a difference significant only after that correction.

    ``settings`` (training config keys, e.g. ``{"image_size": 112, "data_version": 2}``) go into
    every point's config, so they are part of its run id; ``placements`` (backbone -> placement)
    sets where the module goes on that backbone when a setting does not name a placement.
    """

    name: str
    mode: str
    seeds: Tuple[int, ...]
    studies: Tuple[Study, ...]
    quick: bool = False
    description: str = ""
    primary: Tuple[Tuple[str, str], ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    placements: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted({"mode", "backbone", "seed", "attention"} & set(self.settings))
        if clash:
            raise ValueError(f"grid {self.name!r}: settings may not set {clash} (the grid and its studies do)")
        names = {s.name for s in self.studies}
        unknown = [p for p in self.primary if p[0] not in names]
        if unknown:
            raise ValueError(f"grid {self.name!r}: primary comparisons {unknown} name studies it does not have "
                             f"({', '.join(sorted(names))})")
        if self.primary and len(self.seeds) < 5:
            raise ValueError(f"grid {self.name!r} declares primary comparisons but has {len(self.seeds)} seeds; "
                             f"primary comparisons need at least 5")


_VARIANTS = ({"attention": None}, {"attention": "channel"}, {"attention": "spatial"}, {"attention": "dual"})


def _variants_study(backbones: Sequence[str]) -> Study:
    return Study("variants", "Does attention help, and which path (C2, C11, C15)?", "attention",
                 _VARIANTS + ({"attention": "lite"},), tuple(backbones), baseline="plain")


def _knob_studies(backbone: str, placements: Sequence[str]) -> List[Study]:
    b = (backbone,)
    return [
        Study("placement", "Where should the module go (C14)?", "placement",
              tuple({"attention": "dual", "placement": p} for p in placements), b, baseline="plain"),
        Study("reduction", "Reduction ratio 8 (C1) vs 16 (C5)?", "reduction",
              ({"attention": "dual", "reduction": 8}, {"attention": "dual", "reduction": 16}), b),
        Study("strength", "Do the article's alpha/beta presets (C10) matter?", "strength",
              tuple({"attention": "dual", "strength": s} for s in (None, "classification", "detection", "segmentation")),
              b),
        Study("dropout", "Attention dropout 0.1 (C9) on or off?", "drop_rate",
              ({"attention": "dual", "drop_rate": 0.0}, {"attention": "dual", "drop_rate": 0.1}), b),
        Study("schedule", "Staged (C6) or single-stage training?", "schedule",
              ({"attention": "dual", "schedule": "staged"}, {"attention": "dual", "schedule": "single"}), b),
        Study("init", "Identity start or plain start?", "identity_init",
              ({"attention": "dual", "identity_init": False}, {"attention": "dual", "identity_init": True}), b),
    ]


_SMALL = ("mobilenet_v3_small",)

#: The cpu mode's protocol of the first CPU study (results/cpu-v1-superseded): data version 1 at
#: 96 px, masked BCE summed over an image's labels (so the clip at 2.0 set every step), C6's
#: learning rates, BatchNorm statistics as training left them. Pinned in the ``cpu_v1`` grid.
V1_PROTOCOL: Dict[str, Any] = dict(data_version=1, image_size=96, loss_reduction="sum_per_image", bn_policy="keep",
                                   single_lr=0.01, stage_lrs=[0.01, 0.001, 0.0001], stage_epochs=[4, 5, 5])

#: The cpu mode's protocol (``sca_lib.train.MODE_DEFAULTS["cpu"]``), spelled out in the ``cpu`` and
#: ``quick`` grids so that it is part of every run id.
CPU_PROTOCOL: Dict[str, Any] = dict(data_version=2, image_size=112, loss_reduction="mean", bn_policy="reestimate",
                                    single_lr=0.05, stage_lrs=[0.05, 0.005, 0.0005], stage_epochs=[4, 7, 5])

#: The cpu mode's detection protocol (``sca_lib.train.DETECTION_MODE_DEFAULTS["cpu"]``), spelled
#: out in the ``detection_cpu`` grid so that it is part of every run id. Calibrated in
#: data/README.md ("Detection on the CPU"): the synthetic devkit's 112-144 px images enlarged to
#: 224 px (MobileNetV3-Small's FPN taps sit at stride 32: 7x7 maps there, 4x4 at 128 px, where the
#: plain detector reached half the mAP), the article's staged recipe over 1 + 1 + 2 epochs with the
#: heads' learning rate 0.01 kept through stage 2 and cut tenfold for stage 3, a narrow box head
#: and a few hundred proposals.
DETECTION_CPU_PROTOCOL: Dict[str, Any] = dict(
    task="detection", data_version=2, stage_epochs=[1, 1, 2], stage_lrs=[0.01, 0.01, 0.001], single_lr=0.01,
    detector=dict(min_size=224, max_size=288, anchor_sizes=[16, 32, 64, 128, 256], box_head_size=128,
                  detector_kwargs=dict(rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
                                       rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=50,
                                       box_batch_size_per_image=64)))

#: Where the module goes on each CPU backbone in the cpu protocol: stride 16, a 7x7 map at 112 px
#: (the backbones' default placements sit at stride 32: 4x4 at 112 px).
CPU_PLACEMENTS: Dict[str, str] = {"mobilenet_v3_small": "after_features.8", "resnet18": "layer3.1"}

#: The quick grid (``make main``): the cpu protocol, shortened: the short stand-in, the first 800
#: training images, ``quick`` stages (2 + 3 + 3 epochs).
QUICK_PROTOCOL: Dict[str, Any] = {**{k: v for k, v in CPU_PROTOCOL.items() if k != "stage_epochs"},
                                  "weights": "standin-short", "train_images": 800}

_ATTENTION = tuple(v for v in _VARIANTS if v["attention"] is not None)
_CPU_PRIMARY = tuple((study, v["attention"]) for study in ("variants", "variants_single") for v in _ATTENTION)

#: The attention family on the cpu protocol's primary backbone (every module at the cpu
#: placement, its own default reduction) and the two capacity controls sized to the dual module.
FAMILY = ("dual", "se", "cbam", "scse", "eca", "coord", "sca_cnn")
_CONTROLS = ("matched_params", "matched_flops")
_FAMILY_STUDIES = (
    Study("family", "Which attention module helps the cpu study's classifier, against no attention (and against "
          "plain blocks of the dual module's cost)?", "attention",
          ({"attention": None},) + tuple({"attention": a} for a in FAMILY + _CONTROLS), _SMALL, baseline="plain"),
    Study("fusion", "How should the article's two gates combine: multiply (C1) vs add, max or in sequence?",
          "attention", tuple({"attention": a} for a in ("dual", "dual_add", "dual_max", "dual_seq")), _SMALL),
    Study("vs_params", "Does the dual module beat a plain residual block with its parameter count?", "attention",
          ({"attention": "matched_params"}, {"attention": "dual"}), _SMALL),
    Study("vs_flops", "Does the dual module beat a plain residual block with its FLOPs?", "attention",
          ({"attention": "matched_flops"}, {"attention": "dual"}), _SMALL),
)

#: The named ablation grids.
GRIDS: Dict[str, Grid] = {
    "fast": Grid(
        "fast", "fast", (0, 1, 2, 3, 4),
        (Study("variants", "plumbing check", "attention", ({"attention": None}, {"attention": "dual"}), _SMALL,
               baseline="plain"),),
        description="CI plumbing check, a tiny version of a study: 2 variants x 5 seeds in the fast training "
                    "mode, dual vs none declared primary.",
        primary=(("variants", "dual"),),
    ),
    "quick": Grid(
        "quick", "cpu", (0, 1, 2),
        (Study("variants", "Does attention help, and which path? (one stage, short)", "attention",
               tuple({**v, "schedule": "single"} for v in _VARIANTS), _SMALL, baseline="plain"),),
        quick=True,
        description="README main job: 4 variants x 3 seeds, single-stage and shortened, on the synthetic devkit "
                    "(data generation and stand-in pre-training included).",
        settings=QUICK_PROTOCOL, placements=CPU_PLACEMENTS,
    ),
    "cpu": Grid(
        "cpu", "cpu", (0, 1, 2, 3, 4),
        (Study("variants", "Does attention help under the article's staged recipe?", "attention", _VARIANTS, _SMALL,
               baseline="plain"),
         Study("variants_single", "Does attention help when the whole network trains in one stage?", "attention",
               tuple({**v, "schedule": "single"} for v in _VARIANTS), _SMALL, baseline="plain"),
         Study("recipe", "What does the staged recipe do? Plain model: the same stages at a constant learning "
               "rate, one stage, a linear probe of the frozen stand-in", "schedule",
               tuple({"attention": None, "schedule": s} for s in ("staged", "staged_constant", "single", "probe")),
               _SMALL),
         Study("resnet18", "Does it hold on a ResNet? (ResNet18, one stage, 3 seeds)", "attention",
               ({"attention": None, "schedule": "single"}, {"attention": "dual", "schedule": "single"}),
               ("resnet18",), baseline="plain", seeds=(0, 1, 2))),
        description="The committed CPU study (results/cpu/): synthetic devkit version 2 at 112 px, 5 seeds "
                    "(3 for ResNet18), six primary comparisons declared here before it ran.",
        primary=_CPU_PRIMARY, settings=CPU_PROTOCOL, placements=CPU_PLACEMENTS,
    ),
    "cpu_strength": Grid(
        "cpu_strength", "cpu", (0, 1, 2, 3, 4),
        (Study("strength", "Do C10's detection strengths (alpha 0.7, beta 0.5) change the cpu study's dual classifier?",
               "strength", ({"attention": "dual", "strength": None}, {"attention": "dual", "strength": "detection"}),
               _SMALL),),
        description="A follow-up of the CPU study (results/cpu_strength/): its dual classifier (the same runs) against "
                    "the same model with C10's detection strengths, 5 seeds; detection strengths vs none declared "
                    "primary before it ran.",
        primary=(("strength", "strength=detection"),), settings=CPU_PROTOCOL, placements=CPU_PLACEMENTS,
    ),
    "cpu_family": Grid(
        "cpu_family", "cpu", (0, 1, 2, 3, 4), _FAMILY_STUDIES,
        description="The attention family study (results/family/): SE, CBAM, scSE, ECA, Coordinate Attention, the "
                    "original SCA-CNN and the article's dual module on the cpu study's classifier (MobileNetV3-Small "
                    "stand-in, module after features.8, staged recipe, synthetic devkit version 2 at 112 px), the "
                    "fusion rules of the dual module and two capacity controls, 5 seeds; each module against no "
                    "attention declared primary before it ran. The plain and dual runs are the cpu study's own.",
        primary=tuple(("family", a) for a in FAMILY), settings=CPU_PROTOCOL, placements=CPU_PLACEMENTS,
    ),
    "family_full": Grid(
        "family_full", "full", (0, 1, 2, 3, 4),
        tuple(dataclasses.replace(st, backbones=("resnet50",)) for st in _FAMILY_STUDIES),
        description="The family study for a GPU: the same studies on ResNet50 with ImageNet weights on real VOC2012, "
                    "every module inside layer4.1 (SE's position), the full mode's staged recipe, 5 seeds; each "
                    "module against no attention declared primary. Not run yet.",
        primary=tuple(("family", a) for a in FAMILY), placements={"resnet50": "layer4.1.inside"},
    ),
    "detection_fast": Grid(
        "detection_fast", "fast", (0, 1),
        (Study("variants", "plumbing check: attention in a Faster R-CNN's trunk or on its FPN (C13)", "attention",
               ({"attention": None}, {"attention": "dual"}, {"attention": None, "fpn_attention": "dual"}),
               _SMALL, baseline="plain"),),
        description="CI plumbing check of the detection path: a tiny Faster R-CNN (MobileNetV3-Small + FPN) in the "
                    "fast mode, no attention vs dual in the trunk vs dual on every FPN level, 2 seeds.",
        settings={"task": "detection", "train_images": 24, "val_images": 12},
    ),
    "detection_cpu": Grid(
        "detection_cpu", "cpu", (0, 1, 2, 3, 4),
        (Study("variants", "Does attention help a Faster R-CNN? Dual attention in the trunk, or on every FPN level "
               "with cross-scale fusion (C13)", "attention",
               ({"attention": None}, {"attention": "dual"}, {"attention": None, "fpn_attention": "dual"}),
               _SMALL, baseline="plain"),),
        description="The committed CPU detection study (results/detection_cpu/): Faster R-CNN with a MobileNetV3-Small "
                    "FPN trunk (the cpu stand-in) on the synthetic devkit version 2 at 224 px, the staged recipe, "
                    "5 seeds; dual in the trunk and dual on the FPN declared primary before it ran.",
        primary=(("variants", "dual"), ("variants", "fpn dual")),
        settings=DETECTION_CPU_PROTOCOL,
    ),
    "detection_full": Grid(
        "detection_full", "full", (0, 1, 2),
        (Study("variants", "The article's detectors (C12, C13): attention in the trunk (C4's seven AttnResBlocks on "
               "ResNet50; the module after the last block on MobileNetV3-Large, dual or lite) or on every FPN level",
               "attention",
               ({"attention": None}, {"attention": "dual"}, {"attention": "lite"},
                {"attention": None, "fpn_attention": "dual"}),
               ("resnet50", "mobilenet_v3_large"), baseline="plain"),),
        description="The detection study for a GPU: torchvision's Faster R-CNN (ResNet50-FPN, MobileNetV3-Large-FPN, "
                    "ImageNet trunks) on real VOC2012 at 800 px, the full mode's staged recipe, 3 seeds. Not run yet.",
        settings={"task": "detection"},
    ),
    "cpu_v1": Grid(
        "cpu_v1", "cpu", (0, 1, 2),
        (_variants_study(_SMALL),
         Study("variants_single", "The same variants trained in one stage (whole network, LR 0.01)", "attention",
               tuple({**v, "schedule": "single"} for v in _variants_study(_SMALL).variants), _SMALL,
               baseline="plain"),
         *_knob_studies("mobilenet_v3_small", ("after_features.3", "after_features.8", "after_features.12", "replace_se"))),
        description="Superseded: the first CPU study (results/cpu-v1-superseded/), every model near chance; "
                    "synthetic devkit version 1 at 96 px, 3 seeds.",
        settings=V1_PROTOCOL,
    ),
    "full": Grid(
        "full", "full", (0, 1, 2),
        (_variants_study(("vgg16", "resnet50", "mobilenet_v3_large")),
         *_knob_studies("resnet50", ("layer3.1", "layer4.1", "layer4.1.inside", "after_layer4"))),
        description="The article's protocol on real VOC2012 with ImageNet weights, for a GPU.",
    ),
}


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a grid point's config: its run id."""
    return json_hash(dict(config))


def normalise(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``config`` with its attention settings made explicit, so equal models hash equally.

    The spec keys (:data:`sca_lib.spec.SPEC_KEYS`) go through
    ``normalise_spec(AttentionSpec.from_flat(config), backbone).to_flat()``: a plain model carries no
    knobs, an attention model's default placement and reduction are spelled out. ``schedule``
    defaults to ``"staged"``; every other key is kept as it is.
    """
    spec, rest = AttentionSpec.split_flat(config)
    if "backbone" not in rest:
        raise ValueError(f"a grid point's config needs a 'backbone', got keys {sorted(config)}")
    if rest.get("task") == "detection" and spec.kind is not None and spec.placement is None:
        from .detection import default_detector_placement  # a detector's default, not a classifier's

        spec = dataclasses.replace(spec, placement=default_detector_placement(rest["backbone"]))
    out = dict(rest)
    out.update(normalise_spec(spec, rest["backbone"]).to_flat())
    out.setdefault("schedule", "staged")
    if out.get("task") == "detection":
        out.setdefault("fpn_attention", None)  # spelled out, so a plain detector hashes one way
    return out


def build_grid(grid: str, only: Optional[Iterable[str]] = None,
               seeds: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Every point of a grid as ``{"study", "studies", "run_id", "config"}``, in a fixed order.

    A config identical in two studies (e.g. the default dual model appears in several knob studies)
    is one run, listed once under the first study that names it (``"study"``) and reused by the
    others (all of them in ``"studies"``).
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown ablation grid {grid!r}; expected one of {', '.join(GRIDS)}")
    g = GRIDS[grid]
    names = [s.name for s in g.studies]
    wanted = list(only) if only else names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"--only: unknown studies {unknown} for grid {grid!r}; expected from {', '.join(names)}")
    points: List[Dict[str, Any]] = []
    seen: Dict[str, Dict[str, Any]] = {}
    for study in g.studies:
        if study.name not in wanted:
            continue
        for backbone in study.backbones:
            for variant in study.variants:
                if variant.get("attention") == "lite" and not backbone.startswith("mobilenet"):
                    continue
                for seed in (seeds if seeds is not None else study.seeds or g.seeds):
                    base: Dict[str, Any] = {"mode": g.mode, "backbone": backbone, "seed": int(seed), **g.settings}
                    if g.quick:
                        base["quick"] = True
                    if variant.get("attention") is not None and backbone in g.placements:
                        base["placement"] = g.placements[backbone]
                    config = normalise({**base, **variant})
                    rid = config_hash(config)
                    if rid in seen:
                        seen[rid]["studies"].append(study.name)
                        continue
                    seen[rid] = {"study": study.name, "studies": [study.name], "run_id": rid, "config": config}
                    points.append(seen[rid])
    return points


def find_study(name: str, grid: Optional[str] = None) -> Optional[Study]:
    """The study called ``name``: the one in ``grid`` when that grid has it, else the last grid's
    that does (``full`` before ``cpu``, ...); None when no grid has it."""
    order = ([GRIDS[grid]] if grid in GRIDS else []) + list(reversed(list(GRIDS.values())))
    for g in order:
        for study in g.studies:
            if study.name == name:
                return study
    return None
