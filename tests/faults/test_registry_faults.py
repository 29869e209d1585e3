"""Faults: the registry is unreachable, answers 5xx, never answers, drops the connection in
the middle of a layer, or refuses credentials. Every release here changes web (from the
misbehaving registry) AND api (from the good one): a pull failure must leave both alone.

Right credentials, wrong credentials against a real htpasswd registry and credentials from
DOCKER_CONFIG are covered by tests/e2e/test_registry_auth.py; here a fake 401 registry.
"""

from __future__ import annotations

import rig
from faultkit import (
    assert_marker,
    assert_released_set,
    digests,
    one_line,
    push_big_image,
    registry_proxy,
    set_agent_option,
    silent_registry,
    status_registry,
)


def _release_from(h, host: str, web_digest: str) -> str:
    return h.commit(rig.desired_yaml({
        "web": (f"{host}/e2e/web", web_digest),
        "api": (h.image("api"), h.images["api-v2"]),
    }))


def _assert_aborted_before_touching(h, r, before) -> str:
    """A transient registry fault: exit 1, outcome error, nothing touched, not a failed
    revision, retried with backoff; returns the one-line reason."""
    assert r.code == 1, r.logs
    s = r.summary()
    assert s["outcome"] == "error"
    assert len(r.find("agent.pull.retry_scheduled")) == 3  # 4 attempts in all
    assert len(r.find("agent.pull.failed")) == 1
    assert "agent.apply.started" not in r.events()
    assert h.container_ids() == before
    assert s["revision"] not in h.state()["failed_revisions"]
    return one_line(s["reason"])


def test_registry_unreachable_nothing_listening(deployed):
    h, marker = deployed
    before = h.container_ids()
    host = f"127.0.0.1:{rig.free_port()}"  # nothing listens there
    _release_from(h, host, h.images["web-v2"])
    r = h.sync()
    reason = _assert_aborted_before_touching(h, r, before)
    assert f"registry {host} unavailable while pulling {host}/e2e/web@" in reason
    assert "connection refused" in reason
    assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
    assert_marker(h, marker)


def test_registry_answering_500(deployed):
    h, marker = deployed
    before = h.container_ids()
    with status_registry(500) as fake:
        _release_from(h, fake.host, h.images["web-v2"])
        r = h.sync()
    reason = _assert_aborted_before_touching(h, r, before)
    assert f"registry {fake.host} unavailable" in reason
    assert "500" in reason
    assert any("/v2/e2e/web/manifests/" in q for q in fake.requests), fake.requests
    assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
    assert_marker(h, marker)


def test_registry_that_never_answers_is_given_up_after_the_stall_timeout(deployed):
    """Accepts the connection, never answers. The engine's own timeouts are 10 s (TLS
    handshake) + 15 s (ping) per attempt, and none at all once the ping has worked; the
    agent gives a pull up after pull_stall_timeout_seconds without progress."""
    h, marker = deployed
    set_agent_option(h, "pull_stall_timeout_seconds", "2")
    before = h.container_ids()
    with silent_registry(answer_ping=False) as fake:
        _release_from(h, fake.host, h.images["web-v2"])
        r = h.sync()
    reason = _assert_aborted_before_touching(h, r, before)
    assert f"registry {fake.host} unavailable" in reason
    assert "no progress for 2s" in reason
    assert r.summary()["duration_seconds"] < 30
    assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
    assert_marker(h, marker)


def test_registry_that_stalls_after_the_ping_does_not_hang_the_agent(deployed):
    """Answers ``GET /v2/`` and then never sends the manifest: the engine would wait for
    ever (docker-py pulls with no timeout); the stall timeout ends it."""
    h, marker = deployed
    set_agent_option(h, "pull_stall_timeout_seconds", "2")
    before = h.container_ids()
    with silent_registry(answer_ping=True) as fake:
        _release_from(h, fake.host, h.images["web-v2"])
        r = h.sync()
    reason = _assert_aborted_before_touching(h, r, before)
    assert "no progress for 2s" in reason
    assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
    assert_marker(h, marker)


def test_connection_dropped_mid_layer_is_resumed_and_the_release_lands(
        deployed, registry, docker_client, tmp_path):
    """A proxy forwards manifests but cuts each large blob download half-way, once. The
    engine resumes the layer (HTTP Range) and the digest-verified image is released."""
    h, marker = deployed
    big = push_big_image(docker_client, registry.host, "e2e/web", "cut", "web cut", tmp_path)
    with registry_proxy(registry.host, cut_blobs_once=True) as proxy:
        _release_from(h, proxy.host, big)
        r = h.sync()
    assert any(q.startswith("CUT ") for q in proxy.requests), proxy.requests
    assert any("bytes=" in q for q in proxy.requests), proxy.requests  # resumed by Range
    assert r.code == 0, r.summary()
    assert r.summary()["outcome"] == "applied"
    assert_released_set(h, {"web": big, "api": h.images["api-v2"]})
    assert h.serve("web") == "web cut"
    assert_marker(h, marker)


def test_registry_refusing_credentials_fails_once_without_retry_storm(deployed):
    h, marker = deployed
    before = h.container_ids()
    with status_registry(401) as fake:
        _release_from(h, fake.host, h.images["web-v2"])
        r = h.sync()
        manifest_requests = [q for q in fake.requests if "/manifests/" in q]
    assert r.code == 1
    s = r.summary()
    assert s["outcome"] == "failed"
    assert len(r.find("agent.pull.unauthorized")) == 1
    assert r.find("agent.pull.retry_scheduled") == []  # no retry storm on a 401
    assert len(manifest_requests) <= 2, manifest_requests  # the engine's own, once
    reason = one_line(s["reason"])
    assert f"registry {fake.host} refused the credentials" in reason
    assert f"docker login {fake.host}" in reason
    assert h.container_ids() == before
    assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
    assert_marker(h, marker)
