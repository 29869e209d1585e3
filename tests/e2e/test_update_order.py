"""End-to-end: start-first and stop-first updates (zero-downtime releases)."""

from __future__ import annotations

import signal

import rig


def _desired(h, web, api="api-v1", web_extra=None):
    extra = {"web": web_extra} if web_extra else None
    return rig.desired_yaml({"web": (h.image("web"), h.images[web]),
                             "api": (h.image("api"), h.images[api])}, extra)


def _started_at(container) -> str:
    container.reload()
    return container.attrs["State"]["StartedAt"]


def test_start_first_brings_the_new_container_up_beside_the_old_then_retires_it(harness):
    harness.commit(_desired(harness, "web-v1"))
    assert harness.sync().code == 0
    (old,) = harness.containers("web")
    harness.commit(_desired(harness, "web-v2", web_extra={"update": "start-first"}))
    r = harness.sync()
    assert r.code == 0, r.summary()
    assert r.find("agent.apply.start_first")[0]["scale"] == {"web": 2}
    ev = r.events()
    # the old container is retired only after the new one is healthy
    assert ev.index("agent.health.healthy") < ev.index("agent.apply.retiring")
    assert r.find("agent.apply.retiring")[0]["container"] == old.name
    (new,) = harness.containers("web")  # back at the declared scale
    assert new.id != old.id
    assert harness.serve("web") == "web v2"


def test_start_first_bad_release_never_stops_the_old_container(harness):
    harness.commit(_desired(harness, "web-v1"))
    assert harness.sync().code == 0
    (old,) = harness.containers("web")
    started = _started_at(old)
    harness.commit(_desired(harness, "web-bad", web_extra={"update": "start-first"}))
    r = harness.sync()
    assert r.code == 1
    assert r.summary()["outcome"] == "rolled-back"
    assert "agent.rollback.start_first" in r.events()
    (still,) = harness.containers("web")
    assert still.id == old.id
    assert _started_at(still) == started  # never stopped, never restarted
    assert harness.serve("web") == "web v1"


def test_stop_first_recreates_the_container_in_place(harness):
    harness.commit(_desired(harness, "web-v1", web_extra={"update": "stop-first"}))
    assert harness.sync().code == 0
    (old,) = harness.containers("web")
    harness.commit(_desired(harness, "web-v2", web_extra={"update": "stop-first"}))
    r = harness.sync()
    assert r.code == 0
    assert "agent.apply.start_first" not in r.events()
    (new,) = harness.containers("web")
    assert new.id != old.id and new.name == old.name


def test_killed_with_two_containers_up_converges_to_exactly_one(harness):
    harness.commit(_desired(harness, "web-v1"))
    assert harness.sync().code == 0
    harness.commit(_desired(harness, "web-v2", web_extra={"update": "start-first"}))
    p = harness.cli_subprocess("sync", env={"GITOPS_AGENT_FAILPOINTS": "during-health"})
    assert p.returncode == -signal.SIGKILL
    assert len(harness.containers("web")) == 2
    # killed with the new container out of rotation: not resolvable by the service's name
    assert sorted("web" in _aliases(c) for c in harness.containers("web")) == [False, True]
    r = harness.sync()
    assert r.code == 0, r.summary()
    (only,) = harness.containers("web")
    assert harness.running_digest("web") == harness.images["web-v2"]
    assert only.status == "running"
    assert "web" in _aliases(only)  # the next pass admitted it


def _aliases(c) -> set[str]:  # type: ignore[no-untyped-def]
    """The container's aliases on its project's default network."""
    c.reload()
    (ep,) = [ep for n, ep in c.attrs["NetworkSettings"]["Networks"].items()
             if n.endswith("_default")]
    return set(ep.get("Aliases") or [])


def test_killed_with_two_containers_up_of_a_bad_release_keeps_the_old_one(harness):
    harness.commit(_desired(harness, "web-v1"))
    assert harness.sync().code == 0
    (old,) = harness.containers("web")
    harness.commit(_desired(harness, "web-bad", web_extra={"update": "start-first"}))
    p = harness.cli_subprocess("sync", env={"GITOPS_AGENT_FAILPOINTS": "during-health"})
    assert p.returncode == -signal.SIGKILL
    r = harness.sync()
    assert r.code == 1
    (only,) = harness.containers("web")
    assert only.id == old.id


def _compose_with_web(harness, extra_lines: str) -> None:
    path = harness.project.project_dir / "compose.yml"
    text = path.read_text().replace("    restart: unless-stopped\n",
                                    "    restart: unless-stopped\n" + extra_lines, 1)
    path.write_text(text)


def test_start_first_on_a_service_publishing_a_host_port_is_invalid(harness):
    _compose_with_web(harness, '    ports: ["127.0.0.1:18080:8080"]\n')
    harness.commit(_desired(harness, "web-v1", web_extra={"update": "start-first"}))
    r = harness.sync()
    assert r.code == 2
    reason = r.summary()["reason"]
    assert "At 'services.web.update'" in reason and "publishes host port 18080" in reason
    assert harness.containers("web") == []


def test_start_first_on_a_fixed_container_name_or_stateful_service_is_invalid(harness):
    _compose_with_web(harness, f"    container_name: {harness.project.name}-fixed\n"
                               "    labels:\n      gitops-agent.stateful: 'true'\n")
    harness.commit(_desired(harness, "web-v1", web_extra={"update": "start-first"}))
    r = harness.sync()
    assert r.code == 2
    assert "fixed container_name" in r.summary()["reason"]


def test_default_update_order_falls_back_to_stop_first_where_start_first_cannot_work(harness):
    _compose_with_web(harness, '    ports: ["127.0.0.1::8080"]\n')  # ephemeral port: fine
    harness.commit(_desired(harness, "web-v1"))
    assert harness.sync().code == 0
    _compose_with_web(harness, "    labels:\n      gitops-agent.stateful: 'true'\n")
    harness.commit(_desired(harness, "web-v2"))
    r = harness.sync()
    assert r.code == 0, r.summary()
    assert r.find("agent.apply.started")[0]["update"]["web"] == "stop-first"
