"""mkdocs hook: the Markdown files kept at the repository root (ARCHITECTURE.md,
SECURITY.md, ...) become pages of the site, and a docs page's link to one of them
(``../SECURITY.md``, which is right when the repository is browsed) points at that page;
in those root files a link into ``docs/`` (``docs/index.md``) or to ``README.md`` points at
the site's page (the README is the site's home page, ``index.md``).

Local code, no plugin, no network: mkdocs loads it from mkdocs.yml's ``hooks``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
ROOT_PAGES = ("ARCHITECTURE.md", "SECURITY.md", "BENCHMARKS.md", "RELIABILITY.md",
              "CONTRIBUTING.md")
_ROOT_LINK = re.compile(r"\]\((?:docs/([^)#]+\.md)|README\.md)([#)])")
_LINK = re.compile(r"\]\(\.\./(" + "|".join(re.escape(p) for p in ROOT_PAGES) + r")([#)])")


def on_files(files: Files, config: Any) -> Files:
    for name in ROOT_PAGES:
        files.append(File(name, src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri in ROOT_PAGES:
        return _ROOT_LINK.sub(lambda m: f"]({m.group(1) or 'index.md'}{m.group(2)}", markdown)
    return _LINK.sub(r"](\1\2", markdown)
