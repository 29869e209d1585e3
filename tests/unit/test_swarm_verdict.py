"""swarm_verdict: Swarm's UpdateStatus read correctly (a rollback is never a success)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.config import parse_config
from agent.errors import NotSwarmManager
from agent.outcomes import EXIT_ENVIRONMENT, disposition
from agent.swarm import SwarmService, SwarmTask, swarm_verdict

NEW, OLD = "sha256:" + "b" * 64, "sha256:" + "a" * 64
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def svc(state: str | None, *, spec: str = NEW, tasks: tuple[SwarmTask, ...] | None = None,
        started: datetime | None = T0, replicas: int | None = 2) -> SwarmService:
    if tasks is None:
        tasks = (SwarmTask(NEW, "running", "running"), SwarmTask(NEW, "running", "running"),
                 SwarmTask(OLD, "shutdown", "shutdown"))
    return SwarmService("web", spec, state, started, "update rolled back due to failure",
                        replicas, tasks)


@pytest.mark.parametrize("state", ["rollback_started", "rollback_completed",
                                   "rollback_paused", "paused"])
def test_a_rollback_or_a_paused_update_is_a_failed_release_never_a_success(state: str) -> None:
    v = swarm_verdict(svc(state), NEW, since=T0 - timedelta(seconds=1))
    assert v.state == "fail"
    assert state in v.detail


def test_completed_with_every_replica_running_the_new_digest_is_a_success() -> None:
    assert swarm_verdict(svc("completed"), NEW, since=T0).state == "ok"


def test_updating_is_waited_for() -> None:
    v = swarm_verdict(svc("updating"), NEW, since=T0)
    assert (v.state, v.detail) == ("wait", "Swarm is updating the service")


def test_completed_but_a_replica_still_at_the_old_digest_is_not_yet_a_success() -> None:
    tasks = (SwarmTask(NEW, "running", "running"), SwarmTask(OLD, "running", "running"))
    assert swarm_verdict(svc("completed", tasks=tasks), NEW).state == "wait"


def test_a_spec_back_on_another_digest_is_a_failure() -> None:
    v = swarm_verdict(svc("completed", spec=OLD), NEW)
    assert v.state == "fail" and "not bbbbbbbbbbbb" in v.detail


def test_tasks_that_keep_failing_are_a_failure_even_when_the_update_completed() -> None:
    failing = tuple(SwarmTask(NEW, "failed", "shutdown", "unhealthy container", T0)
                    for _ in range(3))
    v = swarm_verdict(svc("completed", tasks=(SwarmTask(NEW, "starting", "running"),
                                              *failing)), NEW)
    assert v.state == "fail" and "3 tasks" in v.detail and "unhealthy container" in v.detail


def test_an_update_status_older_than_the_deploy_is_an_earlier_update_and_ignored() -> None:
    # an earlier release's rollback_completed must not fail this release before Swarm starts it
    v = swarm_verdict(svc("rollback_completed", tasks=(SwarmTask(OLD, "running", "running"),)),
                      NEW, since=T0 + timedelta(seconds=5))
    assert v.state == "wait"


def test_checking_a_rollback_accepts_swarms_own_rollback_completed() -> None:
    tasks = (SwarmTask(OLD, "running", "running"), SwarmTask(OLD, "running", "running"))
    assert swarm_verdict(svc("rollback_completed", spec=OLD, tasks=tasks), OLD,
                         rolling_back=True).state == "ok"
    assert swarm_verdict(svc("rollback_started", spec=OLD, tasks=tasks), OLD,
                         rolling_back=True).state == "wait"
    assert swarm_verdict(svc("rollback_paused", spec=OLD, tasks=tasks), OLD,
                         rolling_back=True).state == "fail"


def test_a_missing_service_is_waited_for() -> None:
    assert swarm_verdict(None, NEW).state == "wait"


def test_engine_kind_defaults_to_compose_and_accepts_swarm_only_by_name() -> None:
    base = {"source": {"repo": "/r"}, "compose": {"project_dir": "/srv"}}
    assert parse_config(base).engine.kind == "compose"
    assert parse_config({**base, "engine": {"kind": "swarm"}}).engine.kind == "swarm"
    with pytest.raises(Exception, match="engine.kind"):
        parse_config({**base, "engine": {"kind": "nomad"}})


def test_not_a_swarm_manager_is_an_environment_error_exit_4() -> None:
    assert disposition(NotSwarmManager("x")).exit_code == EXIT_ENVIRONMENT
