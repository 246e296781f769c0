"""Command line for ``sca_lib.data``.

::

    python -m sca_lib.data synthetic                                     # target, mode cpu, into data/
    python -m sca_lib.data synthetic --variant source --mode fast
    python -m sca_lib.data synthetic --out /tmp/syn --n-train 100 --n-val 50 --size 96 --seed 1
    python -m sca_lib.data download-voc                                  # real VOC2012, 2 GB, into data/
    python -m sca_lib.data download-voc --archive ~/VOCtrainval_11-May-2012.tar
    python -m sca_lib.data check --root data                             # is there a complete devkit?

``data/`` stands for :func:`sca_lib.config.data_dir`: ``$SCA_DATA_DIR`` when set, else ``data/`` of
the repository (or of the current folder when ``sca_lib`` is installed as a package).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from ..config import data_dir
from .devkit import DatasetNotFoundError, check_voc_tree, find_devkit, read_classes
from .download import VOC2012_TRAINVAL, DownloadError, download_voc
from .synthetic import (
    DEFAULT_VERSION,
    VARIANTS,
    VERSIONS,
    generate_synthetic_voc,
    is_intact,
    make_config,
    read_marker,
    synthetic_mode,
    synthetic_root,
)


def _size(text: str):
    parts = [int(p) for p in text.replace(",", "-").split("-") if p]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"--size takes N or MIN-MAX, got {text!r}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sca_lib.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("synthetic", help="generate a synthetic VOC-format devkit")
    p.add_argument("--root", type=Path, default=None,
                   help="data folder; the devkit goes to ROOT/synthetic/<variant>-<mode> "
                        "(default: $SCA_DATA_DIR, else data/)")
    p.add_argument("--out", type=Path, default=None, help="exact dataset root instead (it will hold VOCdevkit/)")
    p.add_argument("--variant", choices=VARIANTS, default="target")
    p.add_argument("--mode", default="cpu",
                   help="run mode whose size to generate: fast (CI, seconds) or cpu (default); mode full "
                        "uses real VOC2012 (download-voc)")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--size", type=_size, default=None,
                   help="image side N, or MIN-MAX (default 112-144; 96-128 in version 1)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--version", type=int, default=DEFAULT_VERSION, choices=VERSIONS,
                   help=f"devkit version (default {DEFAULT_VERSION}, the committed results' data; 2 is the new "
                        f"protocol: small objects, confusers, 7x7 maps at 112 px)")
    p.add_argument("--confusers", type=int, default=None,
                   help="version 2's difficulty knob: phantom classes per image (data/README.md)")
    p.add_argument("--force", action="store_true",
                   help="replace a synthetic devkit of another configuration or an incomplete one "
                        "(an intact one of this configuration is kept: it would come out byte-identical)")

    d = sub.add_parser("download-voc", help="download, verify and extract Pascal VOC2012 trainval")
    d.add_argument("--root", type=Path, default=None,
                   help="dataset root; gets VOCdevkit/VOC2012 (default: $SCA_DATA_DIR, else data/)")
    d.add_argument("--mirror", action="append", default=None, metavar="URL",
                   help="try this URL first (repeatable); the built-in mirrors follow")
    d.add_argument("--archive", type=Path, default=None, help="verify and extract a local copy instead of downloading")
    d.add_argument("--keep-archive", action="store_true", help="keep the 2 GB .tar after extraction")
    d.add_argument("--force", action="store_true", help="download even if a valid tree is present")
    d.add_argument("--timeout", type=float, default=60.0)

    c = sub.add_parser("check", help="check a devkit tree and print its size")
    c.add_argument("--root", type=Path, default=None,
                   help="dataset root (holds VOCdevkit/; default: $SCA_DATA_DIR, else data/)")
    c.add_argument("--year", default="2012")

    args = parser.parse_args(argv)
    if args.cmd == "synthetic":
        try:
            mode = synthetic_mode(args.mode)
        except ValueError as e:
            parser.error(f"--mode: {e}")
        try:
            cfg = make_config(args.variant, mode, args.version, n_train=args.n_train, n_val=args.n_val,
                              image_size=args.size, seed=args.seed, confusers=args.confusers)
        except ValueError as e:
            parser.error(str(e))
        out = args.out if args.out is not None else synthetic_root(args.variant, mode, args.root, args.version)
        if is_intact(out, cfg):
            print(f"{out} already holds this synthetic devkit, intact; nothing to do")
            return 0
        marker = read_marker(out, cfg.name)
        try:
            generate_synthetic_voc(out, cfg, overwrite=args.force or marker is not None, verbose=True)
        except FileExistsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"dataset root: {out}")
        return 0
    root = args.root if args.root is not None else data_dir()
    if args.cmd == "download-voc":
        mirrors = list(args.mirror or []) + list(VOC2012_TRAINVAL.mirrors)
        try:
            download_voc(root, VOC2012_TRAINVAL, mirrors=mirrors, archive=args.archive, force=args.force,
                         keep_archive=args.keep_archive, timeout=args.timeout)
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    # check
    try:
        devkit = find_devkit(root, args.year)
    except DatasetNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    problems = check_voc_tree(root, args.year)
    kind = "synthetic" if (devkit / "synthetic.json").exists() else "Pascal VOC"
    for split in ("train", "val", "trainval"):
        f = devkit / "ImageSets" / "Main" / f"{split}.txt"
        n = sum(1 for line in f.read_text().splitlines() if line.strip()) if f.exists() else 0
        print(f"{split:>9}: {n} images")
    print(f"{devkit}: {kind} devkit, classes: {', '.join(read_classes(devkit))}")
    if problems:
        for prob in problems:
            print(f"problem: {prob}", file=sys.stderr)
        return 1
    print(f"complete (checked in {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
