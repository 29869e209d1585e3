"""Notifications through real Apprise ``json://`` to a loopback HTTP receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from notify_receiver import NotifyReceiver
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.errors import ConfigError, DockerUnavailable, SourceUnavailable, Unhealthy
from agent.outcomes import PassResult
from agent.report.notify import Notifier, apprise_sender
from agent.state import Change

REV = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d"
CHANGE = Change(service="web", image="reg/web", old="sha256:" + "1" * 64, new="sha256:" + "2" * 64)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rx() -> Iterator[NotifyReceiver]:
    with NotifyReceiver() as r:
        yield r


def notifier(rx: NotifyReceiver, tmp_path: Path, clock: Clock, **kw: object) -> Notifier:
    tmp_path.mkdir(exist_ok=True)
    args: dict[str, object] = {
        "host": "prod-1", "on": ["rolled-back", "failed", "invalid", "stuck", "recovered"],
        "repeat_seconds": 3600, "stuck_after_seconds": 900, "state_dir": tmp_path,
        "clock": clock, "commit_url": lambda rev: f"https://github.com/acme/shop/commit/{rev}"}
    args.update(kw)
    return Notifier(apprise_sender([rx.url]), **args)  # type: ignore[arg-type]


def rolled_back(reason: str = "web: unhealthy: health endpoint says 503") -> PassResult:
    return PassResult("rolled-back", REV, [CHANGE], reason=reason, error=Unhealthy(reason))


def test_rollback_message_names_host_outcome_revision_services_reason_and_commit(rx, tmp_path):
    notifier(rx, tmp_path, Clock()).pass_finished(rolled_back())
    [m] = rx.wait_for(1)
    assert m["path"] == "/deploy"
    assert m["title"] == "prod-1: rolled back 1a2b3c4d5e6f"
    assert m["type"] == "failure"
    assert m["message"].splitlines() == [
        "host: prod-1", "outcome: rolled-back", "revision: 1a2b3c4d5e6f",
        "services: web 111111111111 -> 222222222222",
        "reason: web: unhealthy: health endpoint says 503",
        f"commit: https://github.com/acme/shop/commit/{REV}"]


def test_same_event_is_not_repeated_within_repeat_seconds_even_after_restart(rx, tmp_path):
    clock = Clock()
    n = notifier(rx, tmp_path, clock)
    invalid = PassResult("invalid", REV, reason="At 'services.web.image': not a digest")
    for _ in range(5):
        n.pass_finished(invalid)
        clock.now += 60
    notifier(rx, tmp_path, clock).pass_finished(invalid)  # a restart (or the next cron sync)
    assert len(rx.received()) == 1
    # a different reason is a different event
    n.pass_finished(PassResult("invalid", REV, reason="At 'services.api': unknown"))
    assert len(rx.received()) == 2
    clock.now += 3600
    n.pass_finished(invalid)
    assert len(rx.received()) == 3


def test_applied_is_sent_only_when_asked_for(rx, tmp_path):
    clock = Clock()
    notifier(rx, tmp_path / "a", clock).pass_finished(PassResult("applied", REV, [CHANGE]))
    assert rx.received() == []  # not in the default "on"
    notifier(rx, tmp_path / "b", clock, on=["applied"]).pass_finished(
        PassResult("applied", REV, [CHANGE]))
    [m] = rx.wait_for(1)
    assert m["title"] == "prod-1: deployed 1a2b3c4d5e6f" and m["type"] == "success"


def test_stuck_once_after_stuck_after_seconds_and_recovered_once(rx, tmp_path):
    clock = Clock()
    n = notifier(rx, tmp_path, clock, stuck_after_seconds=900)
    down = PassResult("error", None, reason="git fetch failed: connection refused",
                      error=SourceUnavailable("git fetch failed"))
    for _ in range(15):  # 14 minutes of failed passes: not yet
        n.pass_finished(down)
        clock.now += 60
    assert rx.received() == []
    for _ in range(10):
        n.pass_finished(down)
        clock.now += 60
    [stuck] = rx.wait_for(1)
    assert stuck["title"] == "prod-1: stuck" and stuck["type"] == "warning"
    assert "unreachable for 900 s" in stuck["message"]
    n.pass_finished(PassResult("no-op", REV))
    n.pass_finished(PassResult("no-op", REV))
    msgs = rx.wait_for(2)
    assert len(msgs) == 2 and msgs[1]["title"] == "prod-1: recovered 1a2b3c4d5e6f"


def test_short_outage_sends_neither_stuck_nor_recovered(rx, tmp_path):
    clock = Clock()
    n = notifier(rx, tmp_path, clock)
    n.pass_finished(PassResult("error", None, error=DockerUnavailable("engine down")))
    clock.now += 120
    n.pass_finished(PassResult("no-op", REV))
    clock.now += 2000
    n.pass_finished(PassResult("error", None, error=DockerUnavailable("engine down")))
    assert rx.received() == []


def test_failed_send_is_logged_and_retried_when_the_event_happens_again(rx, tmp_path):
    clock = Clock()
    n = notifier(rx, tmp_path, clock)
    rx.fail_with = 500
    with capture_logs() as logs:
        n.pass_finished(rolled_back())
    assert [e["event"] for e in logs if e["event"].startswith("agent.report")] == [
        "agent.report.failed"]
    assert rx.url not in repr(logs)
    rx.fail_with = None
    n.pass_finished(rolled_back())
    assert len(rx.wait_for(1)) == 1


def test_url_apprise_cannot_use_is_a_config_error_that_does_not_print_it():
    with pytest.raises(ConfigError) as e:
        apprise_sender(["json://127.0.0.1:1/x", "nosuchscheme://secret-token@host"])
    assert "notify.urls.1" in str(e.value) and "secret-token" not in str(e.value)


def test_notify_config_defaults_and_errors(tmp_path):
    base = {"source": {"repo": "/r"}, "compose": {"project_dir": str(tmp_path)}}
    cfg = parse_config({**base, "notify": {"urls": ["json://127.0.0.1:1/x"]}})
    assert cfg.notify is not None
    assert cfg.notify.on == ["rolled-back", "failed", "invalid", "stuck", "recovered"]
    assert (cfg.notify.repeat_seconds, cfg.notify.stuck_after_seconds) == (3600, 900)
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "notify": {"urls": [], "on": ["deployed"],
                                         "repeat_seconds": -1}})
    lines = e.value.problems
    assert len(lines) == 3
    assert any("notify.urls" in x for x in lines) and any("notify.on.0" in x for x in lines)
