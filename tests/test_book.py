"""`make book`: the rendered site builds from the committed notebooks without executing them, and its
pages carry the notebooks' figures and equations. (No browser here or in CI: the check reads the HTML.)"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_book_builds_and_shows_figures_and_equations(tmp_path):
    pytest.importorskip("myst_nb")
    out = tmp_path / "html"
    run = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-c", "docs", "-q", ".", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Executing" not in run.stdout + run.stderr  # nb_execution_mode = "off": committed outputs only
    pages = {p.stem for p in (out / "notebooks").glob("*.html")}
    assert pages == {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    nb01 = (out / "notebooks" / "01_attention_from_scratch.html").read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]+src="([^"]+)"', nb01)
    assert len(images) >= 4 and all((out / "notebooks" / src).resolve().is_file() for src in images)
    assert "mathjax" in nb01.lower() and r"\sigma" in nb01  # the gates' equations, typeset by MathJax
    assert 'url=docs/index.html' in (out / "index.html").read_text(encoding="utf-8")  # the site's front door
    index = (out / "docs" / "index.html").read_text(encoding="utf-8")
    assert "notebooks/01_attention_from_scratch.html" in index and "README.html" in index
    readme = (out / "README.html").read_text(encoding="utf-8")
    assert "notebooks/09_attention_family.html" in readme  # the README's notebook links lead to the pages
