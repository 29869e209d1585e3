"""End-to-end: the reconcile pass against a real engine, registry, compose and git repo."""

from __future__ import annotations

import rig


def test_first_deploy_pulls_and_runs_desired_digests_and_exits_0(harness):
    for svc, key in (("web", "web-v1"), ("api", "api-v1")):  # not local: must be pulled
        rig.remove_local_image(harness.client, f"{harness.image(svc)}@{harness.images[key]}")
    rev = harness.release(web="web-v1", api="api-v1")
    r = harness.sync()
    assert r.code == 0, r.logs
    assert r.summary()["outcome"] == "applied"
    assert {e["service"] for e in r.find("agent.pull.done")} == {"web", "api"}
    assert harness.running_digest("web") == harness.images["web-v1"]
    assert harness.running_digest("api") == harness.images["api-v1"]
    assert harness.serve("web") == "web v1"
    assert len(harness.containers("side")) == 1  # unmanaged service runs as compose.yml says
    st = harness.state()
    assert st["last_applied"]["revision"] == rev
    assert st["known_good"]["web"]["digest"] == harness.images["web-v1"]
    assert st["in_flight"] is None


def test_second_pass_without_changes_is_a_noop_that_touches_nothing(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    before = harness.container_ids()
    r = harness.sync()
    assert r.code == 0
    assert r.summary()["outcome"] == "no-op"
    assert "agent.apply.started" not in r.events()
    assert "agent.pull.started" not in r.events()
    assert harness.container_ids() == before


def test_bump_recreates_only_the_changed_service(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    before = harness.container_ids()
    harness.release(web="web-v2", api="api-v1")
    r = harness.sync()
    assert r.code == 0, r.logs
    assert r.summary()["changed"] == [
        f"web: {harness.images['web-v1'][7:19]} -> {harness.images['web-v2'][7:19]}"]
    after = harness.container_ids()
    assert after["api"] == before["api"]
    assert after["side"] == before["side"]
    assert after["web"] != before["web"]
    assert harness.serve("web") == "web v2"


def test_unhealthy_release_is_rolled_back_to_last_known_good_and_exits_1(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    bad = harness.release(web="web-bad", api="api-v2")
    r = harness.sync()
    assert r.code == 1
    s = r.summary()
    assert s["outcome"] == "rolled-back"
    assert "web" in s["reason"] and "unhealthy" in s["reason"]
    assert "health endpoint says 503" in s["reason"]  # the health check's own output
    assert "agent.rollback.done" in r.events()
    # every service changed in this pass returns to what ran before
    assert harness.running_digest("web") == harness.images["web-v1"]
    assert harness.running_digest("api") == harness.images["api-v1"]
    assert harness.serve("web") == "web v1"
    st = harness.state()
    assert bad in st["failed_revisions"]
    assert st["last_applied"]["revision"] != bad


def test_crashing_release_is_rolled_back(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    harness.release(web="web-crash", api="api-v1")
    r = harness.sync()
    assert r.code == 1
    reason = r.summary()["reason"]
    assert "web" in reason and ("exited" in reason or "crash-looping" in reason)
    assert harness.running_digest("web") == harness.images["web-v1"]
    assert harness.serve("web") == "web v1"


def test_container_that_exits_0_at_once_counts_as_failed(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    harness.release(web="web-exit0", api="api-v1")
    r = harness.sync()
    assert r.code == 1
    assert harness.running_digest("web") == harness.images["web-v1"]


def test_failed_revision_is_not_retried_until_a_new_commit(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    harness.release(web="web-bad", api="api-v1")
    assert harness.sync().code == 1
    before = harness.container_ids()
    r = harness.sync()
    assert r.code == 1
    assert r.summary()["outcome"] == "skipped"
    assert "agent.sync.skipped_failed_revision" in r.events()
    assert "agent.apply.started" not in r.events()
    assert harness.container_ids() == before
    # a new good revision after the failure is applied
    harness.release(web="web-v2", api="api-v1")
    r = harness.sync()
    assert r.code == 0, r.logs
    assert harness.serve("web") == "web v2"


def test_sync_force_retries_a_failed_revision(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    harness.release(web="web-bad", api="api-v1")
    assert harness.sync().code == 1
    r = harness.sync("--force")
    assert r.code == 1
    assert "agent.sync.forced" in r.events()
    assert "agent.apply.started" in r.events()
    assert r.summary()["outcome"] == "rolled-back"
    assert harness.running_digest("web") == harness.images["web-v1"]


def test_first_deploy_that_fails_leaves_no_unhealthy_container(harness):
    harness.release(web="web-bad", api="api-v1")
    r = harness.sync()
    assert r.code == 1
    assert [c for c in harness.containers("web") if c.status == "running"] == []
    assert "agent.rollback.removing" in r.events()


def test_release_that_becomes_healthy_late_within_the_timeout_succeeds(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    harness.release(web="web-slow", api="api-v1")
    r = harness.sync()
    assert r.code == 0, r.summary()
    assert harness.running_digest("web") == harness.images["web-slow"]


def test_malformed_desired_state_exits_2_names_the_field_and_touches_nothing(harness):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    before = harness.container_ids()
    harness.commit(rig.desired_yaml({"web": (harness.image("web"), "sha256:abc")}))
    p = harness.cli_subprocess("sync")
    assert p.returncode == 2, p.stderr
    assert "At 'services.web.digest'" in p.stderr
    assert "desired-state.yml@" in p.stderr
    assert harness.container_ids() == before
    assert harness.state()["last_attempted"]["outcome"] == "invalid"


def test_service_missing_from_compose_is_invalid(harness):
    harness.commit(rig.desired_yaml({"ghost": (harness.image("web"), harness.images["web-v1"])}))
    r = harness.sync()
    assert r.code == 2
    assert "no service 'ghost' in the compose files" in r.summary()["reason"]
    assert harness.containers("web") == []


def test_invalid_agent_config_exits_2_with_every_error_and_its_path(harness, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[source]\nrepo = 5\nbogus = 1\n[agent]\ninterval_seconds = "x"\n')
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "sync"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    for needle in ("At 'source.repo'", "At 'source.bogus': unknown key",
                   "At 'agent.interval_seconds'", "At 'compose': required key is missing"):
        assert needle in p.stderr, p.stderr


def test_without_from_repo_status_and_diff_show_a_hand_edited_compose_file(harness, capsys):
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    compose = harness.project.project_dir / "compose.yml"
    compose.write_text(compose.read_text().replace(
        "  api:\n", "  api:\n    environment:\n      EDITED: \"1\"\n", 1))
    capsys.readouterr()
    assert harness.cli("diff").code == 0
    out = capsys.readouterr().out
    assert "! api: running configuration differs from the compose files" in out
    assert "web:" not in out
    assert harness.cli("status", "--json").code == 0
    import json
    view = json.loads(capsys.readouterr().out)
    assert {s["service"]: s["config_matches"] for s in view["services"]} == {
        "web": True, "api": False}
