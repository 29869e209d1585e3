"""Reading a commit's statuses from GitHub: ``GET {api_url}/repos/{owner}/{repo}/commits/
{sha}/status`` (the combined status: the newest status of each context), 100 contexts a
page, every page a conditional request (``If-None-Match`` with the ETag of the last answer).

GitHub does not count a 304 against the rate limit when the request carries the token, so
a host that waits while nothing changes costs nothing but the round trip. The ETags and the
bodies they stand for are kept in memory and in ``state_dir/fleet-statuses.json`` (only for
the revision asked last), so a one-off ``sync`` is conditional too.

Any failure to read (network, 5xx, rate limit, a refused token, a malformed answer) raises
:class:`StatusesUnavailable`, a TransientError: the pass ends ``error`` and touches nothing.
The token goes only to ``api_url``'s host: redirects are not followed, and a ``Link:
rel="next"`` page on another scheme, host or port is refused (StatusesUnavailable).

Each status carries the login of its ``creator``: the rollout gate counts only statuses from
trusted creators (:mod:`agent.fleet`); :meth:`GitHubStatuses.token_login` tells whose the
token is (``GET /user``, asked once per process).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog

from agent.errors import AgentError, TransientError
from agent.state import write_atomic

log = structlog.get_logger()

CACHE_FILE = "fleet-statuses.json"
PER_PAGE = 100
MAX_PAGES = 50  # 5,000 contexts: GitHub keeps at most 1,000 statuses per context and sha


_Page = tuple[str, Any, str | None]  # (etag, body, next page url)



def github_session(token: str, session: requests.Session | None = None) -> requests.Session:
    """A session that speaks GitHub's REST API v3 with ``token`` (the caller keeps it to the
    API's own host: requests are made to ``api_url`` only, redirects not followed)."""
    s = session or requests.Session()
    s.headers.update({
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
        "User-Agent": "gitops-agent",
    })
    return s

class StatusesUnavailable(TransientError):
    """The commit statuses could not be read (GitHub down, rate limit, token refused)."""


@dataclass(frozen=True)
class CommitStatus:
    context: str
    state: str  # success, failure, error, pending
    updated_at: datetime
    creator: str | None = None  # the login that posted it


@dataclass
class StatusesRead:
    statuses: list[CommitStatus]
    now: datetime  # GitHub's clock (the Date header), else this host's
    requests: int = 0
    not_modified: int = 0  # of which 304 (not counted against the rate limit)
    pages: list[str] = field(default_factory=list)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _next_link(header: str | None) -> str | None:
    for part in (header or "").split(","):
        m = re.match(r'\s*<([^>]+)>\s*;\s*rel="next"', part)
        if m:
            return m.group(1)
    return None


class GitHubStatuses:
    def __init__(self, *, repo: str, api_url: str, token: str, timeout: float = 5.0,
                 state_dir: Path | None = None, session: requests.Session | None = None
                 ) -> None:
        self.repo = repo
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.path = state_dir / CACHE_FILE if state_dir is not None else None
        self.session = github_session(token, session)
        # url -> (etag, the body it stands for, the next page); the last revision's pages
        self.cache: dict[str, _Page] = self._load()
        self._login: str | None = None

    def token_login(self) -> str:
        """The login the token belongs to (``GET /user``), asked once per process.
        Raises StatusesUnavailable."""
        if self._login is not None:
            return self._login
        what = "login of report.github.token_file's token"
        try:
            resp = self.session.get(f"{self.api_url}/user", timeout=self.timeout,
                                    allow_redirects=False)
        except requests.RequestException as e:
            raise StatusesUnavailable(f"could not read the {what}: {type(e).__name__}") from None
        if resp.status_code != 200:
            raise StatusesUnavailable(self._refusal(resp, what))
        try:
            login = resp.json()["login"]
        except (ValueError, KeyError, TypeError):
            raise StatusesUnavailable(f"GitHub answered the {what} in an unexpected shape"
                                      ) from None
        self._login = str(login)
        return self._login

    def read(self, sha: str) -> StatusesRead:
        """Every context's newest status on ``sha``. Raises StatusesUnavailable."""
        url: str | None = (f"{self.api_url}/repos/{self.repo}/commits/{sha}/status"
                           f"?per_page={PER_PAGE}")
        out = StatusesRead([], datetime.now(UTC))
        fresh: dict[str, _Page] = {}
        while url is not None and len(out.pages) < MAX_PAGES:
            body, url = self._page(url, out, fresh)
            if url is not None and not self._same_origin(url):
                raise StatusesUnavailable(
                    f"GitHub's next page of the commit statuses of {self.repo} is not under "
                    f"{self.api_url}: not followed (the token goes only to api_url)")
            try:
                for s in body.get("statuses") or []:
                    creator = s.get("creator")
                    login = creator.get("login") if isinstance(creator, dict) else None
                    out.statuses.append(CommitStatus(
                        str(s["context"]), str(s["state"]), _parse_time(str(s["updated_at"])),
                        creator=str(login) if login is not None else None))
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                raise StatusesUnavailable(
                    f"GitHub answered the statuses of {sha[:12]} in an unexpected shape: "
                    f"{type(e).__name__}") from None
        if fresh != self.cache:
            self.cache = fresh
            self._save()
        return out

    def _page(self, url: str, out: StatusesRead, fresh: dict[str, _Page]
              ) -> tuple[Any, str | None]:
        cached = self.cache.get(url)
        headers = {"If-None-Match": cached[0]} if cached else {}
        what = f"commit statuses of {self.repo}"
        try:
            resp = self.session.get(url, headers=headers, timeout=self.timeout,
                                    allow_redirects=False)  # the token stays on this host
        except requests.RequestException as e:
            raise StatusesUnavailable(f"could not read the {what}: {type(e).__name__}") from None
        out.requests += 1
        out.pages.append(url)
        date = resp.headers.get("Date")
        if date:
            try:
                out.now = parsedate_to_datetime(date).astimezone(UTC)
            except (TypeError, ValueError):
                pass
        if resp.status_code == 304 and cached is not None:
            out.not_modified += 1
            fresh[url] = cached
            return cached[1], cached[2]
        if resp.status_code != 200:
            raise StatusesUnavailable(self._refusal(resp, what))
        try:
            body = resp.json()
        except ValueError:
            raise StatusesUnavailable(f"the {what} are not JSON") from None
        if not isinstance(body, dict):
            raise StatusesUnavailable(f"the {what} are not a JSON object")
        nxt = _next_link(resp.headers.get("Link"))
        etag = resp.headers.get("ETag")
        if etag:
            fresh[url] = (etag, body, nxt)
        return body, nxt

    def _same_origin(self, url: str) -> bool:
        mine, theirs = urlsplit(self.api_url), urlsplit(url)
        return (theirs.scheme, theirs.netloc) == (mine.scheme, mine.netloc) and (
            theirs.path.startswith(mine.path.rstrip("/") + "/"))

    def _refusal(self, resp: requests.Response, what: str) -> str:
        code = resp.status_code
        if code == 429 or (code == 403 and resp.headers.get("x-ratelimit-remaining") == "0"):
            reset = resp.headers.get("x-ratelimit-reset") or resp.headers.get("retry-after")
            return f"GitHub rate limit reached reading the {what} (reset: {reset})"
        if code in (401, 403):
            return (f"GitHub refused the token in report.github.token_file reading the "
                    f"{what} (HTTP {code}): it needs read access to commit statuses")
        if code in (404, 422):
            return f"no such commit in {self.repo}, or no access (HTTP {code})"
        return f"GitHub answered HTTP {code} reading the {what}"

    # ------------------------------------------------------------------ persisted ETags
    def _load(self) -> dict[str, _Page]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_bytes())
            return {str(k): (str(v[0]), v[1], None if v[2] is None else str(v[2]))
                    for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError, IndexError, KeyError):
            return {}

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            write_atomic(self.path, json.dumps({k: list(v) for k, v in self.cache.items()},
                                               separators=(",", ":")).encode(), mode=0o600)
        except AgentError as e:
            log.warning("agent.fleet.cache_write_failed", error=str(e))
