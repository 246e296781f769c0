"""Notebook tooling: execute notebooks headless, strip volatile metadata, sync the repository URL.

Command line (the Makefile wraps these)::

    python -m sca_lib.notebooks execute notebooks/*.ipynb   # run in place (mode from $SCA_MODE, default fast)
    python -m sca_lib.notebooks clean notebooks/*.ipynb     # strip timestamps and widget state
    python -m sca_lib.notebooks sync-url                    # badges + setup cells from pyproject.toml
    python -m sca_lib.notebooks check-url                   # exit 1 if they are out of sync

The repository's public URL is one setting, ``[tool.sca_lib] repository`` in ``pyproject.toml``.
Notebooks carry a Colab badge between ``<!-- colab-badge -->`` markers and a setup cell with a
``REPO_URL = "..."`` line; ``sync-url`` rewrites both (and the README's badges) from the setting,
so publishing is a one-line change. While the setting is empty no link is invented.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional

from ._io import atomic_write_text
from .config import get_mode, repo_root

__all__ = [
    "repository_url",
    "badge_markdown",
    "SETUP_CELL",
    "execute_notebook",
    "clean_notebook",
    "sync_url",
]

BADGE_RE = re.compile(r"<!-- colab-badge -->.*?<!-- /colab-badge -->", re.S)
URL_LINE_RE = re.compile(r'^REPO_URL = ".*?"', re.M)

#: The Colab setup cell every notebook carries (second cell). ``sync-url`` fills in REPO_URL.
SETUP_CELL = '''#@title Setup: on Google Colab, install sca_lib (elsewhere this cell does nothing) { display-mode: "form" }
# Locally, `make test` or `pip install -e ".[dev]"` has installed sca_lib. On Colab: paste the
# repository's URL below, or upload an archive of the repository (the .zip a "Download ZIP" gives,
# or a sca_lib wheel) to the Files pane first. SCA_MODE: fast (minutes), cpu (the CPU studies'
# protocol, hours), full (the article's protocol on real VOC2012, a GPU).
REPO_URL = ""  #@param {type:"string"}
SCA_MODE = "fast"  #@param ["fast", "cpu", "full"]
import glob
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    os.environ["SCA_MODE"] = SCA_MODE
    uploads = sorted(glob.glob("*.zip") + glob.glob("*.tar.gz") + glob.glob("sca_lib-*.whl"), key=os.path.getmtime)
    if REPO_URL:
        source = f"sca_lib[dev] @ git+{REPO_URL}"
    elif uploads:
        source = f"sca_lib[dev] @ file://{os.path.abspath(uploads[-1])}"
    else:
        raise RuntimeError(
            "To install sca_lib here, paste the repository's URL into REPO_URL above, or upload an archive "
            "of the repository (a .zip or a sca_lib wheel) to the Files pane; then run this cell again."
        )
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", source])'''


def repository_url(pyproject: Optional[Path] = None) -> str:
    """``[tool.sca_lib] repository`` from pyproject.toml ('' while not decided)."""
    path = Path(pyproject) if pyproject else _checkout() / "pyproject.toml"
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
        import tomli as tomllib  # type: ignore
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return str(data.get("tool", {}).get("sca_lib", {}).get("repository", "")).rstrip("/")


def badge_markdown(notebook: str, url: str) -> str:
    """The Colab badge for ``notebooks/<notebook>`` (between markers), or a note while no URL is set."""
    if not url:
        body = "*(Colab badge: not yet, the repository's public URL is not decided; see `make sync-url`)*"
    else:
        m = re.match(r"https?://github\.com/(.+)$", url)
        if not m:
            raise ValueError(f"[tool.sca_lib] repository must be a https://github.com/OWNER/NAME URL, got {url!r}")
        target = f"https://colab.research.google.com/github/{m.group(1)}/blob/main/notebooks/{notebook}"
        body = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({target})"
    return f"<!-- colab-badge -->{body}<!-- /colab-badge -->"


def _load(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"notebook not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid notebook JSON: {e}") from None


def _save(path: Path, nb: dict) -> None:
    atomic_write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


#: PNG outputs larger than this are re-encoded with a 256-colour palette by `clean` (plots stay readable,
#: notebooks stay small enough for git; a photo grid went from 1.3 MB to 0.26 MB).
MAX_PNG_BYTES = 200_000


def _shrink_png(b64: str) -> str:
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(b64)
    if len(raw) <= MAX_PNG_BYTES:
        return b64
    im = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode() if buf.tell() < len(raw) else b64


def _strip(nb: dict) -> dict:
    nb.setdefault("metadata", {}).pop("widgets", None)
    nb["metadata"].pop("papermill", None)
    for cell in nb.get("cells", []):
        md = cell.setdefault("metadata", {})
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            md.pop(key, None)
        for out in cell.get("outputs", []):
            out.get("metadata", {}).pop("application/vnd.jupyter.widget-view+json", None)
            data = out.get("data", {})
            data.pop("application/vnd.jupyter.widget-view+json", None)
            if isinstance(data.get("image/png"), str):
                data["image/png"] = _shrink_png(data["image/png"])
    return nb


def clean_notebook(path: Path) -> None:
    """Strip volatile metadata (execution timestamps, widget state) in place; outputs are kept.

    PNG outputs over :data:`MAX_PNG_BYTES` are re-encoded with a 256-colour palette.
    """
    _save(Path(path), _strip(_load(Path(path))))


def execute_notebook(path: Path, timeout: int = 1800, mode: Optional[str] = None) -> float:
    """Execute a notebook in place (cwd = its folder) and clean it; returns the wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    if mode is not None:
        os.environ["SCA_MODE"] = mode
    nb = nbformat.read(str(path), as_version=4)
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, str(path))
    clean_notebook(path)
    return elapsed


def _sync_text(text: str, notebook: str, url: str) -> str:
    text = BADGE_RE.sub(lambda _m: badge_markdown(notebook, url), text)
    return URL_LINE_RE.sub(f'REPO_URL = "{url}"', text)


def sync_url(paths: Iterable[Path], url: Optional[str] = None, write: bool = True) -> List[Path]:
    """Rewrite Colab badges and ``REPO_URL`` lines from the setting; returns the files that changed."""
    url = repository_url() if url is None else url
    changed = []
    for path in paths:
        path = Path(path)
        if path.suffix == ".ipynb":
            nb = _load(path)
            dirty = False
            for cell in nb.get("cells", []):
                src = "".join(cell.get("source", []))
                new = _sync_text(src, path.name, url)
                if new != src:
                    cell["source"] = new.splitlines(keepends=True)
                    dirty = True
            if dirty:
                changed.append(path)
                if write:
                    _save(path, nb)
        else:
            text = path.read_text(encoding="utf-8")
            # A README badge sits on a table row that links its notebook: take the name from the row.
            lines = []
            for line in text.splitlines(keepends=True):
                nbname = re.search(r"(\d\d_[\w-]+\.ipynb)", BADGE_RE.sub("", line))
                if nbname and BADGE_RE.search(line):
                    line = BADGE_RE.sub(lambda _m: badge_markdown(nbname.group(1), url), line)
                lines.append(line)
            new = "".join(lines)
            if new != text:
                changed.append(path)
                if write:
                    path.write_text(new, encoding="utf-8")
    return changed


def _checkout() -> Path:
    """The repository this sca_lib runs from (the tooling edits its notebooks and README)."""
    root = repo_root()
    if root is None:
        raise SystemExit("the notebook tooling works on a clone of the repository (sca_lib is installed as a "
                         "package here); run it from the clone, e.g. `make notebooks`")
    return root


def _default_notebooks() -> List[Path]:
    return sorted((_checkout() / "notebooks").glob("*.ipynb"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sca_lib.notebooks", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_exec = sub.add_parser("execute", help="execute notebooks in place (mode from $SCA_MODE, default fast)")
    p_exec.add_argument("paths", nargs="*", type=Path)
    p_exec.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    p_clean = sub.add_parser("clean", help="strip volatile metadata, keep outputs")
    p_clean.add_argument("paths", nargs="*", type=Path)
    sub.add_parser("sync-url", help="write badges and REPO_URL from pyproject.toml")
    sub.add_parser("check-url", help="exit 1 if badges or REPO_URL lines differ from pyproject.toml")
    args = parser.parse_args(argv)

    if args.cmd == "execute":
        os.environ["SCA_MODE"] = get_mode()  # a bad $SCA_MODE stops here, before any kernel starts
        for path in args.paths or _default_notebooks():
            print(f"executing {path} (SCA_MODE={os.environ['SCA_MODE']}) ...", flush=True)
            print(f"  done in {execute_notebook(path, timeout=args.timeout):.1f} s", flush=True)
    elif args.cmd == "clean":
        for path in args.paths or _default_notebooks():
            clean_notebook(path)
    else:
        files = _default_notebooks() + [_checkout() / "README.md"]
        changed = sync_url(files, write=args.cmd == "sync-url")
        verb = "updated" if args.cmd == "sync-url" else "out of sync"
        for path in changed:
            print(f"{verb}: {path.relative_to(_checkout())}")
        if args.cmd == "check-url" and changed:
            print("run `make sync-url`", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
