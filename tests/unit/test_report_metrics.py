"""Prometheus metrics: counters from passes and from the journal, gauges of 'now', a real
scrape over HTTP and the textfile."""

from __future__ import annotations

import socket
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import retry
from agent.errors import AgentEnvironmentError, ReleaseFailed, SourceUnavailable, Unhealthy
from agent.outcomes import PassResult, ServiceReport
from agent.report.metrics import MetricsObserver
from agent.state import AgentState, ImageDigest, PassRecord, RevisionRecord, StateStore

WEB = ImageDigest(image="reg/web", digest="sha256:" + "a" * 64)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(m: MetricsObserver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    return samples(generate_latest(m.registry).decode())


def test_passes_and_releases_are_counted_by_outcome(tmp_path):
    m = MetricsObserver(tmp_path)
    m.pass_finished(PassResult("applied", "r1", duration_seconds=3.2, target={"web": WEB},
                               services={"web": ServiceReport(WEB.digest, "healthy")}))
    m.pass_finished(PassResult("no-op", "r1", duration_seconds=0.04))
    # today's pass hands a plain ReleaseFailed for a rollback: still a failed revision
    m.pass_finished(PassResult("rolled-back", "r2", error=ReleaseFailed("x"), reason="x"))
    s = scrape(m)
    assert s[("gitops_agent_passes_total", (("outcome", "applied"),))] == 1
    assert s[("gitops_agent_passes_total", (("outcome", "no-op"),))] == 1
    assert s[("gitops_agent_passes_total", (("outcome", "error"),))] == 0
    assert s[("gitops_agent_releases_total", (("outcome", "applied"),))] == 1
    assert s[("gitops_agent_releases_total", (("outcome", "rolled-back"),))] == 1
    assert s[("gitops_agent_releases_total", (("outcome", "failed"),))] == 0
    assert s[("gitops_agent_pass_duration_seconds_count", ())] == 3
    assert s[("gitops_agent_pass_duration_seconds_bucket", (("le", "0.05"),))] == 2
    assert s[("gitops_agent_revision_info", (("revision", "r2"), ("state", "desired")))] == 1
    assert s[("gitops_agent_revision_info", (("revision", "r1"), ("state", "applied")))] == 1
    assert s[("gitops_agent_failed_revision", ())] == 1
    assert s[("gitops_agent_service_info", (("digest", WEB.digest), ("service", "web")))] == 1
    assert s[("gitops_agent_service_healthy", (("service", "web"),))] == 1
    assert s[("gitops_agent_build_info", (("version", "0.1.0"),))] == 1


def test_forced_retry_that_works_clears_failed_revision(tmp_path):
    m = MetricsObserver(tmp_path)
    m.pass_finished(PassResult("rolled-back", "r2", error=Unhealthy("x")))
    m.pass_finished(PassResult("skipped", "r2"))
    assert scrape(m)[("gitops_agent_failed_revision", ())] == 1
    m.pass_finished(PassResult("applied", "r2", forced=True,
                               services={"web": ServiceReport(None, "unhealthy")}))
    s = scrape(m)
    assert s[("gitops_agent_failed_revision", ())] == 0
    assert s[("gitops_agent_revision_info", (("revision", "r2"), ("state", "applied")))] == 1
    assert s[("gitops_agent_service_healthy", (("service", "web"),))] == 0


def test_counters_are_derived_from_the_journal_on_restart(tmp_path):
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    st = AgentState(
        last_attempted=RevisionRecord(revision="r3", at=at, outcome="skipped"),
        last_applied=RevisionRecord(revision="r1", at=at, outcome="applied"),
        failed_revisions={"r3": "unhealthy"},
        history=[
            PassRecord(started_at=at, duration_seconds=1, revision="r3", outcome="skipped",
                       repeats=4),
            PassRecord(started_at=at, duration_seconds=1, revision="r3",
                       outcome="rolled-back"),
            PassRecord(started_at=at, duration_seconds=1, revision="r1", outcome="no-op",
                       repeats=10),
            PassRecord(started_at=at, duration_seconds=1, revision="r1", outcome="applied"),
        ])
    StateStore(tmp_path).save(st)
    s = scrape(MetricsObserver(tmp_path))
    assert s[("gitops_agent_passes_total", (("outcome", "no-op"),))] == 10
    assert s[("gitops_agent_passes_total", (("outcome", "skipped"),))] == 4
    assert s[("gitops_agent_releases_total", (("outcome", "rolled-back"),))] == 1
    assert s[("gitops_agent_releases_total", (("outcome", "applied"),))] == 1
    assert s[("gitops_agent_failed_revision", ())] == 1
    assert s[("gitops_agent_last_applied_timestamp_seconds", ())] == at.timestamp()
    assert s[("gitops_agent_revision_info", (("revision", "r3"), ("state", "desired")))] == 1


def test_source_errors_and_pull_retries_are_counted_from_the_retry_policy(tmp_path):
    m = MetricsObserver(tmp_path)
    retry.retries_scheduled["agent.fetch"] += 3
    retry.retries_scheduled["agent.pull"] += 2
    m.pass_finished(PassResult("error", None, error=SourceUnavailable("down")))
    s = scrape(m)
    assert s[("gitops_agent_source_errors_total", ())] == 4  # 3 retries + the final failure
    assert s[("gitops_agent_pull_retries_total", ())] == 2


def test_http_endpoint_serves_a_scrape_and_textfile_is_written_after_each_pass(tmp_path):
    prom = tmp_path / "gitops_agent.prom"
    m = MetricsObserver(tmp_path, textfile=prom)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m.serve(f"127.0.0.1:{port}")
    try:
        m.pass_finished(PassResult("applied", "r1"))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert samples(body.decode())[("gitops_agent_passes_total",
                                       (("outcome", "applied"),))] == 1
        assert samples(prom.read_text())[("gitops_agent_passes_total",
                                          (("outcome", "applied"),))] == 1
        with pytest.raises(AgentEnvironmentError, match="cannot listen"):
            MetricsObserver(tmp_path).serve(f"127.0.0.1:{port}")
    finally:
        m.close()


def test_unwritable_textfile_is_logged_and_never_raises(tmp_path):
    from structlog.testing import capture_logs

    m = MetricsObserver(tmp_path, textfile=Path("/proc/gitops_agent.prom"))
    with capture_logs() as logs:
        m.pass_finished(PassResult("no-op", "r1"))
    assert [e["event"] for e in logs] == ["agent.report.failed"]
