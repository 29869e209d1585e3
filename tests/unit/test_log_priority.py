"""Lines written to the journal carry their syslog priority (sd-daemon's ``<N>`` prefix), so
``journalctl -p warning`` selects warnings and errors; elsewhere lines are unchanged. And an
idle pass (nothing changed since the pass before) logs nothing above debug."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import structlog
from fakes import (
    HEALTHY,
    FakeEngine,
    FakeSource,
    desired_yaml,
    digest_of,
    shop_reconciler,
)
from structlog.testing import capture_logs

from agent import log as agent_log
from agent.reconcile import Reconciler


@pytest.fixture
def journal_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A file standing in for journald's stream, and its ``JOURNAL_STREAM`` value."""
    f = open(tmp_path / "journal", "w+")  # noqa: SIM115 - closed below
    st = os.fstat(f.fileno())
    yield f, f"{st.st_dev}:{st.st_ino}"
    f.close()
    structlog.reset_defaults()


def _lines(f: Any) -> list[str]:
    f.flush()
    f.seek(0)
    return f.read().splitlines()


def test_stream_matching_journal_stream_gets_the_syslog_priority_prefix(journal_file,
                                                                        monkeypatch):
    f, value = journal_file
    monkeypatch.setenv("JOURNAL_STREAM", value)
    agent_log.configure(f, json=True, level="debug")
    log = structlog.get_logger()
    log.debug("t.debug")
    log.info("t.info")
    log.warning("t.warning")
    log.error("t.error")
    log.critical("t.critical")
    lines = _lines(f)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    # after the prefix (journald strips it) each line is still one valid JSON object
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["t.debug", "t.info", "t.warning", "t.error",
                                           "t.critical"]


def test_inherited_journal_stream_for_another_stream_adds_no_prefix(journal_file, tmp_path,
                                                                    monkeypatch):
    """A child whose stderr was redirected inherits JOURNAL_STREAM; its dev:inode no longer
    matches, so its lines stay plain."""
    _, value = journal_file
    monkeypatch.setenv("JOURNAL_STREAM", value)
    with open(tmp_path / "elsewhere", "w+") as other:
        agent_log.configure(other, json=True)
        structlog.get_logger().warning("t.warning")
        [line] = _lines(other)
    structlog.reset_defaults()
    assert json.loads(line)["event"] == "t.warning"


@pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "12:34"])
def test_missing_or_malformed_journal_stream_is_not_the_journal(journal_file, monkeypatch,
                                                                value):
    f, _ = journal_file
    monkeypatch.setenv("JOURNAL_STREAM", value)
    assert not agent_log.stream_is_journal(f)


def test_a_stream_without_a_file_descriptor_is_not_the_journal(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not agent_log.stream_is_journal(io.StringIO())


def test_journal_detection_matches_dev_and_inode(journal_file):
    f, value = journal_file
    assert agent_log.stream_is_journal(f, {"JOURNAL_STREAM": value})
    dev, ino = value.split(":")
    assert not agent_log.stream_is_journal(f, {"JOURNAL_STREAM": f"{dev}:{int(ino) + 1}"})


def test_console_lines_on_the_journal_get_the_prefix_too(journal_file, monkeypatch):
    f, value = journal_file
    monkeypatch.setenv("JOURNAL_STREAM", value)
    agent_log.configure(f, json=False)
    structlog.get_logger().error("t.error")
    [line] = _lines(f)
    assert line.startswith("<3>") and "t.error" in line


# --------------------------------------------------------------------------- idle passes
REG = "registry.test:5000"
V1, V2 = digest_of("v1"), digest_of("v2")


def _world(tmp: Path) -> tuple[FakeSource, Reconciler]:
    engine = FakeEngine()
    for d in (V1, V2):
        engine.publish(f"{REG}/shop/web", d, HEALTHY)
    source = FakeSource()
    rec = shop_reconciler(tmp, engine, source, health_timeout_seconds=2.0)
    return source, rec


def _above_debug(logs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in logs if e["log_level"] != "debug"]


def test_an_idle_pass_logs_nothing_above_debug_until_something_changes(tmp_path):
    source, rec = _world(tmp_path)
    source.commit(desired_yaml({"web": (f"{REG}/shop/web", V1)}))
    with capture_logs() as first:
        assert rec.run_pass().outcome == "applied"
    assert "agent.pass.completed" in _above_debug(first)
    # the first no-op after a release is news (the outcome changed): info
    with capture_logs() as settled:
        assert rec.run_pass().outcome == "no-op"
    assert "agent.pass.completed" in _above_debug(settled)
    for _ in range(3):
        with capture_logs() as idle:
            assert rec.run_pass().outcome == "no-op"
        assert _above_debug(idle) == []
        debug = [e["event"] for e in idle]
        assert {"agent.fetch.done", "agent.diff", "agent.pass.completed"} <= set(debug)
    # a new commit: the pass is news again
    source.commit(desired_yaml({"web": (f"{REG}/shop/web", V2)}))
    with capture_logs() as changed:
        assert rec.run_pass().outcome == "applied"
    assert {"agent.fetch.done", "agent.diff", "agent.pass.completed"} <= set(
        _above_debug(changed))
