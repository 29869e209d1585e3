"""The GitHub REST source: one conditional request per poll while nothing changes.

Each poll asks for the branch head SHA (``Accept: application/vnd.github.sha``) with
``If-None-Match`` set to the ETag of the last 200. An unchanged head is answered 304, which
GitHub does not count against the rate limit, and the revision and content kept from the last
successful fetch are returned. Only a new head fetches the file, at exactly that SHA, so the
revision and the content always match.

The ETag, the SHA, the content (and any rate-limit wait) are kept in memory and persisted
atomically in ``state_dir/github-cache.json``, so a restarted daemon still sends a single
conditional request.

The source is three pieces: :class:`~agent.edges.github_api.GitHubApi` sends the requests
(the token to the API host only, the rate-limit wait, what each answer means and its typed
error); :func:`~agent.edges.github_signatures.commit_verdict` judges a commit's signature
(``[trust] require_signed_commits``) and names its root tree;
:class:`~agent.edges.github_files.RepoFiles` reads the desired-state file and the
``compose.from_repo`` files (with signed commits, only from the signed tree's blobs, every
tree and blob checked against its name: a lying API can't deploy). An untrusted revision's
content is neither read nor cached. An idle poll is still one conditional request: the extra
requests happen only for a new head.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

import requests
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from agent.config import AgentConfig
from agent.edges.github_api import (
    API_VERSION,
    DEFAULT_API_URL,
    DEFAULT_RATE_LIMIT_WAIT,
    MAX_RATE_LIMIT_WAIT,
    USER_AGENT,
    Classified,
    GitHubApi,
    RateLimited,
    classify,
    is_sha,
)
from agent.edges.github_files import RepoFiles
from agent.edges.github_signatures import (
    SIGNERS_COPY,
    SSH_SIGNATURE_HEADER,
    commit_sha,
    commit_verdict,
    verify_ssh_signature,
)
from agent.edges.source import Fetched
from agent.errors import (
    AgentEnvironmentError,
    ConfigError,
    DesiredStateError,
    SourceUnavailable,
    UntrustedRevision,
)
from agent.secrets import token_from_file, trusted_copy
from agent.state import write_atomic

log = structlog.get_logger()

CACHE_FILE = "github-cache.json"
CACHE_VERSION = 2


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
        if v is not None and not is_sha(v):
            raise ValueError("not an object name")
        return v


class GitHubSource:
    """The Source port on GitHub's REST API: fetch, describe, read_files, is_ancestor."""

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
        self._clock = clock
        self._host = urlsplit(self.api_url).hostname or ""
        self._api = GitHubApi(self.api_url, repo, branch, token=token, timeout=timeout,
                              session=session, clock=clock, label=self.describe(),
                              on_wait=self._save_cache)
        self._session = self._api.session
        self._files = RepoFiles(self._api, path)
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

    @property
    def requests_made(self) -> int:
        """HTTP requests sent (benchmarks count them)."""
        return self._api.requests_made

    def describe(self) -> str:
        where = "" if self.api_url == DEFAULT_API_URL else f" ({self._host})"
        return f"github:{self.repo}@{self.branch}:{self.path}{where}"

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------ fetch
    def fetch(self) -> Fetched:
        c = self._cache
        self._api.refuse_while_waiting()

        headers = {"Accept": "application/vnd.github.sha"}
        if self._missing is not None and self._missing[0] is not None:
            # the head had no file: ask whether it is still that head
            headers["If-None-Match"] = self._missing[0]
        elif c.etag is not None and c.sha is not None and c.content is not None:
            headers["If-None-Match"] = c.etag
        resp, got = self._api.get(
            self._api.repo_url(f"commits/{quote(self.branch, safe='/')}"),
            headers, what=f"the head of branch {self.branch!r}")
        if got.kind == "not_modified" and "If-None-Match" in headers:
            if self._missing is not None:
                raise self._files.no_file(self._missing[1])
            return self._cached()
        if got.kind != "ok":
            raise self._api.error(got, what="head")
        sha = resp.text.strip()
        if not is_sha(sha):
            raise SourceUnavailable(
                f"GitHub API {self._host} answered the head of {self.repo}@{self.branch} "
                f"with {sha[:60]!r}, not a commit SHA; is source.api_url a GitHub API "
                f"(https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise)?"
            )
        etag = resp.headers.get("ETag")

        if self._missing is not None and sha == self._missing[1]:
            self._missing = (etag, sha)
            raise self._files.no_file(sha)
        self._missing = None
        if sha == c.sha and c.content is not None:
            # the ETag changed but the head did not: nothing more to fetch
            if etag != c.etag:
                c.etag = etag
                self._save_cache()
            return self._cached()

        trust_error, tree = self._verdict(sha) if self.require_verified else (None, None)
        if trust_error is None:
            try:
                content = (self._files.contents(sha) if tree is None
                           else self._files.signed(sha, tree))
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
    def _verdict(self, sha: str) -> tuple[str | None, str | None]:
        """(why commit ``sha`` is refused, None), or (None, the root tree its signed
        payload names)."""
        signers = self.allowed_signers_file
        if signers is None:
            return commit_verdict(self._api, sha, None)

        def copy() -> Path:
            # ssh-keygen opens the file by name: hand it a private copy of what was checked
            return trusted_copy(signers, "trust.allowed_signers_file",
                                self.cache_path.parent / SIGNERS_COPY)

        return commit_verdict(self._api, sha, copy)

    def _trusted_tree(self, revision: str, where: str) -> str:
        """The root tree of ``revision``'s signed commit (the head's is kept). Refused:
        UntrustedRevision."""
        c = self._cache
        if revision == c.sha and c.trust_error is not None:
            raise UntrustedRevision(where, [c.trust_error])
        if revision == c.sha and c.tree is not None:
            return c.tree
        error, tree = self._verdict(revision)
        if error is not None or tree is None:
            raise UntrustedRevision(where, [error or f"commit {revision[:12]} has no tree"])
        return tree

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``ancestor`` is ``descendant`` or one of its ancestors (compare API); a
        commit GitHub no longer knows is nobody's ancestor."""
        if ancestor == descendant:
            return True
        return self._api.compare(ancestor, descendant) in ("ahead", "identical")

    # ------------------------------------------------------------------ stack files
    def read_files(self, revision: str, paths: Sequence[str]) -> dict[str, bytes]:
        """The files at ``paths`` (a directory: every file under it) at ``revision``
        (:meth:`RepoFiles.files`); with signed commits required, from the signed commit's
        tree, every tree and blob checked: a lie is an UntrustedRevision."""
        where = f"compose.from_repo@{revision[:12]}"
        root = self._trusted_tree(revision, where) if self.require_verified else None
        return self._files.files(revision, root, paths)

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
        self._api.blocked_until = blocked
        if blocked != loaded.blocked_until:
            log.warning("agent.source.rate_limit_wait_capped", path=str(self.cache_path),
                        wait_seconds=MAX_RATE_LIMIT_WAIT)
            self._save_cache()  # the capped wait is what the next start finds

    def _save_cache(self) -> None:
        c = self._cache
        c.blocked_until = self._api.blocked_until  # the wait is the client's
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


__all__ = ["API_VERSION", "CACHE_FILE", "DEFAULT_API_URL", "DEFAULT_RATE_LIMIT_WAIT",
           "MAX_RATE_LIMIT_WAIT", "SIGNERS_COPY", "SSH_SIGNATURE_HEADER", "USER_AGENT",
           "CacheKey", "Classified", "GitHubSource", "RateLimited", "SourceCache", "classify",
           "commit_sha", "verify_ssh_signature"]
