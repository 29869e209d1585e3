"""The source-trust policy that spans revisions: no replay, no sideways move.

A signature proves who made a commit, not that it is the *next* commit. With signed commits
required, someone who can move the branch (a compromised git host, a leaked push token)
could otherwise point it back at an older signed commit (replaying a release with a known
hole) or at a signed commit that was never merged (a review-rejected branch). So the new
head must descend from the last applied revision. ``sync --force`` or
``[trust] allow_rewind = true`` accepts a head that does not, and says so in the log.

Pure: the ancestry question is asked of the source (git: ``merge-base --is-ancestor``,
GitHub: the compare API).

Also pure: git's content addressing, for a source that reads a signed commit's files through
an API it does not trust (GitHub's ``git/trees`` and ``git/blobs``). A signature covers the
commit object, which names its root tree; every tree names its entries' objects by hash. So
a blob is the one its tree names when ``sha1("blob <len>\\0" + data)`` is that name
(:func:`blob_id`), and a directory's listing is the tree its parent names when the canonical
tree object rebuilt from it hashes to that name (:func:`tree_id`, :func:`listing_problem`),
up to the root tree of the signed payload (:func:`commit_tree`).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable, Sequence
from typing import Protocol

import structlog

from agent.errors import UntrustedRevision

log = structlog.get_logger()


class AncestryOracle(Protocol):
    def is_ancestor(self, ancestor: str, descendant: str) -> bool: ...

    def describe(self) -> str: ...


def check_ancestry(
    source: AncestryOracle,
    last_applied: str | None,
    revision: str,
    *,
    require_signed: bool,
    allow_rewind: bool,
    force: bool,
    path: str = "desired-state.yml",
) -> None:
    """Refuse (:class:`UntrustedRevision`) a ``revision`` that does not descend from
    ``last_applied`` when signed commits are required, unless rewinding is allowed or forced.

    Without signed commits a force-push is followed (and logged by the pass, as before):
    nothing is asked. The first revision (nothing applied yet) and the same revision pass.
    """
    if not require_signed or last_applied is None or last_applied == revision:
        return
    if source.is_ancestor(last_applied, revision):
        return
    backwards = source.is_ancestor(revision, last_applied)
    how = ("an older commit (the branch moved back)" if backwards
           else "a commit that does not descend from it (the branch moved sideways)")
    if force or allow_rewind:
        log.warning(
            "agent.trust.rewind_accepted",
            revision=revision,
            last_applied=last_applied,
            backwards=backwards,
            why="sync --force" if force else "trust.allow_rewind",
            source=source.describe(),
        )
        return
    raise UntrustedRevision(
        f"{path}@{revision[:12]}",
        [f"revision {revision} is {how}, not a descendant of the last applied revision "
         f"{last_applied}; refusing a replay or a sideways move of the branch "
         "(run 'sync --force' or set trust.allow_rewind = true to accept it)"],
    )


# --------------------------------------------------------------------------- git objects
TREE_MODE = "40000"  # git writes a tree's mode without the leading zero GitHub shows


class ListedEntry(Protocol):
    """One entry of a tree listing as an API reports it (``agent.stack.TreeEntry``)."""

    @property
    def path(self) -> str: ...  # from the root tree, "/"-separated

    @property
    def mode(self) -> str: ...  # as reported: GitHub says "040000" for a tree

    @property
    def kind(self) -> str: ...  # blob, tree, commit

    @property
    def oid(self) -> str: ...


def git_object_id(kind: str, body: bytes, length: int = 40) -> str:
    """Git's name of an object: the hash of ``"<kind> <len>\\0" + body`` (SHA-1, or SHA-256
    for a repository whose names are 64 hex digits)."""
    algo = hashlib.sha1 if length == 40 else hashlib.sha256  # noqa: S324 - git's object id
    return algo(kind.encode() + b" %d\0" % len(body) + body).hexdigest()


def blob_id(data: bytes, length: int = 40) -> str:
    return git_object_id("blob", data, length)


def git_mode(mode: str) -> str:
    """A mode as git writes it in a tree object: octal digits, no leading zero."""
    if not mode or not mode.isascii() or not mode.isdigit() or any(c in "89" for c in mode):
        raise ValueError(f"mode {mode[:12]!r} is not an octal file mode")
    return mode.lstrip("0") or "0"


def tree_object(entries: Iterable[tuple[str, str, str]]) -> bytes:
    """The body of the git tree object holding ``(mode, name, oid)`` entries: each
    ``"<mode> <name>\\0"`` + the raw object name, in git's order (a tree's name sorts as if
    it ended in "/"). ValueError for what no tree can hold (a name with "/" or NUL, two
    entries with one name, an object name that is not hex)."""
    rows: list[tuple[bytes, bytes]] = []
    names: set[str] = set()
    for mode, name, oid in entries:
        m = git_mode(mode)
        if not name or "/" in name or "\0" in name:
            raise ValueError(f"entry name {name[:60]!r} cannot be in a tree")
        if name in names:
            raise ValueError(f"two entries named {name[:60]!r}")
        names.add(name)
        if len(oid) not in (40, 64) or any(c not in "0123456789abcdef" for c in oid):
            raise ValueError(f"entry {name[:60]!r} names {oid[:70]!r}, not an object")
        raw = name.encode("utf-8", "surrogateescape")
        key = raw + b"/" if m == TREE_MODE else raw
        rows.append((key, m.encode() + b" " + raw + b"\0" + bytes.fromhex(oid)))
    return b"".join(row for _, row in sorted(rows))


def tree_id(entries: Iterable[tuple[str, str, str]], length: int = 40) -> str:
    return git_object_id("tree", tree_object(entries), length)


def commit_tree(payload: str, length: int = 40) -> str | None:
    """The root tree a commit object (a signed payload) names: its first header line."""
    first = payload.split("\n", 1)[0]
    name = first.removeprefix("tree ")
    if first == name or len(name) != length or any(c not in "0123456789abcdef" for c in name):
        return None
    return name


def _parents(path: str) -> list[str]:
    """The trees holding ``path``, the root ("") first."""
    parts = path.split("/")
    return [""] + ["/".join(parts[:i]) for i in range(1, len(parts))]


def trees_holding(paths: Iterable[str], entries: Sequence[ListedEntry]) -> set[str]:
    """The trees to check before reading ``paths`` (a directory: everything under it) from
    a recursive listing: the root, every tree on the way to each path, the path itself when
    it is a tree and every tree under it, so that no entry can be changed, added or left
    out unseen."""
    want = {""}
    for p in paths:
        base = p.rstrip("/")
        want.update(_parents(base))
        for e in entries:
            if e.path == base or e.path.startswith(base + "/"):
                want.update(_parents(e.path))
                if e.kind == "tree":
                    want.add(e.path)
    return want


def listing_problem(root: str, entries: Sequence[ListedEntry], trees: Iterable[str]
                    ) -> str | None:
    """Whether each of ``trees`` ("" is the root; the trees holding them are checked too),
    rebuilt from the entries a recursive listing reports directly under it, is the object
    its parent's entry names, up to the root: the object ``root``. A tree its (checked)
    parent does not hold is simply not there, unless the listing shows entries under it.
    None when every one is; else which is not (paths and object names, never content)."""
    children: dict[str, list[ListedEntry]] = {}
    by_path: dict[str, ListedEntry] = {}
    for e in entries:
        children.setdefault(posixpath.dirname(e.path), []).append(e)
        by_path.setdefault(e.path, e)
    check = {t for d in trees for t in (*_parents(d), d)} if trees else {""}
    for d in sorted(check, key=lambda t: (t.count("/") + (t != ""), t)):
        if d == "":
            expected = root
        else:
            entry = by_path.get(d)
            if entry is None or entry.kind != "tree":
                if children.get(d):  # entries under what the checked parent does not hold
                    return f"the listing has entries under {d!r} but no tree {d!r}"
                continue  # not there: its checked parent proves it
            expected = entry.oid
        where = repr(d) if d else "the root tree"
        listed = children.get(d, [])
        for e in listed:  # the type and the mode agree, as in any git tree
            is_tree = _git_mode_or_none(e.mode) == TREE_MODE
            if is_tree != (e.kind == "tree") or (e.kind == "commit") != (e.mode == "160000"):
                return (f"the listing gives {e.path!r} type {e.kind[:12]!r} "
                        f"with mode {e.mode[:12]!r}")
        try:
            got = tree_id(((e.mode, posixpath.basename(e.path), e.oid) for e in listed),
                          len(expected))
        except ValueError as err:
            return f"{where} cannot be a git tree ({err})"
        if got != expected:
            names = "the signed commit" if d == "" else "its parent"
            return f"{where} as listed is not the tree {expected[:12]} {names} names"
    return None


def _git_mode_or_none(mode: str) -> str | None:
    try:
        return git_mode(mode)
    except ValueError:
        return None


__all__ = ["AncestryOracle", "ListedEntry", "blob_id", "check_ancestry", "commit_tree",
           "git_object_id", "listing_problem", "tree_id", "tree_object", "trees_holding"]
