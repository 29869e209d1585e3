"""The webhook server, for real on 127.0.0.1 (port 0), with a counting trigger."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from agent.webhook import WebhookServer, normalise_repo

SECRET = "s3cret-webhook-value-42"
REPO = "https://git.example.com/Ops/Stack.git"


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


@pytest.fixture
def fired() -> Counter:
    return Counter()


def make(fired: Counter, *, kind: str = "auto", rate: int = 1000, source_kind: str = "git",
         repo: str = REPO) -> WebhookServer:
    return WebhookServer("127.0.0.1", 0, secret=SECRET, kind=kind, source_kind=source_kind,
                         source_repo=repo, branch="main", rate_limit_per_minute=rate,
                         trigger=fired)


@pytest.fixture
def srv(fired: Counter) -> Iterator[WebhookServer]:
    s = make(fired)
    yield s
    s.close()


def payload(ref: str = "refs/heads/main",
            clone: str = "https://git.example.com/ops/stack.git") -> bytes:
    return json.dumps({"ref": ref, "repository": {"clone_url": clone,
                                                  "full_name": "ops/stack"}}).encode()


def sig(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(s: WebhookServer, body: bytes, headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    try:
        c.request("POST", "/hook", body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read().decode(), dict(r.getheaders())
    finally:
        c.close()


def gh(body: bytes, event: str = "push") -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-Hub-Signature-256": "sha256=" + sig(body),
            "Content-Type": "application/json"}


def test_signed_github_push_to_the_branch_starts_one_pass(srv: WebhookServer,
                                                          fired: Counter) -> None:
    body = payload()
    status, text, _ = post(srv, body, gh(body))
    assert (status, text.strip(), fired.n) == (202, "pass started", 1)


def test_gitlab_push_with_the_token_starts_one_pass(srv: WebhookServer, fired: Counter) -> None:
    body = json.dumps({"ref": "refs/heads/main", "project": {
        "git_http_url": "https://git.example.com/ops/stack.git"}}).encode()
    status, _, _ = post(srv, body, {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})
    assert (status, fired.n) == (202, 1)


@pytest.mark.parametrize("header", ["X-Gitea-Signature", "X-Forgejo-Signature"])
def test_gitea_and_forgejo_signed_push_starts_one_pass(srv: WebhookServer, fired: Counter,
                                                       header: str) -> None:
    body = payload()
    status, _, _ = post(srv, body, {"X-Gitea-Event": "push", header: sig(body)})
    assert (status, fired.n) == (202, 1)


@pytest.mark.parametrize("headers", [
    {"X-GitHub-Event": "push"},
    {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
    {"X-GitHub-Event": "push", "X-Hub-Signature-256": sig(b"other")},
    {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong"},
    {"X-Gitea-Event": "push", "X-Gitea-Signature": "zz"},
])
def test_missing_or_bad_signature_is_401_and_starts_nothing(
        srv: WebhookServer, fired: Counter, headers: dict[str, str]) -> None:
    status, _, _ = post(srv, payload(), headers)
    assert (status, fired.n) == (401, 0)


def test_a_signature_by_another_secret_is_401(srv: WebhookServer, fired: Counter) -> None:
    body = payload()
    status, _, _ = post(srv, body, {"X-GitHub-Event": "push",
                                    "X-Hub-Signature-256": "sha256=" + sig(body, "nope")})
    assert (status, fired.n) == (401, 0)


def test_kind_restricts_which_signature_is_accepted(fired: Counter) -> None:
    s = make(fired, kind="github")
    try:
        status, _, _ = post(s, payload(), {"X-Gitlab-Event": "Push Hook",
                                           "X-Gitlab-Token": SECRET})
        assert (status, fired.n) == (401, 0)
    finally:
        s.close()


def test_body_over_one_mib_is_413_without_sending_it_all(srv: WebhookServer,
                                                         fired: Counter) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n"
                     b"X-GitHub-Event: push\r\n\r\n" + b"x" * 1000)
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413") and fired.n == 0


@pytest.mark.parametrize("body", [
    payload(ref="refs/heads/feature"),
    payload(ref="refs/tags/v1"),
    payload(clone="https://git.example.com/ops/other.git"),
])
def test_push_to_another_branch_or_repo_is_ignored(srv: WebhookServer, fired: Counter,
                                                   body: bytes) -> None:
    status, text, _ = post(srv, body, gh(body))
    assert (status, text.strip(), fired.n) == (202, "ignored", 0)


def test_other_events_are_ignored(srv: WebhookServer, fired: Counter) -> None:
    body = payload()
    status, text, _ = post(srv, body, gh(body, event="issues"))
    assert (status, text.strip(), fired.n) == (202, "ignored", 0)


def test_ping_is_200_and_starts_no_pass(srv: WebhookServer, fired: Counter) -> None:
    body = b'{"zen": "hi"}'
    status, _, _ = post(srv, body, gh(body, event="ping"))
    assert (status, fired.n) == (200, 0)


def test_github_source_matches_owner_name(fired: Counter) -> None:
    s = make(fired, source_kind="github", repo="Ops/Stack")
    try:
        body = payload()
        assert post(s, body, gh(body))[0] == 202 and fired.n == 1
    finally:
        s.close()


def test_flood_from_one_address_is_429_with_retry_after(fired: Counter) -> None:
    s = make(fired, rate=2)
    try:
        body = payload()
        codes = [post(s, body, gh(body))[0] for _ in range(2)]
        status, _, headers = post(s, body, gh(body))
        assert codes == [202, 202] and status == 429 and int(headers["Retry-After"]) >= 1
        assert fired.n == 2
    finally:
        s.close()


def test_secret_never_appears_in_logs(fired: Counter) -> None:
    with capture_logs() as logs:
        s = make(fired)
        try:
            body = payload()
            post(s, body, gh(body))
            post(s, body, {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET})
            post(s, body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=bad"})
        finally:
            s.close()
    events = {e["event"] for e in logs}
    assert {"agent.webhook.listening", "agent.webhook.accepted",
            "agent.webhook.refused"} <= events
    assert SECRET not in repr(logs) and sig(body) not in repr(logs)


@pytest.mark.parametrize("url", [
    "https://GIT.example.com/ops/stack.git", "git@git.example.com:ops/stack.git",
    "ssh://git@git.example.com/ops/stack", "http://git.example.com/ops/stack/",
])
def test_repo_urls_normalise_alike(url: str) -> None:
    assert normalise_repo(url) == "git.example.com/ops/stack"
