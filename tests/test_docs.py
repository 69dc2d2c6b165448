"""The documentation holds together: the MkDocs site builds in strict mode (a broken link or
anchor, a page missing from the navigation, any warning fails it), and every relative link of the
README reaches a file of the repository, and a heading there when it names one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from markdown.extensions.toc import slugify

from tests.conftest import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_the_site_builds_strict_without_a_warning(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cp = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site), "--config-file", str(ROOT / "mkdocs.yml")],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, out[-4000:]
    assert "WARNING" not in out, out[-4000:]
    assert (site / "index.html").is_file() and (site / "glossary" / "index.html").is_file()


def headings(md: Path) -> set[str]:
    """The anchors MkDocs gives a page's headings (the toc extension's own slugify)."""
    text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.S | re.M)
    return {slugify(re.sub(r"[`*]", "", m.group(1)).strip(), "-") for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def test_every_relative_link_in_the_readme_reaches_a_file_of_the_repository() -> None:
    text = (ROOT / "README.md").read_text()
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    assert targets, "the README links to nothing"
    for target in targets:
        path, _, anchor = target.partition("#")
        file = (ROOT / path).resolve() if path else ROOT / "README.md"
        assert file.is_relative_to(ROOT) and file.is_file(), f"README links to {target}: no such file"
        if anchor and file.suffix == ".md":
            assert anchor in headings(file), f"README links to {target}: {path or 'README.md'} has no heading #{anchor}"
