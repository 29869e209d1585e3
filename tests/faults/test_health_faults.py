"""Faults in the release itself: a failing health check, a crash loop, an exit 0 at once, a
slow start. Each release changes web AND api; only web misbehaves, and both roll back
together — never a mix of the new api with the old web. The web volume's data survives."""

from __future__ import annotations

import pytest
from faultkit import assert_marker, assert_released_set, digests, one_line


@pytest.mark.parametrize(("bad", "words"), [
    ("web-bad", ("is unhealthy", "health endpoint says 503")),
    ("web-crash", ("exited with code 3", "crash-looping")),
    ("web-exit0", ("exited with code 0", "crash-looping")),  # restart: unless-stopped
])
def test_failing_web_rolls_back_web_and_api_together(deployed, bad, words):
    h, marker = deployed
    rev = h.release(web=bad, api="api-v2")
    r = h.sync()
    assert r.code == 1, r.summary()
    s = r.summary()
    assert s["outcome"] == "rolled-back"
    reason = one_line(s["reason"])
    assert reason.startswith("web: "), reason
    assert any(w in reason for w in words), reason
    assert "rollback did not become healthy" not in reason
    assert {c.split(":")[0] for c in s["changed"]} == {"web", "api"}
    assert "agent.rollback.done" in r.events()
    assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
    assert h.serve("web") == "web v1"
    assert_marker(h, marker)
    st = h.state()
    assert rev in st["failed_revisions"] and st["in_flight"] is None
    assert st["known_good"]["api"]["digest"] == h.images["api-v1"]
    # the failed revision is not retried: a second pass touches nothing
    before = h.container_ids()
    r = h.sync()
    assert r.summary()["outcome"] == "skipped" and h.container_ids() == before


def test_healthy_only_after_most_of_the_timeout_counts_as_success(deployed):
    h, marker = deployed
    h.project.config_path.write_text(h.project.config_path.read_text().replace(
        "health_timeout_seconds = 20.0", "health_timeout_seconds = 5"))
    # web-slow turns healthy ~3 s after start (SLOW_SECONDS) + one 0.5 s health interval
    h.release(web="web-slow", api="api-v2")
    r = h.sync()
    assert r.code == 0, r.summary()
    assert r.summary()["outcome"] == "applied"
    assert r.summary()["reason"] is None
    assert r.summary()["duration_seconds"] > 3
    assert_released_set(h, digests(h, web="web-slow", api="api-v2"))
    assert_marker(h, marker)
