"""Synthetic devkit versions: version 1 unchanged (the first CPU study read it), version 2's design.

Version 2 (sca_lib.data.scenes) must keep what makes it a fair test of attention: small objects,
confusers that add cues and never labels, a source set that shares primitives with the target and
not its label space, determinism per seed.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import PIL
import pytest

from sca_lib.data import TARGET_CLASSES, VOCClassification, ensure_synthetic, generate_synthetic_voc, make_config
from sca_lib.data.render import SOURCE_SKINS, TARGET_SHAPES, TARGET_SKINS
from sca_lib.data.scenes import _CLASS_PAIRS, _FORBIDDEN, SOURCE_CLASSES_V2, TARGET_CLASSES_V2
from sca_lib.data.synthetic import LATEST_VERSION, SyntheticConfig, read_marker, render_sample, synthetic_classes
from sca_lib.standin import standin_path

#: Version 1's first three target and source images (pixels and annotations), as drawn when version
#: 2 was added; JPEG-free, so it only depends on NumPy's generator and Pillow's drawing.
V1_DIGEST = "4f3266b2bc668963"
V1_LIBS = ("2.4.6", "13.0.0")  # NumPy and Pillow that drew V1_DIGEST


def _v1_digest() -> str:
    h = hashlib.sha256()
    for variant in ("target", "source"):
        cfg = make_config(variant, "cpu", version=1)
        for i in range(3):
            image, objects = render_sample(cfg, i)
            h.update(np.asarray(image).tobytes())
            h.update(json.dumps(objects, sort_keys=True).encode())
    return h.hexdigest()[:16]


def test_version_1_is_drawn_as_before():
    if (np.__version__, PIL.__version__) != V1_LIBS:
        pytest.skip(f"V1_DIGEST was recorded with NumPy/Pillow {V1_LIBS}, not {np.__version__}/{PIL.__version__}")
    assert _v1_digest() == V1_DIGEST


def test_version_1_config_serialises_as_before():
    d = make_config("target", "cpu", version=1).to_dict()
    assert "version" not in d and "confusers" not in d
    assert d["image_size"] == [96, 128] and SyntheticConfig().to_dict() == make_config("target", "cpu", version=1,
                                                                                         n_train=800).to_dict()
    # the stand-in cache keys built on it are those of before the data had versions
    assert standin_path("mobilenet_v3_small", "cpu", 96, data_version=1).name == "mobilenet_v3_small-0275217722.pt"
    assert standin_path("mobilenet_v3_small", "fast", 32, data_version=1).name == "mobilenet_v3_small-126e3a9c3f.pt"
    assert standin_path("mobilenet_v3_small", "fast", 32, data_version=2) != standin_path("mobilenet_v3_small", "fast", 32,
                                                                                          data_version=1)
    with pytest.raises(ValueError, match="0 for version 1"):
        SyntheticConfig(confusers=2)
    with pytest.raises(ValueError, match="unknown synthetic devkit version"):
        make_config("target", "cpu", version=7)


def test_version_2_source_is_larger_in_cpu_mode():
    assert make_config("source", "CPU", version=2).n_train == 6000 and make_config("source", "cpu", version=1).n_train == 3000


def test_versions_live_side_by_side(tmp_path):
    small = dict(n_train=3, n_val=2)
    r1 = ensure_synthetic("target", "fast", root=tmp_path / "v1", verbose=False, version=1, **small)
    r2 = ensure_synthetic("target", "fast", root=tmp_path / "v2", verbose=False, version=2, **small)
    assert read_marker(r1)["generator_version"] == 1 and "version" not in read_marker(r1)["config"]
    m2 = read_marker(r2)
    assert m2["generator_version"] == LATEST_VERSION == m2["config"]["version"] == 2
    assert m2["config"]["confusers"] == make_config("target", "fast", version=2).confusers
    assert VOCClassification(r2, split="trainval").classes == TARGET_CLASSES


def test_version_2_objects_are_small_and_images_large_enough():
    cfg = make_config("target", "cpu", version=2)
    lo, hi = cfg.size_range
    assert lo >= 112, "a 7x7 map at stride 16 needs 112 px"
    sides = []
    for i in range(60):
        image, objects = render_sample(cfg, i)
        assert lo <= min(image.size) and max(image.size) <= hi
        short = min(image.size)
        for o in objects:
            x0, y0, x1, y1 = o["bbox"]
            sides.append(max(x1 - x0 + 1, y1 - y0 + 1) / short)
    assert max(sides) <= cfg.object_scale[1] + 0.02
    assert np.median(sides) < 0.3


def test_confusers_add_cues_never_labels():
    base = make_config("target", "cpu", version=2, confusers=0)
    hard = make_config("target", "cpu", version=2, confusers=4)
    differ = 0
    for i in range(40):
        im0, objs0 = render_sample(base, i)
        im4, objs4 = render_sample(hard, i)
        assert sorted(o["name"] for o in objs0) == sorted(o["name"] for o in objs4)
        assert objs0 == objs4, "confusers are drawn under the objects, after their occluders"
        differ += im0.tobytes() != im4.tobytes()
    assert differ == 40


def test_version_2_label_spaces():
    assert synthetic_classes("target", version=2) == TARGET_CLASSES_V2 == TARGET_CLASSES
    assert len(SOURCE_CLASSES_V2) == 20 and not set(SOURCE_CLASSES_V2) & set(TARGET_CLASSES)
    source_shapes = {sh for sh, _ in _CLASS_PAIRS["source"]}
    source_skins = {sk for _, sk in _CLASS_PAIRS["source"]}
    assert set(TARGET_SHAPES) <= source_shapes and set(TARGET_SKINS) <= source_skins, \
        "the source set shows every target primitive"
    assert {sk for sh, sk in _CLASS_PAIRS["source"] if sh in TARGET_SHAPES} <= set(SOURCE_SKINS)
    assert _FORBIDDEN == set(_CLASS_PAIRS["target"]) | set(_CLASS_PAIRS["source"])


def test_version_2_is_deterministic_and_seeded(tmp_path):
    cfg = make_config("source", "fast", version=2, n_train=4, n_val=2, seed=5)
    a = generate_synthetic_voc(tmp_path / "a", cfg)
    b = generate_synthetic_voc(tmp_path / "b", cfg)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    other = render_sample(make_config("source", "fast", version=2, seed=6), 0)[0]
    assert other.tobytes() != render_sample(cfg, 0)[0].tobytes()
