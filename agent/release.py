"""A release, once planned — the part a reconcile pass and an operator rollback share:

    pull → record intent → (hooks: before apply) → apply → verify → commit | roll back

Every new digest is local before any container is touched; the intent is on disk before
anything changes; each update group goes through its strategy on the platform
(:class:`agent.strategies.Platform`: compose or Swarm); a release whose apply or health
check fails is rolled back whole, and the rollback is verified too. What the features add
comes through the release hooks (:mod:`agent.hooks`); the releaser never asks which are on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import structlog

from agent.config import AgentConfig
from agent.desired import registry_of
from agent.envelope import Envelope, Run
from agent.errors import (
    AgentError,
    ApplyFailed,
    ComposeError,
    DockerUnavailable,
    ImageNotFound,
    PlatformMismatch,
    RegistryAuthError,
    RegistryUnavailable,
    TransientError,
    Unhealthy,
)
from agent.failpoints import failpoint
from agent.hooks import ReleaseHook
from agent.outcomes import PassResult, disposition
from agent.plan import Plan, Release
from agent.platform import compose_platform
from agent.ports import ComposeProject, Engine
from agent.retry import retry_transient
from agent.staging import StackHashes, StagedStack
from agent.state import (
    AgentState,
    Change,
    ImageDigest,
    InFlight,
    StateStore,
    save_best_effort,
    utcnow,
)
from agent.strategies import Platform, Toolkit, UpdateStrategy, pins
from agent.swarm import swarm_platform

log = structlog.get_logger()


class Releaser:
    def __init__(self, cfg: AgentConfig, *, engine: Engine, compose: ComposeProject,
                 store: StateStore, envelope: Envelope, hooks: Sequence[ReleaseHook],
                 registry_auth: Mapping[str, dict[str, str]],
                 sleep: Callable[[float], None]) -> None:
        self.cfg, self.engine, self.compose, self.store = cfg, engine, compose, store
        self.envelope, self.registry_auth = envelope, registry_auth
        self.hooks: list[ReleaseHook] = list(hooks)
        self.kit = Toolkit(engine, compose, cfg.compose.name, cfg.agent.handover_seconds,
                           self.pull, sleep)
        # where releases run: Swarm's stack ([engine] kind = "swarm") or compose
        self.platform: Platform = swarm_platform(cfg, self.kit) or compose_platform(cfg, self.kit)

    # ------------------------------------------------------------------ the release
    def run(self, state: AgentState, run: Run, release: Release,
            staged: StagedStack | None, services: Mapping[str, Any]) -> PassResult:
        """Record intent, write what the hooks need, apply, verify, then commit — or roll
        back whatever the release touched."""
        self.record_intent(state, release)
        self.before_apply(staged)
        self.envelope.tell(lambda o: o.release_started(release.revision, release.touched))
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
        if self.envelope.observers:  # report what runs now: start-first's old ones retired
            try:
                run.observed = self.engine.observe(self.cfg.compose.name, set(release.target))
            except AgentError as e:
                log.warning("agent.report.observe_failed", error=str(e))
        log.info("agent.health.ok", services=release.touched)
        self.note_applied(state, release.plan)
        state.note_release(release.revision, dict(release.target), utcnow(), release.orders)
        self.applied(state, staged, services, release.observed, release)
        return run.result("applied")

    # ------------------------------------------------------------------ the hooks
    def validated(self, revision: str, *, failed: bool) -> StagedStack | None:
        """The files a hook brings for the revision (at most one hook brings files)."""
        for h in self.hooks:
            staged = h.validated(revision, failed=failed)
            if staged is not None:
                return staged
        return None

    def hashes(self, staged: StagedStack | None,
               target: Mapping[str, ImageDigest]) -> StackHashes | None:
        for h in self.hooks:
            got = h.hashes(staged, target)
            if got is not None:
                return got
        return None

    def before_apply(self, staged: StagedStack | None) -> bool:
        # a list, not a generator: every hook writes, even after one said True
        return any([h.before_apply(staged) for h in self.hooks])

    def applied(self, state: AgentState, staged: StagedStack | None,
                services: Mapping[str, Any], observed: Any, release: Release | None) -> None:
        for h in self.hooks:
            h.applied(state, staged, services, observed, release)

    def note_applied(self, state: AgentState, plan: Plan) -> None:
        """The target runs healthy: it is known-good. A failed revision converging on the
        known-good digests keeps its failure, or the next pass retries the bad release;
        a forced retry that worked clears it."""
        new_digests = any(c.service not in state.known_good
                          or state.known_good[c.service].digest != c.new for c in plan.changes)
        state.known_good = dict(plan.target)
        if plan.revision in state.failed_revisions and new_digests:
            del state.failed_revisions[plan.revision]

    # ------------------------------------------------------------------ pull
    def pull(self, changes: Sequence[Change]) -> None:
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
        auth = self.registry_auth.get(registry_of(c.image))
        try:
            retry_transient(lambda: self.engine.pull(c.image, c.new, auth),
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

    # ------------------------------------------------------------------ intent
    def record_intent(self, state: AgentState, release: Release) -> None:
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
        save_best_effort(lambda: self.store.save(state), what="intent")

    # ------------------------------------------------------------------ apply / verify
    def _apply(self, release: Release) -> None:
        self.pin(release.target)
        if release.unmanaged_missing:
            self.start_unmanaged(release.unmanaged_missing)
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

    def start_unmanaged(self, services: Sequence[str]) -> None:
        """Best effort: services desired-state does not list run as compose.yml says. Their
        failure to start is reported, not a reason to fail (or roll back) the release."""
        log.info("agent.apply.unmanaged", services=list(services))
        try:
            self.compose.up(services, pull="missing")
        except ComposeError as e:
            log.warning("agent.apply.unmanaged_failed", services=list(services),
                        error=e.stderr.strip().splitlines()[-1] if e.stderr.strip() else str(e))

    def pin(self, images: Mapping[str, ImageDigest]) -> None:
        """The digests compose runs, with the labels the hooks add (from_repo's files)."""
        labels: dict[str, dict[str, str]] | None = None
        for h in self.hooks:
            if (more := h.labels()) is not None:
                labels = labels or {}
                for service, those in more.items():
                    labels.setdefault(service, {}).update(those)
        if labels is not None:
            self.compose.pin(pins(images), labels)
        else:
            self.compose.pin(pins(images))

    # ------------------------------------------------------------------ commit / roll back
    def _commit(self, release: Release) -> None:
        for strategy, services in self._strategies(release, release.touched):
            strategy.commit(services, release)

    def _roll_back(self, state: AgentState, run: Run, release: Release,
                   error: AgentError) -> PassResult:
        """Ask each strategy to undo its own services, then check what was restored."""
        log.error("agent.release.failed", revision=release.revision, reason=str(error),
                  services=release.touched)
        state.mark_failed(release.revision, str(error))  # before undoing: a crash mid-way
        self._set_phase(state, "rollback")  # converges on the previous release
        note, keep_intent = "", False
        try:
            for h in reversed(self.hooks):
                h.undo(release)
            self.pin(release.rollback_pins())
            restored: list[str] = []
            for strategy, services in self._strategies(release, release.touched):
                restored += strategy.undo(services, release)
            bad = (self.platform.wait_healthy(restored, release.rollback_pins())
                   if restored else None)
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
