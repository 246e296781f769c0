"""sca_lib.data: the synthetic devkit, both VOC datasets, their transforms and their errors.

The download helper is tested in test_data_download.py (against a loopback HTTP server).
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.transforms import v2

from sca_lib.data import (
    SOURCE_CLASSES,
    TARGET_CLASSES,
    VOC_CLASSES,
    BadSampleError,
    DatasetNotFoundError,
    VOCClassification,
    VOCDetection,
    check_voc_tree,
    classification_transforms,
    detection_collate,
    detection_transforms,
    ensure_synthetic,
    find_devkit,
    generate_synthetic_voc,
    image_labels,
    make_config,
    parse_annotation,
    read_classes,
)
from sca_lib.data.__main__ import main as cli
from sca_lib.data.synthetic import render_sample

SMALL = dict(n_train=12, n_val=8, seed=3)


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    """A small target-variant devkit, shared read-only by the tests of this module."""
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic_voc(root, make_config("target", "fast", **SMALL))
    return root


@pytest.fixture
def syn_copy(syn, tmp_path) -> Path:
    """A private copy to damage."""
    dst = tmp_path / "copy"
    shutil.copytree(syn, dst)
    return dst


def _devkit(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"


# ---------------------------------------------------------------------------------------------
# the synthetic devkit
# ---------------------------------------------------------------------------------------------
def test_synthetic_tree_layout(syn):
    dk = _devkit(syn)
    main = dk / "ImageSets" / "Main"
    ids = {s: (main / f"{s}.txt").read_text().split() for s in ("train", "val", "trainval")}
    assert len(ids["train"]) == 12 and len(ids["val"]) == 8
    assert ids["trainval"] == ids["train"] + ids["val"] and not set(ids["train"]) & set(ids["val"])
    for i in ids["trainval"]:
        assert (dk / "JPEGImages" / f"{i}.jpg").is_file() and (dk / "Annotations" / f"{i}.xml").is_file()
    for cls in TARGET_CLASSES:
        for split in ("train", "val", "trainval"):
            lines = (main / f"{cls}_{split}.txt").read_text().splitlines()
            assert [ln.split()[0] for ln in lines] == ids[split]
            assert {int(ln.split()[1]) for ln in lines} <= {-1, 0, 1}
    assert check_voc_tree(syn, splits=("train", "val", "trainval")) == []
    assert read_classes(dk) == TARGET_CLASSES


def test_synthetic_xml_has_voc_fields(syn):
    ann = parse_annotation(_devkit(syn) / "Annotations" / "syn_000000.xml")
    assert set(ann["size"]) >= {"width", "height", "depth"}
    w, h = int(ann["size"]["width"]), int(ann["size"]["height"])
    assert 96 <= w <= 128 and 96 <= h <= 128
    assert 1 <= len(ann["object"]) <= 3
    for obj in ann["object"]:
        assert obj["name"] in TARGET_CLASSES and obj["difficult"] in ("0", "1")
        b = {k: int(v) for k, v in obj["bndbox"].items()}
        assert 1 <= b["xmin"] <= b["xmax"] <= w and 1 <= b["ymin"] <= b["ymax"] <= h


def test_synthetic_is_deterministic(tmp_path):
    cfg = make_config("target", "fast", **SMALL)
    a, b = tmp_path / "a", tmp_path / "b"
    generate_synthetic_voc(a, cfg)
    generate_synthetic_voc(b, cfg)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files) > 60
    for rel in files:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), f"{rel} differs between two runs with the same seed"
    c = tmp_path / "c"
    generate_synthetic_voc(c, make_config("target", "fast", **{**SMALL, "seed": 4}))
    jpg = Path("VOCdevkit/VOC2012/JPEGImages/syn_000000.jpg")
    assert (a / jpg).read_bytes() != (c / jpg).read_bytes()


def test_render_sample_statistics():
    cfg = make_config("target", "cpu")
    n_obj, n_diff, counts = 0, 0, set()
    seen = set()
    for i in range(150):
        img, objs = render_sample(cfg, i)
        counts.add(len(objs))
        n_obj += len(objs)
        n_diff += sum(o["difficult"] for o in objs)
        seen.update(o["name"] for o in objs)
        for o in objs:
            x0, y0, x1, y1 = o["bbox"]
            assert 1 <= x0 <= x1 <= img.width and 1 <= y0 <= y1 <= img.height
            # objects are small: no box covers most of the image
            assert (x1 - x0 + 1) * (y1 - y0 + 1) < 0.3 * img.width * img.height
    assert counts <= {1, 2, 3} and {1, 2, 3} <= counts | {0}
    assert seen == set(TARGET_CLASSES)
    assert 0.03 < n_diff / n_obj < 0.3, "some, but not most, objects are difficult"


def test_source_variant_is_single_label_with_other_classes(tmp_path):
    assert len(SOURCE_CLASSES) == 20 and not set(SOURCE_CLASSES) & set(TARGET_CLASSES)
    root = generate_synthetic_voc(tmp_path, make_config("source", "fast", n_train=10, n_val=4))
    ds = VOCClassification(root, split="trainval")
    assert ds.classes == SOURCE_CLASSES
    assert ((ds.labels == 1).sum(1) == 1).all(), "exactly one class per source image"


def test_synthetic_config_validation():
    with pytest.raises(ValueError, match="variant"):
        make_config("imagenet")
    with pytest.raises(ValueError, match="not a run mode"):
        make_config("target", "huge")
    with pytest.raises(ValueError, match="image_size"):
        make_config("target", "fast", image_size=8)


def test_ensure_synthetic_generates_once_and_regenerates_on_change(tmp_path, capsys):
    root = tmp_path / "e"
    kw = dict(n_train=4, n_val=2)
    assert ensure_synthetic("target", "fast", root=root, **kw) == root
    jpg = _devkit(root) / "JPEGImages" / "syn_000000.jpg"
    stamp = jpg.stat().st_mtime_ns
    ensure_synthetic("target", "fast", root=root, **kw)
    assert jpg.stat().st_mtime_ns == stamp, "an up-to-date devkit is not regenerated"
    ensure_synthetic("target", "fast", root=root, n_train=5, n_val=2)
    assert len(VOCClassification(root, split="train")) == 5
    assert "generating" in capsys.readouterr().out


def test_generator_refuses_to_replace_a_real_tree(tmp_path):
    real = _devkit(tmp_path)
    (real / "JPEGImages").mkdir(parents=True)
    (real / "JPEGImages" / "2008_000008.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        generate_synthetic_voc(tmp_path, make_config("target", "fast", n_train=2, n_val=1), overwrite=True)
    assert (real / "JPEGImages" / "2008_000008.jpg").read_bytes() == b"precious"


def test_torchvision_reads_the_synthetic_tree(syn):
    """torchvision's own VOCDetection (not ours) parses the tree, and agrees with our dataset."""
    for split in ("train", "val", "trainval"):
        tv = torchvision.datasets.VOCDetection(str(syn), year="2012", image_set=split)
        ours = VOCDetection(syn, split=split)
        assert len(tv) == len(ours)
    img, ann = tv[0]
    objs = ann["annotation"]["object"]
    assert img.size == (int(ann["annotation"]["size"]["width"]), int(ann["annotation"]["size"]["height"]))
    t = ours.load_target(0)
    assert [TARGET_CLASSES.index(o["name"]) + 1 for o in objs] == t["labels"].tolist()
    assert [float(o["bndbox"]["xmin"]) - 1 for o in objs] == t["boxes"][:, 0].tolist()


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
def test_classification_items(syn):
    ds = VOCClassification(syn, split="train", transform=classification_transforms(size=64, normalize=True))
    assert len(ds) == 12 and ds.is_synthetic and ds.num_classes == 20
    x, y, ignore = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (20,) and y.dtype == torch.float32 and set(y.unique().tolist()) <= {0.0, 1.0}
    assert ignore.shape == (20,) and ignore.dtype == torch.bool
    assert not (y.bool() & ignore).any(), "an ignored label is never positive"
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert [t.shape for t in batch] == [(4, 3, 64, 64), (4, 20), (4, 20)]


def test_classification_default_transform_keeps_size(syn):
    ds = VOCClassification(syn, split="val")
    x, _, _ = ds[1]
    w, h = (int(v) for v in (lambda s: (s["width"], s["height"]))(ds.load_annotation(1)["size"]))
    assert x.shape == (3, h, w) and 0.0 <= x.min() and x.max() <= 1.0


def test_class_files_agree_with_xml(syn, syn_copy):
    ds = VOCClassification(syn, split="trainval")
    for i in range(len(ds)):
        assert torch.equal(image_labels(ds.load_annotation(i), ds.classes), ds.labels[i])
    # without the per-class files the labels come from the XML, identically
    for f in (_devkit(syn_copy) / "ImageSets" / "Main").glob("*_*.txt"):
        f.unlink()
    assert torch.equal(VOCClassification(syn_copy, split="trainval").labels, ds.labels)


def _write_devkit(root: Path, images: dict, classes=VOC_CLASSES) -> Path:
    """A hand-made VOC tree: {id: [(name, (xmin, ymin, xmax, ymax), difficult), ...]}."""
    from PIL import Image

    dk = _devkit(root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (dk / sub).mkdir(parents=True, exist_ok=True)
    for name, objs in images.items():
        Image.new("RGB", (50, 40), (120, 80, 40)).save(dk / "JPEGImages" / f"{name}.jpg")
        body = "".join(
            f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
            f"<ymax>{b[3]}</ymax></bndbox><difficult>{int(d)}</difficult></object>" for n, b, d in objs)
        (dk / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>50</width><height>40</height>"
            f"<depth>3</depth></size>{body}</annotation>")
    (dk / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{n}\n" for n in images))
    return root


def test_ignore_mask_follows_the_devkit_rule(tmp_path):
    root = _write_devkit(tmp_path, {
        "a": [("dog", (1, 1, 10, 10), False), ("dog", (5, 5, 20, 20), True), ("cat", (2, 2, 9, 9), True)],
        "b": [("cat", (1, 1, 10, 10), True), ("cat", (3, 3, 30, 30), False)],
        "c": [("person", (1, 1, 50, 40), True)],
    })
    ds = VOCClassification(root, split="train")  # no per-class files: labels from the XML
    assert ds.classes == VOC_CLASSES
    dog, cat, person = (VOC_CLASSES.index(c) for c in ("dog", "cat", "person"))
    _, y, ign = ds[0]
    assert y[dog] == 1 and not ign[dog], "a non-difficult instance makes the image positive"
    assert y[cat] == 0 and ign[cat], "only difficult instances: ignored (devkit label 0)"
    assert y.sum() == 1 and ign.sum() == 1, "every other class is a plain negative"
    _, y, ign = ds[1]
    assert y[cat] == 1 and not ign.any()
    _, y, ign = ds[2]
    assert y.sum() == 0 and ign[person] and ign.sum() == 1


# ---------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------
def test_detection_targets(tmp_path):
    root = _write_devkit(tmp_path, {"a": [("dog", (11, 6, 30, 25), False), ("cat", (1, 1, 50, 40), True)]})
    ds = VOCDetection(root, split="train")
    img, t = ds[0]
    assert img.shape == (3, 40, 50) and img.dtype == torch.float32
    assert isinstance(t["boxes"], torch.Tensor) and t["boxes"].dtype == torch.float32
    # VOC's 1-based inclusive pixels -> continuous xyxy pixel edges
    assert t["boxes"].tolist() == [[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 50.0, 40.0]]
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert t["labels"].dtype == torch.int64 and t["difficult"].tolist() == [False, True]
    _, t2 = VOCDetection(root, split="train", include_difficult=False)[0]
    assert t2["labels"].tolist() == [VOC_CLASSES.index("dog") + 1] and t2["boxes"].shape == (1, 4)


def test_detection_transforms_move_boxes_with_the_image(tmp_path):
    root = _write_devkit(tmp_path, {"a": [("dog", (11, 6, 30, 25), False)]})
    flip = v2.Compose([v2.ToImage(), v2.RandomHorizontalFlip(p=1.0), v2.ToDtype(torch.float32, scale=True)])
    img, t = VOCDetection(root, split="train", transforms=flip)[0]
    assert t["boxes"].tolist() == [[50 - 30.0, 5.0, 50 - 10.0, 25.0]]
    img, t = VOCDetection(root, split="train", transforms=detection_transforms(size=(80, 100)))[0]
    assert img.shape == (3, 80, 100) and t["boxes"].tolist() == [[20.0, 10.0, 60.0, 50.0]]
    img, t = VOCDetection(root, split="train", transforms=detection_transforms(size=20, normalize=True))[0]
    assert img.shape == (3, 20, 25) and img.min() < 0  # shorter side 20, aspect kept, normalised
    assert torch.allclose(t["boxes"], torch.tensor([[5.0, 2.5, 15.0, 12.5]]))


def test_detection_collate_and_a_torchvision_detector(syn):
    ds = VOCDetection(syn, split="train", transforms=detection_transforms(train=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=detection_collate)
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 3
    assert all(t["labels"].min() >= 1 and t["labels"].max() <= 20 for t in targets)
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=21,
                                              min_size=128, max_size=160)
    model.train()
    losses = model(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [VOCClassification, VOCDetection])
def test_missing_root_says_where_what_and_how(tmp_path, cls):
    with pytest.raises(DatasetNotFoundError) as e:
        cls(tmp_path / "nowhere")
    msg = str(e.value)
    assert str((tmp_path / "nowhere" / "VOCdevkit" / "VOC2012").resolve()) in msg
    assert "JPEGImages" in msg and "Annotations" in msg and "ImageSets/Main" in msg
    assert "python -m sca_lib.data download-voc" in msg and "python -m sca_lib.data synthetic" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_find_devkit_accepts_the_devkit_folders(syn):
    dk = _devkit(syn)
    assert find_devkit(syn) == find_devkit(syn / "VOCdevkit") == find_devkit(dk) == dk


def test_unreadable_image_names_the_file_and_skip_bad_counts(syn_copy):
    bad = _devkit(syn_copy) / "JPEGImages" / "syn_000002.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    for cls in (VOCClassification, VOCDetection):
        ds = cls(syn_copy, split="train")
        with pytest.raises(BadSampleError, match="syn_000002.jpg"):
            ds[2]
        with pytest.warns(UserWarning, match="skipped 1 bad sample"):
            ds = cls(syn_copy, split="train", skip_bad=True)
        assert len(ds) == 11 and ds.num_skipped == 1 and ds.skipped[0][0] == str(bad)
        assert "syn_000002" not in ds.ids
        ds[2]  # the next good sample


def test_truncated_image_is_bad(syn_copy):
    img = _devkit(syn_copy) / "JPEGImages" / "syn_000001.jpg"
    img.write_bytes(img.read_bytes()[: len(img.read_bytes()) // 2])
    with pytest.raises(BadSampleError, match="syn_000001.jpg"):
        VOCClassification(syn_copy, split="train")[1]


def test_missing_image_names_the_file(syn_copy):
    (_devkit(syn_copy) / "JPEGImages" / "syn_000003.jpg").unlink()
    with pytest.raises(BadSampleError, match="syn_000003.jpg"):
        VOCDetection(syn_copy, split="train")[3]
    assert any("syn_000003" in p for p in check_voc_tree(syn_copy))


@pytest.mark.parametrize("text", ["<annotation><object><name>red-disc</name>", "not xml at all",
                                  "<annotation><object><name>red-disc</name></object></annotation>",
                                  "<annotation><object><name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                  "<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>"])
def test_malformed_xml_names_the_file_and_skip_bad_counts(syn_copy, text):
    xml = _devkit(syn_copy) / "Annotations" / "syn_000004.xml"
    xml.write_text(text)
    ds = VOCDetection(syn_copy, split="train")
    with pytest.raises(BadSampleError, match="syn_000004.xml"):
        ds[4]
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = VOCDetection(syn_copy, split="train", skip_bad=True)
    assert len(ds) == 11 and ds.num_skipped == 1 and "syn_000004.xml" in ds.skipped[0][0]


def test_empty_and_unknown_splits(syn_copy):
    main = _devkit(syn_copy) / "ImageSets" / "Main"
    (main / "val.txt").write_text("\n")
    for cls in (VOCClassification, VOCDetection):
        with pytest.raises(ValueError, match="empty"):
            cls(syn_copy, split="val")
        with pytest.raises(ValueError, match="unknown split"):
            cls(syn_copy, split="minival")
        with pytest.raises(ValueError, match="no public labels"):
            cls(syn_copy, split="test")


def test_all_bad_is_an_empty_split(syn_copy):
    for p in (_devkit(syn_copy) / "JPEGImages").glob("*.jpg"):
        p.write_bytes(b"junk")
    with pytest.raises(ValueError, match="empty after skipping"), pytest.warns(UserWarning):
        VOCClassification(syn_copy, split="val", skip_bad=True)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def test_cli_synthetic_and_check(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli(["synthetic", "--out", str(out), "--mode", "fast", "--n-train", "3", "--n-val", "2",
                "--size", "64"]) == 0
    assert cli(["synthetic", "--out", str(out), "--mode", "fast", "--n-train", "3", "--n-val", "2",
                "--size", "64"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    ds = VOCDetection(out, split="val")
    assert len(ds) == 2 and ds[0][0].shape == (3, 64, 64)
    assert cli(["check", "--root", str(out)]) == 0
    assert "synthetic devkit" in capsys.readouterr().out
    assert cli(["check", "--root", str(tmp_path / "nothing")]) == 1
    assert "download-voc" in capsys.readouterr().err


def test_cli_synthetic_default_location(tmp_path, monkeypatch):
    monkeypatch.setenv("SCA_DATA_DIR", str(tmp_path))
    assert cli(["synthetic", "--variant", "source", "--mode", "fast", "--n-train", "2", "--n-val", "1"]) == 0
    assert (tmp_path / "synthetic" / "source-fast" / "VOCdevkit" / "VOC2012" / "synthetic.json").is_file()
    assert os.listdir(tmp_path / "synthetic" / "source-fast" / "VOCdevkit") == ["VOC2012"], "no temp dirs left"
