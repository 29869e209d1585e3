"""The files of a revision, read through the GitHub API: the desired-state file and the
``compose.from_repo`` files (:meth:`RepoFiles.files`).

Without signed commits required the desired-state file comes from the contents API, refused
from the ``size`` GitHub reports before it is decoded. With them nothing is read through the
contents API: the files are read from the blobs of the signed commit's tree (the root tree
the verdict names, :mod:`agent.edges.github_signatures`). One recursive ``git/trees/{root}``
listing (kept for the revision, so the stack files reuse it), every tree on the way to each
file read (and under a directory read) rebuilt from the listing as git's canonical tree
object and checked against the name its parent gives it, up to the root, and every blob
checked against its name (``sha1("blob <len>\\0" + data)``, :mod:`agent.trust`). A mismatch
is a trust error (:class:`UntrustedRevision`, exit 2) naming the path and the revision. A
listing GitHub truncates (a huge repository) is walked one tree at a time down to the
desired-state file.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from urllib.parse import quote

from agent.desired import MAX_BYTES
from agent.edges.github_api import JSON, GitHubApi, Listing
from agent.errors import DesiredStateError, SourceUnavailable, StackFilesError, UntrustedRevision
from agent.stack import TreeEntry, select_files
from agent.trust import blob_id, listing_problem, tree_id, trees_holding


class RepoFiles:
    """Reads ``path`` (the desired-state file) and the stack files of a revision."""

    def __init__(self, api: GitHubApi, path: str) -> None:
        self.path = path
        self._api = api
        # the last recursive tree listing, by the name it was asked by (trees and commits
        # are immutable); checked against the signed tree each time it is used
        self._listed: tuple[str, Listing] | None = None

    def contents(self, sha: str) -> bytes:
        """The file at ``sha``, refused from the ``size`` GitHub reports before it is decoded."""
        api = self._api
        url = api.repo_url(f"contents/{quote(self.path, safe='/')}")
        where = f"{self.path}@{sha[:12]}"
        resp, got = api.get(url, JSON, what=f"{self.path} at {sha[:12]}", params={"ref": sha})
        if got.kind == "not_found":
            raise self.no_file(sha)
        if got.kind != "ok":
            raise api.error(got, what="contents")
        try:
            data = resp.json()
            kind, size = data.get("type"), data.get("size")
        except (ValueError, AttributeError):
            raise SourceUnavailable(f"GitHub API {api.host} answered {where} of {api.repo} "
                                    "with something other than a contents object") from None
        if kind != "file":
            raise DesiredStateError(where, [f"{self.path!r} is a {kind}, not a file"])
        if not isinstance(size, int) or size > MAX_BYTES:
            raise DesiredStateError(where, [
                f"{self.path!r} is larger than the limit of {MAX_BYTES} bytes ({size} bytes); "
                "refused unread"])
        try:
            content = base64.b64decode(str(data.get("content") or ""))
        except (binascii.Error, ValueError):
            content = None
        if content is None or data.get("encoding") != "base64" or len(content) != size:
            raise SourceUnavailable(f"GitHub API {api.host} answered {where} of {api.repo} "
                                    f"with content that does not match its size ({size})")
        return content

    def signed(self, sha: str, tree: str) -> bytes:
        """The desired-state file from the blobs of ``tree``, the signed commit's root tree:
        every tree on its way checked, then its blob, refused from the size the listing
        reports before it is read. A lie: UntrustedRevision naming the path."""
        where = f"{self.path}@{sha[:12]}"
        listing = self._listing(tree, f"the tree of {sha[:12]}")
        if listing.truncated:
            found = self._walk(tree, sha)
        else:
            problem = listing_problem(tree, listing.entries,
                                      trees_holding([self.path], listing.entries))
            if problem is not None:
                raise UntrustedRevision(where, [self._lie(repr(self.path), sha, problem)])
            entry = next((e for e in listing.entries if e.path == self.path), None)
            found = None if entry is None else (entry, listing.sizes.get(self.path))
        if found is None:
            raise self.no_file(sha)
        entry, size = found
        if entry.kind != "blob" or entry.mode not in ("100644", "100755"):
            what = {"tree": "dir", "commit": "submodule"}.get(entry.kind, entry.kind)
            what = "symlink" if entry.mode == "120000" else what
            raise DesiredStateError(where, [f"{self.path!r} is a {what}, not a file"])
        if not isinstance(size, int) or size > MAX_BYTES:
            raise DesiredStateError(where, [
                f"{self.path!r} is larger than the limit of {MAX_BYTES} bytes ({size} bytes); "
                "refused unread"])
        data = self._api.blob(entry.oid, what=f"{self.path} at {sha[:12]}")
        problem = _blob_problem(entry.oid, size, data)
        if problem is not None:
            raise UntrustedRevision(where, [self._lie(repr(self.path), sha, problem)])
        return data

    def _walk(self, tree: str, sha: str) -> tuple[TreeEntry, int | None] | None:
        """The desired-state file's entry, one tree at a time from the root (the recursive
        listing was truncated), each tree checked against the name its parent gives it."""
        where = f"{self.path}@{sha[:12]}"
        parts = self.path.split("/")
        current = tree
        for depth, name in enumerate(parts):
            prefix = "/".join(parts[:depth])
            listing = self._api.tree(current, recursive=False, what=f"the tree of {sha[:12]}")
            if listing.truncated:
                raise DesiredStateError(where, [
                    f"the directory {prefix or '/'!r} is too large for GitHub to list"])
            try:
                ok = tree_id(((e.mode, e.path, e.oid) for e in listing.entries),
                             len(current)) == current
            except ValueError:
                ok = False
            if not ok:
                shown = repr(prefix) if prefix else "the root tree"
                raise UntrustedRevision(where, [self._lie(
                    repr(self.path), sha, f"{shown} as listed is not the tree {current[:12]}")])
            entry = next((e for e in listing.entries if e.path == name), None)
            if entry is None:
                return None
            if depth == len(parts) - 1:
                full = TreeEntry(self.path, entry.mode, entry.kind, entry.oid)
                return full, listing.sizes.get(name)
            if entry.mode.lstrip("0") != "40000":  # the mode is what the tree holds
                return None
            current = entry.oid
        return None

    def files(self, revision: str, root: str | None, paths: Sequence[str]) -> dict[str, bytes]:
        """The files at ``paths`` (a directory: every file under it) at ``revision``: one
        recursive tree request (none when the desired-state file was just read from that
        tree), then one blob request per file, each refused from the size the tree reports
        before it is read. StackFilesError names the problem's path. With ``root`` (the
        signed commit's tree) every tree holding a path read is checked against its name up
        to that root and every blob against its name: a lie is an UntrustedRevision."""
        where = f"compose.from_repo@{revision[:12]}"
        listing = self._listing(root or revision, f"tree at {revision[:12]}")
        if listing.truncated:
            raise StackFilesError(where, ["the repository's tree is too large for one "
                                          "request (GitHub truncated it)"])
        if root is not None:
            problem = listing_problem(root, listing.entries,
                                      trees_holding(paths, listing.entries))
            if problem is not None:
                raise UntrustedRevision(where, [self._lie(
                    f"the tree of {list(paths)}", revision, problem)])
        sizes = listing.sizes

        def size_of(e: TreeEntry) -> int | None:
            size = sizes.get(e.path)
            return size if isinstance(size, int) else None

        chosen = select_files(where, revision, paths, listing.entries, size_of)
        out: dict[str, bytes] = {}
        for entry in chosen:
            path, size = entry.path, sizes.get(entry.path)
            data = self._api.blob(entry.oid, what=f"{path} at {revision[:12]}")
            if root is not None:
                problem = _blob_problem(entry.oid, size, data)
                if problem is not None:
                    raise UntrustedRevision(where, [self._lie(repr(path), revision, problem)])
            elif len(data) != size:
                raise SourceUnavailable(f"GitHub API {self._api.host} answered {path} at "
                                        f"{revision[:12]} with content that does not match "
                                        f"its size ({size})")
            out[path] = data
        return out

    def _listing(self, tree: str, what: str) -> Listing:
        """The recursive listing of ``tree`` (a tree, or a commit: its root tree); the last
        one is kept, so the stack files of the revision just fetched cost no tree request."""
        if self._listed is not None and self._listed[0] == tree:
            return self._listed[1]
        listing = self._api.tree(tree, recursive=True, what=what)
        self._listed = (tree, listing)
        return listing

    def _lie(self, what: str, revision: str, problem: str) -> str:
        """A trust error's text: what was answered (paths, object names), never content."""
        return (f"GitHub API {self._api.host} answered {what} at {revision[:12]} with what is "
                f"not the signed commit's: {problem}; refusing the revision")

    def no_file(self, sha: str) -> DesiredStateError:
        return DesiredStateError(
            f"{self.path}@{sha[:12]}", [f"no file {self.path!r} at revision {sha[:12]}"]
        )


def _blob_problem(oid: str, size: int | None, data: bytes) -> str | None:
    """Why ``data`` is not blob ``oid`` of the listed ``size`` (None when it is)."""
    if blob_id(data, len(oid)) != oid:
        return f"content that is not blob {oid[:12]}"
    if len(data) != size:
        return f"a size ({size}) that is not blob {oid[:12]}'s ({len(data)})"
    return None


__all__ = ["RepoFiles"]
