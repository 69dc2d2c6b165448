"""A report as a reader's browser lays it out: headless Chromium measures and photographs it.

Chromium's ``--dump-dom`` prints the page after its scripts ran, so a copy of the report with a
small script appended (never the report itself, which stays script-free) writes the layout into
the document title on the ``load`` event: the document's scroll width against the viewport's
width, its height, and every element whose right edge passes the viewport. A page that
overflows horizontally shows it there whatever its cause (a table, an image, a long run id).
``--virtual-time-budget`` lets the page finish loading (its inline images decoded) before the DOM
is dumped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

WIDTH = 1280  # a laptop's browser window; the report must fit it without scrolling sideways

MEASURE = """<script>window.addEventListener("load", () => {
  const root = document.documentElement, limit = root.clientWidth;
  const wide = [...document.querySelectorAll("body *")].filter(e => e.getBoundingClientRect().right > limit + 1)
    .map(e => e.tagName.toLowerCase() + (e.className ? "." + e.className : "") + " to " + Math.round(e.getBoundingClientRect().right));
  document.title = "LAYOUT" + JSON.stringify({scrollWidth: root.scrollWidth, clientWidth: limit, height: root.scrollHeight,
                                             wide: wide.slice(0, 20)});
});</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _flags(profile: Path, width: int, height: int) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}"]


def measure(page: Path, width: int = WIDTH, height: int = 1000) -> dict[str, Any]:
    """The layout of ``page`` at ``width`` px: scrollWidth, clientWidth, height and the elements wider than the window."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("chromium is not installed (scripts/setup.sh --dev installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / page.name
        text = page.read_text()
        copy.write_text(text.replace("</body>", MEASURE + "</body>", 1) if "</body>" in text else text + MEASURE)
        for other in page.parent.glob("*.svg"):  # links stay resolvable; nothing else is read
            (Path(tmp) / other.name).symlink_to(other.resolve())
        cp = subprocess.run([browser, *_flags(Path(tmp) / "profile", width, height), "--virtual-time-budget=10000", "--dump-dom",
                             copy.as_uri()], capture_output=True, text=True, timeout=180)
    head = cp.stdout.split("<title>LAYOUT", 1)
    if len(head) < 2:
        raise RuntimeError(f"chromium did not lay the page out: {cp.stderr[-1500:]}")
    return dict(json.loads(head[1].split("</title>", 1)[0].replace("&amp;", "&").replace("&quot;", '"')))


def screenshot(page: Path, out: Path, width: int = WIDTH) -> dict[str, Any]:
    """``page`` photographed whole at ``width`` px wide (its measured height); returns the layout."""
    layout = measure(page, width)
    browser = chromium()
    assert browser is not None
    with tempfile.TemporaryDirectory() as tmp:
        cp = subprocess.run([browser, *_flags(Path(tmp) / "profile", width, int(layout["height"]) + 20), f"--screenshot={out}",
                             page.as_uri()], capture_output=True, text=True, timeout=180)
    if cp.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium took no screenshot: {cp.stderr[-1500:]}")
    return layout
