"""Prometheus metrics (``prometheus_client``): served on ``[metrics] listen`` by the daemon,
and/or written to ``[metrics] textfile`` (node-exporter's textfile collector) after each pass.

The pass and release counters are derived from the journal (``state.json`` history) when
the process starts, so they survive restarts; the duration histogram, source errors and
pull retries are process-local (the journal does not hold them) and start at 0, which
Prometheus's ``rate()``/``increase()`` read as a counter reset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.config import AgentConfig
from agent.errors import AgentEnvironmentError, SourceUnavailable
from agent.outcomes import PassResult, disposition
from agent.retry import retries_scheduled
from agent.state import AgentState, StateStore

log = structlog.get_logger()

OUTCOMES = ("applied", "no-op", "rolled-back", "failed", "invalid", "skipped", "error",
            "degraded")
RELEASE_OUTCOMES = ("applied", "rolled-back", "failed")
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class _Snapshot(Collector):
    """The gauges that describe 'now' (revisions, services), replaced whole after each pass
    so a scrape never sees half of one pass and half of another."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {"desired": None, "applied": None, "failed": False,
                                       "last_pass": None, "last_applied": None,
                                       "services": {}}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        v = self.values
        g = GaugeMetricFamily("gitops_agent_last_pass_timestamp_seconds",
                              "When the last pass finished (Unix time)")
        if v["last_pass"] is not None:
            g.add_metric([], v["last_pass"])
        yield g
        g = GaugeMetricFamily("gitops_agent_last_applied_timestamp_seconds",
                              "When a revision was last applied healthy (Unix time)")
        if v["last_applied"] is not None:
            g.add_metric([], v["last_applied"])
        yield g
        g = GaugeMetricFamily("gitops_agent_revision_info",
                              "The desired revision and the one applied (value 1)",
                              labels=["revision", "state"])
        for state in ("desired", "applied"):
            if v[state]:
                g.add_metric([v[state], state], 1)
        yield g
        yield GaugeMetricFamily("gitops_agent_failed_revision",
                                "1 while the desired revision is one that failed",
                                value=1 if v["failed"] else 0)
        info = GaugeMetricFamily("gitops_agent_service_info",
                                 "The digest each managed service runs (value 1)",
                                 labels=["service", "digest"])
        healthy = GaugeMetricFamily("gitops_agent_service_healthy",
                                    "1 when the service's containers are healthy (or running "
                                    "without a health check), else 0", labels=["service"])
        for name, (digest, ok) in sorted(v["services"].items()):
            if digest:
                info.add_metric([name, digest], 1)
            healthy.add_metric([name], 1 if ok else 0)
        yield info
        yield healthy


class MetricsObserver:
    def __init__(self, state_dir: Path, *, textfile: Path | None = None,
                 clock: Callable[[], float] = time.time,
                 export: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry()
        # what is served and written: this registry, or (one stack of many) the agent's
        self.export = export or self.registry
        self.textfile = textfile
        self.clock = clock
        r = self.registry
        self.passes = Counter("gitops_agent_passes", "Reconcile passes, by outcome",
                              ["outcome"], registry=r)
        self.duration = Histogram("gitops_agent_pass_duration_seconds",
                                  "How long a pass took", buckets=BUCKETS, registry=r)
        self.releases = Counter("gitops_agent_releases",
                                "Releases attempted, by outcome (applied, rolled-back, failed)",
                                ["outcome"], registry=r)
        self.source_errors = Counter("gitops_agent_source_errors",
                                     "Failed reads of the source (retries included)",
                                     registry=r)
        self.pull_retries = Counter("gitops_agent_pull_retries",
                                    "Image pulls retried after a transient error", registry=r)
        Gauge("gitops_agent_build_info", "The agent's version (value 1)", ["version"],
              registry=r).labels(__version__).set(1)
        self.snapshot = _Snapshot()
        r.register(self.snapshot)
        for o in OUTCOMES:
            self.passes.labels(o)
        for o in RELEASE_OUTCOMES:
            self.releases.labels(o)
        self.failed_revisions: set[str] = set()
        self._retries_seen = {k: retries_scheduled[k] for k in ("agent.pull", "agent.fetch")}
        self._server: Any = None
        self._from_journal(StateStore(state_dir).load())

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> MetricsObserver:
        return cls(cfg.agent.state_dir, textfile=cfg.metrics.textfile)

    def _from_journal(self, st: AgentState) -> None:
        for rec in st.history:
            self.passes.labels(rec.outcome).inc(rec.repeats)
            if rec.outcome in RELEASE_OUTCOMES:
                self.releases.labels(rec.outcome).inc(rec.repeats)
        self.failed_revisions = set(st.failed_revisions)
        v = self.snapshot.values
        if st.last_attempted is not None:
            v["last_pass"] = st.last_attempted.at.timestamp()
            v["desired"] = st.last_attempted.revision
        if st.last_applied is not None:
            v["last_applied"] = st.last_applied.at.timestamp()
            v["applied"] = st.last_applied.revision
        v["failed"] = v["desired"] in self.failed_revisions

    # ------------------------------------------------------------------ serving
    def serve(self, listen: str) -> None:
        self._server = serve_registry(listen, self.export)

    def close(self) -> None:
        stop_server(self._server)
        self._server = None

    # ------------------------------------------------------------------ PassObserver
    def release_started(self, revision: str, services: Any) -> None:
        pass  # the outcome is counted when the pass finishes

    def pass_finished(self, result: PassResult) -> None:
        try:
            self._update(result)
        except Exception as e:  # noqa: BLE001 - metrics never fail a pass
            log.error("agent.report.crashed", reporter="metrics", error=repr(e))
            return
        if self.textfile is not None:
            try:
                write_to_textfile(str(self.textfile), self.export)
            except OSError as e:
                log.warning("agent.report.failed", reporter="metrics",
                            textfile=str(self.textfile), error=e.strerror)

    def _update(self, r: PassResult) -> None:
        now = self.clock()
        self.passes.labels(r.outcome).inc()
        self.duration.observe(r.duration_seconds)
        if r.outcome in RELEASE_OUTCOMES:
            self.releases.labels(r.outcome).inc()
        pulls = retries_scheduled["agent.pull"] - self._retries_seen["agent.pull"]
        fetches = retries_scheduled["agent.fetch"] - self._retries_seen["agent.fetch"]
        self._retries_seen = {k: retries_scheduled[k] for k in ("agent.pull", "agent.fetch")}
        if pulls:
            self.pull_retries.inc(pulls)
        errors = fetches + (1 if isinstance(r.error, SourceUnavailable) else 0)
        if errors:
            self.source_errors.inc(errors)

        v = dict(self.snapshot.values)
        v["last_pass"] = now
        if r.revision is not None:
            # a rollback always marks its revision failed; a failed pull only when the
            # outcome table says retrying cannot help (image not found)
            if r.outcome in ("rolled-back", "skipped") or (
                    r.error is not None and disposition(r.error).mark_failed):
                self.failed_revisions.add(r.revision)
            elif r.outcome == "applied" and r.forced:
                self.failed_revisions.discard(r.revision)
            v["desired"] = r.revision
            if r.outcome == "applied" or (r.outcome == "no-op" and v["applied"] != r.revision):
                if r.revision not in self.failed_revisions:
                    v["applied"] = r.revision
                    v["last_applied"] = now
            v["failed"] = r.revision in self.failed_revisions
        if r.services:
            v["services"] = {n: (s.digest, s.health in ("healthy", "running"))
                             for n, s in r.services.items()}
        self.snapshot.values = v


class _StackLabelled(Collector):
    """Every stack's metrics in one scrape, each sample with a ``stack`` label."""

    def __init__(self) -> None:
        self.parts: dict[str, CollectorRegistry] = {}

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for stack, registry in sorted(self.parts.items()):
            for family in registry.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation,
                                                       family.type, family.unit)
                out.samples += [s._replace(labels={**s.labels, "stack": stack})
                                for s in family.samples]
        yield from merged.values()


class StackMetrics:
    """The metrics of many stacks (``[[stack]]``): one registry, one ``GET /metrics``, one
    textfile; each stack's MetricsObserver counts its own passes under its ``stack`` label."""

    def __init__(self, textfile: Path | None) -> None:
        self.registry = CollectorRegistry()
        self.textfile = textfile
        self._parts = _StackLabelled()
        self.registry.register(self._parts)
        self._server: Any = None

    def observer(self, cfg: AgentConfig) -> MetricsObserver:
        m = MetricsObserver(cfg.agent.state_dir, textfile=self.textfile, export=self.registry)
        self._parts.parts[cfg.stack_label] = m.registry
        return m

    def serve(self, listen: str) -> None:
        self._server = serve_registry(listen, self.registry)

    def close(self) -> None:
        stop_server(self._server)
        self._server = None


def serve_registry(listen: str, registry: CollectorRegistry) -> Any:
    """``GET /metrics`` of ``registry`` on ``listen`` (HOST:PORT); the server, to stop."""
    from prometheus_client import start_http_server

    host, port = listen.rsplit(":", 1)
    try:
        server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    except OSError as e:
        raise AgentEnvironmentError(
            f"metrics.listen {listen}: cannot listen: {e.strerror}") from None
    log.info("agent.report.metrics_listening", listen=listen, path="/metrics")
    return server


def stop_server(server: Any) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
