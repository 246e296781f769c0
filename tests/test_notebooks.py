"""Notebook conventions and the notebook tooling (URL sync, metadata cleaning).

nbval executes the notebooks themselves (`make test`); these tests check what nbval does not.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from sca_lib import notebooks as nbtools

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_there_are_notebooks():
    assert any(p.name.startswith("01_") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    cells = _cells(path)
    head = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and head.startswith("# ")
    assert "<!-- colab-badge -->" in head, "first cell needs the Colab badge markers"
    assert "Run time" in head
    assert "".join(cells[1]["source"]) == nbtools.SETUP_CELL, "second cell must be the shared Colab setup cell"
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "get_mode()" in "".join(params[0]["source"])
    code = [c for c in cells if c["cell_type"] == "code"]
    assert any(c.get("outputs") for c in code), "committed notebooks keep their outputs"
    for c in code:  # nbval: "Unrun reference cell has outputs"
        assert not (c.get("outputs") and c.get("execution_count") is None)
        assert "execution" not in c.get("metadata", {}), "run `make clean-notebooks`"
    assert "What we learned" in "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_teaches(path):
    """What you will learn, an equation, a figure, takeaways, exercises with their solutions, references."""
    cells = _cells(path)
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "What you will learn" in "".join(cells[0]["source"])
    assert "$" in markdown, "the idea's equations, in LaTeX"
    figures = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert figures, "at least one figure"
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    for heading in ("## What we learned", "## Exercises", "## References"):
        assert heading in headings, f"{path.name} has no '{heading}' section"
    exercises = next(c for c in cells if "".join(c["source"]).startswith("## Exercises"))
    assert f"(solutions/{path.stem}.py)" in "".join(exercises["source"]), "link the exercises to their solutions"
    assert (path.parent / "solutions" / f"{path.stem}.py").is_file()


def test_badges_and_setup_cells_are_in_sync_with_the_setting():
    assert nbtools.sync_url(NOTEBOOKS + [ROOT / "README.md"], write=False) == []


def test_sync_url_rewrites_badges_and_setup_cell(tmp_path):
    src = ROOT / "notebooks" / "01_attention_from_scratch.ipynb"
    nb = tmp_path / src.name
    shutil.copy(src, nb)
    readme = tmp_path / "README.md"
    readme.write_text("| 01 | [x](notebooks/01_attention_from_scratch.ipynb) | <!-- colab-badge -->none<!-- /colab-badge --> |\n")
    url = "https://github.com/example-owner/example-repo"
    changed = nbtools.sync_url([nb, readme], url=url)
    assert changed == [nb, readme]
    text = nb.read_text()
    assert (f"https://colab.research.google.com/github/example-owner/example-repo/blob/main/notebooks/{src.name}"
            in text)
    assert 'REPO_URL = \\"https://github.com/example-owner/example-repo\\"' in text
    assert "example-owner/example-repo/blob/main/notebooks/01_attention_from_scratch.ipynb" in readme.read_text()
    # and back to "not decided": no link is left behind
    nbtools.sync_url([nb, readme], url="")
    assert "colab.research.google.com/github" not in nb.read_text() + readme.read_text()
    with pytest.raises(ValueError, match="github.com/OWNER/NAME"):
        nbtools.badge_markdown("x.ipynb", "ftp://elsewhere")


def test_clean_notebook_strips_volatile_metadata_and_keeps_outputs(tmp_path):
    nb = {"cells": [{"cell_type": "code", "execution_count": 1, "source": "1",
                     "metadata": {"execution": {"iopub.execute_input": "2026-01-01"}},
                     "outputs": [{"output_type": "execute_result", "execution_count": 1,
                                  "data": {"text/plain": "1"}, "metadata": {}}]}],
          "metadata": {"widgets": {"state": {}}}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    nbtools.clean_notebook(path)
    out = json.loads(path.read_text())
    assert "widgets" not in out["metadata"] and "execution" not in out["cells"][0]["metadata"]
    assert out["cells"][0]["outputs"][0]["data"]["text/plain"] == "1"


def test_bad_notebook_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook not found"):
        nbtools.clean_notebook(tmp_path / "missing.ipynb")
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid notebook JSON"):
        nbtools.clean_notebook(bad)


def test_run_mode_from_environment(monkeypatch):
    from sca_lib.config import get_mode
    monkeypatch.delenv("SCA_MODE", raising=False)
    assert get_mode() == "fast"
    monkeypatch.setenv("SCA_MODE", "FULL")
    assert get_mode() == "full"
    monkeypatch.setenv("SCA_MODE", "gpu")
    with pytest.raises(ValueError, match="expected one of fast, cpu, full"):
        get_mode()


def _parameters(path):
    cell = next(c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", []))
    return "".join(cell["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_reads_the_mode_through_the_library(path, monkeypatch):
    """A bad SCA_MODE stops the parameters cell with the list of modes; the mode is case-insensitive."""
    monkeypatch.setenv("SCA_MODE", "bogus")
    with pytest.raises(ValueError, match="expected one of fast, cpu, full"):
        exec(_parameters(path), {})
    monkeypatch.setenv("SCA_MODE", "FAST")
    scope = {}
    exec(_parameters(path), scope)
    assert scope["MODE"] == "fast"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_speak_of_the_project_not_of_our_issues(path):
    import re

    text = "".join("".join(c["source"]) for c in _cells(path))
    hits = re.findall(r"\b(?:the|this|that|[a-z]+'s) [a-z-]+ issue\b|\(\w+ issue\)|issue #?\d+", text, re.I)
    assert not hits, hits


def test_clean_notebook_shrinks_large_png_outputs(tmp_path):
    import base64
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(buf, format="PNG")
    big = base64.b64encode(buf.getvalue()).decode()
    assert len(buf.getvalue()) > nbtools.MAX_PNG_BYTES
    nb = {"cells": [{"cell_type": "code", "execution_count": 1, "source": "", "metadata": {},
                     "outputs": [{"output_type": "display_data", "metadata": {}, "data": {"image/png": big}}]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    nbtools.clean_notebook(path)
    out = json.loads(path.read_text())["cells"][0]["outputs"][0]["data"]["image/png"]
    img = Image.open(io.BytesIO(base64.b64decode(out)))
    assert img.size == (400, 400) and len(base64.b64decode(out)) < len(buf.getvalue())


def test_committed_notebooks_are_small():
    for path in NOTEBOOKS:
        assert path.stat().st_size < 1_500_000, f"{path.name} is {path.stat().st_size/1e6:.1f} MB: run `make clean-notebooks`"


_FAKE_COLAB = """
import os, subprocess, sys, types
sys.modules["google"] = types.ModuleType("google")
sys.modules["google.colab"] = types.ModuleType("google.colab")  # what Colab's runtime has imported
real = subprocess.check_call
def check_call(cmd, *args, **kwargs):  # install next to the test, not into this environment
    assert cmd[1:5] == ["-m", "pip", "install", "-q"], cmd
    return real([*cmd, "--no-deps", "--no-build-isolation", "--target", os.environ["TARGET"]], *args, **kwargs)
subprocess.check_call = check_call
exec(compile(os.environ["CELL"], "setup-cell", "exec"))
print("SCA_MODE", os.environ["SCA_MODE"])
"""


def _colab(cell: str, cwd, target):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SCA_MODE"}
    return subprocess.run([sys.executable, "-c", _FAKE_COLAB], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**env, "CELL": cell, "TARGET": str(target)})


def test_setup_cell_installs_on_a_simulated_colab_from_the_url_or_an_upload(tmp_path):
    """The notebooks' first code cell on Colab (a fake google.colab module): from REPO_URL (a git URL,
    here this clone), else from an uploaded archive, else a clear error; SCA_MODE from the form field."""
    import subprocess

    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("needs the repository's git checkout")
    cell = nbtools.SETUP_CELL.replace('SCA_MODE = "fast"', 'SCA_MODE = "cpu"')
    empty = tmp_path / "empty"
    empty.mkdir()
    run = _colab(cell, empty, tmp_path / "none")
    assert run.returncode != 0 and "paste the repository's URL into REPO_URL" in run.stderr
    with_url = nbtools.URL_LINE_RE.sub(f'REPO_URL = "file://{ROOT}"', cell)
    run = _colab(with_url, empty, tmp_path / "from_url")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "SCA_MODE cpu" in run.stdout and (tmp_path / "from_url" / "sca_lib" / "attention.py").is_file()
    upload = tmp_path / "upload"
    upload.mkdir()
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=zip", "--prefix=repo-main/", "-o",
                    str(upload / "repo-main.zip"), "HEAD"], check=True)
    run = _colab(cell, upload, tmp_path / "from_zip")
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "from_zip" / "sca_lib" / "gating.py").is_file()
