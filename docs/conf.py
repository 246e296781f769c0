"""Sphinx configuration of the rendered book: the README, the executed notebooks (never re-executed
here) and the results' READMEs, built by `make book` into docs/_build/html (the repository root is the
source folder; this file is passed with -c docs)."""

project = "SCA-CNN-style attention for CNNs"
author = "The sca_lib contributors"
copyright = "the sca_lib contributors, Apache License 2.0"

extensions = ["myst_nb"]
root_doc = "docs/index"
include_patterns = ["docs/index.md", "docs/article.md", "README.md", "notebooks/*.ipynb", "results/performance/README.md",
                    "results/costs/README.md"]
exclude_patterns = ["docs/_build", "docs/_root", ".venv", "**/.ipynb_checkpoints"]
html_extra_path = ["_root"]      # index.html at the site's root, pointing at docs/index.html

nb_execution_mode = "off"            # the committed outputs are the book; CI never re-runs a notebook here
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3              # README-style #anchors
suppress_warnings = ["myst.xref_missing", "myst.header", "misc.highlighting_failure", "mystnb.unknown_mime_type"]

html_theme = "sphinx_book_theme"
html_title = project
html_theme_options = {"show_toc_level": 2}
