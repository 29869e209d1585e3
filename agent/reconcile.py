"""One reconcile pass: observe → diff → act → verify → record.

Calls go one way: cli/daemon → reconcile → (desired, plan, state, health) and edges.
The outcome is always recorded, failures included.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from agent import health
from agent.config import AgentConfig
from agent.desired import (
    DesiredState,
    UpdateOrder,
    check_against_compose,
    check_allowed_images,
    declared_scale,
    parse_desired_state,
    resolve_update_orders,
)
from agent.edges.compose import Compose, find_compose_command, render_override
from agent.edges.docker import DockerEngine
from agent.edges.source import Fetched, Source
from agent.errors import (
    AgentEnvironmentError,
    AgentError,
    ComposeError,
    DesiredStateError,
    DockerUnavailable,
    ImageNotFound,
    InvalidInput,
    RegistryAuthError,
    RegistryUnavailable,
    ReleaseFailed,
    SourceUnavailable,
    TransientError,
    UntrustedRevision,
)
from agent.failpoints import armed, failpoint
from agent.outcomes import PassResult as PassResult  # re-exported (daemon)
from agent.outcomes import ServiceReport
from agent.plan import (
    ObservedContainer,
    Plan,
    effective_target,
    make_plan,
    previous_digests,
    running_digest,
)
from agent.ports import PassObserver
from agent.retry import retry_transient
from agent.secrets import token_from_file
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

log = structlog.get_logger()

OVERRIDE_FILE = "compose.override.gitops-agent.json"
DESIRED_CACHE = "desired-state.cache.yml"


@dataclass(frozen=True)
class Loaded:
    desired: DesiredState
    compose_services: dict[str, Any]
    orders: dict[str, UpdateOrder]


class _Phases:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def timed(self, name: str) -> _Timer:
        return _Timer(self, name)


class _Timer:
    def __init__(self, phases: _Phases, name: str) -> None:
        self.phases, self.name = phases, name

    def __enter__(self) -> None:
        self.t0 = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.phases.times[self.name] = round(
            self.phases.times.get(self.name, 0.0) + time.monotonic() - self.t0, 4
        )


def build_source(cfg: AgentConfig) -> Source:
    if cfg.source.kind == "github":
        from agent.edges.github import GitHubSource

        return GitHubSource.from_config(cfg)
    from agent.edges.git import GitSource

    return GitSource(
        cfg.source.repo,
        cfg.source.branch,
        cfg.source.path,
        cfg.agent.state_dir / "source.git",
        ssh_key_file=cfg.source.ssh_key_file,
        token=token_from_file(cfg.source.token_file, "source.token_file"),
        timeout=cfg.source.timeout_seconds,
        allowed_signers_file=(
            cfg.trust.allowed_signers_file if cfg.trust.require_signed_commits else None
        ),
    )


class Reconciler:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        source: Source | None = None,
        engine: DockerEngine | None = None,
        compose: Compose | None = None,
        registry_auth: Mapping[str, dict[str, str]] | None = None,
        observers: Sequence[PassObserver] = (),
    ) -> None:
        self.cfg = cfg
        self.observers = list(observers)
        # what this pass aimed at and saw, for the observers (reset each pass)
        self._pass_target: dict[str, ImageDigest] = {}
        self._pass_observed: Mapping[str, Sequence[ObservedContainer]] = {}
        self._pass_touched = False
        self.store = StateStore(cfg.agent.state_dir)
        self.source = source or build_source(cfg)
        self.engine = engine or DockerEngine(
            pull_stall_timeout=cfg.agent.pull_stall_timeout_seconds)
        self.override_path = cfg.agent.state_dir / OVERRIDE_FILE
        self.compose = compose or Compose(
            find_compose_command(cfg.compose.command),
            cfg.compose.project_dir,
            cfg.compose.files,
            cfg.compose.name,
            override=self.override_path,
        )
        self.registry_auth = dict(registry_auth or {})

    # ================================================================== the pass
    def run_pass(self, *, force: bool = False) -> PassResult:
        t0 = time.monotonic()
        started = utcnow()
        phases = _Phases()
        self._pass_target, self._pass_observed, self._pass_touched = {}, {}, False
        self.store.ensure_dir()
        state = self.store.load()
        try:
            # a full or read-only state_dir is named as such, not as the git fetch into
            # the mirror failing; nothing is fetched or touched without a record
            self.store.probe_writable()
            result = self._pass(state, force=force, phases=phases)
        except AgentError as e:
            log.error("agent.pass.error", error=str(e), kind=type(e).__name__)
            result = PassResult("error", None, reason=str(e), error=e)
        except Exception as e:
            log.exception("agent.pass.crashed", error=repr(e))
            result = PassResult("error", None, reason=f"internal error: {e!r}")
            result.duration_seconds = round(time.monotonic() - t0, 3)
            self._record(state, result, started, force)
            self._tell_finished(result, force)
            raise
        result.duration_seconds = round(time.monotonic() - t0, 3)
        result.phases = phases.times
        self._record(state, result, started, force)
        self._tell_finished(result, force)
        return result

    # ================================================================== observers
    def _tell_started(self, revision: str, services: Sequence[str]) -> None:
        for o in self.observers:
            try:
                o.release_started(revision, list(services))
            except Exception as e:  # noqa: BLE001 - a report never fails the release
                log.error("agent.report.observer_failed", observer=type(o).__name__,
                          error=repr(e))

    def _tell_finished(self, result: PassResult, force: bool) -> None:
        if not self.observers:
            return
        result.forced = force
        result.target = dict(self._pass_target)
        observed = self._pass_observed
        if self._pass_touched and self._pass_target:
            try:  # containers changed during the pass: report what runs now
                observed = self.engine.observe(self.cfg.compose.name, set(self._pass_target))
            except Exception as e:  # noqa: BLE001 - reporting never fails a pass
                log.warning("agent.report.observe_failed", error=repr(e))
                observed = {}
        result.services = {
            n: ServiceReport(running_digest(observed.get(n, [])),
                             health.service_health(observed.get(n, [])))
            for n in self._pass_target if observed}
        for o in self.observers:
            try:
                o.pass_finished(result)
            except Exception as e:  # noqa: BLE001
                log.error("agent.report.observer_failed", observer=type(o).__name__,
                          error=repr(e))

    def _pass(self, state: AgentState, *, force: bool, phases: _Phases) -> PassResult:
        if state.in_flight is not None:
            log.warning(
                "agent.recover.in_flight",
                revision=state.in_flight.revision,
                phase=state.in_flight.phase,
                services=sorted(state.in_flight.target),
                message="an earlier pass stopped half-way; converging now",
            )
        # ---- fetch
        try:
            with phases.timed("fetch"):
                fetched = self._fetch(state)
        except SourceUnavailable as e:
            log.error("agent.fetch.failed", source=self.source.describe(), error=str(e))
            return PassResult("error", None, reason=str(e), error=e)
        except DesiredStateError as e:
            log.error("agent.desired.invalid", error=str(e))
            return PassResult("invalid", None, reason=str(e), error=e)
        rev = fetched.revision
        failpoint("after-fetch")
        structlog.contextvars.bind_contextvars(revision=rev[:12])
        try:
            return self._pass_at(state, fetched, force=force, phases=phases)
        finally:
            structlog.contextvars.unbind_contextvars("revision")

    def _fetch(self, state: AgentState) -> Fetched:
        fetched = retry_transient(
            self.source.fetch, event="agent.fetch", retry_on=SourceUnavailable,
            source=self.source.describe(),
        )
        log.info("agent.fetch.done", revision=fetched.revision, source=self.source.describe())
        if fetched.went_backwards:
            previous = state.last_attempted.revision if state.last_attempted else None
            log.warning(
                "agent.fetch.revision_went_backwards",
                revision=fetched.revision,
                previous=previous,
                message="branch head moved to an older commit (force-push?); following it",
            )
        cache = self.cfg.agent.state_dir / DESIRED_CACHE
        seen = state.last_attempted.revision if state.last_attempted else None
        if seen != fetched.revision or not cache.exists():  # not rewritten on idle passes
            try:
                write_atomic(cache, fetched.content)
            except AgentEnvironmentError:
                pass  # the cache only serves `status`; the record itself is checked later
        return fetched

    def load_desired(self, fetched: Fetched) -> Loaded:
        """Parse and validate everything before anything is touched. Raises InvalidInput."""
        source = f"{fetched.path}@{fetched.revision[:12]}"
        if fetched.trust_error:
            raise UntrustedRevision(source, [fetched.trust_error])
        desired = parse_desired_state(fetched.content, source)
        check_allowed_images(desired, self.cfg.trust.allowed_images, source)
        compose_services = self.compose.services()
        check_against_compose(desired, compose_services, source)
        orders = resolve_update_orders(desired, compose_services, source)
        return Loaded(desired, compose_services, orders)

    def _pass_at(
        self, state: AgentState, fetched: Fetched, *, force: bool, phases: _Phases
    ) -> PassResult:
        rev = fetched.revision
        # ---- validate (pure + compose config); invalid input is stalled
        try:
            with phases.timed("validate"):
                loaded = self.load_desired(fetched)
                desired, compose_services = loaded.desired, loaded.compose_services
        except InvalidInput as e:
            log.error("agent.desired.invalid", revision=rev, error=str(e))
            return PassResult("invalid", rev, reason=str(e), error=e)

        revision_failed = rev in state.failed_revisions and not force
        if force and rev in state.failed_revisions:
            log.info("agent.sync.forced", revision=rev,
                     previous_failure=state.failed_revisions[rev])

        # ---- observe + diff
        try:
            with phases.timed("observe"):
                observed = self.engine.observe(self.cfg.compose.name,
                                               set(desired.services))
        except DockerUnavailable as e:
            log.error("agent.observe.failed", error=str(e))
            return PassResult("error", rev, reason=str(e), error=e)
        target = effective_target(desired, state.known_good, revision_failed)
        self._pass_target, self._pass_observed = dict(target), observed
        plan = make_plan(rev, target, observed, state.known_good)
        log.info(
            "agent.diff",
            revision=rev,
            changes=[f"{c.service}: {_short(c.old)} -> {_short(c.new)}" for c in plan.changes],
            unverified=plan.unverified,
            unchanged=sorted(set(target) - set(plan.changed_services) - set(plan.unverified)),
        )

        missing_unmanaged = sorted(
            s for s in compose_services if s not in target and s not in observed
        )
        if plan.is_noop:
            # Unmanaged services are started alongside a release, never on their own: a
            # missing unmanaged image must not turn every idle poll into a pull attempt.
            return self._noop(plan, observed, revision_failed, state)

        previous = previous_digests(plan, observed, state.known_good)
        if state.in_flight is not None:
            for name, prev in state.in_flight.previous.items():
                if name in previous and prev is not None and prev.digest != target[name].digest:
                    previous[name] = prev

        # ---- pull (before any container is touched)
        try:
            with phases.timed("pull"):
                self._pull_all(plan.changes)
        except (RegistryUnavailable, DockerUnavailable) as e:
            log.error("agent.pull.failed", error=str(e),
                      message="release aborted before touching any container")
            return PassResult("error", rev, plan.changes, reason=str(e), error=e)
        except RegistryAuthError as e:
            log.error("agent.pull.unauthorized", registry=e.registry, error=str(e))
            return PassResult("failed", rev, plan.changes, reason=str(e), error=e)
        except ImageNotFound as e:
            log.error("agent.pull.not_found", error=str(e))
            state.mark_failed(rev, str(e))
            return PassResult("failed", rev, plan.changes, reason=str(e), error=e)
        failpoint("after-pull")

        # ---- record intent, then act
        touched = plan.changed_services + plan.unverified
        start_first = {s for s in touched if loaded.orders.get(s) == "start-first"}
        state.in_flight = InFlight(
            revision=rev, started_at=utcnow(), phase="apply", previous=previous,
            target={n: target[n] for n in touched},
        )
        self.store.probe_writable()
        self.store.save(state)  # refuses to act without a record (StateWriteError)
        self._pass_touched = True
        if touched:
            self._tell_started(rev, touched)

        try:
            with phases.timed("apply"):
                self._write_override(target)
                if missing_unmanaged:
                    self._start_unmanaged(missing_unmanaged)
                if plan.changes:
                    log.info("agent.apply.started", services=plan.changed_services,
                             digests={c.service: c.new for c in plan.changes},
                             update={c.service: loaded.orders[c.service] for c in plan.changes})
                    stop_first = [s for s in plan.changed_services if s not in start_first]
                    if armed("during-apply"):  # fault tests: die between two services
                        self.compose.up(stop_first[:1], pull="never")
                        failpoint("during-apply")
                        stop_first = stop_first[1:]
                    self.compose.up(stop_first, pull="never")  # one compose call
                    sf_changed = [s for s in plan.changed_services if s in start_first]
                    if sf_changed:
                        scale = {s: self._start_first_scale(
                            observed.get(s, ()), target[s].digest, compose_services[s])
                            for s in sf_changed}
                        log.info("agent.apply.start_first", services=sf_changed, scale=scale,
                                 message="new containers start beside the old ones")
                        self.compose.up(sf_changed, pull="never", scale=scale, no_recreate=True)
                        failpoint("during-apply")
                    log.info("agent.apply.done", services=plan.changed_services)
        except ComposeError as e:
            log.error("agent.apply.failed", command=" ".join(e.command[-6:]),
                      exit_code=e.returncode, stderr=e.stderr.strip()[-500:])
            return self._rollback(state, plan, previous, f"docker compose up failed: {e}",
                                  phases, e, start_first)

        if not touched:
            return self._finish_success(state, plan, target)

        # ---- verify
        failpoint("after-apply")
        state.in_flight.phase = "verify"
        self.store.save(state)
        with phases.timed("health"):
            verdict = self._wait_healthy(touched, target)
        if verdict is not None:
            return self._rollback(state, plan, previous, verdict, phases, ReleaseFailed(verdict),
                                  start_first)
        if start_first:
            self._retire_old(sorted(start_first), target)
        return self._finish_success(state, plan, target)

    def _start_unmanaged(self, services: Sequence[str]) -> None:
        """Best effort: services desired-state does not list run as compose.yml says. Their
        failure to start is reported, not a reason to fail (or roll back) the release."""
        log.info("agent.apply.unmanaged", services=list(services))
        try:
            self.compose.up(services, pull="missing")
        except ComposeError as e:
            log.warning("agent.apply.unmanaged_failed", services=list(services),
                        error=e.stderr.strip().splitlines()[-1] if e.stderr.strip() else str(e))

    # ================================================================== start-first
    @staticmethod
    def _start_first_scale(
        containers: Sequence[ObservedContainer], digest: str, compose_service: Mapping[str, Any]
    ) -> int:
        """Total containers to ask compose for so that ``declared`` run the new digest while
        every existing one stays (``--no-recreate``)."""
        at_target = [c for c in containers if c.digest == digest and c.status == "running"]
        return len(containers) + max(0, declared_scale(compose_service) - len(at_target))

    def _retire_old(self, services: Sequence[str], target: Mapping[str, ImageDigest]) -> None:
        """The new containers are healthy: stop the old ones gracefully and remove them."""
        if self.cfg.agent.handover_seconds > 0:
            log.info("agent.apply.handover", services=list(services),
                     seconds=self.cfg.agent.handover_seconds)
            time.sleep(self.cfg.agent.handover_seconds)
        observed = self.engine.observe(self.cfg.compose.name, set(services))
        for s in services:
            for c in observed.get(s, ()):
                if c.digest != target[s].digest:
                    log.info("agent.apply.retiring", service=s, container=c.name,
                             digest=c.digest)
                    self.engine.stop_and_remove(c.container_id)

    def _withdraw_new(
        self, services: Sequence[str], target: Mapping[str, ImageDigest]
    ) -> list[str]:
        """A start-first release failed: remove its new containers. Returns the services
        handled (their old containers never stopped); the others need a regular rollback."""
        observed = self.engine.observe(self.cfg.compose.name, set(services))
        handled = []
        for s in services:
            cs = observed.get(s, ())
            old = [c for c in cs if c.digest != target[s].digest and c.status == "running"]
            if not old:
                continue
            for c in cs:
                if c.digest == target[s].digest:
                    self.engine.stop_and_remove(c.container_id)
            log.info("agent.rollback.start_first", service=s, kept=[c.name for c in old],
                     message="new container removed; the old one never stopped")
            handled.append(s)
        return handled

    # ================================================================== steps
    def _noop(
        self,
        plan: Plan,
        observed: Mapping[str, Sequence[ObservedContainer]],
        revision_failed: bool,
        state: AgentState,
    ) -> PassResult:
        problems = health.snapshot_problems(plan.target, observed)
        if revision_failed:
            reason = (
                f"revision {plan.revision[:12]} failed before "
                f"({state.failed_revisions[plan.revision]}); the last known-good digests run; "
                "not retried until a new commit or 'sync --force'"
            )
            log.warning("agent.sync.skipped_failed_revision", revision=plan.revision,
                        reason=state.failed_revisions[plan.revision])
            return PassResult("skipped", plan.revision, reason=reason,
                              error=ReleaseFailed(reason))
        if problems:
            reason = "; ".join(problems)
            log.warning("agent.health.degraded", problems=problems)
            return PassResult("degraded", plan.revision, reason=reason,
                              error=ReleaseFailed(reason))
        return PassResult("no-op", plan.revision)

    def _pull_all(self, changes: Sequence[Change]) -> None:
        todo = [c for c in changes if not self.engine.has_image(c.image, c.new)]
        for c in changes:
            if c not in todo:
                log.info("agent.pull.cached", service=c.service, digest=c.new)
        if not todo:
            return

        def pull_one(c: Change) -> None:
            ref = f"{c.image}@{c.new}"
            log.info("agent.pull.started", service=c.service, image=c.image, digest=c.new)
            t0 = time.monotonic()
            retry_transient(
                lambda: self.engine.pull(c.image, c.new, self._auth_for(c.image)),
                event="agent.pull", retry_on=RegistryUnavailable, service=c.service,
                image=ref,
            )
            log.info("agent.pull.done", service=c.service, digest=c.new,
                     seconds=round(time.monotonic() - t0, 3))

        workers = min(self.cfg.agent.pull_concurrency, len(todo))
        if workers == 1:
            for c in todo:
                pull_one(c)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pull") as pool:
            futures = [pool.submit(pull_one, c) for c in todo]
            errors = [f.exception() for f in futures]
        # auth / not-found errors first: they say what a person must fix
        for kind in (RegistryAuthError, ImageNotFound, TransientError, BaseException):
            for err in errors:
                if isinstance(err, kind):
                    raise err

    def _auth_for(self, image: str) -> dict[str, str] | None:
        from agent.edges.docker import registry_of

        return self.registry_auth.get(registry_of(image))

    def _write_override(self, images: Mapping[str, ImageDigest]) -> None:
        write_atomic(
            self.override_path,
            render_override({n: f"{d.image}@{d.digest}" for n, d in images.items()}),
        )

    def _wait_healthy(self, services: Sequence[str], target: Mapping[str, ImageDigest]) -> str | None:
        """None when every service is healthy at its target digest; else the reason."""
        return health.wait_healthy(
            observe=lambda: self.engine.observe(self.cfg.compose.name, set(services),
                                                detail=True),
            services=services,
            digests={s: target[s].digest for s in services},
            timeout=self.cfg.agent.health_timeout_seconds,
            settle=self.cfg.agent.settle_seconds,
        )

    def _rollback(
        self,
        state: AgentState,
        plan: Plan,
        previous: Mapping[str, ImageDigest | None],
        reason: str,
        phases: _Phases,
        error: AgentError,
        start_first: set[str] | None = None,
    ) -> PassResult:
        log.error("agent.release.failed", revision=plan.revision, reason=reason,
                  services=plan.changed_services + plan.unverified)
        state.mark_failed(plan.revision, reason)
        assert state.in_flight is not None
        state.in_flight.phase = "rollback"
        self.store.save(state)

        back = {n: p for n, p in previous.items() if p is not None}
        remove = sorted(n for n, p in previous.items() if p is None)
        pins = {**plan.target, **back}
        rollback_note = ""
        with phases.timed("rollback"):
            try:
                self._write_override(pins)
                if start_first:
                    for s in self._withdraw_new(sorted(start_first), plan.target):
                        back.pop(s, None)
                        if s in remove:
                            remove.remove(s)
                if back:
                    log.info("agent.rollback.started",
                             services={n: d.digest for n, d in back.items()})
                    self._pull_all([Change(service=n, image=d.image, old=None, new=d.digest)
                                    for n, d in back.items()])
                    self.compose.up(sorted(back), pull="never")
                    failpoint("during-rollback")
                if remove:
                    log.info("agent.rollback.removing", services=remove,
                             message="no earlier release of these services to return to")
                    self.compose.remove(remove)
                bad = self._wait_healthy(sorted(back), pins) if back else None
            except AgentError as e:
                bad = str(e)
            if bad is None:
                log.info("agent.rollback.done", services=sorted(back), removed=remove)
                for n, d in back.items():
                    state.known_good[n] = d
            else:
                rollback_note = f"; rollback did not become healthy: {bad}"
                log.error("agent.rollback.unhealthy", reason=bad)
        return PassResult("rolled-back", plan.revision, plan.changes,
                          reason=reason + rollback_note, error=error)

    def _finish_success(
        self, state: AgentState, plan: Plan, target: Mapping[str, ImageDigest]
    ) -> PassResult:
        # A failed revision that is not forced converges on the known-good digests: that
        # working must not clear the failure, or the next pass retries the bad release.
        new_digests = any(
            c.service not in state.known_good or state.known_good[c.service].digest != c.new
            for c in plan.changes
        )
        for n, d in target.items():
            state.known_good[n] = d
        for gone in set(state.known_good) - set(target):
            del state.known_good[gone]  # no longer managed
        if plan.revision in state.failed_revisions and new_digests:
            # a forced retry that worked
            del state.failed_revisions[plan.revision]
        outcome: Outcome = "applied" if plan.changes or plan.unverified else "no-op"
        log.info("agent.health.ok", services=plan.changed_services + plan.unverified)
        return PassResult(outcome, plan.revision, plan.changes)

    # ================================================================== record
    def _record(
        self, state: AgentState, result: PassResult, started: datetime, force: bool
    ) -> None:
        now = utcnow()
        if result.outcome != "error":
            # an "error" pass (transient) keeps a recorded intent so the next pass converges
            state.in_flight = None
        state.last_attempted = RevisionRecord(
            revision=result.revision, at=now, outcome=result.outcome, reason=result.reason
        )
        if result.outcome == "applied" or (result.outcome == "no-op" and (
            state.last_applied is None or state.last_applied.revision != result.revision
        )):
            state.last_applied = RevisionRecord(revision=result.revision, at=now,
                                                outcome=result.outcome)
        state.record_pass(
            PassRecord(
                started_at=started,
                duration_seconds=result.duration_seconds,
                revision=result.revision,
                outcome=result.outcome,
                changes=result.changes if result.outcome in ("applied", "rolled-back") else [],
                reason=result.reason,
                forced=force,
                phases=result.phases,
            ),
            self.cfg.agent.history_limit,
        )
        try:
            self.store.save(state)
        except AgentError as e:
            log.error("agent.state.write_failed", error=str(e))
            if result.error is None:
                result.error = e
        log.info(
            "agent.pass.completed",
            outcome=result.outcome,
            revision=result.revision,
            changed=[f"{c.service}: {_short(c.old)} -> {_short(c.new)}" for c in result.changes],
            duration_seconds=result.duration_seconds,
            reason=result.reason,
        )

    # ================================================================== read-only views
    def desired_now(self, fetch: bool) -> tuple[Fetched | None, DesiredState | None, str | None]:
        """The desired state: fetched afresh (diff) or from the last fetch (status)."""
        try:
            if fetch:
                fetched = self._fetch(self.store.load())
            else:
                cache = self.cfg.agent.state_dir / DESIRED_CACHE
                st = self.store.load()
                if not cache.exists() or st.last_attempted is None or \
                        st.last_attempted.revision is None:
                    return None, None, "no desired state fetched yet"
                fetched = Fetched(st.last_attempted.revision, cache.read_bytes(),
                                  self.cfg.source.path)
            return fetched, parse_desired_state(
                fetched.content, f"{fetched.path}@{fetched.revision[:12]}"
            ), None
        except AgentError as e:
            return None, None, str(e)


def _short(d: str | None) -> str:
    return "none" if d is None else d.removeprefix("sha256:")[:12]
