"""The repository stands alone: every link in its Markdown (README, results, notebooks) points inside
it, to a file that exists (and, for the README's anchors, to a heading that exists); the notebooks
link to their neighbours."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
AUTOLINK = re.compile(r"<([a-z]+://[^>\s]+)>")  # <https://...>: a link too, though not [text](url)
BADGE = re.compile(r"<!-- colab-badge -->.*?<!-- /colab-badge -->", re.S)  # written by `make sync-url` only


def _markdown():
    """(name, folder, text) of every Markdown file and notebook Markdown cell in the repository."""
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("results/**/*.md"), *ROOT.glob("data/*.md")]:
        yield str(path.relative_to(ROOT)), path.parent, path.read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        yield path.name, path.parent, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_every_link_points_inside_the_repository_to_something_that_exists():
    readme_anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", (ROOT / "README.md").read_text(), re.M)}
    bad = []
    for name, folder, text in _markdown():
        text = BADGE.sub("", text)
        bad += [f"{name}: {url} (an autolink outside the repository)" for url in AUTOLINK.findall(text)]
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                bad.append(f"{name}: {target} (outside the repository)")
                continue
            path, _, anchor = target.partition("#")
            resolved = (folder / path).resolve() if path else None
            if resolved is not None and not resolved.exists():
                bad.append(f"{name}: {target} (no such file)")
            elif anchor and (resolved or folder / name) == (ROOT / "README.md").resolve() and anchor not in readme_anchors:
                bad.append(f"{name}: {target} (no such heading in README.md)")
    assert not bad, "\n".join(bad)


def test_notebooks_link_to_the_previous_and_the_next():
    for k, path in enumerate(NOTEBOOKS):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        first, last = "".join(cells[0]["source"]), "".join(cells[-1]["source"])
        for neighbour in ([NOTEBOOKS[k - 1]] if k else []) + ([NOTEBOOKS[k + 1]] if k + 1 < len(NOTEBOOKS) else []):
            assert f"]({neighbour.name})" in first and f"]({neighbour.name})" in last, (path.name, neighbour.name)


def test_the_articles_claims_are_stated_in_the_repository():
    """docs/article.md states each claim C1-C17 in our words, where we check it and what we found."""
    text = (ROOT / "docs" / "article.md").read_text(encoding="utf-8")
    paragraphs = {int(m.group(1)): m.group(0) for m in re.finditer(r"\*\*C(\d+)\. .*?(?=\n\*\*C\d+\. |\n## |\Z)", text, re.S)}
    assert sorted(paragraphs) == list(range(1, 18))
    for n, paragraph in paragraphs.items():
        assert "*Where:*" in paragraph and "*Found:*" in paragraph, f"C{n} needs where we check it and what we found"
    assert "docs/article.md" in (ROOT / "README.md").read_text(encoding="utf-8")
