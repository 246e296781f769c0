"""sca_lib.data under stress: concurrent generation, leftovers of killed runs, and bad devkit files.

Each test here reproduces a fault a new user ran into: two processes generating the same synthetic
devkit, temporary folders left by a kill, devkits readable only by their owner, boxes outside the
image or inverted, class-file labels other than 1/-1/0, duplicate ids, a devkit checked as the
wrong year, an empty data set to cache, and a bad run mode.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from sca_lib.data import (
    BadSampleError,
    CachedImages,
    DatasetNotFoundError,
    VOCClassification,
    VOCDetection,
    check_voc_tree,
    ensure_synthetic,
    find_devkit,
    generate_synthetic_voc,
    make_config,
    synthetic_root,
)
from sca_lib.data.__main__ import main as cli

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(n_train=6, n_val=4, seed=5)


def _devkit(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic_voc(root, make_config("target", "fast", **SMALL))
    return root


@pytest.fixture
def syn_copy(syn, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(syn, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# concurrent generation and leftovers
# ---------------------------------------------------------------------------------------------
_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sca_lib.data import VOCClassification, ensure_synthetic, generate_synthetic_voc, make_config, synthetic_root
    how, barrier = sys.argv[1], Path(sys.argv[2])
    (barrier / f"ready.{sys.argv[3]}").touch()
    while len(list(barrier.glob("ready.*"))) < 2:  # start both at the same moment
        time.sleep(0.002)
    if how == "ensure":
        root = ensure_synthetic("target", "fast")
    else:
        root = generate_synthetic_voc(synthetic_root("target", "fast"), make_config("target", "fast"), verbose=True)
    n = 0
    for split in ("train", "val"):
        ds = VOCClassification(root, split=split)
        n += sum(1 for i in range(len(ds)) if ds[i][0].shape[0] == 3)
    print("read", n, flush=True)
""")


@pytest.mark.parametrize("how", ["ensure", "generate"])
def test_two_processes_generating_the_same_devkit_both_succeed(tmp_path, how):
    data = tmp_path / "data"
    env = {**os.environ, "SCA_DATA_DIR": str(data), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, how, str(tmp_path), str(k)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "read 104" in out, out  # every image of the fast size (64 + 40) was read
    assert sum(out.count("wrote ") for out in outs) == 1, f"generated more than once:\n{outs}"
    root = synthetic_root("target", "fast", data)
    assert check_voc_tree(root, splits=("train", "val", "trainval")) == []
    assert os.listdir(root / "VOCdevkit") == ["VOC2012"], "no temporary folders left"


def test_an_intact_identical_tree_is_never_replaced(tmp_path):
    cfg = make_config("target", "fast", **SMALL)
    generate_synthetic_voc(tmp_path, cfg)
    before = _devkit(tmp_path).stat().st_ino
    generate_synthetic_voc(tmp_path, cfg, overwrite=True)  # e.g. a second process, or --force
    generate_synthetic_voc(tmp_path, cfg)  # no FileExistsError either: it is already there
    assert _devkit(tmp_path).stat().st_ino == before, "a reader of the tree would have lost its files"
    # a damaged tree of the same configuration is regenerated
    (_devkit(tmp_path) / "JPEGImages" / "syn_000001.jpg").unlink()
    assert ensure_synthetic("target", "fast", root=tmp_path, verbose=False, **SMALL) == tmp_path
    assert (_devkit(tmp_path) / "JPEGImages" / "syn_000001.jpg").is_file()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_folders_are_removed_live_ones_kept(tmp_path):
    cfg = make_config("target", "fast", **SMALL)
    generate_synthetic_voc(tmp_path, cfg)
    devkits = tmp_path / "VOCdevkit"
    dead = _dead_pid()
    stale = [devkits / f".VOC2012.tmp{dead}", devkits / f".VOC2012.old.tmp{dead}"]
    for d in stale:
        (d / "JPEGImages").mkdir(parents=True)
        (d / "JPEGImages" / "syn_000000.jpg").write_bytes(b"half written")
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = devkits / f".VOC2012.tmp{live_proc.pid}"
        live.mkdir()
        ensure_synthetic("target", "fast", root=tmp_path, verbose=False, **SMALL)  # up to date: no generation
        assert not any(d.exists() for d in stale), "temp folders of a killed generator are removed"
        assert live.is_dir(), "the temp folder of a running generator is left alone"
        (devkits / f".VOC2012.tmp{dead}").mkdir()
        generate_synthetic_voc(tmp_path, make_config("target", "fast", n_train=3, n_val=2), overwrite=True)
        assert sorted(os.listdir(devkits)) == sorted(["VOC2012", live.name])
    finally:
        live_proc.kill()
        live_proc.wait()


def test_synthetic_devkit_is_readable_per_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        generate_synthetic_voc(tmp_path, make_config("target", "fast", n_train=2, n_val=1))
    finally:
        os.umask(old)
    for d in (_devkit(tmp_path), _devkit(tmp_path) / "JPEGImages", _devkit(tmp_path) / "ImageSets" / "Main"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, f"{d}: {oct(d.stat().st_mode)}"


# ---------------------------------------------------------------------------------------------
# bad devkit files
# ---------------------------------------------------------------------------------------------
def _write_devkit(root: Path, images: dict) -> Path:
    """A hand-made VOC tree of 50x40 images: {id: [(name, (xmin, ymin, xmax, ymax)), ...]}."""
    dk = _devkit(root)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (dk / sub).mkdir(parents=True, exist_ok=True)
    for name, objs in images.items():
        Image.new("RGB", (50, 40), (120, 80, 40)).save(dk / "JPEGImages" / f"{name}.jpg")
        body = "".join(
            f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
            f"<ymax>{b[3]}</ymax></bndbox><difficult>0</difficult></object>" for n, b in objs)
        (dk / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>50</width><height>40</height>"
            f"<depth>3</depth></size>{body}</annotation>")
    (dk / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{n}\n" for n in images))
    return root


def test_boxes_partly_outside_the_image_are_clipped(tmp_path):
    root = _write_devkit(tmp_path, {"a": [("dog", (-5, 3, 60, 30)), ("cat", (0, 0, 50, 41))]})
    t = VOCDetection(root, split="train").load_target(0)
    assert t["boxes"].tolist() == [[0.0, 2.0, 50.0, 30.0], [0.0, 0.0, 50.0, 40.0]]
    _, t = VOCDetection(root, split="train")[0]
    assert (t["boxes"][:, 2] <= 50).all() and (t["boxes"][:, 3] <= 40).all() and (t["boxes"] >= 0).all()


@pytest.mark.parametrize("box, why", [((30, 5, 10, 20), "inverted"), ((10, 25, 30, 20), "inverted"),
                                      ((60, 5, 70, 20), "outside the 50x40 image")])
def test_inverted_or_outside_boxes_are_refused_naming_the_file(tmp_path, box, why):
    root = _write_devkit(tmp_path, {"a": [("dog", (1, 1, 10, 10))], "b": [("dog", box)]})
    ds = VOCDetection(root, split="train")
    with pytest.raises(BadSampleError, match=why) as e:
        ds[1]
    assert "b.xml" in str(e.value) and e.value.path.endswith("b.xml")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = VOCDetection(root, split="train", skip_bad=True)
    assert ds.ids == ["a"] and "b.xml" in ds.skipped[0][0]


@pytest.mark.parametrize("label", ["7", "x", "1.0"])
def test_class_file_labels_other_than_1_minus1_0_name_file_and_line(syn_copy, label):
    f = _devkit(syn_copy) / "ImageSets" / "Main" / "red-disc_train.txt"
    lines = f.read_text().splitlines()
    lines[2] = f"{lines[2].split()[0]} {label}"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadSampleError) as e:
        VOCClassification(syn_copy, split="train")
    msg = str(e.value)
    assert str(f) in msg and "line 3" in msg and repr(label) in msg and "1, -1, 0" in msg


def test_duplicate_id_in_a_split_list_blames_the_split_list(syn_copy):
    f = _devkit(syn_copy) / "ImageSets" / "Main" / "train.txt"
    ids = f.read_text().split()
    f.write_text("".join(f"{i}\n" for i in ids + [ids[1]]))
    for cls in (VOCClassification, VOCDetection):
        with pytest.raises(ValueError) as e:
            cls(syn_copy, split="train")
        msg = str(e.value)
        assert str(f) in msg and repr(ids[1]) in msg and "twice" in msg and f"line {len(ids) + 1}" in msg
        assert "_train.txt" not in msg
    assert any("twice" in p for p in check_voc_tree(syn_copy))


def test_a_devkit_of_another_year_is_not_complete(syn, capsys):
    dk = _devkit(syn)
    for root in (dk, syn, syn / "VOCdevkit"):
        with pytest.raises(DatasetNotFoundError, match="--year 2012"):
            find_devkit(root, "2007")
        assert check_voc_tree(root, "2007") != []
        assert cli(["check", "--root", str(root), "--year", "2007"]) == 1
        assert "complete" not in capsys.readouterr().out
    assert find_devkit(dk, "2012") == dk
    # a devkit folder with another name is still accepted as given
    other = syn.parent / "my-voc"
    shutil.copytree(dk, other)
    assert find_devkit(other, "2007") == other


def test_caching_an_empty_set_says_so(syn):
    ds = VOCClassification(syn, split="train")
    ds.ids, ds.labels = ds.ids[:0], ds.labels[:0]  # what the training CLI's --train-images 0 does
    with pytest.raises(ValueError, match="empty training set.*at least one image"):
        CachedImages(ds, 32, train=True)
    with pytest.raises(ValueError, match="empty validation set"):
        CachedImages(Subset(ds, []), 32, train=False)


def test_cached_images_match_the_transforms(syn):
    from sca_lib.data import classification_transforms

    ds = VOCClassification(syn, split="val")
    cached = CachedImages(ds, 48, train=False)
    ref = VOCClassification(syn, split="val", transform=classification_transforms(48, normalize=True))
    for i in range(len(ds)):
        x, y, g = cached[i]
        rx, ry, rg = ref[i]
        assert torch.allclose(x, rx, atol=0.5 / 255 / 0.224) and torch.equal(y, ry) and torch.equal(g, rg)
    assert ds.transform is not None and cached.classes == ds.classes


# ---------------------------------------------------------------------------------------------
# run modes
# ---------------------------------------------------------------------------------------------
def test_synthetic_sizes_are_keyed_on_the_run_mode(tmp_path, capsys):
    assert make_config("target", "FAST") == make_config("target", "fast")
    assert make_config("source", "cpu").n_train == 3000
    with pytest.raises(ValueError, match="no synthetic devkit size.*download-voc"):
        make_config("target", "full")
    with pytest.raises(ValueError, match="fast, cpu, full"):
        synthetic_root("target", "quick")
    assert synthetic_root("source", "Fast", tmp_path) == tmp_path / "synthetic" / "source-fast"
    with pytest.raises(SystemExit):
        cli(["synthetic", "--mode", "full", "--out", str(tmp_path / "x")])
    assert "no synthetic devkit size" in capsys.readouterr().err


def _parameters_cell(name: str) -> str:
    nb = json.loads((REPO / "notebooks" / name).read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1
    return "".join(cells[0]["source"])


def test_notebook_00_parameters_reject_a_bad_mode_and_accept_upper_case(monkeypatch):
    source = _parameters_cell("00_data.ipynb")
    monkeypatch.delenv("VOC_ROOT", raising=False)
    monkeypatch.setenv("SCA_MODE", "bogus")
    with pytest.raises(ValueError, match="'bogus'.*fast, cpu, full"):
        exec(source, {})
    monkeypatch.setenv("SCA_MODE", "FAST")
    ns: dict = {}
    exec(source, ns)
    assert ns["MODE"] == "fast"
    make_config("target", ns["SYNTHETIC_MODE"])
    monkeypatch.setenv("SCA_MODE", "full")
    exec(source, ns)
    assert ns["SYNTHETIC_MODE"] == "cpu"
