"""Look at one page of the rendered book in a headless browser: a screenshot, and how much of it the figures paint.

The page is screenshotted twice by headless Chromium: as built, and with every ``<img>`` hidden (same
layout). The pixels that differ are the ones the figures paint; a page whose images are missing or
broken paints next to none. Exit code 1 when the figures paint less than ``--min-fraction`` of the
screenshot, 2 when no browser is found.

    make book && python docs/check_page.py            # notebook 01's page -> docs/_build/page.png
    python docs/check_page.py --page notebooks/09_attention_family.html --out /tmp/nb09.png

Needs a Chromium: Debian's ``chromium-headless-shell`` (or ``chromium``), or the path in ``$SCA_BROWSER``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Tuple

from PIL import Image, ImageChops

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
HIDE_IMAGES = "<style>img { visibility: hidden !important; }</style>"


def find_browser() -> Optional[str]:
    """``$SCA_BROWSER`` if set, else the first Chromium on the PATH (None when there is none)."""
    if os.environ.get("SCA_BROWSER"):
        return os.environ["SCA_BROWSER"]
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(browser: str, page: Path, out: Path, width: int = 1280, height: int = 10000) -> Image.Image:
    """A ``width`` x ``height`` screenshot of ``page`` (a local HTML file) after its scripts ran."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", "--virtual-time-budget=5000", f"--screenshot={out}",
           page.resolve().as_uri()]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if run.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{browser} could not screenshot {page}: {run.stderr[-1500:]}")
    with Image.open(out) as im:
        return im.convert("RGB")


def figure_fraction(browser: str, page: Path, out: Path) -> Tuple[float, int]:
    """(fraction of the screenshot's pixels that the page's images paint, number of ``<img>`` tags).

    Writes the screenshot of the page as built to ``out``.
    """
    html = page.read_text(encoding="utf-8")
    n_images = len(re.findall(r"<img\b", html))
    shown = screenshot(browser, page, out)
    # the hidden-images copy sits beside the page so that its relative links resolve the same way
    fd, name = tempfile.mkstemp(suffix=".html", prefix=".hidden-", dir=page.parent)
    os.close(fd)
    hidden_page = Path(name)
    try:
        hidden_page.write_text(html.replace("</head>", HIDE_IMAGES + "</head>", 1), encoding="utf-8")
        with tempfile.TemporaryDirectory() as tmp:
            hidden = screenshot(browser, hidden_page, Path(tmp) / "hidden.png")
    finally:
        hidden_page.unlink(missing_ok=True)
    diff = ImageChops.difference(shown, hidden).convert("L").point(lambda v: 255 if v > 24 else 0)
    painted = diff.histogram()[255]
    return painted / (shown.width * shown.height), n_images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", type=Path, default=Path("docs/_build/html"), help="the built site (make book)")
    parser.add_argument("--page", default="notebooks/01_attention_from_scratch.html", help="relative to --build")
    parser.add_argument("--out", type=Path, default=Path("docs/_build/page.png"), help="where the screenshot goes")
    parser.add_argument("--min-fraction", type=float, default=0.01,
                        help="the least share of the screenshot the figures must paint (default 0.01; a page with broken images paints about 0.1 %)")
    args = parser.parse_args(argv)
    page = args.build / args.page
    if not page.is_file():
        parser.error(f"no page {page}: build the book first (make book), or pass --build/--page")
    browser = find_browser()
    if browser is None:
        print(f"no browser found: install Debian's chromium-headless-shell (apt-get install chromium-headless-shell) "
              f"or set SCA_BROWSER to a Chromium binary; looked for {', '.join(BROWSERS)}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fraction, n_images = figure_fraction(browser, page, args.out)
    ok = fraction >= args.min_fraction
    print(f"{args.page}: {n_images} images; the figures paint {fraction:.1%} of the first screenshot "
          f"(at least {args.min_fraction:.0%} expected): {'ok' if ok else 'FIGURES MISSING'}; screenshot: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
