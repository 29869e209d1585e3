"""The GitHub REST source: one conditional request per poll while nothing changes.

Each poll asks for the branch head SHA (``Accept: application/vnd.github.sha``) with
``If-None-Match`` set to the ETag of the last 200. An unchanged head is answered 304, which
GitHub does not count against the rate limit, and the revision and content kept from the last
successful fetch are returned. Only a new head fetches the file, at exactly that SHA, so the
revision and the content always match.

The ETag, the SHA, the content (and any rate-limit wait) are kept in memory and persisted
atomically in ``state_dir/github-cache.json``, so a restarted daemon still sends a single
conditional request.

Every answer is sorted by :func:`classify` (status, headers, body -> what it means), a pure
function. Rate limits are honoured: a 403/429 carrying ``x-ratelimit-remaining: 0``,
``retry-after`` or GitHub's secondary-limit message raises :class:`RateLimited` (a transient
error the pass does not retry: it is waited out), and until the wait has elapsed every
``fetch()`` raises it again without sending anything. 401, a 403 that is not a rate limit and
404 are configuration problems (:class:`ConfigError`, naming the token, repository or path),
not an outage.

Trust: with ``[trust] require_signed_commits`` the head's ``commit.verification`` is asked
for. Without ``allowed_signers_file`` GitHub's own verdict is taken (true for *any* GitHub
user's key and for GitHub's web-flow key). With it, the SSH signature and payload GitHub
returns are verified locally against that file (``ssh-keygen -Y verify``, namespace ``git``),
the payload must hash to the SHA asked for, and only SSH signatures count.

A lying API can't deploy: with signed commits required nothing is read through the contents
API. The desired-state file and the ``compose.from_repo`` files are read from the blobs of
the signed commit's tree: the root tree is the one the signed payload names (``tree
<sha>``; without ``allowed_signers_file``, the payload's when it is that commit, else
GitHub's ``commit.tree.sha``, as GitHub's verdict is taken). One recursive
``git/trees/{root}`` listing (kept for the revision, so the stack files reuse it), every
tree on the way to each file read (and under a directory read) rebuilt from the listing as
git's canonical tree object and checked against the name its parent gives it, up to the
root, and every blob checked against its name (``sha1("blob <len>\\0" + data)``,
:mod:`agent.trust`). A mismatch is a trust error (:class:`UntrustedRevision`, exit 2) naming
the path and the revision; nothing of it is cached or written. A listing GitHub truncates
(a huge repository) is walked one tree at a time down to the desired-state file. An idle
poll is still one conditional request: the extra requests happen only for a new head.

The token is sent only to the configured API host; requests drops the ``Authorization``
header on a redirect to another host or port.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

import requests
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from agent.config import AgentConfig
from agent.desired import MAX_BYTES
from agent.edges.source import Fetched
from agent.errors import (
    AgentEnvironmentError,
    ConfigError,
    DesiredStateError,
    SourceUnavailable,
    StackFilesError,
    TransientError,
    UntrustedRevision,
)
from agent.log import redact_text
from agent.secrets import token_from_file, trusted_copy
from agent.stack import TreeEntry, select_files
from agent.state import write_atomic
from agent.trust import blob_id, commit_tree, listing_problem, tree_id, trees_holding

log = structlog.get_logger()

CACHE_FILE = "github-cache.json"
CACHE_VERSION = 2
API_VERSION = "2022-11-28"
DEFAULT_API_URL = "https://api.github.com"


def _version() -> str:
    try:
        from agent import __version__

        return __version__
    except ImportError:  # agent imported as a namespace package (some editable installs)
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("gitops-agent")
        except PackageNotFoundError:
            return "unknown"


USER_AGENT = f"gitops-agent/{_version()}"
# GitHub's advice for a secondary rate limit or a 429 that does not say how long to wait.
DEFAULT_RATE_LIMIT_WAIT = 60.0
# GitHub's primary window is an hour: a longer wait means our clock is off, not GitHub's.
MAX_RATE_LIMIT_WAIT = 3600.0


SSH_SIGNATURE_HEADER = "-----BEGIN SSH SIGNATURE-----"


class RateLimited(TransientError):
    """The GitHub API asked us to wait; nothing is sent until ``retry_after_seconds`` pass.

    Transient, but not a :class:`SourceUnavailable`: the pass's retry policy does not retry
    it (every retry would be refused locally anyway); the wait is simply waited out."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message)


# --------------------------------------------------------------------------- classification
Kind = Literal["ok", "not_modified", "rate_limited", "unauthorized", "forbidden", "not_found",
               "unprocessable", "empty_repo", "server_error", "unexpected"]


@dataclass(frozen=True)
class Classified:
    """What one GitHub API answer means."""

    kind: Kind
    status: int
    message: str = ""  # GitHub's own "message", redacted and shortened
    wait_seconds: float | None = None  # rate_limited: how long to send nothing
    reason: str = ""  # rate_limited: which limit


def classify(status: int, headers: Mapping[str, str], body: bytes, *, now: float) -> Classified:
    """Sort an answer by its cause. Pure: status code, headers, body and the current epoch."""
    h = {k.lower(): v for k, v in headers.items()}
    message = _message(body) if status >= 300 else ""
    if 200 <= status < 300:
        return Classified("ok", status)
    if status == 304:
        return Classified("not_modified", status)
    if status in (403, 429):
        wait: float | None = None
        reason = ""
        retry_after = h.get("retry-after")
        if retry_after is not None:
            try:
                wait, reason = max(0.0, float(retry_after)), f"retry-after {retry_after}s"
            except ValueError:
                wait = None
        if wait is None and h.get("x-ratelimit-remaining") == "0":
            try:
                wait = max(0.0, float(h.get("x-ratelimit-reset", "")) - now) + 1.0
            except ValueError:
                wait = DEFAULT_RATE_LIMIT_WAIT
            limit = h.get("x-ratelimit-limit")
            reason = "primary rate limit exhausted" + (f" ({limit} requests/hour)" if limit else "")
        if wait is None and (status == 429 or "rate limit" in message.lower()):
            wait, reason = DEFAULT_RATE_LIMIT_WAIT, "secondary rate limit"
        if wait is not None:
            return Classified("rate_limited", status, message, min(wait, MAX_RATE_LIMIT_WAIT),
                              reason)
        return Classified("forbidden", status, message)
    if status == 401:
        return Classified("unauthorized", status, message)
    if status == 404:
        return Classified("not_found", status, message)
    if status == 422:
        return Classified("unprocessable", status, message)
    if status == 409:
        return Classified("empty_repo", status, message)
    if status >= 500:
        return Classified("server_error", status, message)
    return Classified("unexpected", status, message)


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    msg = data.get("message") if isinstance(data, dict) else None
    return redact_text(str(msg))[:200] if msg else ""


# --------------------------------------------------------------------------- persisted cache
class CacheKey(BaseModel):
    """What the cached answer depends on: another source or trust policy starts afresh."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_url: str
    repo: str
    branch: str
    path: str
    require_verified: bool
    signers: str | None = None  # sha256 of the allowed signers file's contents


class SourceCache(BaseModel):
    """``state_dir/github-cache.json``: the conditional-request cache."""

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    version: Literal[2] = 2  # CACHE_VERSION
    key: CacheKey | None = None
    etag: str | None = None  # of the last 200 for the head
    sha: str | None = None  # the head fetched at that ETag
    content: bytes | None = None  # the file at that head (never untrusted content)
    trust_error: str | None = None
    tree: str | None = None  # signed commits: the root tree the head's signed payload names
    blocked_until: float = 0.0  # epoch before which nothing is sent (rate limit)

    @field_validator("sha", "tree")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not _is_sha(v):
            raise ValueError("not an object name")
        return v


@dataclass(frozen=True)
class _Listing:
    """A ``git/trees`` answer: its entries (paths from the tree asked for), their sizes."""

    entries: list[TreeEntry]
    sizes: dict[str, int | None]
    truncated: bool


class GitHubSource:
    def __init__(
        self,
        repo: str,
        branch: str,
        path: str,
        *,
        state_dir: Path,
        api_url: str = DEFAULT_API_URL,
        token: str | None = None,
        timeout: float = 30.0,
        require_verified: bool = False,
        allowed_signers_file: Path | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.branch = branch
        self.path = path
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.require_verified = require_verified
        self.allowed_signers_file = allowed_signers_file if require_verified else None
        self.cache_path = state_dir / CACHE_FILE
        self.requests_made = 0  # HTTP requests sent (benchmarks count them)
        self._token = token
        self._clock = clock
        self._host = urlsplit(self.api_url).hostname or ""
        self._session = session or requests.Session()
        self._session.headers.update({
            "User-Agent": USER_AGENT,
            "X-GitHub-Api-Version": API_VERSION,
        })
        self._signers_digest: str | None = None
        if self.allowed_signers_file is not None:
            try:
                self._signers_digest = hashlib.sha256(
                    self.allowed_signers_file.read_bytes()).hexdigest()
            except OSError as e:
                raise ConfigError("trust.allowed_signers_file",
                                  [f"cannot read {self.allowed_signers_file}: {e.strerror}"]
                                  ) from None
        self._cache = SourceCache()
        # (etag, sha) of a head without the file: not asked for again while it stays the head
        self._missing: tuple[str | None, str] | None = None
        # the last recursive tree listing, by the name it was asked by (trees and commits
        # are immutable); checked against the signed tree each time it is used
        self._listed: tuple[str, _Listing] | None = None
        self._load_cache()

    @classmethod
    def from_config(
        cls, cfg: AgentConfig, *, session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> GitHubSource:
        src = cfg.source
        return cls(
            src.repo,
            src.branch,
            src.path,
            state_dir=cfg.agent.state_dir,
            api_url=src.api_url,
            token=token_from_file(src.token_file, "source.token_file"),
            timeout=src.timeout_seconds,
            require_verified=cfg.trust.require_signed_commits,
            allowed_signers_file=cfg.trust.allowed_signers_file,
            session=session,
            clock=clock,
        )

    def describe(self) -> str:
        where = "" if self.api_url == DEFAULT_API_URL else f" ({self._host})"
        return f"github:{self.repo}@{self.branch}:{self.path}{where}"

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------ fetch
    def fetch(self) -> Fetched:
        c = self._cache
        now = self._clock()
        wait = c.blocked_until - now
        if wait > MAX_RATE_LIMIT_WAIT:  # the clock stepped back inside this process
            log.warning("agent.source.rate_limit_wait_capped", wait_seconds=round(wait),
                        capped_to=MAX_RATE_LIMIT_WAIT)
            c.blocked_until, wait = now + MAX_RATE_LIMIT_WAIT, MAX_RATE_LIMIT_WAIT
            self._save_cache()
        if wait > 0:
            raise RateLimited(self._rate_limited_message(wait), retry_after_seconds=wait)

        headers = {"Accept": "application/vnd.github.sha"}
        if self._missing is not None and self._missing[0] is not None:
            # the head had no file: ask whether it is still that head
            headers["If-None-Match"] = self._missing[0]
        elif c.etag is not None and c.sha is not None and c.content is not None:
            headers["If-None-Match"] = c.etag
        resp, got = self._get(self._repo_url(f"commits/{quote(self.branch, safe='/')}"),
                              headers, what=f"the head of branch {self.branch!r}")
        if got.kind == "not_modified" and "If-None-Match" in headers:
            if self._missing is not None:
                raise self._no_file(self._missing[1])
            return self._cached()
        if got.kind != "ok":
            raise self._error(got, what="head")
        sha = resp.text.strip()
        if not _is_sha(sha):
            raise SourceUnavailable(
                f"GitHub API {self._host} answered the head of {self.repo}@{self.branch} "
                f"with {sha[:60]!r}, not a commit SHA; is source.api_url a GitHub API "
                f"(https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise)?"
            )
        etag = resp.headers.get("ETag")

        if self._missing is not None and sha == self._missing[1]:
            self._missing = (etag, sha)
            raise self._no_file(sha)
        self._missing = None
        if sha == c.sha and c.content is not None:
            # the ETag changed but the head did not: nothing more to fetch
            if etag != c.etag:
                c.etag = etag
                self._save_cache()
            return self._cached()

        trust_error, tree = self._check_verified(sha) if self.require_verified else (None, None)
        if trust_error is None:
            try:
                content = (self._fetch_content(sha) if tree is None
                           else self._read_signed(sha, tree))
            except DesiredStateError:
                self._missing = (etag, sha)  # one conditional request per poll while it stays
                raise
            except UntrustedRevision as e:  # the API lied about the signed tree
                trust_error = "; ".join(e.problems)
        if trust_error is not None:
            content, tree = b"", None  # untrusted content is neither read nor cached
        c.etag, c.sha, c.content, c.trust_error, c.tree = etag, sha, content, trust_error, tree
        self._save_cache()
        return self._cached()

    def _cached(self) -> Fetched:
        c = self._cache
        assert c.sha is not None and c.content is not None
        return Fetched(revision=c.sha, content=c.content, path=self.path,
                       trust_error=c.trust_error)

    # ------------------------------------------------------------------ trust
    def _check_verified(self, sha: str) -> tuple[str | None, str | None]:
        """(why commit ``sha`` is refused, None), or (None, the root tree its signed
        payload names): the tree everything of that revision is read from."""
        resp, got = self._get(self._repo_url(f"commits/{sha}"),
                              {"Accept": "application/vnd.github+json"},
                              what=f"commit {sha[:12]}")
        if got.kind != "ok":
            raise self._error(got, what="commit")
        try:
            data = resp.json()
            answered = data["sha"]
            verification = data["commit"]["verification"]
            verified = verification.get("verified") is True
            reason = str(verification.get("reason") or "unknown")
            signature = verification.get("signature")
            payload = verification.get("payload")
            claimed = (data["commit"].get("tree") or {}).get("sha")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SourceUnavailable(
                f"GitHub API {self._host} answered commit {sha[:12]} of {self.repo} "
                "without commit.verification"
            ) from None
        if answered != sha:
            return (f"GitHub API {self._host} answered commit {str(answered)[:12]!r} when "
                    f"asked for {sha[:12]}; refusing it"), None
        if self.allowed_signers_file is None:
            if not verified:
                return f"commit {sha[:12]} is not verified by GitHub (reason: {reason})", None
            # GitHub's verdict is taken, so is its word for the tree when the payload it
            # returns is not that commit's
            tree = (commit_tree(payload, len(sha)) if isinstance(payload, str)
                    and isinstance(signature, str)
                    and commit_sha(payload, signature, len(sha)) == sha else None)
            if tree is None and isinstance(claimed, str) and _is_sha(claimed) \
                    and len(claimed) == len(sha):
                tree = claimed
            if tree is None:
                return (f"GitHub API {self._host} answered commit {sha[:12]} without its "
                        "tree; refusing it"), None
            return None, tree
        # ssh-keygen opens the file by name: hand it a private copy of what was checked
        signers = trusted_copy(self.allowed_signers_file, "trust.allowed_signers_file",
                               self.cache_path.parent / SIGNERS_COPY)
        error = verify_ssh_signature(sha, signature, payload, signers)
        if error is not None:
            return error, None
        tree = commit_tree(str(payload), len(sha))
        if tree is None:
            return f"the signed payload of commit {sha[:12]} names no tree; refusing it", None
        return None, tree

    def _trusted_tree(self, revision: str, where: str) -> str:
        """The root tree of ``revision``'s signed commit (the head's is kept). Refused:
        UntrustedRevision."""
        c = self._cache
        if revision == c.sha and c.trust_error is not None:
            raise UntrustedRevision(where, [c.trust_error])
        if revision == c.sha and c.tree is not None:
            return c.tree
        error, tree = self._check_verified(revision)
        if error is not None or tree is None:
            raise UntrustedRevision(where, [error or f"commit {revision[:12]} has no tree"])
        return tree

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``ancestor`` is ``descendant`` or one of its ancestors (compare API)."""
        if ancestor == descendant:
            return True
        resp, got = self._get(
            self._repo_url(f"compare/{quote(ancestor, safe='')}...{quote(descendant, safe='')}"),
            {"Accept": "application/vnd.github+json"},
            what=f"the comparison of {ancestor[:12]} with {descendant[:12]}",
            params={"per_page": "1"},
        )
        if got.kind == "not_found":
            return False  # a commit GitHub no longer knows is nobody's ancestor
        if got.kind != "ok":
            raise self._error(got, what="compare")
        try:
            status = resp.json()["status"]
        except (ValueError, KeyError, TypeError):
            status = None
        if status not in ("ahead", "identical", "behind", "diverged"):
            raise SourceUnavailable(
                f"GitHub API {self._host} compared {ancestor[:12]} with {descendant[:12]} "
                f"of {self.repo} without a known status ({str(status)[:40]!r})")
        return status in ("ahead", "identical")

    # ------------------------------------------------------------------ contents
    def _fetch_content(self, sha: str) -> bytes:
        """The file at ``sha``, refused from the ``size`` GitHub reports before it is decoded."""
        url = self._repo_url(f"contents/{quote(self.path, safe='/')}")
        where = f"{self.path}@{sha[:12]}"
        resp, got = self._get(url, {"Accept": "application/vnd.github+json"},
                              what=f"{self.path} at {sha[:12]}", params={"ref": sha})
        if got.kind == "not_found":
            raise self._no_file(sha)
        if got.kind != "ok":
            raise self._error(got, what="contents")
        try:
            data = resp.json()
            kind, size = data.get("type"), data.get("size")
        except (ValueError, AttributeError):
            raise SourceUnavailable(f"GitHub API {self._host} answered {where} of {self.repo} "
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
            raise SourceUnavailable(f"GitHub API {self._host} answered {where} of {self.repo} "
                                    f"with content that does not match its size ({size})")
        return content

    def _read_signed(self, sha: str, tree: str) -> bytes:
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
            raise self._no_file(sha)
        entry, size = found
        if entry.kind != "blob" or entry.mode not in ("100644", "100755"):
            what = {"tree": "dir", "commit": "submodule"}.get(entry.kind, entry.kind)
            what = "symlink" if entry.mode == "120000" else what
            raise DesiredStateError(where, [f"{self.path!r} is a {what}, not a file"])
        if not isinstance(size, int) or size > MAX_BYTES:
            raise DesiredStateError(where, [
                f"{self.path!r} is larger than the limit of {MAX_BYTES} bytes ({size} bytes); "
                "refused unread"])
        data = self._blob(entry.oid, what=f"{self.path} at {sha[:12]}")
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
            listing = self._list(current, recursive=False, what=f"the tree of {sha[:12]}")
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

    def read_files(self, revision: str, paths: Sequence[str]) -> dict[str, bytes]:
        """The files at ``paths`` (a directory: every file under it) at ``revision``: one
        recursive tree request (none when the desired-state file was just read from that
        tree), then one blob request per file, each refused from the size the tree reports
        before it is read. StackFilesError names the problem's path. With signed commits
        required the tree is the signed commit's, every tree holding a path read is
        checked against its name up to that root and every blob against its name: a lie
        is an UntrustedRevision."""
        where = f"compose.from_repo@{revision[:12]}"
        root = self._trusted_tree(revision, where) if self.require_verified else None
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
            data = self._blob(entry.oid, what=f"{path} at {revision[:12]}")
            if root is not None:
                problem = _blob_problem(entry.oid, size, data)
                if problem is not None:
                    raise UntrustedRevision(where, [self._lie(repr(path), revision, problem)])
            elif len(data) != size:
                raise SourceUnavailable(f"GitHub API {self._host} answered {path} at "
                                        f"{revision[:12]} with content that does not match "
                                        f"its size ({size})")
            out[path] = data
        return out

    def _listing(self, tree: str, what: str) -> _Listing:
        """The recursive listing of ``tree`` (a tree, or a commit: its root tree); the last
        one is kept, so the stack files of the revision just fetched cost no tree request."""
        if self._listed is not None and self._listed[0] == tree:
            return self._listed[1]
        listing = self._list(tree, recursive=True, what=what)
        self._listed = (tree, listing)
        return listing

    def _list(self, tree: str, *, recursive: bool, what: str) -> _Listing:
        resp, got = self._get(self._repo_url(f"git/trees/{quote(tree, safe='')}"),
                              {"Accept": "application/vnd.github+json"},
                              what=what, params={"recursive": "1"} if recursive else None)
        if got.kind != "ok":
            raise self._error(got, what="git trees")
        try:
            doc = resp.json()
            entries = [TreeEntry(str(e["path"]), str(e["mode"]), str(e["type"]), str(e["sha"]))
                       for e in doc["tree"]]
            sizes = {str(e["path"]): (e.get("size") if isinstance(e.get("size"), int)
                                      else None) for e in doc["tree"]}
            truncated = bool(doc.get("truncated"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SourceUnavailable(f"GitHub API {self._host} answered {what} with something "
                                    "other than a tree") from None
        return _Listing(entries, sizes, truncated)

    def _blob(self, oid: str, *, what: str) -> bytes:
        """The content GitHub answers for blob ``oid`` (checked by the caller)."""
        resp, got = self._get(self._repo_url(f"git/blobs/{quote(oid, safe='')}"),
                              {"Accept": "application/vnd.github+json"}, what=what)
        if got.kind != "ok":
            raise self._error(got, what="git blobs")
        try:
            blob = resp.json()
            return base64.b64decode(str(blob.get("content") or ""))
        except (ValueError, AttributeError, binascii.Error):
            return b""

    def _lie(self, what: str, revision: str, problem: str) -> str:
        """A trust error's text: what was answered (paths, object names), never content."""
        return (f"GitHub API {self._host} answered {what} at {revision[:12]} with what is "
                f"not the signed commit's: {problem}; refusing the revision")

    def _no_file(self, sha: str) -> DesiredStateError:
        return DesiredStateError(
            f"{self.path}@{sha[:12]}", [f"no file {self.path!r} at revision {sha[:12]}"]
        )

    # ------------------------------------------------------------------ HTTP
    def _repo_url(self, rest: str) -> str:
        return f"{self.api_url}/repos/{self.repo}/{rest}"

    def _get(
        self, url: str, headers: Mapping[str, str], *, what: str,
        params: Mapping[str, str] | None = None,
    ) -> tuple[requests.Response, Classified]:
        h = dict(headers)
        if self._token is not None:
            # Only ever to the configured API URL; requests strips it on a redirect to
            # another host or port.
            h["Authorization"] = f"Bearer {self._token}"
        self.requests_made += 1
        try:
            resp = self._session.get(url, headers=h, params=params, timeout=self.timeout)
        except requests.Timeout:
            raise SourceUnavailable(
                f"GitHub API {self._host} did not answer within {self.timeout:g}s "
                f"({what} of {self.repo})"
            ) from None
        except requests.RequestException as e:
            raise SourceUnavailable(
                f"GitHub API {self._host} unreachable ({what} of {self.repo}): "
                f"{redact_text(_short(e))}"
            ) from None
        now = self._clock()
        got = classify(resp.status_code, resp.headers, resp.content, now=now)
        if got.kind == "rate_limited":
            assert got.wait_seconds is not None
            self._cache.blocked_until = now + got.wait_seconds
            self._save_cache()
            log.warning(
                "agent.source.rate_limited",
                source=self.describe(),
                status=resp.status_code,
                wait_seconds=round(got.wait_seconds, 1),
                reason=got.reason,
            )
            raise RateLimited(self._rate_limited_message(got.wait_seconds, got.reason),
                              retry_after_seconds=got.wait_seconds)
        return resp, got

    def _rate_limited_message(self, wait: float, reason: str = "") -> str:
        why = f" ({reason})" if reason else ""
        return (
            f"GitHub API {self._host} rate limit for {self.repo}{why}: "
            f"not asking again for {wait:.0f}s"
        )

    def _error(self, got: Classified, *, what: str) -> ConfigError | SourceUnavailable:
        status = got.status
        said = f" ({status} {got.message})" if got.message else f" ({status})"
        repo, branch = self.repo, self.branch
        if got.kind == "unauthorized":
            if self._token is None:
                fix = "set source.token_file to a file holding a token that can read it"
            else:
                fix = ("the token in source.token_file is invalid or expired; "
                       "replace it with a valid token")
            return ConfigError("source.token_file", [
                f"GitHub API {self._host} refused access to {repo}{said}: {fix}"])
        if got.kind == "forbidden":
            return ConfigError("source.token_file", [
                f"GitHub API {self._host} forbids reading {repo}{said}: give the token in "
                "source.token_file read access to the repository's contents "
                "(fine-grained: 'Contents: read'; classic: 'repo' scope), and authorize it "
                "for the organisation's SSO if it uses SSO"])
        if got.kind == "not_found":
            auth = ("or the token in source.token_file cannot see it"
                    if self._token is not None
                    else "or it is private and needs source.token_file")
            return ConfigError("source.repo", [
                f"GitHub repository {repo} not found at {self.api_url}{said}: check "
                f"source.repo (\"owner/name\") and source.api_url, {auth}"])
        if got.kind == "unprocessable" and what == "head":
            return SourceUnavailable(
                f"branch {branch!r} not found in GitHub repository {repo}{said}: "
                "check source.branch"
            )
        if got.kind == "empty_repo":
            return SourceUnavailable(f"GitHub repository {repo} is empty{said}")
        if got.kind == "server_error":
            return SourceUnavailable(
                f"GitHub API {self._host} answered {status} for {repo}@{branch}; "
                "retrying later"
            )
        return SourceUnavailable(
            f"GitHub API {self._host} answered {status} for {repo}@{branch}{said}"
        )

    # ------------------------------------------------------------------ persisted cache
    def _cache_key(self) -> CacheKey:
        return CacheKey(api_url=self.api_url, repo=self.repo, branch=self.branch,
                        path=self.path, require_verified=self.require_verified,
                        signers=self._signers_digest)

    def _load_cache(self) -> None:
        try:
            raw = self.cache_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("agent.source.cache_unreadable", path=str(self.cache_path),
                        error=e.strerror)
            return
        try:
            loaded = SourceCache.model_validate_json(raw)
        except ValidationError:
            log.warning("agent.source.cache_ignored", path=str(self.cache_path),
                        reason="not a valid GitHub source cache")
            return
        # a stored wait is capped when loaded: a clock stepped back must not park the agent
        blocked = min(loaded.blocked_until, self._clock() + MAX_RATE_LIMIT_WAIT)
        unchecked = (self.require_verified and loaded.trust_error is None
                     and loaded.tree is None)  # content read before trees were checked
        if loaded.key != self._cache_key() or loaded.sha is None or loaded.content is None \
                or unchecked:
            # the source changed, or nothing was fetched yet: keep only the wait
            self._cache = SourceCache(blocked_until=blocked)
        else:
            self._cache = loaded.model_copy(update={"blocked_until": blocked})
        if blocked != loaded.blocked_until:
            log.warning("agent.source.rate_limit_wait_capped", path=str(self.cache_path),
                        wait_seconds=MAX_RATE_LIMIT_WAIT)
            self._save_cache()  # the capped wait is what the next start finds

    def _save_cache(self) -> None:
        c = self._cache
        if c.sha is None or c.content is None:
            # nothing fetched yet: keep only the rate-limit wait
            data = SourceCache(blocked_until=c.blocked_until)
        else:
            data = c.model_copy(update={"key": self._cache_key()})
        try:
            write_atomic(self.cache_path, data.model_dump_json(indent=1).encode() + b"\n",
                         mode=0o600)
        except AgentEnvironmentError as e:
            # The in-memory cache still works; the record itself is checked elsewhere.
            log.warning("agent.source.cache_write_failed", path=str(self.cache_path),
                        error=str(e))


# --------------------------------------------------------------------------- signatures
SIGNERS_COPY = "allowed_signers.checked"

def verify_ssh_signature(sha: str, signature: object, payload: object,
                         allowed_signers_file: Path) -> str | None:
    """Verify the signature GitHub returns for commit ``sha`` against the allowed signers file,
    as ``git verify-commit`` would. None when good, else why not."""
    if not isinstance(signature, str) or not signature.strip() or not isinstance(payload, str):
        return f"commit {sha[:12]} is not signed"
    if not signature.lstrip().startswith(SSH_SIGNATURE_HEADER):
        return (f"commit {sha[:12]} does not carry an SSH signature; only SSH signatures by "
                "a key in trust.allowed_signers_file are accepted")
    if commit_sha(payload, signature, len(sha)) != sha:
        return (f"the signed payload GitHub returned for commit {sha[:12]} is not that "
                "commit; refusing it")
    with tempfile.TemporaryDirectory(prefix="gitops-agent-sig-") as tmp:
        sig = Path(tmp) / "commit.sig"
        sig.write_text(signature if signature.endswith("\n") else signature + "\n")
        found = _ssh_keygen(["-Y", "find-principals", "-f", str(allowed_signers_file),
                             "-s", str(sig)], b"")
        principals = found.stdout.decode(errors="replace").split()
        if found.returncode != 0 or not principals:
            return (f"commit {sha[:12]} has no valid signature from an allowed signer: "
                    "its key is not in trust.allowed_signers_file")
        for principal in principals:
            ok = _ssh_keygen(["-Y", "verify", "-f", str(allowed_signers_file), "-I", principal,
                              "-n", "git", "-s", str(sig)], payload.encode())
            if ok.returncode == 0:
                return None
        err = ok.stderr.decode(errors="replace").strip()
        tail = err.splitlines()[-1] if err else f"ssh-keygen exited {ok.returncode}"
        return f"commit {sha[:12]} has no valid signature from an allowed signer: {tail}"


def _ssh_keygen(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["ssh-keygen", *args], input=stdin, capture_output=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AgentEnvironmentError(f"cannot run ssh-keygen to verify a signature: {e}") from None


def commit_sha(payload: str, signature: str, sha_len: int = 40) -> str:
    """The SHA of the commit whose unsigned form is ``payload`` and whose signature header
    holds ``signature`` (git appends ``gpgsig`` as the last header)."""
    head, sep, message = payload.partition("\n\n")
    lines = signature.rstrip("\n").split("\n")
    name = "gpgsig" if sha_len == 40 else "gpgsig-sha256"
    header = f"{name} " + "\n ".join(lines)
    body = (head + "\n" + header + "\n" + sep[1:] + message if sep else
            payload.rstrip("\n") + "\n" + header + "\n")
    raw = body.encode()
    algo = hashlib.sha1 if sha_len == 40 else hashlib.sha256  # noqa: S324 - git's object id
    return algo(b"commit %d\0" % len(raw) + raw).hexdigest()


def _blob_problem(oid: str, size: int | None, data: bytes) -> str | None:
    """Why ``data`` is not blob ``oid`` of the listed ``size`` (None when it is)."""
    if blob_id(data, len(oid)) != oid:
        return f"content that is not blob {oid[:12]}"
    if len(data) != size:
        return f"a size ({size}) that is not blob {oid[:12]}'s ({len(data)})"
    return None


def _is_sha(s: str) -> bool:
    return len(s) in (40, 64) and all(c in "0123456789abcdef" for c in s)


def _short(e: BaseException) -> str:
    text = str(e)
    return text if len(text) <= 300 else text[:300] + "..."


__all__ = ["CACHE_FILE", "USER_AGENT", "Classified", "GitHubSource", "RateLimited",
           "SourceCache", "classify", "commit_sha", "verify_ssh_signature"]
