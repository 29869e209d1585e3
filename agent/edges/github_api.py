"""The GitHub REST client of the source: one repository's requests, what their answers mean.

Every answer is sorted by :func:`classify` (status, headers, body -> what it means), a pure
function. Rate limits are honoured: a 403/429 carrying ``x-ratelimit-remaining: 0``,
``retry-after`` or GitHub's secondary-limit message raises :class:`RateLimited` (a transient
error the pass does not retry: it is waited out), and until the wait has elapsed
:meth:`GitHubApi.refuse_while_waiting` raises it again without sending anything. 401, a 403
that is not a rate limit and 404 are configuration problems (:class:`ConfigError`, naming the
token, repository or path), not an outage (:meth:`GitHubApi.error`).

The token is sent only to the configured API host; requests drops the ``Authorization``
header on a redirect to another host or port. Errors and logs never carry it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

import requests
import structlog

from agent.errors import ConfigError, SourceUnavailable, TransientError
from agent.log import redact_text
from agent.stack import TreeEntry

log = structlog.get_logger()

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

JSON = {"Accept": "application/vnd.github+json"}


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


def is_sha(s: str) -> bool:
    return len(s) in (40, 64) and all(c in "0123456789abcdef" for c in s)


def _short(e: BaseException) -> str:
    text = str(e)
    return text if len(text) <= 300 else text[:300] + "..."


@dataclass(frozen=True)
class Listing:
    """A ``git/trees`` answer: its entries (paths from the tree asked for), their sizes."""

    entries: list[TreeEntry]
    sizes: dict[str, int | None]
    truncated: bool


# --------------------------------------------------------------------------- the client
class GitHubApi:
    """GET requests to one repository's REST API: the session and its headers, the token
    (to ``api_url`` only), the rate-limit wait, what each answer means and the typed error
    it is. ``on_wait`` is called whenever the wait changes (the source persists it)."""

    def __init__(
        self,
        api_url: str,
        repo: str,
        branch: str,
        *,
        token: str | None,
        timeout: float,
        session: requests.Session | None,
        clock: Callable[[], float],
        label: str,
        on_wait: Callable[[], None],
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.repo = repo
        self.branch = branch
        self.timeout = timeout
        self.host = urlsplit(self.api_url).hostname or ""
        self.requests_made = 0  # HTTP requests sent (benchmarks count them)
        self.blocked_until = 0.0  # epoch before which nothing is sent (rate limit)
        self.session = session or requests.Session()
        self.session.headers.update({
            "User-Agent": USER_AGENT,
            "X-GitHub-Api-Version": API_VERSION,
        })
        self._token = token
        self._clock = clock
        self._label = label
        self._on_wait = on_wait

    def repo_url(self, rest: str) -> str:
        return f"{self.api_url}/repos/{self.repo}/{rest}"

    def now(self) -> float:
        return self._clock()

    # ------------------------------------------------------------------ rate limit
    def refuse_while_waiting(self) -> None:
        """RateLimited while the last wait GitHub asked for has not elapsed (a wait longer
        than GitHub's window, the clock stepped back inside this process, is capped)."""
        now = self._clock()
        wait = self.blocked_until - now
        if wait > MAX_RATE_LIMIT_WAIT:
            log.warning("agent.source.rate_limit_wait_capped", wait_seconds=round(wait),
                        capped_to=MAX_RATE_LIMIT_WAIT)
            self.blocked_until, wait = now + MAX_RATE_LIMIT_WAIT, MAX_RATE_LIMIT_WAIT
            self._on_wait()
        if wait > 0:
            raise RateLimited(self._rate_limited_message(wait), retry_after_seconds=wait)

    def _rate_limited_message(self, wait: float, reason: str = "") -> str:
        why = f" ({reason})" if reason else ""
        return (
            f"GitHub API {self.host} rate limit for {self.repo}{why}: "
            f"not asking again for {wait:.0f}s"
        )

    # ------------------------------------------------------------------ requests
    def get(
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
            resp = self.session.get(url, headers=h, params=params, timeout=self.timeout)
        except requests.Timeout:
            raise SourceUnavailable(
                f"GitHub API {self.host} did not answer within {self.timeout:g}s "
                f"({what} of {self.repo})"
            ) from None
        except requests.RequestException as e:
            raise SourceUnavailable(
                f"GitHub API {self.host} unreachable ({what} of {self.repo}): "
                f"{redact_text(_short(e))}"
            ) from None
        now = self._clock()
        got = classify(resp.status_code, resp.headers, resp.content, now=now)
        if got.kind == "rate_limited":
            assert got.wait_seconds is not None
            self.blocked_until = now + got.wait_seconds
            self._on_wait()
            log.warning(
                "agent.source.rate_limited",
                source=self._label,
                status=resp.status_code,
                wait_seconds=round(got.wait_seconds, 1),
                reason=got.reason,
            )
            raise RateLimited(self._rate_limited_message(got.wait_seconds, got.reason),
                              retry_after_seconds=got.wait_seconds)
        return resp, got

    def error(self, got: Classified, *, what: str) -> ConfigError | SourceUnavailable:
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
                f"GitHub API {self.host} refused access to {repo}{said}: {fix}"])
        if got.kind == "forbidden":
            return ConfigError("source.token_file", [
                f"GitHub API {self.host} forbids reading {repo}{said}: give the token in "
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
                f"GitHub API {self.host} answered {status} for {repo}@{branch}; "
                "retrying later"
            )
        return SourceUnavailable(
            f"GitHub API {self.host} answered {status} for {repo}@{branch}{said}"
        )

    # ------------------------------------------------------------------ git data reads
    def tree(self, tree: str, *, recursive: bool, what: str) -> Listing:
        """``git/trees/{tree}`` (a tree, or a commit: its root tree), as answered."""
        resp, got = self.get(self.repo_url(f"git/trees/{quote(tree, safe='')}"), JSON,
                             what=what, params={"recursive": "1"} if recursive else None)
        if got.kind != "ok":
            raise self.error(got, what="git trees")
        try:
            doc = resp.json()
            entries = [TreeEntry(str(e["path"]), str(e["mode"]), str(e["type"]), str(e["sha"]))
                       for e in doc["tree"]]
            sizes = {str(e["path"]): (e.get("size") if isinstance(e.get("size"), int)
                                      else None) for e in doc["tree"]}
            truncated = bool(doc.get("truncated"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SourceUnavailable(f"GitHub API {self.host} answered {what} with something "
                                    "other than a tree") from None
        return Listing(entries, sizes, truncated)

    def blob(self, oid: str, *, what: str) -> bytes:
        """The content GitHub answers for blob ``oid`` (checked by the caller)."""
        resp, got = self.get(self.repo_url(f"git/blobs/{quote(oid, safe='')}"), JSON,
                             what=what)
        if got.kind != "ok":
            raise self.error(got, what="git blobs")
        try:
            blob = resp.json()
            return base64.b64decode(str(blob.get("content") or ""))
        except (ValueError, AttributeError, binascii.Error):
            return b""

    def compare(self, ancestor: str, descendant: str) -> str | None:
        """The compare API's ``status`` of ``descendant`` against ``ancestor`` (ahead,
        identical, behind, diverged); None when GitHub knows no such commit."""
        resp, got = self.get(
            self.repo_url(f"compare/{quote(ancestor, safe='')}...{quote(descendant, safe='')}"),
            JSON,
            what=f"the comparison of {ancestor[:12]} with {descendant[:12]}",
            params={"per_page": "1"},
        )
        if got.kind == "not_found":
            return None
        if got.kind != "ok":
            raise self.error(got, what="compare")
        try:
            status = resp.json()["status"]
        except (ValueError, KeyError, TypeError):
            status = None
        if status not in ("ahead", "identical", "behind", "diverged"):
            raise SourceUnavailable(
                f"GitHub API {self.host} compared {ancestor[:12]} with {descendant[:12]} "
                f"of {self.repo} without a known status ({str(status)[:40]!r})")
        return str(status)


__all__ = ["API_VERSION", "DEFAULT_API_URL", "MAX_RATE_LIMIT_WAIT", "USER_AGENT", "Classified",
           "GitHubApi", "Listing", "RateLimited", "classify", "is_sha"]
