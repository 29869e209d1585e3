"""End-to-end: registry outages and an agent killed mid-pass converge, nothing is lost."""

from __future__ import annotations

import signal

import rig


def test_registry_outage_during_release_exits_1_and_old_containers_keep_serving(
    harness, docker_client, tmp_path
):
    reg = rig.Registry(port=rig.free_port(), workdir=tmp_path / "flaky-registry").start()
    try:
        new = rig.build_and_push(docker_client, reg.host, "e2e/web", "outage", "healthy",
                                 "web outage", tmp_path / "ctx")
        rig.remove_local_image(docker_client, f"{reg.host}/e2e/web:outage")
        harness.release(web="web-v1", api="api-v1")
        assert harness.sync().code == 0
        before = harness.container_ids()

        reg.stop()  # the registry goes away
        text = rig.desired_yaml({
            "web": (f"{reg.host}/e2e/web", new),
            "api": (harness.image("api"), harness.images["api-v1"]),
        })
        rev = harness.commit(text)
        r = harness.sync()
        assert r.code == 1
        assert r.summary()["outcome"] == "error"
        retries = r.find("agent.pull.retry_scheduled")
        assert len(retries) == 3  # 4 attempts in all, with backoff between them
        assert "agent.apply.started" not in r.events()
        assert harness.container_ids() == before
        assert harness.serve("web") == "web v1"
        assert rev not in harness.state()["failed_revisions"]  # transient: not a failed revision

        reg.start()  # back again: the next pass releases
        r = harness.sync()
        assert r.code == 0, r.summary()
        assert harness.serve("web") == "web outage"
    finally:
        reg.stop()


def test_agent_killed_between_pull_and_apply_converges_on_the_next_run(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    before = harness.container_ids()
    harness.release(web="web-v2", api="api-v1")
    p = harness.cli_subprocess("sync", env={"GITOPS_AGENT_FAILPOINTS": "after-pull"})
    assert p.returncode == -signal.SIGKILL
    assert harness.container_ids() == before  # nothing was touched before the kill
    r = harness.sync()
    assert r.code == 0, r.summary()
    assert "agent.pull.cached" in r.events()  # the image pulled before the kill is reused
    assert harness.serve("web") == "web v2"


def test_agent_killed_during_health_wait_verifies_on_the_next_run(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    harness.release(web="web-bad", api="api-v1")
    p = harness.cli_subprocess("sync", env={"GITOPS_AGENT_FAILPOINTS": "during-health"})
    assert p.returncode == -signal.SIGKILL
    assert harness.state()["in_flight"]["phase"] == "verify"
    r = harness.sync()
    assert "agent.recover.in_flight" in r.events()
    assert r.code == 1
    assert r.summary()["outcome"] == "rolled-back"
    assert harness.serve("web") == "web v1"
    assert harness.state()["in_flight"] is None


def test_status_and_diff_report_without_changing_anything(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    harness.release(web="web-v2", api="api-v1")
    before = harness.container_ids()
    p = harness.cli_subprocess("diff")
    assert p.returncode == 0, p.stderr
    assert f"~ web: {harness.images['web-v1'][7:19]} -> {harness.images['web-v2'][7:19]}" in p.stdout
    assert "api" not in p.stdout
    assert harness.container_ids() == before
    p = harness.cli_subprocess("status", "--json")
    assert p.returncode == 0, p.stderr
    import json
    data = json.loads(p.stdout)
    web = next(s for s in data["services"] if s["service"] == "web")
    assert web["running"] == harness.images["web-v1"]
    assert web["health"] == "healthy"
    assert data["last_applied"]["outcome"] == "applied"
    p = harness.cli_subprocess("status")
    assert "web" in p.stdout and "healthy" in p.stdout
