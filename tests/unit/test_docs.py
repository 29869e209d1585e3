"""The user documentation stays short where a newcomer starts and cannot point nowhere:
the README's size and its first section, every relative link in the README and docs/, and
every subcommand of the CLI documented in docs/commands.md. (`make docs` builds the site
with `mkdocs build --strict`, which also checks anchors and the nav.)"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from agent.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXISTING_STACK = "Your existing compose stack on one server"

# [text](target) and [text](target "title"), not images' alt text inside code
_LINK = re.compile(r"(?<!\!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _user_docs() -> list[Path]:
    return [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, lines) per level-2 section; the lines before the first are ('', ...)."""
    out: list[tuple[str, list[str]]] = [("", [])]
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.startswith("## "):
            out.append((line[3:].strip(), []))
        out[-1][1].append(line)
    return out


def _relative_links(path: Path) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", path.read_text()))
    targets = [m.group(1) for m in _LINK.finditer(text)]
    return [t for t in targets
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def _subcommands() -> list[str]:
    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subs) == 1
    return sorted(subs[0].choices)


def test_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


def test_existing_stack_section_comes_right_after_the_intro_in_at_most_25_lines():
    sections = _sections(README.read_text())
    intro, first = sections[0], sections[1]
    assert intro[1][0].startswith("# "), "the README starts with its title"
    assert first[0] == EXISTING_STACK
    assert len(first[1]) <= 25, f"{EXISTING_STACK!r} has {len(first[1])} lines"


def test_existing_stack_section_names_every_step_of_the_takeover():
    lines = dict(_sections(README.read_text()))[EXISTING_STACK]
    text = "\n".join(lines)
    for step in ("gitops-agent init --project-dir", "--out desired-state.yml",
                 "[source]", "gitops-agent check-config",
                 "systemctl enable --now gitops-agent", "journalctl -u gitops-agent",
                 "journalctl -p warning -u gitops-agent", "gitops-agent status"):
        assert step in text, step


def test_every_relative_link_in_the_user_docs_resolves_to_a_file_in_the_repo():
    broken = []
    for doc in _user_docs():
        for target in _relative_links(doc):
            path = target.split("#", 1)[0]
            if not (doc.parent / path).resolve().exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_link_check_sees_the_links_of_every_doc():
    # a regex that matched nothing would pass the check above vacuously
    assert "docs/configuration.md" in _relative_links(README)
    assert "commands.md" in _relative_links(ROOT / "docs" / "index.md")


def test_every_subcommand_of_the_cli_has_a_section_in_commands_md():
    text = (ROOT / "docs" / "commands.md").read_text()
    headings = {h for h, _ in _sections(text)}
    missing = [c for c in _subcommands() if f"`{c}`" not in headings]
    assert missing == []


def test_the_parser_walk_finds_the_known_subcommands():
    assert {"sync", "run", "status", "validate", "bump", "rollback"} <= set(_subcommands())


def test_every_docs_page_is_in_the_mkdocs_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.name for p in (ROOT / "docs").glob("*.md")]
    assert [p for p in pages if f": {p}\n" not in nav] == []
