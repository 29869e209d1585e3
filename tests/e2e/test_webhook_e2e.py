"""End-to-end: a signed GitHub push to the real daemon's webhook starts the pass at once."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import time

import pytest
from harness import DaemonProcess

SECRET = "e2e-webhook-secret-7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(port: int, body: bytes, signature: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST", "/", body=body, headers={
            "X-GitHub-Event": "push", "X-Hub-Signature-256": signature,
            "Content-Type": "application/json"})
        return c.getresponse().status
    finally:
        c.close()


@pytest.fixture
def webhook_daemon(harness, tmp_path):
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    port = free_port()
    cfg = harness.project.config_path
    text = cfg.read_text().replace("interval_seconds = 2", "interval_seconds = 3600")
    cfg.write_text(text + f'\n[webhook]\nlisten = "127.0.0.1:{port}"\n'
                          f'secret_file = "{secret}"\nkind = "github"\n')
    harness.release(web="web-v1", api="api-v1")
    d = DaemonProcess(cfg)
    d.wait_for("agent.pass.completed")
    d.wait_for("agent.webhook.listening")
    yield d, port
    d.stop()


def push_body(harness) -> bytes:
    origin = str(harness.project.repo.origin)
    return json.dumps({"ref": f"refs/heads/{harness.project.repo.branch}",
                       "repository": {"clone_url": origin, "full_name": "e2e/stack"}}).encode()


def test_signed_push_rolls_out_the_new_revision_within_seconds(harness, webhook_daemon):
    d, port = webhook_daemon
    rev = harness.release(web="web-v2", api="api-v1")
    body = push_body(harness)
    t0 = time.monotonic()
    status = post(port, body, "sha256=" + hmac.new(SECRET.encode(), body,
                                                   hashlib.sha256).hexdigest())
    assert status == 202
    d.wait_for("agent.pass.completed", timeout=60, where=lambda e: e["revision"] == rev)
    assert time.monotonic() - t0 < 30  # not the 1 h interval
    assert harness.running_digest("web") == harness.images["web-v2"]
    assert SECRET not in d.stderr


def test_badly_signed_push_starts_nothing(harness, webhook_daemon):
    d, port = webhook_daemon
    passes = len(d.events("agent.pass.completed"))
    harness.release(web="web-v2", api="api-v1")
    assert post(port, push_body(harness), "sha256=" + "0" * 64) == 401
    time.sleep(3)
    assert len(d.events("agent.pass.completed")) == passes
    assert harness.running_digest("web") == harness.images["web-v1"]
    assert d.events("agent.webhook.refused")
