"""A fake GitHub REST API on 127.0.0.1 for the GitHub source's tests and benchmarks.

A real HTTP server (``ThreadingHTTPServer`` in a thread, HTTP/1.1 keep-alive, a free port)
answering the endpoints the agent uses, with real ETag / 304 semantics:

* ``GET {prefix}/repos/{owner}/{name}/commits/{ref}``: with ``Accept:
  application/vnd.github.sha`` the SHA as text, else JSON with ``commit.verification``.
  ``ETag`` is derived from the head SHA (and the media type); a matching ``If-None-Match``
  is answered 304. An unknown ref is a 422, an unknown repository a 404.
* ``GET {prefix}/repos/{owner}/{name}/contents/{path}?ref={sha}``: with ``Accept:
  application/vnd.github.raw`` the raw bytes, else the JSON with base64 content; 404 when
  the file does not exist at that ref.
* ``GET {prefix}/repos/{owner}/{name}/git/trees/{tree, commit or branch}[?recursive=1]`` and
  ``git/blobs/{sha}``: real git objects. Each commit's files are a real tree (computed here,
  independently of the agent: ``tests/unit/test_git_objects.py`` checks it against git), so
  a commit made by git with the same files has the same root tree; the commit JSON names
  it in ``commit.tree.sha``. Listings show a tree's mode as GitHub does (``040000``), a
  recursive one each tree's entries right after it; blob content is base64 in 60-character
  lines, as GitHub sends it.

* ``GET {prefix}/repos/{owner}/{name}/commits/{ref}/status``: the combined status (the
  newest status of each context, ``updated_at`` to the second), paginated with ``Link``,
  an ETag per page and 304 for a matching ``If-None-Match``.
* ``POST {prefix}/repos/{owner}/{name}/statuses/{sha}``: a commit status (JSON ``state``,
  ``description``, ``context``) is stored in ``statuses`` and answered 201; 422 for an
  unknown commit, a state GitHub does not know, or a description over 140 characters.

Modes: rate limiting (403 + ``x-ratelimit-remaining: 0`` + ``x-ratelimit-reset``, or 429 +
``retry-after``), 5xx, a required token (401 otherwise), and redirecting the contents request
to another base URL. Every request is logged (method, path, query, headers).

Lies, on demand (a compromised host): :meth:`FakeGitHub.tamper_blob` (a file's blob served
with other content, by ``git/blobs`` and the contents API), :meth:`FakeGitHub.tamper_tree_entry`
(a listing naming another, honestly served, blob for a path, or leaving it out; with
``rehash`` every tree above it renamed to match, all but the root the signed commit names),
``answer_tree`` (another root tree in the commit JSON) and
:meth:`FakeGitHub.truncate_recursive_trees` (GitHub's ``truncated`` for a huge repository).

Usage::

    with FakeGitHub(repo="acme/shop") as gh:
        sha = gh.commit({"desired-state.yml": b"..."})    # the new branch head
        ... GitHubSource("acme/shop", "main", "desired-state.yml", api_url=gh.api_url, ...)
        assert gh.count("commits") == 1
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_LOGIN = "deploy-bot"  # the login of any token not in GitHubServer.logins


@dataclass
class LoggedRequest:
    method: str
    path: str  # without the query string and without the server's prefix
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    status: int = 0  # the status answered (0 while being answered)

    @property
    def endpoint(self) -> str:
        """``commits``, ``status`` (a commit's combined status), ``contents``, ``user`` (whose
        the token is) or ``other``."""
        parts = self.path.split("/")
        if self.path.split("?")[0] == "/user":
            return "user"
        if len(parts) == 7 and parts[1] == "repos" and parts[4] == "commits" \
                and parts[6] == "status":
            return "status"
        return parts[4] if len(parts) > 4 and parts[1] == "repos" else "other"

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class FakeRepo:
    heads: dict[str, str] = field(default_factory=dict)  # branch -> sha
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> path -> bytes
    verification: dict[str, tuple[bool, str]] = field(default_factory=dict)  # sha -> (ok, reason)
    # trust: sha -> (signature, payload) as GitHub returns them; sha -> parent SHAs (compare)
    signatures: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    parents: dict[str, list[str]] = field(default_factory=dict)
    # git objects: commit sha -> root tree; tree sha -> entries; blob sha -> content
    roots: dict[str, str] = field(default_factory=dict)
    trees: dict[str, list[TreeRow]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    # lies: blob sha -> content served; (tree sha, name) -> (blob sha, size) listed or None
    # (left out); tree asked for -> tree served; (commit, path) -> contents API answer
    blob_lies: dict[str, bytes] = field(default_factory=dict)
    entry_lies: dict[tuple[str, str], tuple[str, int] | None] = field(default_factory=dict)
    tree_alias: dict[str, str] = field(default_factory=dict)
    content_lies: dict[tuple[str, str], bytes | None] = field(default_factory=dict)


@dataclass(frozen=True)
class TreeRow:
    """One entry of a git tree object, as the listing shows it."""

    mode: str  # GitHub's spelling: "040000" for a tree
    name: str
    kind: str  # blob or tree
    sha: str
    size: int | None = None  # blobs


def git_objects(files: Mapping[str, bytes]) -> tuple[str, dict[str, list[TreeRow]],
                                                     dict[str, bytes]]:
    """(root tree sha, trees, blobs) of a commit holding exactly ``files`` (every file
    ``100644``), computed as git does: ``<mode> <name>\\0<20 bytes>`` entries in git's order
    (a tree's name sorts as if it ended in "/"), ``sha1("tree <len>\\0" + body)``."""
    trees: dict[str, list[TreeRow]] = {}
    blobs: dict[str, bytes] = {}

    def build(node: dict[str, Any]) -> str:
        rows: list[TreeRow] = []
        for name, child in node.items():
            if isinstance(child, dict):
                rows.append(TreeRow("040000", name, "tree", build(child)))
            else:
                sha = _blob_sha(child)
                blobs[sha] = child
                rows.append(TreeRow("100644", name, "blob", sha, len(child)))
        rows.sort(key=lambda r: r.name.encode() + (b"/" if r.kind == "tree" else b""))
        body = b"".join(r.mode.lstrip("0").encode() + b" " + r.name.encode() + b"\0"
                        + bytes.fromhex(r.sha) for r in rows)
        sha = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()  # noqa: S324
        trees[sha] = rows
        return sha

    root: dict[str, Any] = {}
    for path, content in files.items():
        *dirs, name = path.split("/")
        node = root
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = content
    return build(root), trees, blobs


_counter = itertools.count(1)


def make_sha(seed: str | None = None) -> str:
    seed = seed if seed is not None else f"commit-{next(_counter)}-{time.monotonic_ns()}"
    return hashlib.sha1(seed.encode()).hexdigest()  # noqa: S324 - not security


class FakeGitHub:
    """A fake GitHub API. Thread-safe; state may be changed while clients poll.

    Attributes: ``api_url`` (what goes in ``source.api_url``), ``base_url`` (without the
    prefix), ``host``, ``port``, ``prefix``, ``repos`` (``{"owner/name": FakeRepo}``),
    ``requests`` (the log of :class:`LoggedRequest`; off with ``log_requests=False`` for
    big benchmarks), ``request_count`` and ``status_counts`` (always kept), ``token`` (when
    set, requests without ``Authorization: Bearer <token>`` get 401).
    """

    def __init__(
        self,
        *,
        repo: str = "acme/shop",
        branch: str = "main",
        host: str = "127.0.0.1",
        bind: str = "127.0.0.1",
        prefix: str = "",
        token: str | None = None,
        port: int = 0,
        log_requests: bool = True,
    ) -> None:
        self.default_repo = repo
        self.default_branch = branch
        self.host = host  # the name clients use (127.0.0.1 or localhost); the socket is on bind
        self.prefix = prefix.rstrip("/")
        self.token = token
        self.log_requests = log_requests
        self.repos: dict[str, FakeRepo] = {repo: FakeRepo()}
        self.requests: list[LoggedRequest] = []
        self.request_count = 0  # counted even when log_requests is False
        self.status_counts: Counter[int] = Counter()  # status -> answers (always counted)
        self.statuses: list[dict[str, Any]] = []  # commit statuses posted, in order
        # token -> the login GitHub knows it by (GET /user, a status's creator); any other
        # token is DEFAULT_LOGIN's
        self.logins: dict[str, str] = {}
        self.link_base: str | None = None  # a lying host: next pages on another server
        self.lock = threading.RLock()
        # modes
        self._rate_limit: tuple[int, float] | None = None  # (status, seconds)
        self._rate_limit_reset: float = 0.0
        self._fail: tuple[int, int | None] | None = None  # (status, remaining or None=forever)
        self._redirect_contents: str | None = None
        self._delay = 0.0
        # sha asked for -> sha answered in commits/{sha} (a lying or compromised host)
        self.answer_sha: dict[str, str] = {}
        # commit sha -> the root tree its commit JSON names instead of its own
        self.answer_tree: dict[str, str] = {}
        self._truncate = False
        # content-creation limiter (GitHub's secondary limits on POST statuses), per token
        self._creation_limits: tuple[int, int] | None = None  # (per minute, per hour)
        self._creation_clock: Callable[[], float] = time.time
        self._creations: dict[str, list[float]] = {}  # token -> times of accepted POSTs
        self.creation_refusals = 0
        self._server = ThreadingHTTPServer((bind, port), _make_handler(self))
        self._server.daemon_threads = True
        self._server.request_queue_size = 1024
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + self.prefix

    def start(self) -> FakeGitHub:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"fake-github-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ repository state
    def repo(self, name: str | None = None) -> FakeRepo:
        with self.lock:
            return self.repos.setdefault(name or self.default_repo, FakeRepo())

    def commit(
        self,
        files: Mapping[str, bytes | str],
        *,
        repo: str | None = None,
        branch: str | None = None,
        sha: str | None = None,
        verified: bool = True,
        reason: str = "valid",
        move_head: bool = True,
        parents: list[str] | None = None,
        signature: str | None = None,
        payload: str | None = None,
    ) -> str:
        """Add a commit holding exactly ``files``; make it the branch head. Returns its SHA.

        ``parents`` default to the branch's current head (for the compare endpoint);
        ``signature``/``payload`` are what ``commit.verification`` returns (see
        :func:`signed_from_git` for a real signed commit)."""
        sha = sha or make_sha()
        with self.lock:
            r = self.repo(repo)
            if parents is None:
                head = r.heads.get(branch or self.default_branch)
                parents = [head] if head is not None else []
            r.parents[sha] = list(parents)
            r.signatures[sha] = (signature, payload)
            r.files[sha] = {p: (c.encode() if isinstance(c, str) else c) for p, c in files.items()}
            r.roots.pop(sha, None)
            self._root(r, sha)
            r.verification[sha] = (verified, reason if not verified or reason else "valid")
            if move_head:
                r.heads[branch or self.default_branch] = sha
        return sha

    def set_head(self, sha: str, *, repo: str | None = None, branch: str | None = None) -> None:
        """Point the branch at an existing (or unknown: then 'contents' 404s) commit."""
        with self.lock:
            self.repo(repo).heads[branch or self.default_branch] = sha

    def head(self, *, repo: str | None = None, branch: str | None = None) -> str | None:
        with self.lock:
            return self.repo(repo).heads.get(branch or self.default_branch)

    def set_verified(self, sha: str, verified: bool, reason: str = "unsigned",
                     *, repo: str | None = None) -> None:
        with self.lock:
            self.repo(repo).verification[sha] = (verified, "valid" if verified else reason)

    def _root(self, r: FakeRepo, sha: str) -> str | None:
        """The root tree of commit ``sha`` (its objects made known), None if unknown."""
        with self.lock:
            if sha not in r.roots:
                if sha not in r.files:
                    return None
                root, trees, blobs = git_objects(r.files[sha])
                r.roots[sha] = root
                r.trees.update(trees)
                r.blobs.update(blobs)
            return r.roots[sha]

    def tree_sha(self, sha: str | None = None, *, repo: str | None = None) -> str:
        """The root tree of commit ``sha`` (default: the branch head)."""
        r = self.repo(repo)
        root = self._root(r, sha or r.heads[self.default_branch])
        assert root is not None
        return root

    def _entry(self, path: str, sha: str | None, repo: str | None
               ) -> tuple[FakeRepo, str, str, str, TreeRow | None]:
        """(repo, commit, tree holding ``path``, its name, its honest row)."""
        r = self.repo(repo)
        commit = sha or r.heads[self.default_branch]
        tree = self.tree_sha(commit, repo=repo)
        *dirs, name = path.split("/")
        for d in dirs:
            tree = next(row.sha for row in r.trees[tree] if row.name == d)
        return r, commit, tree, name, next((row for row in r.trees[tree] if row.name == name),
                                           None)

    def tamper_blob(self, path: str, content: bytes, *, sha: str | None = None,
                    repo: str | None = None) -> None:
        """Serve ``content`` for the blob of ``path`` at commit ``sha`` (default: the head):
        ``git/blobs`` answers it under the honest blob's name, the contents API as the file."""
        with self.lock:
            r, _, _, _, row = self._entry(path, sha, repo)
            assert row is not None and row.kind == "blob", path
            r.blob_lies[row.sha] = content

    def tamper_tree_entry(self, path: str, content: bytes | None, *, sha: str | None = None,
                          repo: str | None = None, rehash: bool = False) -> None:
        """List ``path`` at commit ``sha`` (default: the head) as the blob of ``content``
        (served honestly under its own name), or leave it out (``content`` None). The
        contents API answers the same. Without ``rehash`` the trees holding it keep their
        names; with it each is renamed to match the lie, up to the root, whose listing is
        answered when the signed root is asked for."""
        with self.lock:
            r, commit, tree, name, _ = self._entry(path, sha, repo)
            r.content_lies[(commit, path)] = content
            if content is not None:
                r.blobs[_blob_sha(content)] = content
            if not rehash:
                r.entry_lies[(tree, name)] = (None if content is None
                                              else (_blob_sha(content), len(content)))
                return
            files = dict(r.files[commit])
            if content is None:
                files.pop(path, None)
            else:
                files[path] = content
            root, trees, blobs = git_objects(files)
            r.trees.update(trees)
            r.blobs.update(blobs)
            r.tree_alias[r.roots[commit]] = root

    def truncate_recursive_trees(self, on: bool = True) -> None:
        """Answer recursive tree listings as GitHub does for a huge repository: part of the
        entries and ``truncated: true``."""
        with self.lock:
            self._truncate = on

    @staticmethod
    def etag_for(sha: str, media: str = "sha") -> str:
        return '"' + hashlib.sha256(f"{media}:{sha}".encode()).hexdigest()[:40] + '"'

    # ------------------------------------------------------------------ modes
    def rate_limit(self, *, status: int = 403, seconds: float = 60.0) -> None:
        """Answer every request as rate-limited until :meth:`clear_rate_limit`.

        403: ``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset`` = now + seconds (epoch).
        429: ``retry-after: seconds``.
        """
        assert status in (403, 429)
        with self.lock:
            self._rate_limit = (status, seconds)
            self._rate_limit_reset = time.time() + seconds

    def limit_content_creation(self, *, per_minute: int = 80, per_hour: int = 500,
                               clock: Callable[[], float] = time.time) -> None:
        """GitHub's documented secondary limits on content creation, per token: at most
        ``per_minute`` POST statuses in any 60 s and ``per_hour`` in any 3600 s (sliding
        windows on ``clock``, injectable so a simulation runs in simulated time). Over the
        limit: 403, a secondary-rate-limit message and ``retry-after`` (seconds until a
        slot frees), nothing stored."""
        with self.lock:
            self._creation_limits = (per_minute, per_hour)
            self._creation_clock = clock
            self._creations.clear()
            self.creation_refusals = 0

    def _creation_refused(self, authorization: str | None
                          ) -> tuple[int, dict[str, str], bytes] | None:
        with self.lock:
            if self._creation_limits is None:
                return None
            per_minute, per_hour = self._creation_limits
            now = self._creation_clock()
            times = [t for t in self._creations.get(authorization or "", []) if t > now - 3600]
            last_minute = [t for t in times if t > now - 60]
            wait = 0.0
            if len(last_minute) >= per_minute:
                wait = last_minute[-per_minute] + 60 - now
            if len(times) >= per_hour:
                wait = max(wait, times[-per_hour] + 3600 - now)
            if wait > 0:
                self._creations[authorization or ""] = times
                self.creation_refusals += 1
                return _json(403, {"message": "You have exceeded a secondary rate limit. "
                                              "Please wait a few minutes before you try again."},
                             {"retry-after": str(max(1, int(wait + 0.999)))})
            times.append(now)
            self._creations[authorization or ""] = times
            return None

    def clear_rate_limit(self) -> None:
        with self.lock:
            self._rate_limit = None

    def fail(self, status: int = 503, count: int | None = None) -> None:
        """Answer the next ``count`` requests (every request if None) with ``status``."""
        with self.lock:
            self._fail = (status, count)

    def clear_failures(self) -> None:
        with self.lock:
            self._fail = None

    def redirect_contents(self, to_base_url: str | None) -> None:
        """302 every contents request to ``to_base_url`` + the same path and query.

        ``to_base_url`` is another server's ``base_url`` (scheme://host:port, no prefix).
        """
        with self.lock:
            self._redirect_contents = to_base_url.rstrip("/") if to_base_url else None

    def set_delay(self, seconds: float) -> None:
        """Sleep this long before answering (timeouts)."""
        with self.lock:
            self._delay = seconds

    # ------------------------------------------------------------------ request log
    def count(self, endpoint: str | None = None) -> int:
        """Requests logged, all or for one endpoint (``commits``, ``contents``, ``other``)."""
        with self.lock:
            if endpoint is None:
                return len(self.requests)
            return sum(1 for r in self.requests if r.endpoint == endpoint)

    def logged(self, endpoint: str | None = None) -> list[LoggedRequest]:
        with self.lock:
            return [r for r in self.requests if endpoint is None or r.endpoint == endpoint]

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()
            self.request_count = 0
            self.status_counts.clear()

    # ------------------------------------------------------------------ answering
    def _answer(self, method: str, raw_path: str, headers: Mapping[str, str],
                body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(raw_path)
        path = unquote(split.path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        prefixed = not self.prefix or path.startswith(self.prefix + "/")
        if self.prefix and prefixed:
            path = path[len(self.prefix):]
        entry = LoggedRequest(method, path, query, dict(headers))
        with self.lock:
            self.request_count += 1
            if self.log_requests:
                self.requests.append(entry)
        if not prefixed:
            result = _json(404, {"message": "Not Found"})
        else:
            result = self._answer_at(method, raw_path, path, query, headers, body)
        entry.status = result[0]
        with self.lock:
            self.status_counts[result[0]] += 1
        return result

    def _answer_at(self, method: str, raw_path: str, path: str, query: dict[str, str],
                   headers: Mapping[str, str], body: bytes = b""
                   ) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            delay = self._delay
            rate_limit, reset = self._rate_limit, self._rate_limit_reset
            fail = self._fail
            if fail is not None and fail[1] is not None:
                self._fail = (fail[0], fail[1] - 1) if fail[1] > 1 else None
            redirect = self._redirect_contents
        if delay:
            time.sleep(delay)
        if fail is not None:
            return _json(fail[0], {"message": "Server Error"})
        if rate_limit is not None:
            status, seconds = rate_limit
            if status == 429:
                return _json(429, {"message": "Too Many Requests"},
                             {"retry-after": str(int(seconds))})
            return _json(403, {"message": "API rate limit exceeded for 127.0.0.1."}, {
                "x-ratelimit-limit": "60", "x-ratelimit-remaining": "0",
                "x-ratelimit-used": "60", "x-ratelimit-reset": str(int(reset)),
            })
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            return _json(401, {"message": "Bad credentials"})
        if method == "GET" and path == "/user":
            return _json(200, {"login": self.login_for(headers.get("authorization"))})
        if method == "POST" and path.split("/")[4:5] == ["statuses"]:
            return self._post_status(path, headers, body)
        if method != "GET":
            return _json(404, {"message": "Not Found"})

        parts = path.split("/")
        if len(parts) < 6 or parts[1] != "repos":
            return _json(404, {"message": "Not Found"})
        repo_name = f"{parts[2]}/{parts[3]}"
        endpoint, rest = parts[4], "/".join(parts[5:])
        with self.lock:
            repo = self.repos.get(repo_name)
            if repo is None:
                return _json(404, {"message": "Not Found"})
            heads, files = dict(repo.heads), dict(repo.files)
            verification = dict(repo.verification)
            signatures, parents = dict(repo.signatures), dict(repo.parents)
        accept = headers.get("accept", "")

        if endpoint == "commits" and rest.endswith("/status"):
            return self._combined_status(repo_name, rest.removesuffix("/status"), heads,
                                         files, query, headers, raw_path)
        if endpoint == "commits":
            sha = heads.get(rest, rest if rest in files else None)
            if sha is None:
                return _json(422, {"message": f"No commit found for SHA: {rest}"})
            if "application/vnd.github.sha" in accept:
                etag = self.etag_for(sha, "sha")
                if _etag_matches(headers.get("if-none-match"), etag):
                    return 304, {"ETag": etag}, b""
                return 200, {"Content-Type": "application/vnd.github.sha; charset=utf-8",
                             "ETag": etag}, sha.encode()
            ok, reason = verification.get(sha, (False, "unsigned"))
            etag = self.etag_for(sha, "json")
            if _etag_matches(headers.get("if-none-match"), etag):
                return 304, {"ETag": etag}, b""
            signature, payload = signatures.get(sha, (None, None))
            tree_sha = self.answer_tree.get(sha) or self._root(repo, sha)
            body = {"sha": self.answer_sha.get(sha, sha), "commit": {
                "message": f"commit {sha[:7]}", "tree": {"sha": tree_sha},
                "verification": {
                    "verified": ok, "reason": reason, "signature": signature,
                    "payload": payload}}}
            return _json(200, body, {"ETag": etag})

        if endpoint == "compare":
            return _compare(rest, heads, parents)

        if endpoint == "git":  # the git database: trees (recursive) and blobs
            kind, _, ident = rest.partition("/")
            with self.lock:
                if kind == "trees":
                    commit = heads.get(ident, ident)
                    asked = self._root(repo, commit) if commit in files else ident
                    if asked not in repo.trees:
                        return _json(404, {"message": "Not Found"})
                    recursive = query.get("recursive") not in (None, "", "0", "false")
                    entries = _listing(repo, repo.tree_alias.get(asked, asked), recursive)
                    truncated = recursive and self._truncate
                    if truncated:
                        entries = entries[: max(1, len(entries) // 2)]
                    return _json(200, {"sha": asked, "tree": entries, "truncated": truncated})
                if kind == "blobs":
                    content = repo.blob_lies.get(ident, repo.blobs.get(ident))
                    if content is not None:
                        b64 = base64.b64encode(content).decode()
                        lines = "\n".join(b64[i:i + 60] for i in range(0, len(b64), 60))
                        return _json(200, {"sha": ident, "size": len(content),
                                           "encoding": "base64", "content": lines + "\n"})
            return _json(404, {"message": "Not Found"})

        if endpoint == "contents":
            if redirect is not None:
                return 302, {"Location": redirect + raw_path}, b""
            ref = query.get("ref") or heads.get(self.default_branch, "")
            sha = heads.get(ref, ref)
            tree = files.get(sha)
            if tree is None:
                return _json(404, {"message": "No commit found for the ref " + ref})
            if rest not in tree:
                return _json(404, {"message": "Not Found"})
            with self.lock:
                content = repo.blob_lies.get(_blob_sha(tree[rest]), tree[rest])
                lie = repo.content_lies.get((sha, rest), content)
            if lie is None:
                return _json(404, {"message": "Not Found"})
            content = lie
            blob = _blob_sha(content)
            etag = '"' + blob + '"'
            if _etag_matches(headers.get("if-none-match"), etag):
                return 304, {"ETag": etag}, b""
            if "application/vnd.github.raw" in accept:
                return 200, {"Content-Type": "application/vnd.github.raw; charset=utf-8",
                             "ETag": etag}, content
            big = len(content) > 1024 * 1024  # as GitHub: no inline content over 1 MB
            return _json(200, {"type": "file", "path": rest, "sha": blob, "size": len(content),
                               "encoding": "none" if big else "base64",
                               "content": "" if big else base64.b64encode(content).decode()},
                         {"ETag": etag})
        return _json(404, {"message": "Not Found"})

    # ------------------------------------------------------------------ commit statuses
    def _post_status(self, path: str, headers: Mapping[str, str], body: bytes
                     ) -> tuple[int, dict[str, str], bytes]:
        parts = path.split("/")
        if len(parts) != 6:
            return _json(404, {"message": "Not Found"})
        repo_name, sha = f"{parts[2]}/{parts[3]}", parts[5]
        with self.lock:
            repo = self.repos.get(repo_name)
            known = repo is not None and sha in repo.files
        if repo is None:
            return _json(404, {"message": "Not Found"})
        if not known:
            return _json(422, {"message": f"No commit found for SHA: {sha}"})
        refused = self._creation_refused(headers.get("authorization"))
        if refused is not None:
            return refused
        try:
            data = json.loads(body)
        except ValueError:
            return _json(400, {"message": "Problems parsing JSON"})
        if data.get("state") not in ("error", "failure", "pending", "success"):
            return _json(422, {"message": "Validation Failed", "errors": [
                {"field": "state", "code": "invalid"}]})
        if len(data.get("description") or "") > 140:
            return _json(422, {"message": "Validation Failed", "errors": [
                {"field": "description", "code": "custom",
                 "message": "description is too long (maximum is 140 characters)"}]})
        with self.lock:
            status = {"id": len(self.statuses) + 1, "repo": repo_name, "sha": sha,
                      "updated_at": _now_iso(),
                      "state": data["state"], "description": data.get("description"),
                      "context": data.get("context") or "default",
                      "target_url": data.get("target_url"),
                      "creator": self.login_for(headers.get("authorization")),
                      "authorization": headers.get("authorization")}
            self.statuses.append(status)
        return _json(201, {k: v for k, v in status.items() if k != "authorization"})

    def login_for(self, authorization: str | None) -> str:
        token = (authorization or "").removeprefix("Bearer ")
        return self.logins.get(token, DEFAULT_LOGIN)

    def add_status(self, sha: str, context: str, state: str, *, repo: str | None = None,
                   description: str = "", updated_at: str | None = None,
                   creator: str = DEFAULT_LOGIN) -> None:
        """Store a status as if a host had posted it (benchmarks, unit tests), as
        ``creator`` (the login of the hosts' token by default)."""
        with self.lock:
            self.repo(repo).files.setdefault(sha, {})
            self.statuses.append({
                "id": len(self.statuses) + 1, "repo": repo or self.default_repo, "sha": sha,
                "updated_at": updated_at or _now_iso(), "state": state,
                "description": description, "context": context, "target_url": None,
                "creator": creator, "authorization": None})

    def _combined_status(self, repo_name: str, ref: str, heads: Mapping[str, str],
                         files: Mapping[str, Any], query: Mapping[str, str],
                         headers: Mapping[str, str], raw_path: str
                         ) -> tuple[int, dict[str, str], bytes]:
        """``GET commits/{ref}/status``: the newest status of each context (sorted by
        context), ``per_page`` (default 30, at most 100) and ``page``, a ``Link: rel="next"``
        while more remain, an ETag of the page; a matching If-None-Match is answered 304."""
        sha = heads.get(ref, ref if ref in files else None)
        if sha is None:
            return _json(422, {"message": f"No commit found for SHA: {ref}"})
        with self.lock:
            newest: dict[str, dict[str, Any]] = {}
            for st in self.statuses:
                if st["repo"] == repo_name and st["sha"] == sha:
                    newest[st["context"]] = st
        contexts = [newest[c] for c in sorted(newest)]
        try:
            per_page = max(1, min(100, int(query.get("per_page", "30"))))
            page = max(1, int(query.get("page", "1")))
        except ValueError:
            return _json(400, {"message": "Bad pagination"})
        chunk = contexts[(page - 1) * per_page: page * per_page]
        states = [c["state"] for c in contexts]
        overall = ("failure" if any(x in ("failure", "error") for x in states) else
                   "pending" if not states or any(x == "pending" for x in states) else
                   "success")
        body = {"state": overall, "sha": sha, "total_count": len(contexts), "statuses": [
            {"id": c["id"], "state": c["state"], "description": c["description"],
             "context": c["context"], "target_url": c["target_url"],
             "creator": {"login": c.get("creator", DEFAULT_LOGIN), "type": "User"},
             "created_at": c["updated_at"], "updated_at": c["updated_at"]} for c in chunk]}
        raw = json.dumps(body, sort_keys=True).encode()
        etag = '"' + hashlib.sha256(raw).hexdigest()[:40] + '"'
        out = {"ETag": etag}
        if page * per_page < len(contexts):
            base = raw_path.split("?", 1)[0]
            out["Link"] = (f'<{self.link_base or self.base_url}{base}?per_page={per_page}&page={page + 1}>; '
                           'rel="next"')
        if _etag_matches(headers.get("if-none-match"), etag):
            return 304, out, b""
        return 200, {"Content-Type": "application/json; charset=utf-8", **out}, raw

    def statuses_for(self, sha: str | None = None) -> list[dict[str, Any]]:
        """Commit statuses posted (for one commit), oldest first."""
        with self.lock:
            return [dict(s) for s in self.statuses if sha is None or s["sha"] == sha]

    def known_commit(self, sha: str, *, repo: str | None = None) -> None:
        """Make a commit made elsewhere (a git repository on disk) known to this GitHub,
        without moving the branch: statuses can then be posted to it."""
        with self.lock:
            self.repo(repo).files.setdefault(sha, {})


def _blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # noqa: S324


def _listing(repo: FakeRepo, tree: str, recursive: bool, prefix: str = ""
             ) -> list[dict[str, Any]]:
    """The entries of ``tree`` as ``git/trees`` lists them (lies applied): a recursive
    listing has each tree's entries right after it."""
    out: list[dict[str, Any]] = []
    for row in repo.trees[tree]:
        sha, size = row.sha, row.size
        if (tree, row.name) in repo.entry_lies:
            lie = repo.entry_lies[(tree, row.name)]
            if lie is None:
                continue
            sha, size = lie
        entry: dict[str, Any] = {"path": prefix + row.name, "mode": row.mode,
                                 "type": row.kind, "sha": sha}
        if row.kind == "blob":
            entry["size"] = size
        out.append(entry)
        if recursive and row.kind == "tree":
            out += _listing(repo, sha, True, prefix + row.name + "/")
    return out


def _ancestors(sha: str, parents: Mapping[str, list[str]]) -> set[str]:
    seen, todo = set(), [sha]
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo += parents.get(s, [])
    return seen


def _compare(spec: str, heads: Mapping[str, str], parents: Mapping[str, list[str]]
             ) -> tuple[int, dict[str, str], bytes]:
    """``compare/{base}...{head}``: ``status`` ahead / identical / behind / diverged."""
    base, dots, head = spec.partition("...")
    base, head = heads.get(base, base), heads.get(head, head)
    if not dots or base not in parents or head not in parents:
        return _json(404, {"message": "Not Found"})
    if base == head:
        status = "identical"
    elif base in _ancestors(head, parents):
        status = "ahead"
    elif head in _ancestors(base, parents):
        status = "behind"
    else:
        status = "diverged"
    up, down = _ancestors(head, parents), _ancestors(base, parents)
    return _json(200, {"status": status, "ahead_by": len(up - down),
                       "behind_by": len(down - up), "total_commits": len(up - down),
                       "base_commit": {"sha": base}, "commits": []})


def signed_from_git(work: Any, rev: str = "HEAD") -> tuple[str, str | None, str]:
    """(sha, signature, payload) of a real git commit, split as GitHub's
    ``commit.verification`` returns them: the payload is the commit without its gpgsig."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=work, check=True, capture_output=True,
                              text=True).stdout

    sha = git("rev-parse", rev).strip()
    raw = git("cat-file", "commit", sha)
    head, _, message = raw.partition("\n\n")
    kept, sig_lines, in_sig = [], [], False
    for line in head.split("\n"):
        if line.startswith("gpgsig "):
            in_sig = True
            sig_lines.append(line[len("gpgsig "):])
        elif in_sig and line.startswith(" "):
            sig_lines.append(line[1:])
        else:
            in_sig = False
            kept.append(line)
    payload = "\n".join(kept) + "\n\n" + message
    return sha, ("\n".join(sig_lines) + "\n" if sig_lines else None), payload


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None
          ) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, \
        json.dumps(body).encode()


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == bare for t in if_none_match.split(","))


def _make_handler(gh: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeGitHub/1.0"

        def _handle(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(self.headers.get("Content-Length") or 0)
            request_body = self.rfile.read(length) if length else b""
            status, out_headers, body = gh._answer(self.command, self.path, headers,
                                                   request_body)
            self.send_response(status)
            ratelimit = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999",
                         "x-ratelimit-reset": str(int(time.time()) + 3600)}
            for k, v in {**ratelimit, **out_headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        do_GET = _handle
        do_HEAD = _handle
        do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet

    return Handler
