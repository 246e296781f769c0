"""`make book`: the rendered site builds from the committed notebooks without executing them, and its
pages carry the notebooks' figures and equations; a headless Chromium shows notebook 01's page with its
figures painted (``docs/check_page.py``; CI installs Debian's chromium-headless-shell, see ``.ci/run``)."""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    pytest.importorskip("myst_nb")
    out = tmp_path_factory.mktemp("book") / "html"
    run = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-c", "docs", "-q", ".", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run


def test_the_book_builds_and_shows_figures_and_equations(book):
    out, run = book
    assert "Executing" not in run.stdout + run.stderr  # nb_execution_mode = "off": committed outputs only
    pages = {p.stem for p in (out / "notebooks").glob("*.html")}
    assert pages == {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    nb01 = (out / "notebooks" / "01_attention_from_scratch.html").read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]+src="([^"]+)"', nb01)
    assert len(images) >= 4 and all((out / "notebooks" / src).resolve().is_file() for src in images)
    assert "mathjax" in nb01.lower() and r"\sigma" in nb01  # the gates' equations, typeset by MathJax
    assert 'url=docs/index.html' in (out / "index.html").read_text(encoding="utf-8")  # the site's front door
    index = (out / "docs" / "index.html").read_text(encoding="utf-8")
    assert "notebooks/01_attention_from_scratch.html" in index and "README.html" in index and "article.html" in index
    assert "C17" in (out / "docs" / "article.html").read_text(encoding="utf-8")  # the account of the article
    readme = (out / "README.html").read_text(encoding="utf-8")
    assert "notebooks/09_attention_family.html" in readme  # the README's notebook links lead to the pages


def test_a_headless_browser_shows_the_figures_of_a_rendered_page(book, tmp_path):
    out, _ = book
    check = runpy.run_path(str(ROOT / "docs" / "check_page.py"))
    browser = check["find_browser"]()
    if browser is None:
        assert not os.environ.get("CI"), "CI must have a browser: .ci/run installs chromium-headless-shell"
        pytest.skip("no Chromium here: apt-get install chromium-headless-shell (or set SCA_BROWSER)")
    page = out / "notebooks" / "01_attention_from_scratch.html"
    fraction, n_images = check["figure_fraction"](browser, page, tmp_path / "page.png")
    assert n_images >= 4 and fraction >= 0.01, f"the figures paint only {fraction:.2%} of the page"
    # the control: the same page with its images' files missing paints next to nothing
    broken = page.with_name("broken.html")
    broken.write_text(page.read_text(encoding="utf-8").replace('src="../_images/', 'src="../_missing/'), encoding="utf-8")
    missing, _ = check["figure_fraction"](browser, broken, tmp_path / "broken.png")
    assert missing < 0.005 < fraction
    assert check["main"](["--build", str(out), "--out", str(tmp_path / "cli.png")]) == 0
