"""Commit statuses: ``POST {api_url}/repos/{owner}/{repo}/statuses/{sha}`` for the revision
this host handles — ``pending`` when it starts releasing it (only with
``post_pending = true``: each status is a content-creation request, and GitHub caps those
per token at 80/min and 500/h), ``success`` when it runs healthy,
``failure`` when it failed or was rolled back, ``error`` when it is invalid or untrusted.

One status per change of state: the last state posted for each revision is remembered
(with the undelivered ones) in ``state_dir/report-github.json``, so an idle pass posts
nothing and makes no request. A status that cannot be posted stays queued and is retried,
in order, on later passes with exponential backoff (1 s, 2 s, 4 s … 10 min); the release
never waits for it beyond one request's timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests
import structlog

from agent.config import AgentConfig
from agent.edges.github_statuses import github_session
from agent.outcomes import PassResult
from agent.report import first_line, host_name, load_json, runs_line, save_json
from agent.secrets import read_secret_file

log = structlog.get_logger()

OUTBOX_FILE = "report-github.json"
DESCRIPTION_LIMIT = 140  # GitHub's limit for a status description
MAX_QUEUED = 100
MAX_REMEMBERED = 100
BACKOFF_MAX = 600.0


def _clip(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class GitHubStatusReporter:
    def __init__(
        self,
        *,
        repo: str,
        api_url: str,
        token: str,
        context: str,
        host: str,
        state_dir: Path,
        timeout: float = 5.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        post_pending: bool = False,
        stack: str | None = None,
    ) -> None:
        self.repo = repo
        self.api_url = api_url.rstrip("/")
        self.context = context.replace("{host}", host).replace("{stack}", stack or "default")
        self.host = host
        self.timeout = timeout
        self.path = state_dir / OUTBOX_FILE
        self.clock = clock
        self.post_pending = post_pending
        self.session = github_session(token, session)
        self._auth_logged = False
        self._retry_after: float | None = None
        data = load_json(self.path, "github statuses")
        self.last: dict[str, str] = {
            str(k): str(v) for k, v in (data.get("last") or {}).items()}
        self.queue: list[dict[str, str]] = [
            q for q in (data.get("queue") or []) if isinstance(q, dict)]
        self.failures = int(data.get("failures") or 0)
        self.retry_at = float(data.get("retry_at") or 0.0)

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> GitHubStatusReporter:
        gh = cfg.report.github
        assert gh is not None and gh.repo is not None
        token = read_secret_file(gh.token_file, "report.github.token_file")
        return cls(repo=gh.repo, api_url=gh.api_url, token=token, context=gh.context,
                   host=host_name(cfg), state_dir=cfg.agent.state_dir,
                   timeout=gh.timeout_seconds, post_pending=gh.post_pending,
                   stack=cfg.stack_label)

    # ------------------------------------------------------------------ PassObserver
    def release_started(self, revision: str, services: Sequence[str]) -> None:
        if not self.post_pending:
            return  # statuses are rate-limited per token: only verdicts by default
        try:
            self._enqueue(revision, "pending", "pending",
                          f"{self.host}: deploying {', '.join(services)}")
            self._flush()
        except Exception as e:  # noqa: BLE001 - reporting never fails the release
            log.error("agent.report.crashed", reporter="github", error=repr(e))

    def pass_finished(self, result: PassResult) -> None:
        try:
            st = self.status_for(result)
            if st is not None and result.revision is not None:
                self._enqueue(result.revision, *st)
            self._flush()
        except Exception as e:  # noqa: BLE001
            log.error("agent.report.crashed", reporter="github", error=repr(e))

    # ------------------------------------------------------------------ what to post
    def status_for(self, r: PassResult) -> tuple[str, str, str] | None:
        """``(key, state, description)`` for a pass, or None. The key tells states apart
        where it matters (a degraded success may turn green again; a failed one may not)."""
        reason = first_line(r.reason)
        h = self.host
        if r.outcome in ("applied", "no-op"):
            if r.revision and self.last.get(r.revision) == "failure" and not r.forced:
                # a failed revision converging on the known-good digests: still failed
                return None
            runs = runs_line(r.target) if r.target else \
                f"revision {(r.revision or '')[:12]} (no managed services)"
            return "success", "success", f"{h} runs {runs}"
        if r.outcome == "rolled-back":
            return "failure", "failure", f"{h}: rolled back: {reason}"
        if r.outcome == "failed":
            return "failure", "failure", f"{h}: failed: {reason}"
        if r.outcome == "skipped":
            return "failure", "failure", f"{h}: not deployed (failed before): {reason}"
        if r.outcome == "degraded":
            return "degraded", "failure", f"{h}: degraded: {reason}"
        if r.outcome == "invalid":
            return "error", "error", f"{h}: invalid: {reason}"
        return None  # "error": the host's weather, not the revision's verdict

    def _enqueue(self, revision: str, key: str, state: str, description: str) -> None:
        if self.last.get(revision) == key:
            return  # no change of state: nothing new to say
        self.last.pop(revision, None)
        self.last[revision] = key
        while len(self.last) > MAX_REMEMBERED:
            self.last.pop(next(iter(self.last)))
        self.queue.append({"sha": revision, "state": state,
                           "description": _clip(description), "context": self.context})
        if len(self.queue) > MAX_QUEUED:
            # full: the oldest pending or success goes first; a failure or error (a verdict
            # someone must act on) only when the outbox holds nothing else
            i = next((i for i, q in enumerate(self.queue)
                      if q["state"] not in ("failure", "error")), 0)
            dropped = self.queue.pop(i)
            log.warning("agent.report.dropped", reporter="github", revision=dropped["sha"][:12],
                        state=dropped["state"],
                        message=f"outbox full; the oldest {dropped['state']} status dropped")
        self._save()

    # ------------------------------------------------------------------ delivery
    def _flush(self) -> None:
        if not self.queue or self.clock() < self.retry_at:
            return  # an idle pass: no request
        changed = False
        while self.queue:
            item = self.queue[0]
            verdict = self._post(item)
            if verdict == "retry":
                self.failures += 1
                delay = min(BACKOFF_MAX, 2.0 ** (self.failures - 1))
                if self._retry_after is not None:  # GitHub said how long: wait that
                    delay = max(delay, self._retry_after)
                self.retry_at = self.clock() + delay
                log.warning("agent.report.retry_scheduled", reporter="github",
                            queued=len(self.queue), retry_in_seconds=delay)
                changed = True
                break
            self.queue.pop(0)
            self.failures, self.retry_at, changed = 0, 0.0, True
        if changed:
            self._save()

    def _post(self, item: dict[str, str]) -> str:
        """``sent``, ``dropped`` (GitHub refuses it for good) or ``retry``."""
        url = f"{self.api_url}/repos/{self.repo}/statuses/{item['sha']}"
        body = {k: item[k] for k in ("state", "description", "context")}
        ev = {"reporter": "github", "revision": item["sha"][:12], "state": item["state"]}
        self._retry_after = None
        try:
            resp = self.session.post(url, json=body, timeout=self.timeout,
                                     allow_redirects=False)  # the token stays on this host
        except requests.RequestException as e:
            log.warning("agent.report.failed", **ev, error=type(e).__name__,
                        detail=first_line(str(e), 200))
            return "retry"
        if resp.status_code in (200, 201):
            log.info("agent.report.sent", **ev, context=item["context"])
            return "sent"
        retry_after = resp.headers.get("retry-after", "")
        rate_limited = resp.status_code == 429 or (
            resp.status_code == 403 and (resp.headers.get("x-ratelimit-remaining") == "0"
                                         or retry_after != ""))  # a secondary limit
        if rate_limited:
            self._retry_after = float(retry_after) if retry_after.isdigit() else None
            log.warning("agent.report.rate_limited", **ev, status=resp.status_code,
                        retry_after=self._retry_after, detail=_message(resp))
            return "retry"
        if resp.status_code in (401, 403) and not rate_limited:
            if not self._auth_logged:
                self._auth_logged = True
                log.error("agent.report.unauthorized", **ev, status=resp.status_code,
                          message=f"GitHub refused the token in report.github.token_file: it "
                                  f"needs 'commit statuses: write' on {self.repo}")
            else:
                log.warning("agent.report.failed", **ev, status=resp.status_code)
            return "retry"
        if resp.status_code in (404, 422):
            log.error("agent.report.rejected", **ev, status=resp.status_code,
                      detail=_message(resp),
                      message=f"no such commit in {self.repo}, or no access; not retried")
            return "dropped"
        log.warning("agent.report.failed", **ev, status=resp.status_code, detail=_message(resp))
        return "retry"

    def _save(self) -> None:
        save_json(self.path, {"last": self.last, "queue": self.queue,
                              "failures": self.failures, "retry_at": self.retry_at},
                  "github statuses")


def _message(resp: requests.Response) -> str:
    try:
        data: Any = resp.json()
        return first_line(str(data.get("message", "")), 200)
    except ValueError:
        return first_line(resp.text, 200)
