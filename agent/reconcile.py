"""One reconcile pass, as a straight sequence of phases:

    fetch → validate → observe/diff → gates → prepare → (the release: pull → record intent
          → apply → verify → commit or roll back) → record

Each phase is one small method that takes what the previous one produced and returns a
value or raises a typed error. What an error means (outcome, rollback, failed revision,
kept intent, exit code) is decided in one place: :func:`agent.outcomes.disposition`.
The envelope (:mod:`agent.envelope`) runs and records every pass; the release itself is
:mod:`agent.release`'s, shared with the operator rollback (:mod:`agent.rollback`); what a
feature adds (compose files from git, image retention) comes through the release hooks
(:mod:`agent.hooks`): the pass never asks which features are on.

Calls go one way: cli/daemon → reconcile → release → envelope, and the edges, which the
pass reaches only through the protocols of :mod:`agent.ports`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from agent import health, retention, wiring
from agent.config import AgentConfig
from agent.desired import (
    Wave,
    check_against_compose,
    check_allowed_images,
    declared_scale,
    parse_desired_state,
    resolve_update_orders,
)
from agent.envelope import Envelope, Run
from agent.errors import DockerUnavailable, SourceUnavailable, TransientError, UntrustedRevision
from agent.failpoints import failpoint
from agent.hooks import Loaded, ReleaseHook
from agent.outcomes import PassResult
from agent.plan import (
    ObservedContainer,
    Plan,
    Release,
    carry_over_previous,
    effective_target,
    explain,
    make_plan,
    previous_digests,
    running_config_hash,
)
from agent.ports import ComposeProject, Engine, Fetched, Gate, GateQuestion, PassObserver, Source
from agent.release import Releaser
from agent.retry import retry_transient
from agent.stack_files import StackFiles
from agent.staging import StackCompose, StagedStack
from agent.state import (
    AgentState,
    ImageDigest,
    StateStore,
    save_best_effort,
    short_digest,
    write_atomic,
)
from agent.strategies import container_engine
from agent.trust import check_ancestry

__all__ = ["Loaded", "PassResult", "Reconciler"]

log = structlog.get_logger()

DESIRED_CACHE = "desired-state.cache.json"


class Reconciler:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        source: Source | None = None,
        engine: Engine | None = None,
        compose: ComposeProject | None = None,
        registry_auth: Mapping[str, dict[str, str]] | None = None,
        observers: Sequence[PassObserver] = (),
        gates: Sequence[Gate] = (),
        sleep: Callable[[float], None] = time.sleep,
        compose_for: Callable[..., StackCompose] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = StateStore(cfg.agent.state_dir)
        # the edges come from the wiring (agent/app.py passes all of them); the defaults
        # keep a bare Reconciler(cfg) working
        self.source = source or wiring.build_source(cfg)
        self.engine = engine or wiring.build_engine(cfg)
        self.compose = compose or wiring.build_compose(cfg)
        self.gates = list(gates)
        self.compose_for = compose_for or wiring.compose_for(cfg)
        self._project_compose: StackCompose | None = None
        self.envelope = Envelope(self.store, cfg.agent.history_limit, list(observers))
        # the features a release carries, as release hooks (agent/hooks.py)
        self.files = (StackFiles(cfg, self.source, container_engine(self.engine), self.compose,
                                 self.compose_for, self.project_compose)
                      if cfg.compose.from_repo else None)
        hooks: list[ReleaseHook] = [self.files] if self.files is not None else []
        hooks.append(retention.Retention(self.engine, cfg.agent.keep_releases))
        self.releaser = Releaser(cfg, engine=self.engine, compose=self.compose,
                                 store=self.store, envelope=self.envelope, hooks=hooks,
                                 registry_auth=dict(registry_auth or {}), sleep=sleep)

    @property
    def observers(self) -> list[PassObserver]:
        """Who hears of every pass (the envelope tells them)."""
        return self.envelope.observers

    @observers.setter
    def observers(self, value: Sequence[PassObserver]) -> None:
        self.envelope.observers = list(value)

    # ================================================================== the pass
    def run_pass(self, *, force: bool = False) -> PassResult:
        """One pass, recorded whatever happens. Never raises an AgentError."""
        return self.envelope.run(Run(force), self._pass)

    def _pass(self, state: AgentState, run: Run) -> PassResult:
        self._note_recovery(state)
        with run.timed("fetch"):
            fetched = self.fetch(state)
        run.revision = fetched.revision
        failpoint("after-fetch")
        with structlog.contextvars.bound_contextvars(revision=fetched.revision[:12]):
            with run.timed("validate"):
                self._check_history(state, fetched, run.force)
                loaded = self.load_desired(state, fetched, force=run.force)
            self._cache_desired(state, fetched)
            with run.timed("observe"):
                run.observed = observed = self._observe(loaded)
            run.plan = plan = self._diff(state, loaded, observed, run.force)
            stopped = self._ask_gates(state, run, plan, loaded.desired.rollout)
            if stopped is not None:
                return stopped
            if plan.is_noop:
                return self._idle(state, run, loaded, plan)
            release = self._prepare(state, loaded, plan, observed)
            with run.timed("pull"):
                self.releaser.pull(plan.changes)
            failpoint("after-pull")
            return self.releaser.run(state, run, release, loaded.stack, loaded.compose_services)

    # ------------------------------------------------------------------ fetch
    def _note_recovery(self, state: AgentState) -> None:
        if state.in_flight is not None:
            log.warning(
                "agent.recover.in_flight",
                revision=state.in_flight.revision,
                phase=state.in_flight.phase,
                services=sorted(state.in_flight.target),
                message="an earlier pass stopped half-way; converging now",
            )

    def fetch(self, state: AgentState) -> Fetched:
        try:
            fetched = retry_transient(self.source.fetch, event="agent.fetch",
                                      retry_on=SourceUnavailable,
                                      source=self.source.describe())
        except TransientError as e:
            log.error("agent.fetch.failed", source=self.source.describe(), error=str(e))
            raise
        # the revision last attempted again: nothing new, debug (an idle poll stays quiet)
        seen = state.last_attempted.revision if state.last_attempted else None
        (log.debug if fetched.revision == seen else log.info)(
            "agent.fetch.done", revision=fetched.revision, source=self.source.describe())
        if fetched.went_backwards:
            log.warning(
                "agent.fetch.revision_went_backwards",
                revision=fetched.revision,
                previous=seen,
                message="branch head moved to an older commit (force-push?); following it",
            )
        return fetched

    # ------------------------------------------------------------------ validate
    def _check_history(self, state: AgentState, fetched: Fetched, force: bool) -> None:
        """With signed commits required, the head must descend from the last applied
        revision: no replay of an older signed commit, no sideways move. UntrustedRevision."""
        check_ancestry(
            self.source, state.last_applied.revision if state.last_applied else None,
            fetched.revision, require_signed=self.cfg.trust.require_signed_commits,
            allow_rewind=self.cfg.trust.allow_rewind, force=force, path=fetched.path)

    def load_desired(self, state: AgentState, fetched: Fetched, *, force: bool = False,
                     files: bool = True) -> Loaded:
        """Parse and validate everything before anything is touched: the desired state,
        the files the hooks bring for the revision (``files``), the compose model they
        give. A revision that failed before converges on the last applied files. Raises
        InvalidInput."""
        source = f"{fetched.path}@{fetched.revision[:12]}"
        if fetched.trust_error:
            raise UntrustedRevision(source, [fetched.trust_error])
        desired = parse_desired_state(fetched.content, source)
        check_allowed_images(desired, self.cfg.trust.allowed_images, source)
        failed = fetched.revision in state.failed_revisions and not force
        staged = self.releaser.validated(fetched.revision, failed=failed) if files else None
        compose = self.compose_of(staged)
        compose_services = compose.services()
        inactive = (compose.inactive_services()
                    if set(desired.services) - set(compose_services) else {})
        check_against_compose(desired, compose_services, source, inactive=inactive,
                              compose_files=", ".join(self.cfg.compose.files))
        orders = resolve_update_orders(desired, compose_services, source)
        return Loaded(fetched, desired, compose_services, orders, staged)

    def _cache_desired(self, state: AgentState, fetched: Fetched) -> None:
        """The last valid desired state, for ``status`` and ``diff`` while the daemon runs.
        Written only after validation (untrusted content never lands in state_dir), and not
        rewritten on idle passes."""
        path = self.cfg.agent.state_dir / DESIRED_CACHE
        seen = state.last_attempted.revision if state.last_attempted else None
        if seen == fetched.revision and path.exists():
            return
        doc = {"revision": fetched.revision, "path": fetched.path,
               "content": fetched.content.decode("utf-8")}
        save_best_effort(lambda: write_atomic(path, json.dumps(doc).encode()),
                         what="desired-state cache")

    # ------------------------------------------------------------------ observe / diff
    def _observe(self, loaded: Loaded) -> dict[str, list[ObservedContainer]]:
        try:
            return self.engine.observe(self.cfg.compose.name, set(loaded.desired.services))
        except DockerUnavailable as e:
            log.error("agent.observe.failed", error=str(e))
            raise

    def _diff(self, state: AgentState, loaded: Loaded,
              observed: Mapping[str, Sequence[ObservedContainer]], force: bool) -> Plan:
        rev = loaded.revision
        revision_failed = rev in state.failed_revisions and not force
        if force and rev in state.failed_revisions:
            log.info("agent.sync.forced", revision=rev,
                     previous_failure=state.failed_revisions[rev])
        target = effective_target(loaded.desired, state.known_good, revision_failed)
        plan = self.plan(loaded.stack, rev, target, observed, state)
        seen = state.last_attempted.revision if state.last_attempted else None
        (log.debug if plan.is_noop and rev == seen else log.info)(
            "agent.diff",
            revision=rev,
            changes=digest_moves(plan),
            unverified=plan.unverified,
            config_changed=plan.config_changed,
            because={c.service: c.because for c in plan.changes if c.because},
            unchanged=sorted(set(target) - set(plan.changed_services) - set(plan.unverified)),
        )
        return plan

    def plan(self, staged: StagedStack | None, revision: str,
             target: Mapping[str, ImageDigest],
             observed: Mapping[str, Sequence[ObservedContainer]], state: AgentState) -> Plan:
        """The diff, with the configuration hashes the hooks give (a service whose
        configuration changes changes too, and says why)."""
        got = self.releaser.hashes(staged, target)
        plan = make_plan(revision, target, observed, state.known_good,
                         got.hashes if got is not None else None)
        return explain(plan, got.reasons) if got is not None else plan

    def _ask_gates(self, state: AgentState, run: Run, plan: Plan,
                   rollout: Sequence[Wave] | None = None) -> PassResult | None:
        """Policies before acting (freeze, windows, waves): the first answer ends the pass."""
        question = GateQuestion(
            revision=plan.revision, services=tuple(plan.changed_services + plan.unverified),
            converging=plan.revision in state.failed_revisions and not run.force,
            force=run.force, rollout=tuple(rollout) if rollout is not None else None)
        for gate in self.gates:
            answer = gate.check(question)
            if answer is not None:
                log.info(f"agent.gate.{answer.outcome}", gate=type(gate).__name__,
                         reason=answer.reason, services=list(question.services))
                return run.result(answer.outcome, reason=answer.reason)
        return None

    def _idle(self, state: AgentState, run: Run, loaded: Loaded, plan: Plan) -> PassResult:
        """Nothing to change. What the hooks write (the revision's files) may still change
        services desired-state does not manage: those are brought up here. Unmanaged
        services are otherwise started alongside a release, never on their own: a missing
        unmanaged image must not turn every poll into a pull."""
        if self.releaser.before_apply(loaded.stack):
            unmanaged = self._unmanaged(loaded, set(loaded.desired.services), plan, run.observed)
            if unmanaged:
                self.releaser.pin(plan.target)  # the labels of the files just written
                self.releaser.start_unmanaged(unmanaged)
        rev = plan.revision
        if rev in state.failed_revisions and not run.force:
            reason = (f"revision {rev[:12]} failed before ({state.failed_revisions[rev]}); "
                      "the last known-good digests run; "
                      "not retried until a new commit or 'sync --force'")
            log.warning("agent.sync.skipped_failed_revision", revision=rev,
                        reason=state.failed_revisions[rev])
            return run.result("skipped", reason=reason)
        problems = health.snapshot_problems(plan.target, run.observed)
        if problems:
            log.warning("agent.health.degraded", problems=problems)
            return run.result("degraded", reason="; ".join(problems))
        self.releaser.note_applied(state, plan)
        self.releaser.applied(state, loaded.stack, loaded.compose_services, run.observed, None)
        return run.result("no-op")

    def _prepare(self, state: AgentState, loaded: Loaded, plan: Plan,
                 observed: Mapping[str, Sequence[ObservedContainer]]) -> Release:
        previous = carry_over_previous(previous_digests(plan, observed, state.known_good),
                                       state.in_flight, plan.target)
        return Release(
            plan=plan, previous=previous, orders=loaded.orders, observed=observed,
            declared={s: declared_scale(loaded.compose_services.get(s) or {})
                      for s in plan.target},
            unmanaged_missing=self._unmanaged(loaded, set(plan.target), plan, observed),
            hashes=dict(plan.hashes),
        )

    @staticmethod
    def _unmanaged(loaded: Loaded, managed: set[str], plan: Plan,
                   observed: Mapping[str, Sequence[ObservedContainer]]) -> list[str]:
        """The compose services desired-state does not manage that are missing, or whose
        running configuration is not the model's."""
        return sorted(s for s in loaded.compose_services if s not in managed and (
            s not in observed or (s in plan.hashes and running_config_hash(
                observed.get(s, ())) != plan.hashes[s])))

    # ------------------------------------------------------------------ for the read model
    def compose_of(self, staged: StagedStack | None) -> ComposeProject | StackCompose:
        """The compose model a revision runs with: its staged files', else the host's."""
        return self.compose if staged is None else staged.compose

    def project_compose(self) -> StackCompose:
        """Compose on project_dir's files as they are (for hashes and the read model)."""
        if self._project_compose is None:
            self._project_compose = self.compose_for(
                [self.cfg.compose.project_dir / f for f in self.cfg.compose.files])
        return self._project_compose



def digest_moves(plan: Plan) -> list[str]:
    """``web: 1a2b3c4d5e6f -> 4d5e6f7a8b9c`` per change, as the diff and rollback log it."""
    return [f"{c.service}: {short_digest(c.old)} -> {short_digest(c.new)}" for c in plan.changes]
