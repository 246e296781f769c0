"""Download Pascal VOC2012 trainval: mirrors tried in order, MD5-verified, resumable, atomic.

``python -m sca_lib.data download-voc --root data`` leaves ``data/VOCdevkit/VOC2012``.

What it guarantees:

- The archive is fetched to ``<root>/VOCtrainval_11-May-2012.tar.part``; an interrupted download
  resumes from where it stopped (HTTP ``Range``), on the same or the next mirror.
- The archive is checked against its MD5 (``6cd6e144f989b92b3379bac3b3de84fd``) **before**
  anything is extracted; a mismatch discards it and tries the next mirror.
- It is extracted into a temporary folder under ``<root>`` (``.VOCtrainval-extract.tmp<PID>``,
  removed by the next run if the process was killed), checked, and only then moved into
  place with one rename; a marker file (``.sca_lib_download.json``) is written last. A crash at any
  point leaves no tree that looks complete.
- A valid tree already in place is left alone (``--force`` re-downloads).
- When every mirror fails the error lists what each one answered and how to get the archive by hand
  (including the Kaggle route common on Colab); ``--archive PATH`` then verifies and extracts it.

Mirrors: the official location moved from ``host.robots.ox.ac.uk`` (often down, see torchvision
issues #4243 and #9269) to ``thor.robots.ox.ac.uk`` (torchvision PR #9216, which torchvision's
own ``VOCDetection`` now uses). The old address is kept second (its host redirects to the new one
when it is up), and the copy that the d2l.ai book's code downloads is third. Any copy is accepted
only if its MD5 matches, so a mirror cannot hand over a different file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from .._io import clean_stale_temp, temp_name
from ..config import data_dir
from .devkit import check_voc_tree

__all__ = ["ArchiveSpec", "VOC2012_TRAINVAL", "DownloadError", "download_voc", "file_md5", "manual_instructions"]

MARKER = ".sca_lib_download.json"
PathLike = Union[str, Path]


@dataclass(frozen=True)
class ArchiveSpec:
    """One downloadable devkit archive."""

    filename: str
    md5: str
    mirrors: Tuple[str, ...]
    year: str = "2012"
    size: Optional[int] = None  # bytes, when known: a mirror announcing another size is skipped
    devkit: str = "VOCdevkit/VOC2012"  # where the tree sits inside the archive (and under root)


VOC2012_TRAINVAL = ArchiveSpec(
    filename="VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    size=1_999_639_040,
    mirrors=(
        # official, current location (PR #9216; current torchvision's VOCDetection uses it)
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        # official, old location (host.robots.ox.ac.uk; redirects to the above when up)
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        # the copy the d2l.ai book downloads (d2l DATA_HUB['voc2012'])
        "http://d2l-data.s3-accelerate.amazonaws.com/VOCtrainval_11-May-2012.tar",
    ),
)

#: The project page (it links the archive) and a note on where else to find it.
VOC2012_PAGE = "https://www.robots.ox.ac.uk/~vgg/projects/pascal/VOC/voc2012/"


class DownloadError(RuntimeError):
    """Every mirror failed, or an archive failed its check; the message says what to do by hand."""


def file_md5(path: PathLike, chunk: int = 1 << 22) -> str:
    """MD5 hex digest of a file, read in chunks."""
    try:
        h = hashlib.md5(usedforsecurity=False)  # type: ignore[call-arg]  # Python >= 3.9
    except TypeError:  # pragma: no cover
        h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def manual_instructions(root: PathLike, spec: ArchiveSpec = VOC2012_TRAINVAL) -> str:
    """How to get the archive by hand and hand it to ``download-voc --archive``."""
    return (
        f"Get {spec.filename} by hand (MD5 {spec.md5}), then let this command check and extract it:\n"
        f"  1. download it in a browser from the official page {VOC2012_PAGE}\n"
        f"     (or any copy you have; the MD5 check decides whether it is the right file);\n"
        f"  2. python -m sca_lib.data download-voc --root {root} --archive /path/to/{spec.filename}\n"
        "On Google Colab, Kaggle is the usual route (a Kaggle account and API token needed):\n"
        "  !pip install -q kaggle        # and put kaggle.json (Kaggle > Settings > API) in ~/.kaggle/\n"
        "  !kaggle datasets download -d <owner>/<dataset> -p /content --unzip   # a VOC2012 trainval copy\n"
        "  then pass the .tar inside it with --archive, or, if the copy is already extracted, point\n"
        "  the notebooks at it: VOC_ROOT=<folder holding VOCdevkit/VOC2012> (check it with\n"
        "  `python -m sca_lib.data check --root <that folder>`).\n"
        "Or work offline on the synthetic VOC-format stand-in: python -m sca_lib.data synthetic --root data\n"
        "(see data/README.md)."
    )


def _fetch(url: str, part: Path, timeout: float, expected_size: Optional[int],
           progress: Callable[[int, Optional[int]], None]) -> None:
    """Download ``url`` into ``part``, resuming from its current size with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "sca_lib-download/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        # a fresh opener per call: proxy settings are read from the environment now, not cached
        resp = urllib.request.build_opener().open(req, timeout=timeout)  # noqa: S310 - http(s) mirrors
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the .part is (at least) complete
            return
        raise
    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            crange = resp.headers.get("Content-Range", "")
            start = int(crange.split()[1].split("-")[0]) if crange.startswith("bytes ") else -1
            if start != have:
                raise OSError(f"server resumed at byte {start}, expected {have}")
            total = have + length if length is not None else None
            mode = "ab"
        else:  # 200: the server ignored the Range header; start over
            have, total, mode = 0, length, "wb"
        if expected_size is not None and total is not None and total != expected_size:
            raise OSError(f"server announces {total} bytes, expected {expected_size}")
        with open(part, mode) as f:
            done = have
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                f.write(block)
                done += len(block)
                progress(done, total)
        if total is not None and done < total:
            raise OSError(f"connection closed after {done} of {total} bytes")


def _progress_printer(enabled: bool) -> Callable[[int, Optional[int]], None]:
    last = [-1]

    def show(done: int, total: Optional[int]) -> None:
        if not enabled:
            return
        if total:
            pct = int(100 * done / total)
            if pct // 5 != last[0]:
                last[0] = pct // 5
                print(f"  {done / 1e6:8.1f} / {total / 1e6:.1f} MB ({pct}%)", file=sys.stderr, flush=True)
        elif done // (100 << 20) != last[0]:
            last[0] = done // (100 << 20)
            print(f"  {done / 1e6:8.1f} MB", file=sys.stderr, flush=True)

    return show


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.8.17 / 3.9.17 / 3.10.12 / 3.11.4+
            tf.extractall(dest, filter="data")
            return
        base = dest.resolve()
        for m in tf.getmembers():  # pragma: no cover - old Pythons only
            target = (dest / m.name).resolve()
            if not str(target).startswith(str(base) + os.sep) or m.issym() or m.islnk() or m.isdev():
                raise DownloadError(f"{archive}: refusing to extract unsafe member {m.name!r}")
        tf.extractall(dest)


def _extract(archive: Path, root: Path, spec: ArchiveSpec, source: str, log: Callable[[str], None]) -> None:
    """Extract into a temporary folder, check, move into place, write the marker last."""
    tmp = temp_name(root / "VOCtrainval-extract")  # .VOCtrainval-extract.tmp<PID>, see clean_stale_temp
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        log(f"extracting {archive.name} ...")
        try:
            _safe_extract(archive, tmp)
        except (tarfile.TarError, OSError) as e:
            raise DownloadError(f"{archive} could not be extracted ({e}); nothing was installed") from None
        problems = check_voc_tree(tmp, spec.year)
        if problems:
            raise DownloadError(f"{archive} does not hold a complete {spec.devkit}: " + "; ".join(problems))
        dest = root / spec.devkit
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():  # an incomplete or unwanted tree: keep it aside rather than delete it
            aside = Path(tempfile.mkdtemp(prefix=f"{dest.name}.replaced-", dir=dest.parent))
            os.replace(dest, aside / dest.name)
            log(f"moved the previous {dest} to {aside}")
        os.replace(tmp / spec.devkit, dest)
        marker = {"archive": spec.filename, "md5": spec.md5, "source": source}
        (dest / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_voc(root: Optional[PathLike] = None, spec: ArchiveSpec = VOC2012_TRAINVAL,
                 mirrors: Optional[Sequence[str]] = None, archive: Optional[PathLike] = None,
                 force: bool = False, keep_archive: bool = False, timeout: float = 60.0,
                 attempts: int = 3, verbose: bool = True) -> Path:
    """Make ``<root>/VOCdevkit/VOC2012`` from the VOC2012 trainval archive; returns ``root``.

    Args:
        root: the dataset root (it will hold ``VOCdevkit/``); default :func:`sca_lib.config.data_dir`.
        spec: which archive (file name, MD5, mirrors).
        mirrors: URLs to try in order instead of ``spec.mirrors``.
        archive: a local copy of the archive to verify and extract instead of downloading.
        force: download and extract even when a valid tree is present.
        keep_archive: keep the ``.tar`` after extraction (it is deleted by default: 2 GB).
        timeout: seconds a connection may stall.
        attempts: tries per mirror while it keeps making progress (each resumes the last).

    Raises:
        DownloadError: every mirror failed (the message lists why and how to do it by hand), or
            the archive's MD5 does not match (nothing is extracted).
    """
    root = Path(root) if root is not None else data_dir()
    log = (lambda msg: print(msg, flush=True)) if verbose else (lambda msg: None)
    dest = root / spec.devkit
    if not force and dest.is_dir():
        problems = check_voc_tree(root, spec.year)
        if not problems:
            how = "downloaded and verified earlier" if (dest / MARKER).exists() else "already present"
            log(f"{dest} is complete ({how}); nothing to do (use --force to download again)")
            return root
        log(f"{dest} exists but is incomplete ({problems[0]}); fetching a fresh copy")
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(root)  # extraction folders of killed runs

    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DownloadError(f"archive not found: {archive}")
        log(f"checking the MD5 of {archive} ...")
        got = file_md5(archive)
        if got != spec.md5:
            raise DownloadError(f"{archive} has MD5 {got}, expected {spec.md5} ({spec.filename}); "
                                "it is not the right file or it is incomplete. Nothing was extracted.")
        _extract(archive, root, spec, str(archive.resolve()), log)
        log(f"done: {dest}")
        return root

    final = root / spec.filename
    part = root / (spec.filename + ".part")
    source = None
    if final.exists():
        log(f"found {final}; checking its MD5 ...")
        if file_md5(final) == spec.md5:
            source = str(final.resolve())
        else:
            log("MD5 mismatch: discarding it")
            final.unlink()
    errors: List[str] = []
    show = _progress_printer(verbose)
    for url in ([] if source else list(mirrors if mirrors is not None else spec.mirrors)):
        log(f"downloading {url}" + (f" (resuming at {part.stat().st_size} bytes)" if part.exists() else ""))
        reason = None
        for _attempt in range(max(1, attempts)):
            before = part.stat().st_size if part.exists() else 0
            try:
                _fetch(url, part, timeout, spec.size, show)
                reason = None
                break
            except (urllib.error.URLError, OSError, socket.timeout, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                reason = f"{type(e).__name__}: {reason}"
                after = part.stat().st_size if part.exists() else 0
                if after <= before:  # no progress: this mirror is down, try the next one
                    break
                log(f"  interrupted ({reason}); resuming")
        if reason is not None:
            log(f"  failed: {reason}")
            errors.append(f"{url}: {reason}")
            continue
        log("checking MD5 ...")
        got = file_md5(part)
        if got != spec.md5:
            part.unlink()
            msg = f"MD5 mismatch: got {got}, expected {spec.md5}; discarded, nothing extracted"
            log(f"  {msg}")
            errors.append(f"{url}: {msg}")
            continue
        os.replace(part, final)
        source = url
        break
    if source is None:
        raise DownloadError(
            f"could not download {spec.filename} from any mirror:\n"
            + "".join(f"  - {e}\n" for e in errors)
            + (f"(a partial download is kept in {part}; the next run resumes it)\n" if part.exists() else "")
            + manual_instructions(root, spec))
    _extract(final, root, spec, source, log)
    if not keep_archive:
        final.unlink()
    log(f"done: {dest}")
    return root
