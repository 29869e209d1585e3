"""The operator's rollback (``gitops-agent rollback``, :func:`agent.controls.perform_rollback`):
return to a recorded release without asking the source for its desired state.

It runs in the same envelope as a pass (:mod:`agent.envelope`: recorded whatever happens,
observers told) and through the same release (:mod:`agent.release`: pull only what is not
local → record intent → the hooks' files → apply → verify → commit or roll back). Only the
start differs: the target is the recorded release's digests and update orders, and its
files (compose.from_repo) are the recorded revision's, validated like a pass's.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from agent import health
from agent.desired import UpdateOrder, declared_scale, why_not_twice
from agent.envelope import Run
from agent.outcomes import PassResult
from agent.plan import Release, carry_over_previous, previous_digests
from agent.reconcile import Reconciler, digest_moves
from agent.state import AgentState, ImageDigest

log = structlog.get_logger()


def run_rollback(rec: Reconciler, revision: str, target: Mapping[str, ImageDigest],
                 orders: Mapping[str, UpdateOrder] | None = None) -> PassResult:
    """Return to a recorded release, as a pass. Never raises an AgentError."""

    def body(state: AgentState, run: Run) -> PassResult:
        with structlog.contextvars.bound_contextvars(revision=revision[:12]):
            return _rollback(rec, state, run, revision, dict(target), dict(orders or {}))

    return rec.envelope.run(Run(force=True, revision=revision), body)


def _rollback(rec: Reconciler, state: AgentState, run: Run, revision: str,
              target: dict[str, ImageDigest], orders: dict[str, UpdateOrder]) -> PassResult:
    # a release's files go back with its digests: the kept copy of the last applied
    # ones, else read from the source at that revision, validated like a pass's
    staged = rec.releaser.validated(revision, failed=False)
    services = rec.compose_of(staged).services()
    with run.timed("observe"):
        run.observed = observed = rec.engine.observe(rec.cfg.compose.name, set(target))
    plan = run.plan = rec.plan(staged, revision, target, observed, state)
    log.info("agent.rollback.requested", revision=revision, changes=digest_moves(plan))
    if plan.is_noop:
        problems = health.snapshot_problems(plan.target, observed)
        if problems:
            log.warning("agent.health.degraded", problems=problems)
            return run.result("degraded", reason="; ".join(problems))
        rec.releaser.note_applied(state, plan)
        return run.result("no-op")
    release = Release(
        plan=plan, observed=observed,
        previous=carry_over_previous(previous_digests(plan, observed, state.known_good),
                                     state.in_flight, plan.target),
        orders={s: orders.get(s) or ("stop-first" if why_not_twice(
            s, services.get(s) or {}) else "start-first") for s in target},
        declared={s: declared_scale(services.get(s) or {}) for s in target},
        hashes=dict(plan.hashes),
    )
    with run.timed("pull"):
        rec.releaser.pull(plan.changes)
    return rec.releaser.run(state, run, release, staged, services)

