"""Fault: the agent is SIGKILLed at each phase of a pass, then started again. It converges
without manual help: the release lands (or, killed during a rollback, the rollback does),
no unreleased mix remains, the web volume's data survives, and a third pass is quiet."""

from __future__ import annotations

import signal
import time

import pytest
import rig
from faultkit import (
    AgentProc,
    assert_marker,
    assert_released_set,
    digests,
    push_big_image,
    registry_proxy,
)


@pytest.mark.parametrize("point", [
    "after-fetch", "after-pull", "during-apply", "after-apply", "during-health",
])
def test_killed_at_a_phase_of_a_good_release_converges_on_restart(deployed, point):
    h, marker = deployed
    h.release(web="web-v2", api="api-v2")
    p = h.cli_subprocess("sync", env={"GITOPS_AGENT_FAILPOINTS": point})
    assert p.returncode == -signal.SIGKILL, p.stderr
    r = h.sync()
    if point not in ("after-fetch", "after-pull"):
        assert "agent.recover.in_flight" in r.events(), point
    assert r.code == 0, r.summary()
    assert r.summary()["outcome"] == "applied"
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)
    st = h.state()
    assert st["in_flight"] is None and st["failed_revisions"] == {}
    r = h.sync()
    assert (r.code, r.summary()["outcome"]) == (0, "no-op")


def _release_stop_first(h, web: str, api: str) -> str:
    return h.commit(rig.desired_yaml(
        {"web": (h.image("web"), h.images[web]), "api": (h.image("api"), h.images[api])},
        extra={"web": {"update": "stop-first"}, "api": {"update": "stop-first"}}))


def test_killed_between_two_update_groups_converges_on_restart(deployed):
    """web stop-first, api start-first: killed after web's group was recreated and before
    api's started (the failpoint sits between the two compose calls production makes): a
    mix that was never released runs until the next pass, which completes the release."""
    h, marker = deployed
    h.commit(rig.desired_yaml(
        {"web": (h.image("web"), h.images["web-v2"]), "api": (h.image("api"), h.images["api-v2"])},
        extra={"web": {"update": "stop-first"}, "api": {"update": "start-first"}}))
    p = h.cli_subprocess("sync", env={"GITOPS_AGENT_FAILPOINTS": "during-apply"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert h.running_digest("web") == h.images["web-v2"]
    assert h.running_digest("api") == h.images["api-v1"]
    r = h.sync()
    assert "agent.recover.in_flight" in r.events()
    assert r.code == 0, r.summary()
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)


def test_killed_during_rollback_converges_to_the_previous_release(deployed):
    """The failpoint sits in the stop-first rollback (compose up of the old digests); a
    start-first rollback only removes the new containers, the old ones never stopped."""
    h, marker = deployed
    rev = _release_stop_first(h, "web-bad", "api-v2")
    p = h.cli_subprocess("sync", env={"GITOPS_AGENT_FAILPOINTS": "during-rollback"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert h.state()["in_flight"]["phase"] == "rollback"
    r = h.sync()
    assert "agent.recover.in_flight" in r.events()
    assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
    assert_marker(h, marker)
    st = h.state()
    assert st["in_flight"] is None
    assert rev in st["failed_revisions"]
    before = h.container_ids()
    r = h.sync()
    assert r.summary()["outcome"] == "skipped" and h.container_ids() == before


def test_killed_from_outside_while_pulling_converges_on_restart(
        deployed, registry, docker_client, tmp_path):
    """A throttled proxy makes the pull of a 3 MB layer take seconds; the agent is killed
    in the middle of it. The next run pulls again (the engine keeps nothing half-written
    that the digest check would accept) and releases."""
    h, marker = deployed
    big = push_big_image(docker_client, registry.host, "e2e/web", "slowpull", "web slowpull",
                         tmp_path)
    with registry_proxy(registry.host, bytes_per_second=600 * 1024) as proxy:
        h.commit(rig.desired_yaml({"web": (f"{proxy.host}/e2e/web", big),
                                   "api": (h.image("api"), h.images["api-v2"])}))
        before = h.container_ids()
        agent = AgentProc(h, "sync")
        agent.wait_event("agent.pull.started")
        blob_requests = [q for q in proxy.requests if "/blobs/" in q]
        t0 = time.monotonic()
        while not any("/blobs/" in q for q in proxy.requests) and time.monotonic() - t0 < 20:
            time.sleep(0.1)
        time.sleep(1.0)  # mid-download
        assert agent.kill() == -signal.SIGKILL
        # killed mid-download of the big image (api's small pull may have finished: its
        # image is not local either once retention has pruned it)
        assert not [e for e in agent.lines if e["event"] == "agent.pull.done"
                    and e.get("service") == "web"], blob_requests
        assert h.container_ids() == before  # nothing touched before the kill
        r = h.sync()
    assert r.code == 0, r.summary()
    assert_released_set(h, {"web": big, "api": h.images["api-v2"]})
    assert_marker(h, marker)
