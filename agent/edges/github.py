"""The GitHub REST source: one conditional request per poll while nothing changes.

Each poll asks for the branch head SHA (``Accept: application/vnd.github.sha``) with
``If-None-Match`` set to the ETag of the last 200. An unchanged head is answered 304, which
GitHub does not count against the rate limit, and the revision and content kept from the last
successful fetch are returned. Only a new head fetches the file, at exactly that SHA, so the
revision and the content always match.

The ETag, the SHA, the content (and any rate-limit wait) are kept in memory and persisted
atomically in ``state_dir/github-cache.json``, so a restarted daemon still sends a single
conditional request.

Rate limits are honoured: a 403/429 carrying ``x-ratelimit-remaining: 0`` or ``retry-after``
raises :class:`RateLimited`, and until the wait has elapsed every ``fetch()`` raises it again
without sending anything.

The token is sent only to the configured API host; requests drops the ``Authorization``
header on a redirect to another host or port.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import structlog

from agent.config import AgentConfig
from agent.edges.source import Fetched
from agent.errors import AgentEnvironmentError, DesiredStateError, SourceUnavailable
from agent.log import redact_text
from agent.secrets import token_from_file
from agent.state import write_atomic

log = structlog.get_logger()

CACHE_FILE = "github-cache.json"
CACHE_VERSION = 1
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


class RateLimited(SourceUnavailable):
    """The GitHub API asked us to wait; nothing is sent until ``retry_after_seconds`` pass."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message)


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
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.branch = branch
        self.path = path
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.require_verified = require_verified
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
        # the cache: etag of the last 200 for the head, and what was fetched at that head
        self._etag: str | None = None
        self._sha: str | None = None
        self._content: bytes | None = None
        self._trust_error: str | None = None
        self._blocked_until = 0.0  # epoch before which nothing is sent (rate limit)
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
        wait = self._blocked_until - self._clock()
        if wait > 0:
            raise RateLimited(self._rate_limited_message(wait), retry_after_seconds=wait)

        headers = {"Accept": "application/vnd.github.sha"}
        if self._missing is not None and self._missing[0] is not None:
            # the head had no file: ask whether it is still that head
            headers["If-None-Match"] = self._missing[0]
        elif self._etag is not None and self._sha is not None and self._content is not None:
            headers["If-None-Match"] = self._etag
        resp = self._get(self._repo_url(f"commits/{quote(self.branch, safe='/')}"), headers,
                         what=f"the head of branch {self.branch!r}")
        if resp.status_code == 304 and "If-None-Match" in headers:
            if self._missing is not None:
                raise self._no_file(self._missing[1])
            return self._cached()
        if resp.status_code != 200:
            raise self._error(resp, what="head")
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
        if sha == self._sha and self._content is not None:
            # the ETag changed but the head did not: nothing more to fetch
            if etag != self._etag:
                self._etag = etag
                self._save_cache()
            return self._cached()

        trust_error = self._check_verified(sha) if self.require_verified else None
        try:
            content = self._fetch_content(sha)
        except DesiredStateError:
            self._missing = (etag, sha)  # one conditional request per poll while it stays
            raise
        self._etag, self._sha, self._content, self._trust_error = etag, sha, content, trust_error
        self._save_cache()
        return self._cached()

    def _cached(self) -> Fetched:
        assert self._sha is not None and self._content is not None
        return Fetched(revision=self._sha, content=self._content, path=self.path,
                       trust_error=self._trust_error)

    def _check_verified(self, sha: str) -> str | None:
        resp = self._get(self._repo_url(f"commits/{sha}"),
                         {"Accept": "application/vnd.github+json"},
                         what=f"commit {sha[:12]}")
        if resp.status_code != 200:
            raise self._error(resp, what="commit")
        try:
            verification = resp.json()["commit"]["verification"]
            verified = verification.get("verified") is True
            reason = str(verification.get("reason") or "unknown")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SourceUnavailable(
                f"GitHub API {self._host} answered commit {sha[:12]} of {self.repo} "
                "without commit.verification"
            ) from None
        if verified:
            return None
        return f"commit {sha[:12]} is not verified by GitHub (reason: {reason})"

    def _fetch_content(self, sha: str) -> bytes:
        url = self._repo_url(f"contents/{quote(self.path, safe='/')}")
        resp = self._get(url, {"Accept": "application/vnd.github.raw"},
                         what=f"{self.path} at {sha[:12]}", params={"ref": sha})
        if resp.status_code == 404:
            raise self._no_file(sha)
        if resp.status_code != 200:
            raise self._error(resp, what="contents")
        return resp.content

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
    ) -> requests.Response:
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
        if resp.status_code in (403, 429):
            self._maybe_rate_limited(resp)
        return resp

    def _maybe_rate_limited(self, resp: requests.Response) -> None:
        now = self._clock()
        h = resp.headers
        wait: float | None = None
        reason = ""
        retry_after = h.get("retry-after")
        if retry_after is not None:
            try:
                wait = max(0.0, float(retry_after))
                reason = f"retry-after {retry_after}s"
            except ValueError:
                wait = None
        if wait is None and h.get("x-ratelimit-remaining") == "0":
            try:
                reset = float(h.get("x-ratelimit-reset", ""))
                wait = max(0.0, reset - now) + 1.0  # the reset second itself
            except ValueError:
                wait = DEFAULT_RATE_LIMIT_WAIT
            limit = h.get("x-ratelimit-limit")
            reason = "primary rate limit exhausted" + (f" ({limit} requests/hour)" if limit else "")
        if wait is None and (resp.status_code == 429 or "rate limit" in resp.text.lower()):
            wait = DEFAULT_RATE_LIMIT_WAIT
            reason = "secondary rate limit"
        if wait is None:
            return  # a plain 403: a permission problem, reported by _error
        wait = min(wait, MAX_RATE_LIMIT_WAIT)
        self._blocked_until = now + wait
        self._save_cache()
        log.warning(
            "agent.source.rate_limited",
            source=self.describe(),
            status=resp.status_code,
            wait_seconds=round(wait, 1),
            reason=reason,
        )
        raise RateLimited(self._rate_limited_message(wait, reason), retry_after_seconds=wait)

    def _rate_limited_message(self, wait: float, reason: str = "") -> str:
        why = f" ({reason})" if reason else ""
        return (
            f"GitHub API {self._host} rate limit for {self.repo}{why}: "
            f"not asking again for {wait:.0f}s"
        )

    def _error(self, resp: requests.Response, *, what: str) -> SourceUnavailable:
        status = resp.status_code
        msg = _github_message(resp)
        said = f" ({status} {msg})" if msg else f" ({status})"
        repo, branch = self.repo, self.branch
        if status == 401:
            if self._token is None:
                fix = "set source.token_file to a file holding a token that can read it"
            else:
                fix = ("the token in source.token_file is invalid or expired; "
                       "replace it with a valid token")
            return SourceUnavailable(f"GitHub API {self._host} refused access to {repo}{said}: {fix}")
        if status == 403:
            return SourceUnavailable(
                f"GitHub API {self._host} forbids reading {repo}{said}: give the token in "
                "source.token_file read access to the repository's contents "
                "(fine-grained: 'Contents: read'; classic: 'repo' scope), and authorize it "
                "for the organisation's SSO if it uses SSO"
            )
        if status == 404:
            auth = ("or the token in source.token_file cannot see it"
                    if self._token is not None
                    else "or it is private and needs source.token_file")
            return SourceUnavailable(
                f"GitHub repository {repo} not found at {self.api_url}{said}: check "
                f"source.repo (\"owner/name\") and source.api_url, {auth}"
            )
        if status == 422 and what == "head":
            return SourceUnavailable(
                f"branch {branch!r} not found in GitHub repository {repo}{said}: "
                "check source.branch"
            )
        if status == 409:
            return SourceUnavailable(f"GitHub repository {repo} is empty{said}")
        if status >= 500:
            return SourceUnavailable(
                f"GitHub API {self._host} answered {status} for {repo}@{branch}; "
                "retrying later"
            )
        return SourceUnavailable(
            f"GitHub API {self._host} answered {status} for {repo}@{branch}{said}"
        )

    # ------------------------------------------------------------------ persisted cache
    def _cache_key(self) -> dict[str, Any]:
        return {"api_url": self.api_url, "repo": self.repo, "branch": self.branch,
                "path": self.path, "require_verified": self.require_verified}

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
            data = json.loads(raw)
            if data.get("version") != CACHE_VERSION:
                return
            self._blocked_until = float(data.get("blocked_until", 0.0))
            if data.get("key") != self._cache_key():
                return  # the source changed: start afresh (one unconditional request)
            etag, sha, content_b64 = data["etag"], data["sha"], data["content"]
            trust_error = data.get("trust_error")
            if (
                not (etag is None or isinstance(etag, str))
                or not isinstance(sha, str) or not _is_sha(sha)
                or not isinstance(content_b64, str)
                or not (trust_error is None or isinstance(trust_error, str))
            ):
                raise ValueError("bad types")
            content = base64.b64decode(content_b64, validate=True)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            log.warning("agent.source.cache_ignored", path=str(self.cache_path),
                        reason="not a valid GitHub source cache")
            self._blocked_until = 0.0
            return
        self._etag, self._sha, self._content = etag, sha, content
        self._trust_error = trust_error

    def _save_cache(self) -> None:
        data = {
            "version": CACHE_VERSION,
            "key": self._cache_key(),
            "etag": self._etag,
            "sha": self._sha,
            "content": base64.b64encode(self._content).decode() if self._content is not None else None,
            "trust_error": self._trust_error,
            "blocked_until": self._blocked_until,
        }
        if self._sha is None or self._content is None:
            # nothing fetched yet: keep only the rate-limit wait
            data.update(key=None, etag=None, sha=None, content=None)
        try:
            write_atomic(self.cache_path, json.dumps(data, indent=1).encode() + b"\n", mode=0o600)
        except AgentEnvironmentError as e:
            # The in-memory cache still works; the record itself is checked elsewhere.
            log.warning("agent.source.cache_write_failed", path=str(self.cache_path),
                        error=str(e))


def _is_sha(s: str) -> bool:
    return len(s) in (40, 64) and all(c in "0123456789abcdef" for c in s)


def _github_message(resp: requests.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return ""
    msg = data.get("message") if isinstance(data, dict) else None
    return redact_text(str(msg))[:200] if msg else ""


def _short(e: BaseException) -> str:
    text = str(e)
    return text if len(text) <= 300 else text[:300] + "..."


__all__ = ["CACHE_FILE", "USER_AGENT", "GitHubSource", "RateLimited"]
