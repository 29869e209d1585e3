"""The one retry policy, and log redaction/format."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from agent import log as agent_log
from agent import retry
from agent.errors import (
    DesiredStateError,
    RegistryAuthError,
    RegistryUnavailable,
    SourceUnavailable,
)


class Flaky:
    def __init__(self, failures: int, exc: BaseException | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.exc = exc or SourceUnavailable("git host unreachable")

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


# ------------------------------------------------------------------------- retry
def test_conftest_puts_retry_in_fast_mode():
    assert retry.is_fast()


def test_success_on_the_first_attempt_calls_once_and_logs_nothing():
    fn = Flaky(0)
    with capture_logs() as logs:
        assert retry.retry_transient(fn, event="agent.fetch") == "ok"
    assert fn.calls == 1
    assert logs == []


def test_transient_errors_are_retried_until_success():
    fn = Flaky(2)
    assert retry.retry_transient(fn, event="agent.fetch") == "ok"
    assert fn.calls == 3


def test_transient_error_is_tried_attempts_times_then_reraised_unchanged():
    exc = SourceUnavailable("down")
    fn = Flaky(100, exc)
    with pytest.raises(SourceUnavailable) as ei:
        retry.retry_transient(fn, event="agent.fetch", attempts=3)
    assert ei.value is exc
    assert fn.calls == 3


def test_default_policy_makes_four_attempts():
    fn = Flaky(100)
    with pytest.raises(SourceUnavailable):
        retry.retry_transient(fn, event="agent.fetch")
    assert fn.calls == retry.ATTEMPTS == 4


def test_each_retry_is_logged_as_retry_scheduled_with_attempt_wait_error_and_context():
    fn = Flaky(100, RegistryUnavailable("ghcr.io", "ghcr.io/a/b@sha256:x", "503"))
    with capture_logs() as logs, pytest.raises(RegistryUnavailable):
        retry.retry_transient(fn, event="agent.pull", attempts=3, service="web")
    assert [e["event"] for e in logs] == ["agent.pull.retry_scheduled"] * 2
    assert [e["attempt"] for e in logs] == [1, 2]
    for e in logs:
        assert e["log_level"] == "warning"
        assert e["of"] == 3
        assert e["service"] == "web"
        assert "503" in e["error"]
        assert 0 <= e["wait_seconds"] < 1  # fast mode: milliseconds


@pytest.mark.parametrize("exc", [DesiredStateError("ds.yml", ["bad"]),
                                 RegistryAuthError("ghcr.io", "ref", "401"),
                                 ValueError("bug")])
def test_non_transient_errors_are_not_retried(exc):
    fn = Flaky(100, exc)
    with capture_logs() as logs, pytest.raises(type(exc)):
        retry.retry_transient(fn, event="agent.pull")
    assert fn.calls == 1
    assert logs == []


def test_retry_on_can_name_other_exception_types():
    fn = Flaky(1, ConnectionResetError("reset"))
    assert retry.retry_transient(fn, event="x", retry_on=ConnectionResetError) == "ok"
    assert fn.calls == 2


def test_fast_mode_keeps_attempts_but_shrinks_waits(retry_waits):
    fn = Flaky(100)
    start = time.monotonic()
    with pytest.raises(SourceUnavailable):
        retry.retry_transient(fn, event="x")
    assert fn.calls == 4
    assert time.monotonic() - start < 2
    # the waits the policy chose (the unit tier records them instead of sleeping them)
    assert len(retry_waits) == 3 and sum(retry_waits) < 2


def test_an_injected_sleep_is_given_each_wait_the_retry_log_announces(retry_waits):
    fn = Flaky(2)
    with capture_logs() as logs:
        assert retry.retry_transient(fn, event="agent.fetch") == "ok"
    announced = [e["wait_seconds"] for e in logs if e["event"] == "agent.fetch.retry_scheduled"]
    assert [round(w, 3) for w in retry_waits] == announced and len(announced) == 2


def test_normal_mode_waits_grow_exponentially_within_the_cap(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(retry, "_fast", False)
    monkeypatch.setattr(retry, "_sleep", None)  # no injected sleep: tenacity's own, as in production
    monkeypatch.setattr("tenacity.nap.time.sleep", sleeps.append)
    fn = Flaky(100)
    with pytest.raises(SourceUnavailable):
        retry.retry_transient(fn, event="x", attempts=4)
    assert len(sleeps) == 3
    assert 1.0 <= sleeps[0] <= 1.5
    assert 2.0 <= sleeps[1] <= 2.5
    assert 4.0 <= sleeps[2] <= 4.5
    assert all(s <= retry.WAIT_MAX + retry.WAIT_INITIAL for s in sleeps)


# ------------------------------------------------------------------------- logging
@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    agent_log.configure(buf, level="debug")
    yield buf
    structlog.reset_defaults()


def _lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_logs_are_json_lines_when_the_stream_is_not_a_tty(stream):
    structlog.get_logger().info("agent.pass.started", revision="abc", n=3)
    (line,) = _lines(stream)
    assert line["event"] == "agent.pass.started"
    assert line["revision"] == "abc" and line["n"] == 3
    assert line["level"] == "info"
    assert "timestamp" in line


def test_logs_are_human_readable_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = Tty()
    try:
        agent_log.configure(buf)
        structlog.get_logger().info("agent.pass.started", revision="abc")
    finally:
        structlog.reset_defaults()
    out = buf.getvalue()
    assert "agent.pass.started" in out and "revision" in out
    with pytest.raises(ValueError):
        json.loads(out)


def test_level_filters_lower_events():
    buf = io.StringIO()
    try:
        agent_log.configure(buf, level="warning")
        structlog.get_logger().info("quiet")
        structlog.get_logger().warning("loud")
    finally:
        structlog.reset_defaults()
    assert [e["event"] for e in _lines(buf)] == ["loud"]


def test_registered_secret_is_never_rendered_in_values_or_messages(stream):
    secret = f"tok-{uuid.uuid4().hex}"
    agent_log.register_secret(secret)
    log = structlog.get_logger()
    log.warning(f"event mentions {secret}", error=f"401 for token {secret}", detail=secret)
    out = stream.getvalue()
    assert secret not in out
    (line,) = _lines(stream)
    assert line["error"] == "401 for token ***"
    assert line["detail"] == "***"


def test_url_credentials_are_never_rendered(stream):
    structlog.get_logger().error(
        "agent.fetch.failed", error="fatal: could not read from https://bot:ghp_abc123@github.com/a/b"
    )
    out = stream.getvalue()
    assert "ghp_abc123" not in out and "bot:" not in out
    assert _lines(stream)[0]["error"] == "fatal: could not read from https://***@github.com/a/b"


def test_values_under_secret_looking_keys_are_masked(stream):
    structlog.get_logger().info("x", password="hunter2", auth_token="t", Authorization="Bearer b")
    line = _lines(stream)[0]
    assert line["password"] == line["auth_token"] == line["Authorization"] == "***"
    assert "hunter2" not in stream.getvalue()


def test_secrets_inside_lists_and_dicts_are_never_rendered(stream):
    secret = f"tok-{uuid.uuid4().hex}"
    agent_log.register_secret(secret)
    structlog.get_logger().info(
        "agent.git.run",
        command=["git", "clone", "https://bot:pw123@git.example/a.git", secret],
        env={"GIT_ASKPASS": "/bin/x", "token": "raw", "url": "https://u:pw456@h/"},
    )
    out = stream.getvalue()
    for leaked in (secret, "pw123", "pw456", '"raw"'):
        assert leaked not in out


def test_secrets_in_exception_tracebacks_are_never_rendered(stream):
    secret = f"tok-{uuid.uuid4().hex}"
    agent_log.register_secret(secret)
    try:
        raise RuntimeError(f"push to https://bot:pw789@git.example failed with {secret}")
    except RuntimeError:
        structlog.get_logger().exception("agent.pass.crashed")
    out = stream.getvalue()
    assert "RuntimeError" in out
    assert secret not in out and "pw789" not in out


def test_short_or_empty_secrets_are_not_registered():
    before = set(agent_log._known_secrets)
    agent_log.register_secret("")
    agent_log.register_secret("abc")
    assert agent_log._known_secrets == before
    assert agent_log.redact_text("abc xyz") == "abc xyz"


def test_redact_text_masks_url_userinfo_with_or_without_password():
    assert agent_log.redact_text("ssh://git@host/x and https://u:p@h/y") == \
        "ssh://***@host/x and https://***@h/y"


def _modules_after(code: str) -> set[str]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_cli_does_not_load_rich_even_where_it_is_installed():
    """structlog pulls in rich (~4 MB) whenever it is importable; the agent never uses it."""
    mods = _modules_after("import agent.cli, agent.log; agent.log.configure(json=True)")
    assert "structlog" in mods
    assert not any(m == "rich" or m.startswith("rich.") for m in mods)


def test_a_call_that_succeeds_first_time_never_loads_tenacity():
    mods = _modules_after(
        "from agent.retry import retry_transient\n"
        "from agent.errors import SourceUnavailable\n"
        "assert retry_transient(lambda: 7, event='agent.x', retry_on=SourceUnavailable) == 7")
    assert "agent.retry" in mods and "tenacity" not in mods
