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


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(?:sudo\s+)?(?:\S*/)?mqttlab\s+(.*)$")


def documented_commands() -> list[tuple[str, str]]:
    """Every ``mqttlab ...`` the docs show, in code blocks and inline code: (page, command)."""
    out = []
    for page in DOCS:
        text = page.read_text()
        lines = [ln for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for ln in block.splitlines()]
        lines += re.findall(r"`((?:\S*/)?mqttlab [^`]+)`", text)
        for line in lines:
            for seg in re.split(r"\s(?:\|\||&&|\||;|>|<)\s", line.strip().removeprefix("$ ").split(" #")[0]):
                m = COMMAND.match(seg.strip())
                if m:
                    out.append((page.name, m.group(1)))
    return out


def test_every_command_the_docs_show_names_real_subcommands_and_options() -> None:
    """What a reader copies must exist: each subcommand word and each option of every ``mqttlab``
    command in README.md and docs/ is one the program's own parser has (values are not checked)."""
    import argparse

    from workloads.cli import build_parser

    def sub_of(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return next((dict(a.choices) for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})

    cmds = documented_commands()
    assert len(cmds) >= 40
    wrong = []
    root = build_parser()
    for page, text in cmds:
        parser, path = root, ["mqttlab"]
        for word in text.split():
            if word.startswith("-"):
                if word.split("=")[0] not in parser._option_string_actions and word not in ("-h", "--help"):
                    wrong.append(f"{page}: {' '.join(path)} has no option {word}")
                continue
            subs = sub_of(parser)
            if not subs:
                continue  # a value or a positional of the command reached
            if word not in subs:
                wrong.append(f"{page}: {' '.join(path)} has no command {word}")
                break
            parser, path = subs[word], [*path, word]
    assert wrong == []


def test_the_versions_the_docs_name_are_the_programs() -> None:
    """The emqtt-bench image the docs name is the one `mqttlab bench emqtt` prints, and the broker
    image the one the stack files and the schema pin."""
    from workloads.bench.emqtt import IMAGE
    from workloads.describe.schema import leaf_paths

    text = "\n".join(p.read_text() for p in DOCS)
    assert set(re.findall(r"emqx/emqtt-bench:[\w.]+", text)) == {IMAGE}
    pinned = {leaf_paths()["brokers.image"].default}
    pinned |= {re.search(r"image: (\S+)", p.read_text()).group(1) for p in ROOT.glob("Pulumi.*.yaml")  # type: ignore[union-attr]
               if "image:" in p.read_text()}
    assert pinned == set(re.findall(r"eclipse-mosquitto:[\d.]+\d", text)) and len(pinned) == 1
