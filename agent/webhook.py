"""``[webhook]``: a signed push from the git host starts a pass at once.

A stdlib ``ThreadingHTTPServer`` in a daemon thread; it never runs a pass itself, it only
calls ``trigger()`` (the daemon's SIGHUP path: coalesced, never two passes at a time).
Order per request: rate limit (per source address, token bucket) → size (Content-Length,
1 MiB) → signature (constant time) → event → branch and repository. The secret is read
once at start and never logged; log events carry reason, status, address and event only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.secrets import read_secret_file

log = structlog.get_logger()

MAX_BODY = 1024 * 1024
# serve_forever checks for shutdown this often (socketserver's default is 0.5 s): close()
# returns within it; a select() wake-up 20 times a second is next to nothing for a daemon
SHUTDOWN_POLL_SECONDS = 0.05
Kind = str  # "auto" | "github" | "gitlab" | "gitea"


def normalise_repo(value: str) -> str:
    """``https://GitHub.com/o/r.git``, ``git@github.com:o/r``, ``ssh://git@host/o/r`` → ``host/o/r``
    (host lower-cased); a bare ``owner/name`` stays ``owner/name`` (lower-cased)."""
    v = value.strip()
    v = re.sub(r"^[a-z][a-z0-9+.-]*://", "", v, flags=re.I)
    v = re.sub(r"^[^@/]+@", "", v)  # user@ (git@host:o/r or ssh://git@host/o/r)
    m = re.match(r"^([^/:]+):(?!\d+/)(.*)$", v)  # scp-like host:path
    if m:
        v = f"{m.group(1)}/{m.group(2)}"
    v = re.sub(r"^([^/:]+):\d+/", r"\1/", v)  # drop a port
    v = v.rstrip("/")
    if v.lower().endswith(".git"):
        v = v[:-4]
    parts = v.split("/")
    if len(parts) >= 3:
        parts[0] = parts[0].lower()
    return "/".join(parts).lower()


def _payload_repos(payload: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for key in ("repository", "project"):
        r = payload.get(key)
        if not isinstance(r, dict):
            continue
        for field in ("clone_url", "ssh_url", "git_url", "html_url", "url", "git_http_url",
                      "git_ssh_url", "web_url", "http_url", "ssh_url_to_repo",
                      "http_url_to_repo", "full_name", "path_with_namespace"):
            v = r.get(field)
            if isinstance(v, str) and v:
                out.add(normalise_repo(v))
    return out


def repo_matches(source_kind: str, source_repo: str, payload: dict[str, Any]) -> bool:
    want = normalise_repo(source_repo)
    repos = _payload_repos(payload)
    if source_kind == "github":  # owner/name: match the path part of any URL, or full_name
        return any(r == want or r.endswith("/" + want) and r.count("/") == want.count("/") + 1
                   for r in repos)
    return want in repos


class TokenBucket:
    """Per-address buckets of ``rate`` tokens a minute (burst = rate)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when allowed, else the seconds until a token is back."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 10_000:  # a flood of addresses costs bounded memory
                self._buckets = {k: b for k, b in self._buckets.items() if now - b[1] < 60}
            return (1.0 - tokens) / self.rate


def _hex_sig_ok(secret: bytes, body: bytes, given: str | None) -> bool:
    if not given:
        return False
    want = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want.encode(), given.strip().lower().encode())


def verify(kind: Kind, secret: str, headers: Any, body: bytes) -> str | None:
    """The flavour (``github``/``gitea``/``gitlab``) whose signature is valid, else None."""
    key = secret.encode()
    if kind in ("auto", "github"):
        h = headers.get("X-Hub-Signature-256")
        if h and h.startswith("sha256=") and _hex_sig_ok(key, body, h[len("sha256="):]):
            return "github"
    if kind in ("auto", "gitea"):
        for name in ("X-Gitea-Signature", "X-Forgejo-Signature"):
            if _hex_sig_ok(key, body, headers.get(name)):
                return "gitea"
    if kind in ("auto", "gitlab"):
        tok = headers.get("X-Gitlab-Token")
        if tok and hmac.compare_digest(tok.encode(), key):
            return "gitlab"
    return None


def _event(flavour: str, headers: Any) -> str:
    if flavour == "gitlab":
        ev = headers.get("X-Gitlab-Event") or ""
        return "push" if ev == "Push Hook" else ev
    if flavour == "gitea":
        return headers.get("X-Gitea-Event") or headers.get("X-Forgejo-Event") or \
            headers.get("X-GitHub-Event") or ""
    return headers.get("X-GitHub-Event") or ""


class WebhookServer:
    def __init__(self, host: str, port: int, *, secret: str, kind: Kind, source_kind: str,
                 source_repo: str, branch: str, rate_limit_per_minute: int,
                 trigger: Callable[[], None],
                 also: Sequence[tuple[str, str, str]] = ()) -> None:
        """``also``: more (source kind, repo, branch) whose pushes start a pass (the
        repos of the other [[stack]] tables)."""
        self.secret = secret
        self.kind = kind
        self.source_kind = source_kind
        self.source_repo = source_repo
        self.ref = f"refs/heads/{branch}"
        self.targets = [(source_kind, source_repo, self.ref),
                        *((k, r, f"refs/heads/{b}") for k, r, b in also)]
        self.trigger = trigger
        self.bucket = TokenBucket(rate_limit_per_minute)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "gitops-agent-webhook"
            sys_version = ""

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # no headers or paths in logs; the agent logs its own events

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

            def _refuse_method(self) -> None:
                server._reply(self, 405, "POST only", close=True)

            do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _refuse_method  # noqa: N815

        self.httpd = ThreadingHTTPServer((host.strip("[]"), port), Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[0]
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="webhook",
                                        kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
                                        daemon=True)
        self._thread.start()
        log.info("agent.webhook.listening", address=f"{host}:{self.port}", kind=kind)

    # ------------------------------------------------------------------ replies
    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, text: str, *, close: bool = False,
               headers: dict[str, str] | None = None) -> None:
        body = (text + "\n").encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/plain; charset=utf-8")
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if close:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.write(body)

    def _refused(self, h: BaseHTTPRequestHandler, status: int, reason: str, event: str = "",
                 *, close: bool = False, headers: dict[str, str] | None = None) -> None:
        log.warning("agent.webhook.refused", reason=reason, status=status,
                    remote=h.client_address[0], webhook_event=event)
        self._reply(h, status, reason, close=close, headers=headers)

    # ------------------------------------------------------------------ request
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        remote = str(h.client_address[0])
        wait = self.bucket.take(remote)
        if wait > 0:
            self._refused(h, 429, "rate limited", close=True,
                          headers={"Retry-After": str(max(1, int(wait + 0.999)))})
            return
        raw_len = h.headers.get("Content-Length")
        try:
            length = int(raw_len) if raw_len is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self._refused(h, 411, "Content-Length required", close=True)
            return
        if length > MAX_BODY:
            self._refused(h, 413, "body over 1 MiB", close=True)
            return
        body = h.rfile.read(min(length, MAX_BODY))
        flavour = verify(self.kind, self.secret, h.headers, body)
        if flavour is None:
            self._refused(h, 401, "missing or bad signature")
            return
        event = _event(flavour, h.headers)
        if event == "ping":
            log.info("agent.webhook.ignored", reason="ping", remote=remote, webhook_event=event)
            self._reply(h, 200, "pong")
            return
        if event != "push":
            log.info("agent.webhook.ignored", reason="not a push", remote=remote,
                     webhook_event=event)
            self._reply(h, 202, "ignored")
            return
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            self._refused(h, 400, "payload is not a JSON object", event)
            return
        ref = payload.get("ref")
        if not any(ref == t_ref for _, _, t_ref in self.targets):
            log.info("agent.webhook.ignored", reason="another branch", remote=remote,
                     webhook_event=event)
            self._reply(h, 202, "ignored")
            return
        if not any(ref == t_ref and repo_matches(k, r, payload) for k, r, t_ref in self.targets):
            log.info("agent.webhook.ignored", reason="another repository", remote=remote,
                     webhook_event=event)
            self._reply(h, 202, "ignored")
            return
        log.info("agent.webhook.accepted", remote=remote, webhook_event=event, kind=flavour)
        try:
            self.trigger()
        except Exception as e:  # the server outlives a failing trigger
            log.error("agent.webhook.trigger_failed", error=type(e).__name__)
            self._reply(h, 500, "could not start a pass")
            return
        self._reply(h, 202, "pass started")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def start_webhook(cfg: AgentConfig, trigger: Callable[[], None],
                  others: Sequence[AgentConfig] = ()) -> WebhookServer | None:
    """``cfg``'s [webhook], for pushes to its source; ``others``: the other stacks, whose
    sources' pushes start a pass too."""
    w = cfg.webhook
    if w is None:
        return None
    secret = read_secret_file(w.secret_file, "webhook.secret_file")
    host, port = parse_listen(w.listen)
    also = list(dict.fromkeys((o.source.kind, o.source.repo, o.source.branch) for o in others))
    return WebhookServer(host, port, secret=secret, kind=w.kind, source_kind=cfg.source.kind,
                         source_repo=cfg.source.repo, branch=cfg.source.branch,
                         rate_limit_per_minute=w.rate_limit_per_minute, trigger=trigger,
                         also=also)
