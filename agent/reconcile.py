"""One reconcile pass, as a straight sequence of phases:

    fetch → validate → observe/diff → pull → record intent → apply → verify
          → commit or roll back → record

Each phase is one small method that takes what the previous one produced and returns a
value or raises a typed error. What an error means (outcome, rollback, failed revision,
kept intent, exit code) is decided in one place: :func:`agent.outcomes.disposition`.
How a service changes (stop-first, start-first) is the business of
:mod:`agent.strategies`. The outcome is always recorded, failures included.

Calls go one way: cli/daemon → reconcile → (desired, plan, state, health, strategies) and
the edges, which reconcile reaches only through the protocols of :mod:`agent.ports`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from agent import health, retention, wiring
from agent.config import AgentConfig
from agent.desired import (
    DesiredState,
    UpdateOrder,
    Wave,
    check_against_compose,
    check_allowed_images,
    declared_scale,
    parse_desired_state,
    registry_of,
    resolve_update_orders,
    why_not_twice,
)
from agent.errors import (
    AgentError,
    ApplyFailed,
    ComposeError,
    ComposeFileError,
    ConfigError,
    DockerUnavailable,
    ImageNotFound,
    PlatformMismatch,
    RegistryAuthError,
    RegistryUnavailable,
    SourceUnavailable,
    StateWriteError,
    TransientError,
    Unhealthy,
    UntrustedRevision,
)
from agent.failpoints import failpoint
from agent.outcomes import PassResult, ServiceReport, disposition
from agent.plan import (
    ObservedContainer,
    Plan,
    Release,
    carry_over_previous,
    effective_target,
    make_plan,
    previous_digests,
    running_config_hash,
    running_digest,
)
from agent.platform import ComposePlatform
from agent.policy import check_host_policy, check_raw_references
from agent.ports import (
    ComposeProject,
    Engine,
    Fetched,
    Gate,
    GateQuestion,
    PassObserver,
    Source,
)
from agent.retry import retry_transient
from agent.stack import (
    FileSource,
    StackJournal,
    check_compose_images,
    orphans,
    sha256,
)
from agent.staging import (
    StackCompose,
    StackHashes,
    StagedStack,
    build_mirror,
    env_files,
    file_labels,
    file_refs,
)
from agent.state import (
    AgentState,
    Change,
    ImageDigest,
    InFlight,
    Outcome,
    PassRecord,
    RevisionRecord,
    StateStore,
    utcnow,
    write_atomic,
)
from agent.strategies import Platform, Toolkit, UpdateStrategy, pins
from agent.swarm import swarm_platform
from agent.trust import check_ancestry
from agent.wiring import build_source  # re-exported: agent/stacks.py imports it here

__all__ = ["Loaded", "PassResult", "Reconciler", "build_source"]

log = structlog.get_logger()

DESIRED_CACHE = "desired-state.cache.json"

@dataclass(frozen=True)
class Loaded:
    """A fetched revision that passed validation: safe to act on."""

    fetched: Fetched
    desired: DesiredState
    compose_services: dict[str, Any]
    orders: dict[str, UpdateOrder]
    stack: StagedStack | None = None  # compose.from_repo: the revision's files

    @property
    def revision(self) -> str:
        return self.fetched.revision


@dataclass
class _Run:
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
        self.registry_auth = dict(registry_auth or {})
        self.observers = list(observers)
        self.gates = list(gates)
        self.kit = Toolkit(self.engine, self.compose, cfg.compose.name,
                           cfg.agent.handover_seconds, self._pull, sleep)
        self.stack = (StackJournal(cfg.agent.state_dir, cfg.compose.project_dir)
                      if cfg.compose.from_repo else None)
        self.compose_for = compose_for or wiring.compose_for(cfg)
        self._project_compose: StackCompose | None = None
        # where releases run: Swarm's stack ([engine] kind = "swarm") or compose
        self.compose_platform = ComposePlatform(
            self.kit, timeout=cfg.agent.health_timeout_seconds, settle=cfg.agent.settle_seconds)
        self.platform: Platform = swarm_platform(cfg, self.kit) or self.compose_platform

    # ================================================================== the pass
    def run_pass(self, *, force: bool = False) -> PassResult:
        """One pass, recorded whatever happens. Never raises an AgentError."""
        t0, started, run = time.monotonic(), utcnow(), _Run(force)
        self.store.ensure_dir()
        state = self.store.load()
        try:
            # a full or read-only state_dir is named as such before anything is fetched
            self.store.probe_writable()
            result = self._pass(state, run)
        except AgentError as e:
            result = self._failed(state, run, e)
        except Exception as e:
            log.exception("agent.pass.crashed", error=repr(e))
            result = run.result("error", reason=f"internal error: {e!r}")
            result.phases = dict(run.phases)
            self._record(state, result, started, t0, keep_intent=True)
            raise
        result.phases = dict(run.phases)  # every phase timed, the rollback's included
        self._record(state, result, started, t0,
                     keep_intent=result.error is not None
                     and disposition(result.error).keep_intent)
        self._tell(lambda o: o.pass_finished(result))
        return result

    def _pass(self, state: AgentState, run: _Run) -> PassResult:
        self._note_recovery(state)
        with run.timed("fetch"):
            fetched = self._fetch(state)
        run.revision = fetched.revision
        failpoint("after-fetch")
        with structlog.contextvars.bound_contextvars(revision=fetched.revision[:12]):
            with run.timed("validate"):
                self._check_history(state, fetched, run.force)
                stack = self._stack_files(state, fetched, run.force)
                loaded = self.load_desired(fetched, stack)
            self._cache_desired(state, fetched)
            with run.timed("observe"):
                run.observed = observed = self._observe(loaded)
            run.plan = plan = self._diff(state, loaded, observed, run.force)
            stopped = self._ask_gates(state, run, plan, loaded.desired.rollout)
            if stopped is not None:
                return stopped
            if plan.is_noop:
                self._write_stack(loaded, observed, idle=plan.target)
                result = self._idle(state, run, plan)
                if result.outcome == "no-op":
                    self._finish_stack(loaded, observed)
                return result
            release = self._prepare(state, loaded, plan, observed)
            with run.timed("pull"):
                self._pull(plan.changes)
            failpoint("after-pull")
            self._record_intent(state, release)
            self._write_stack(loaded, observed)
            result = self._release(state, run, release)
            if result.outcome == "applied":
                self._finish_stack(loaded, observed)
            return result

    def _release(self, state: AgentState, run: _Run, release: Release) -> PassResult:
        """Apply, verify, then commit — or roll back whatever the release touched."""
        self._tell(lambda o: o.release_started(release.revision, release.touched))
        try:
            with run.timed("apply"):
                self._apply(release)
            failpoint("after-apply")
            if release.touched:
                self._set_phase(state, "verify")
                with run.timed("health"):
                    self._verify(release)
        except AgentError as e:
            if not disposition(e).rollback:
                raise
            with run.timed("rollback"):
                return self._roll_back(state, run, release, e)
        self._commit(release)
        if self.observers:  # report what runs now: start-first's old containers are retired
            try:
                run.observed = self.engine.observe(self.cfg.compose.name, set(release.target))
            except AgentError as e:
                log.warning("agent.report.observe_failed", error=str(e))
        return self._succeeded(state, run, release)

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

    def _fetch(self, state: AgentState) -> Fetched:
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
            previous = state.last_attempted.revision if state.last_attempted else None
            log.warning(
                "agent.fetch.revision_went_backwards",
                revision=fetched.revision,
                previous=previous,
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

    def load_desired(self, fetched: Fetched, stack: StagedStack | None = None) -> Loaded:
        """Parse and validate everything before anything is touched. Raises InvalidInput."""
        source = f"{fetched.path}@{fetched.revision[:12]}"
        if fetched.trust_error:
            raise UntrustedRevision(source, [fetched.trust_error])
        desired = parse_desired_state(fetched.content, source)
        check_allowed_images(desired, self.cfg.trust.allowed_images, source)
        compose: ComposeProject | StackCompose = self.compose if stack is None else stack.compose
        compose_services = compose.services()
        if stack is not None and (stack.plan.touches or stack.plan.adopted):
            self._check_stack(stack, f"compose.from_repo@{fetched.revision[:12]}")
        inactive = (compose.inactive_services()
                    if set(desired.services) - set(compose_services) else {})
        check_against_compose(desired, compose_services, source, inactive=inactive,
                              compose_files=", ".join(self.cfg.compose.files))
        orders = resolve_update_orders(desired, compose_services, source)
        return Loaded(fetched, desired, compose_services, orders, stack)

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
        self._save_best_effort(lambda: write_atomic(path, json.dumps(doc).encode()),
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
        hashes = self._config_hashes(loaded, target)
        plan = self._because(loaded.stack,
                             make_plan(rev, target, observed, state.known_good, hashes))
        seen = state.last_attempted.revision if state.last_attempted else None
        (log.debug if plan.is_noop and rev == seen else log.info)(
            "agent.diff",
            revision=rev,
            changes=[f"{c.service}: {_short(c.old)} -> {_short(c.new)}" for c in plan.changes],
            unverified=plan.unverified,
            config_changed=plan.config_changed,
            because={s: loaded.stack.reasons[s] for s in plan.config_changed
                     if s in loaded.stack.reasons} if loaded.stack else {},
            unchanged=sorted(set(target) - set(plan.changed_services) - set(plan.unverified)),
        )
        return plan

    def _ask_gates(self, state: AgentState, run: _Run, plan: Plan,
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

    def _idle(self, state: AgentState, run: _Run, plan: Plan) -> PassResult:
        """Nothing to change. Unmanaged services are started alongside a release, never on
        their own: a missing unmanaged image must not turn every poll into a pull."""
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
        self._note_applied(state, plan)
        return run.result("no-op")

    def _prepare(self, state: AgentState, loaded: Loaded, plan: Plan,
                 observed: Mapping[str, Sequence[ObservedContainer]]) -> Release:
        previous = carry_over_previous(previous_digests(plan, observed, state.known_good),
                                       state.in_flight, plan.target)
        return Release(
            plan=plan, previous=previous, orders=loaded.orders, observed=observed,
            declared={s: declared_scale(loaded.compose_services.get(s) or {})
                      for s in plan.target},
            unmanaged_missing=sorted(s for s in loaded.compose_services
                                     if s not in plan.target and (
                                         s not in observed
                                         or self._stack_changed(loaded, observed, s))),
            hashes=dict(loaded.stack.hashes) if loaded.stack else {},
        )

    # ------------------------------------------------------------------ pull
    def _pull(self, changes: Sequence[Change]) -> None:
        """Pull every digest that is not local, before any container is touched."""
        todo = [c for c in changes if not self.engine.has_image(c.image, c.new)]
        for c in changes:
            if c not in todo:
                log.info("agent.pull.cached", service=c.service, digest=c.new)
        workers = min(self.cfg.agent.pull_concurrency, len(todo))
        if workers <= 1:
            for c in todo:
                self._pull_one(c)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pull") as pool:
            errors = [f.exception() for f in [pool.submit(self._pull_one, c) for c in todo]]
        # auth / not-found errors first: they say what a person must fix
        for kind in (RegistryAuthError, ImageNotFound, PlatformMismatch, TransientError,
                     BaseException):
            for err in errors:
                if isinstance(err, kind):
                    raise err

    def _pull_one(self, c: Change) -> None:
        log.info("agent.pull.started", service=c.service, image=c.image, digest=c.new)
        t0 = time.monotonic()
        try:
            retry_transient(lambda: self.engine.pull(c.image, c.new, self._auth_for(c.image)),
                            event="agent.pull", retry_on=RegistryUnavailable,
                            service=c.service, image=f"{c.image}@{c.new}")
        except RegistryAuthError as e:
            log.error("agent.pull.unauthorized", registry=e.registry, error=str(e))
            raise
        except ImageNotFound as e:
            log.error("agent.pull.not_found", service=c.service, error=str(e))
            raise
        except PlatformMismatch as e:
            log.error("agent.pull.wrong_platform", service=c.service, wanted=e.wanted,
                      actual=e.actual, error=str(e))
            raise
        except AgentError as e:
            log.error("agent.pull.failed", service=c.service, error=str(e),
                      message="release aborted before touching any container")
            raise
        log.info("agent.pull.done", service=c.service, digest=c.new,
                 seconds=round(time.monotonic() - t0, 3))

    def _auth_for(self, image: str) -> dict[str, str] | None:
        return self.registry_auth.get(registry_of(image))

    # ------------------------------------------------------------------ intent
    def _record_intent(self, state: AgentState, release: Release) -> None:
        """Written before any container is touched; the agent refuses to act without it."""
        state.in_flight = InFlight(
            revision=release.revision, started_at=utcnow(), phase="apply",
            previous=release.previous, target={n: release.target[n] for n in release.touched},
        )
        self.store.probe_writable()
        self.store.save(state)

    def _set_phase(self, state: AgentState, phase: Literal["verify", "rollback"]) -> None:
        assert state.in_flight is not None
        state.in_flight.phase = phase
        self._save_best_effort(lambda: self.store.save(state), what="intent")

    # ------------------------------------------------------------------ apply / verify
    def _apply(self, release: Release) -> None:
        self._pin(release.target)
        if release.unmanaged_missing:
            self._start_unmanaged(release.unmanaged_missing)
        changed = release.plan.changed_services
        if not changed:
            return
        log.info("agent.apply.started", services=changed,
                 digests={c.service: c.new for c in release.plan.changes},
                 update={s: release.orders.get(s, "stop-first") for s in changed})
        for strategy, services in self._strategies(release, changed):
            try:
                strategy.apply(services, release)
            except ComposeError as e:
                raise self._compose_failed(e) from None
            failpoint("during-apply")
        log.info("agent.apply.done", services=changed)

    def _compose_failed(self, e: ComposeError) -> AgentError:
        """compose failed: the release's fault (rolled back), or the engine went away."""
        if not self.engine.answers():
            log.error("agent.apply.engine_lost", error=str(e))
            return DockerUnavailable(f"the Docker engine went away during apply: {e}")
        log.error("agent.apply.failed", command=" ".join(e.command[-6:]),
                  exit_code=e.returncode, stderr=e.stderr.strip()[-500:])
        return ApplyFailed(f"docker compose up failed: {e}")

    def _verify(self, release: Release) -> None:
        """Every touched service healthy at its target digest, else Unhealthy."""
        verdict = self.platform.verify(release.touched, release)
        if verdict is not None:
            raise Unhealthy(verdict)

    def _wait_healthy(self, services: Sequence[str], target: Mapping[str, ImageDigest],
                      hashes: Mapping[str, str] | None = None) -> str | None:
        return self.compose_platform.wait_healthy(services, target, hashes)

    def _start_unmanaged(self, services: Sequence[str]) -> None:
        """Best effort: services desired-state does not list run as compose.yml says. Their
        failure to start is reported, not a reason to fail (or roll back) the release."""
        log.info("agent.apply.unmanaged", services=list(services))
        try:
            self.compose.up(services, pull="missing")
        except ComposeError as e:
            log.warning("agent.apply.unmanaged_failed", services=list(services),
                        error=e.stderr.strip().splitlines()[-1] if e.stderr.strip() else str(e))

    # ------------------------------------------------------------------ commit / roll back
    def _commit(self, release: Release) -> None:
        for strategy, services in self._strategies(release, release.touched):
            strategy.commit(services, release)

    def _succeeded(self, state: AgentState, run: _Run, release: Release) -> PassResult:
        log.info("agent.health.ok", services=release.touched)
        self._note_applied(state, release.plan)
        state.note_release(release.revision, dict(release.target), utcnow(), release.orders)
        retention.prune_best_effort(self.engine, state, self.cfg.agent.keep_releases)
        return run.result("applied")

    def _note_applied(self, state: AgentState, plan: Plan) -> None:
        """The target runs healthy: it is known-good. A failed revision converging on the
        known-good digests keeps its failure, or the next pass retries the bad release;
        a forced retry that worked clears it."""
        new_digests = any(c.service not in state.known_good
                          or state.known_good[c.service].digest != c.new for c in plan.changes)
        state.known_good = dict(plan.target)
        if plan.revision in state.failed_revisions and new_digests:
            del state.failed_revisions[plan.revision]

    def _roll_back(self, state: AgentState, run: _Run, release: Release,
                   error: AgentError) -> PassResult:
        """Ask each strategy to undo its own services, then check what was restored."""
        log.error("agent.release.failed", revision=release.revision, reason=str(error),
                  services=release.touched)
        state.mark_failed(release.revision, str(error))  # before undoing: a crash mid-way
        self._set_phase(state, "rollback")  # converges on the previous release
        note, keep_intent = "", False
        try:
            self._restore_stack(release)
            self._pin(release.rollback_pins())
            restored: list[str] = []
            for strategy, services in self._strategies(release, release.touched):
                restored += strategy.undo(services, release)
            bad = self._wait_healthy(restored, release.rollback_pins()) if restored else None
        except AgentError as e:
            bad, keep_intent = str(e), isinstance(e, TransientError)
        if bad is None:
            log.info("agent.rollback.done", services=restored,
                     removed=sorted(s for s in release.touched
                                    if release.previous.get(s) is None))
            state.known_good.update({s: p for s in restored
                                     if (p := release.previous.get(s)) is not None})
        else:
            note = f"; rollback did not become healthy: {bad}"
            log.error("agent.rollback.unhealthy", reason=bad)
        result = run.result("rolled-back", reason=str(error) + note, error=error)
        result.keep_intent = keep_intent
        return result

    def _strategies(self, release: Release,
                    services: Sequence[str]) -> list[tuple[UpdateStrategy, list[str]]]:
        return self.platform.strategies(release, services)

    def _pin(self, images: Mapping[str, ImageDigest]) -> None:
        if self.stack is None:
            self.compose.pin(pins(images))
        else:  # the labels of the git files each service reads, as project_dir holds them
            self.compose.pin(pins(images), self._project_labels())

    # ------------------------------------------------------------------ stack files
    def _stack_files(self, state: AgentState, fetched: Fetched,
                     force: bool) -> StagedStack | None:
        """compose.from_repo: the files project_dir must hold for this pass — the revision's,
        or, for a revision that failed before, the last applied ones — staged for
        validation when anything changes. A path taken by a local file: StackFilesError."""
        if self.stack is None or fetched.trust_error:
            return None
        if not isinstance(self.source, FileSource):
            raise ConfigError("compose.from_repo", [
                f"the {self.cfg.source.kind} source cannot read files from the repository"])
        failed = fetched.revision in state.failed_revisions and not force
        applied = self.stack.applied()
        # a failed revision converges on the last applied files; the applied revision
        # itself (an idle pass) is read from the kept copy: no source request
        same = applied is not None and applied.revision == fetched.revision
        kept = self.stack.applied_files() if failed or same else None
        if kept is not None and applied is not None:
            return self._staged(applied.revision, kept)
        return self._staged(fetched.revision, self._read_stack(fetched.revision))

    def _read_stack(self, revision: str) -> dict[str, bytes]:
        if not isinstance(self.source, FileSource):
            raise ConfigError("compose.from_repo", [
                f"the {self.cfg.source.kind} source cannot read files from the repository"])
        return self.source.read_files(revision, self.cfg.compose.from_repo or [])

    def _staged(self, rev: str | None, want: Mapping[str, bytes]) -> StagedStack:
        """The files project_dir must hold, compose reading them as they will be: from
        project_dir when they are its files already, else from a mirror of it."""
        assert self.stack is not None
        plan = self.stack.plan(rev, want)
        if not plan.touches:
            return StagedStack(plan, self._files_compose())
        # the revision as it will run: a mirror of project_dir with the revision's files
        mirror = self.stack.dir / "staging"
        self._check_references(plan.files, f"compose.from_repo@{(rev or '?')[:12]}")
        build_mirror(mirror, self.cfg.compose.project_dir, plan.files, absent=plan.deletes)
        compose = self.compose_for([mirror / f for f in self.cfg.compose.files], mirror=mirror)
        return StagedStack(plan, compose, mirror=mirror)

    def _check_references(self, files: Mapping[str, bytes], where: str) -> None:
        """Before compose reads anything: the files the compose files name (env_file,
        include, extends) stay inside project_dir and the repository, unless the host's
        [compose.allow] says otherwise (agent/policy.py)."""
        check_raw_references(files, self.cfg.compose.project_dir, self.cfg.compose.allow,
                             compose_files=self.cfg.compose.files, source=where)

    def _check_stack(self, stack: StagedStack, where: str) -> None:
        """The revision's fully resolved model (every profile, every included and extended
        file): every image inside the allowlist, nothing asked of the host beyond
        [compose.allow] (privileged, host namespaces, binds outside project_dir...)."""
        model = stack.compose.config(profiles=["*"])
        check_compose_images(model.get("services") or {}, self.cfg.trust.allowed_images, where)
        check_host_policy(model, self.cfg.compose.project_dir, self.cfg.compose.allow,
                          source=where)

    def _config_hashes(self, loaded: Loaded,
                       target: Mapping[str, ImageDigest]) -> dict[str, str] | None:
        return self._stack_hashes(loaded.stack, target)

    def _stack_hashes(self, stack: StagedStack | None,
                      target: Mapping[str, ImageDigest]) -> dict[str, str] | None:
        """Per service, the configuration hash it must run with, pinned to the target
        digests and labelled with the git files it reads (compose.from_repo only), and
        why a service the revision's files change changes (StackHashes)."""
        if stack is None or self.stack is None:
            return None
        new = {p: sha256(b) for p, b in stack.plan.files.items()}
        staged = stack.compose if stack.mirror is not None else None
        env_new = (env_files(stack.plan.files[f] if f in stack.plan.files
                             else _read_or_empty(self.cfg.compose.project_dir / f)
                             for f in self.cfg.compose.files) if staged is not None else None)
        got = StackHashes.of(self._files_compose(), staged, self.cfg.compose.project_dir,
                             self.stack.current().files, new, pins(target),
                             env_now=self._project_env(), env_new=env_new)
        stack.hashes, stack.reasons = got.hashes, got.reasons
        return stack.hashes

    def _project_env(self) -> dict[str, list[str]]:
        return env_files(_read_or_empty(self.cfg.compose.project_dir / f)
                         for f in self.cfg.compose.files)

    def _project_labels(self) -> dict[str, dict[str, str]]:
        """Per service, the label of the git files it reads, as project_dir holds them."""
        assert self.stack is not None
        current = self.stack.current().files
        try:
            model = self._files_compose().model()
        except ComposeFileError:
            return {}
        return file_labels(file_refs(model, self.cfg.compose.project_dir, current,
                                     self._project_env()), current)

    @staticmethod
    def _because(stack: StagedStack | None, plan: Plan) -> Plan:
        """The changes of services whose configuration changes say why (from_repo)."""
        if stack is None or not stack.reasons:
            return plan
        reasons = stack.reasons
        return replace(plan, changes=[
            c.model_copy(update={"because": reasons[c.service]})
            if c.service in plan.config_changed and c.service in reasons else c
            for c in plan.changes])

    def _stack_changed(self, loaded: Loaded,
                       observed: Mapping[str, Sequence[ObservedContainer]], service: str) -> bool:
        """An unmanaged service whose running configuration is not the model's."""
        if loaded.stack is None or service not in loaded.stack.hashes:
            return False
        return running_config_hash(observed.get(service, ())) != loaded.stack.hashes[service]

    def _write_stack(self, loaded: Loaded, observed: Mapping[str, Sequence[ObservedContainer]],
                     *, idle: Mapping[str, ImageDigest] | None = None) -> None:
        """Write the validated files into project_dir (after the release's intent). With
        no release (idle), unmanaged services the files add or change are brought up here
        (a release brings them up in its apply)."""
        if loaded.stack is None:
            return
        plan, stack = loaded.stack.plan, self.stack
        assert stack is not None
        if plan.drifted:
            log.warning("agent.drift.corrected", files=plan.drifted,
                        message="files the agent wrote were edited; git's content is back")
        if plan.touches or plan.adopted:
            stack.write(plan)
            failpoint("after-files")
            log.info("agent.stack.written", revision=plan.revision, written=plan.writes,
                     removed=plan.deletes, adopted=plan.adopted)
        # services desired-state does not manage follow the files too, when they change
        # (never on their own on an idle poll: a missing image is not pulled every pass)
        unmanaged = [s for s in loaded.compose_services
                     if s not in loaded.desired.services
                     and (s not in observed or self._stack_changed(loaded, observed, s))]
        if idle is not None and unmanaged and plan.touches:
            self._pin(idle)  # the labels of the files just written
            self._start_unmanaged(unmanaged)

    def _finish_stack(self, loaded: Loaded,
                      observed: Mapping[str, Sequence[ObservedContainer]]) -> None:
        """The revision runs healthy: services its compose files no longer have go (their
        named volumes stay), and its files are what a later rollback returns to."""
        if loaded.stack is None or self.stack is None:
            return
        known = {*loaded.compose_services, *loaded.stack.compose.inactive_services()}
        gone = orphans(observed, known)
        if gone:
            log.info("agent.stack.removing", services=gone,
                     message="no longer in the compose files; named volumes kept")
            for s in gone:
                for c in observed.get(s, ()):
                    self.engine.stop_and_remove(c.container_id)
        stack, plan = self.stack, loaded.stack.plan
        self._save_best_effort(lambda: stack.record_applied(plan), what="applied files")

    def _restore_stack(self, release: Release) -> None:
        """A failed release: its new services go while compose still knows them, then the
        last applied revision's files come back (the strategies restore the rest)."""
        if self.stack is None:
            return
        added = [s for s in release.touched if release.previous.get(s) is None]
        if added:
            self.compose.remove(added)
        restored = self.stack.restore_applied()
        failpoint("after-rollback-files")
        if restored is not None:
            log.info("agent.rollback.files", revision=restored.revision,
                     written=restored.writes, removed=restored.deletes)

    # ------------------------------------------------------------------ record
    def _failed(self, state: AgentState, run: _Run, e: AgentError) -> PassResult:
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

    def _record(self, state: AgentState, result: PassResult, started: datetime,
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
        ), self.cfg.agent.history_limit)
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

    def _save_best_effort(self, save: Callable[[], None], *, what: str) -> None:
        """After the intent is recorded, a failed save never stops the verdict or the
        rollback: the recorded intent already lets the next pass converge."""
        try:
            save()
        except StateWriteError as e:
            log.error("agent.state.write_failed", what=what, error=str(e),
                      message="continuing: the recorded intent lets the next pass converge")

    def _tell(self, call: Callable[[PassObserver], None]) -> None:
        for o in self.observers:
            try:
                call(o)
            except Exception as e:  # noqa: BLE001 - reporting never affects a release
                log.error("agent.report.observer_failed", observer=type(o).__name__,
                          error=repr(e))

    # ================================================================== rollback
    def run_rollback(self, revision: str, target: Mapping[str, ImageDigest],
                     orders: Mapping[str, UpdateOrder] | None = None) -> PassResult:
        """Return to a recorded release without asking the source: its digests (pulled
        only when not local), then record intent → apply → verify → commit or roll back →
        record, as a pass. Never raises an AgentError."""
        t0, started, run = time.monotonic(), utcnow(), _Run(force=True)
        self.store.ensure_dir()
        state = self.store.load()
        run.revision = revision
        try:
            self.store.probe_writable()
            with structlog.contextvars.bound_contextvars(revision=revision[:12]):
                result = self._rollback_pass(state, run, dict(target), dict(orders or {}))
        except AgentError as e:
            result = self._failed(state, run, e)
        result.phases = dict(run.phases)
        self._record(state, result, started, t0,
                     keep_intent=result.error is not None
                     and disposition(result.error).keep_intent)
        self._tell(lambda o: o.pass_finished(result))
        return result

    def _rollback_pass(self, state: AgentState, run: _Run, target: dict[str, ImageDigest],
                       orders: dict[str, UpdateOrder]) -> PassResult:
        stack = self._rollback_files(run.revision or "")
        compose_services = (stack.compose if stack else self.compose).services()
        with run.timed("observe"):
            run.observed = observed = self.engine.observe(self.cfg.compose.name, set(target))
        plan = run.plan = make_plan(run.revision or "", target, observed, state.known_good,
                                    self._stack_hashes(stack, target))
        if stack is not None:
            plan = self._because(stack, plan)
        log.info("agent.rollback.requested", revision=run.revision,
                 changes=[f"{c.service}: {_short(c.old)} -> {_short(c.new)}"
                          for c in plan.changes])
        if plan.is_noop:
            return self._idle(state, run, plan)
        release = Release(
            plan=plan, observed=observed,
            previous=carry_over_previous(previous_digests(plan, observed, state.known_good),
                                         state.in_flight, plan.target),
            orders={s: orders.get(s) or ("stop-first" if why_not_twice(
                s, compose_services.get(s) or {}) else "start-first") for s in target},
            declared={s: declared_scale(compose_services.get(s) or {}) for s in target},
            hashes=dict(stack.hashes) if stack else {},
        )
        with run.timed("pull"):
            self._pull(plan.changes)
        self._record_intent(state, release)
        if stack is not None and self.stack is not None and stack.plan.touches:
            self.stack.write(stack.plan)
            log.info("agent.stack.written", revision=stack.plan.revision,
                     written=stack.plan.writes, removed=stack.plan.deletes)
        result = self._release(state, run, release)
        if result.outcome == "applied" and stack is not None and self.stack is not None:
            journal, files = self.stack, stack.plan
            self._save_best_effort(lambda: journal.record_applied(files), what="applied files")
        return result

    def _rollback_files(self, revision: str) -> StagedStack | None:
        """compose.from_repo: the recorded release's files (the kept copy of the last
        applied ones, else read from the source at that revision), validated like a
        pass's. A release's files go back with its digests."""
        if self.stack is None:
            return None
        applied = self.stack.applied()
        kept = (self.stack.applied_files()
                if applied is not None and applied.revision == revision else None)
        stack = self._staged(revision, kept if kept is not None else self._read_stack(revision))
        if stack.plan.touches:
            self._check_stack(stack, f"compose.from_repo@{revision[:12]}")
        return stack

    def _files_compose(self) -> StackCompose:
        if self._project_compose is None:
            self._project_compose = self.compose_for(
                [self.cfg.compose.project_dir / f for f in self.cfg.compose.files])
        return self._project_compose


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _reports(target: Mapping[str, ImageDigest],
             observed: Mapping[str, Sequence[ObservedContainer]]) -> dict[str, ServiceReport]:
    return {s: ServiceReport(running_digest(observed.get(s, ())),
                             health.service_health(observed.get(s, ()))) for s in target}


def _short(d: str | None) -> str:
    return "none" if d is None else d.removeprefix("sha256:")[:12]
