"""The envelope every pass runs in — a reconcile pass and an operator rollback alike:
state loaded and probed, the body run, an error turned into its outcome by the table
(:func:`agent.outcomes.disposition`), the outcome recorded whatever happened, observers
told. Only the body differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from agent import health
from agent.errors import AgentError
from agent.outcomes import PassResult, ServiceReport, disposition
from agent.plan import ObservedContainer, Plan, running_digest
from agent.ports import PassObserver
from agent.state import (
    AgentState,
    ImageDigest,
    Outcome,
    PassRecord,
    RevisionRecord,
    StateStore,
    utcnow,
)

log = structlog.get_logger()


@dataclass
class Run:
    """What one pass has learnt so far: the error handler attributes a failure with it."""

    force: bool
    revision: str | None = None
    plan: Plan | None = None
    observed: Mapping[str, Sequence[ObservedContainer]] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.monotonic() - t0, 4)

    def result(self, outcome: Outcome, *, reason: str | None = None,
               error: AgentError | None = None) -> PassResult:
        plan = self.plan
        return PassResult(
            outcome, self.revision, list(plan.changes) if plan else [], reason=reason,
            error=error, target=dict(plan.target) if plan else {},
            services=_reports(plan.target if plan else {}, self.observed), forced=self.force,
        )


class Envelope:
    def __init__(self, store: StateStore, history_limit: int,
                 observers: list[PassObserver]) -> None:
        self.store, self.history_limit, self.observers = store, history_limit, observers

    def run(self, run: Run, body: Callable[[AgentState, Run], PassResult]) -> PassResult:
        """One pass, recorded whatever happens. Never raises an AgentError."""
        t0, started = time.monotonic(), utcnow()
        self.store.ensure_dir()
        state = self.store.load()
        try:
            # a full or read-only state_dir is named as such before anything is fetched
            self.store.probe_writable()
            result = body(state, run)
        except AgentError as e:
            result = self.failed(state, run, e)
        except Exception as e:
            log.exception("agent.pass.crashed", error=repr(e))
            result = run.result("error", reason=f"internal error: {e!r}")
            result.phases = dict(run.phases)
            self.record(state, result, started, t0, keep_intent=True)
            raise
        result.phases = dict(run.phases)  # every phase timed, the rollback's included
        self.record(state, result, started, t0,
                    keep_intent=result.error is not None
                    and disposition(result.error).keep_intent)
        self.tell(lambda o: o.pass_finished(result))
        return result

    def failed(self, state: AgentState, run: Run, e: AgentError) -> PassResult:
        """An error ended the pass: the table says what it means."""
        disp = disposition(e)
        event = {"invalid": "agent.desired.invalid", "error": "agent.pass.error"}.get(
            disp.outcome, "agent.release.not_applied")
        # the same error as the pass before (a stalled revision, a refusing git host polled
        # again): reported once, at its first pass; repeats are debug until it changes
        last = state.last_attempted
        again = (last is not None and last.outcome == disp.outcome and last.reason == str(e)
                 and last.revision == run.revision)
        (log.debug if again else log.error)(
            event, outcome=disp.outcome, error=str(e), kind=type(e).__name__)
        if disp.mark_failed and run.revision is not None:
            state.mark_failed(run.revision, str(e))
        return run.result(disp.outcome, reason=str(e), error=e)

    def record(self, state: AgentState, result: PassResult, started: datetime,
               t0: float, *, keep_intent: bool) -> None:
        result.duration_seconds = round(time.monotonic() - t0, 3)
        now = utcnow()
        if not (keep_intent or result.keep_intent):
            state.in_flight = None
        previous = state.last_attempted
        state.last_attempted = RevisionRecord(
            revision=result.revision, at=now, outcome=result.outcome, reason=result.reason)
        if result.outcome == "applied" or (result.outcome == "no-op" and (
                state.last_applied is None or state.last_applied.revision != result.revision)):
            state.last_applied = RevisionRecord(revision=result.revision, at=now,
                                                outcome=result.outcome)
        state.record_pass(PassRecord(
            started_at=started, duration_seconds=result.duration_seconds,
            revision=result.revision, outcome=result.outcome,
            changes=result.changes if result.outcome in ("applied", "rolled-back") else [],
            reason=result.reason, forced=result.forced, phases=result.phases,
        ), self.history_limit)
        try:
            self.store.save(state)
        except AgentError as e:
            log.error("agent.state.write_failed", error=str(e))
            # the outcome stands (the containers are what it says); that it is not on
            # record is part of what happened
            result.reason = (f"{result.reason}; " if result.reason else "") + (
                f"not recorded in state_dir: {e}")
            if result.error is None:
                result.error = e
        # nothing changed since the pass before (the same no-op, the same stalled error):
        # debug, so an idle agent's journal stays quiet; info whenever something differs
        unchanged = (previous is not None and not result.changes
                     and previous.outcome == result.outcome
                     and previous.revision == result.revision
                     and previous.reason == result.reason
                     and result.outcome in ("no-op", "invalid"))
        (log.debug if unchanged else log.info)(
            "agent.pass.completed",
            outcome=result.outcome,
            revision=result.revision,
            changed=[c.describe() for c in result.changes],
            duration_seconds=result.duration_seconds,
            reason=result.reason,
        )

    def tell(self, call: Callable[[PassObserver], None]) -> None:
        for o in self.observers:
            try:
                call(o)
            except Exception as e:  # noqa: BLE001 - reporting never affects a release
                log.error("agent.report.observer_failed", observer=type(o).__name__,
                          error=repr(e))


def _reports(target: Mapping[str, ImageDigest],
             observed: Mapping[str, Sequence[ObservedContainer]]) -> dict[str, ServiceReport]:
    return {s: ServiceReport(running_digest(observed.get(s, ())),
                             health.service_health(observed.get(s, ()))) for s in target}
