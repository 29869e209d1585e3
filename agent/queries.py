"""Read-only views for ``status`` and ``diff``: typed, built from the read model at the
end of this module (the cached or freshly fetched desired state, the plan a pass would
make, the compose files' view of what runs), the state file and one observation of the
engine. The pass (:class:`agent.reconcile.Reconciler`) holds none of this. ``status`` writes
nothing; ``diff`` fetches (which writes the source's own cache) only under the state_dir
lock, and otherwise reads the desired state the running agent last validated."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.desired import DesiredState
from agent.errors import AgentError, DockerUnavailable, LocalPermissionDenied, LockHeld
from agent.health import service_health
from agent.plan import (
    ObservedContainer,
    Plan,
    effective_target,
    running_config_hash,
    running_digest,
)
from agent.ports import Fetched
from agent.reconcile import DESIRED_CACHE, Loaded, Reconciler
from agent.state import AgentState, Change, StateLock


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    image: str
    desired: str | None
    running: str | None
    known_good: str | None
    health: str
    containers: list[str]
    pinned: bool
    # the running containers' configuration is what project_dir's compose files give them
    # (None: not running / unknown)
    config_matches: bool | None = None
    replicas: str | None = None  # Swarm: "running/desired" tasks ("n/global" in global mode)


@dataclass(frozen=True)
class StatusView:
    project: str
    desired_revision: str | None
    desired_problem: str | None
    services: list[ServiceStatus]
    last_attempted: dict[str, Any] | None
    last_applied: dict[str, Any] | None
    in_flight: dict[str, Any] | None
    failed_revisions: list[str]
    # compose.from_repo: the revision project_dir's files come from
    files_revision: str | None = None
    # this host's rollout wave in the desired revision (None: no rollout section)
    wave: str | None = None
    # operator controls: who froze the host, when and why; releases rollback can reach
    # from local images
    frozen: dict[str, Any] | None = None
    rollback_targets: list[dict[str, Any]] = field(default_factory=list)
    # what the newest release changed, and why (a config change names its git files)
    last_release: list[str] = field(default_factory=list)
    # the desired revision failed and the host runs an earlier release:
    # {"from": failed desired revision, "running": the revision of the release that runs}
    rolled_back: dict[str, str] | None = None
    # the Docker engine could not be asked (running/health unknown; the record still shown)
    engine_problem: str | None = None
    engine_error: str | None = None  # its kind: DockerUnavailable, LocalPermissionDenied

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DiffView:
    revision: str
    failed_before: bool
    changes: list[Change] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    # where the desired state came from: "fetched" now, or "cached" from the running agent
    origin: str = "fetched"
    # per service whose configuration changes, the top-level compose keys that differ
    config: dict[str, list[str]] = field(default_factory=dict)
    # without from_repo: running services whose configuration is not the compose files'
    config_drift: list[str] = field(default_factory=list)
    # compose.from_repo: files the revision writes / removes in project_dir
    files_written: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)


def _desired(fetched: Fetched | None) -> tuple[DesiredState | None, str | None]:
    from agent.desired import parse_desired_state

    if fetched is None:
        return None, "no desired state fetched yet"
    try:
        return parse_desired_state(fetched.content,
                                   f"{fetched.path}@{fetched.revision[:12]}"), None
    except AgentError as e:
        return None, str(e)


def _replicas(rec: Reconciler, names: list[str]) -> dict[str, str]:
    """Swarm only: running/desired tasks per service (compose runs what it runs)."""
    from agent.edges.swarm import SwarmEngine

    if not isinstance(rec.engine, SwarmEngine):
        return {}
    return {n: f"{s.running}/{'global' if s.replicas is None else s.replicas}"
            for n, s in rec.engine.swarm_services(rec.cfg.compose.name, names).items()}


def status(rec: Reconciler) -> StatusView:
    state = rec.store.load()
    fetched = cached_desired(rec)
    desired, problem = _desired(fetched)
    last = state.last_attempted
    if last is not None and last.outcome == "invalid" and last.reason:
        problem = last.reason  # the newest revision was refused; the cache is older
    names = sorted(set(desired.services if desired else {}) | set(state.known_good))
    engine_problem = engine_error = None
    try:
        observed = observe_all(rec)
        matches = _running_config(rec, observed)
        replicas = _replicas(rec, names)
    except (DockerUnavailable, LocalPermissionDenied) as e:
        observed, matches, replicas = {}, {}, {}
        engine_problem, engine_error = str(e), type(e).__name__
    services = []
    for n in names:
        spec = desired.services.get(n) if desired else None
        cs = observed.get(n, [])
        services.append(ServiceStatus(
            service=n,
            image=spec.image if spec else state.known_good[n].image,
            desired=spec.digest if spec else None,
            running=running_digest(cs),
            known_good=state.known_good[n].digest if n in state.known_good else None,
            health="unknown" if engine_problem else service_health(cs),
            containers=[c.name for c in cs],
            pinned=bool(spec and spec.pinned),
            config_matches=matches.get(n),
            replicas=replicas.get(n),
        ))
    dump = state.model_dump(mode="json")
    release = next((r for r in state.history if r.outcome in ("applied", "rolled-back")), None)
    return StatusView(
        last_release=[c.describe() for c in release.changes] if release else [],
        project=rec.cfg.compose.name,
        desired_revision=fetched.revision if fetched else None,
        desired_problem=problem,
        services=services,
        last_attempted=dump["last_attempted"],
        last_applied=dump["last_applied"],
        in_flight=dump["in_flight"],
        failed_revisions=list(state.failed_revisions),
        files_revision=rec.files.journal.current().revision if rec.files else None,
        wave=_wave(rec, desired),
        rolled_back=_rolled_back(state, fetched.revision if fetched else None),
        engine_problem=engine_problem,
        engine_error=engine_error,
        **_controls(rec, state, engine=engine_problem is None),
    )


def _rolled_back(state: AgentState, desired_revision: str | None) -> dict[str, str] | None:
    """The desired revision failed (a release rolled back, or an operator's ``rollback``
    marked it) and the host runs the release recorded as last applied."""
    applied = state.last_applied.revision if state.last_applied else None
    if desired_revision is None or desired_revision not in state.failed_revisions \
            or applied is None or applied == desired_revision:
        return None
    return {"from": desired_revision, "running": applied}


def _controls(rec: Reconciler, state: AgentState, *, engine: bool = True) -> dict[str, Any]:
    from agent import controls, retention

    try:
        fr = controls.read_freeze(rec.cfg.agent.state_dir)
        frozen = None if fr is None else {**fr.model_dump(mode="json"),
                                          "describe": fr.describe()}
    except AgentError as e:
        frozen = {"reason": str(e), "by": None, "at": None, "describe": str(e)}
    targets = retention.targets_on_disk(rec.engine, state) if engine else []
    return {"frozen": frozen, "rollback_targets": targets}


def _wave(rec: Reconciler, desired: DesiredState | None) -> str | None:
    from agent.fleet import describe_wave
    from agent.report import host_name

    if desired is None or desired.rollout is None:
        return None
    host = host_name(rec.cfg)
    return f"{host} in {describe_wave(host, desired.rollout)}"


def _running_config(rec: Reconciler, observed: Any) -> dict[str, bool | None]:
    try:
        return running_config(rec, observed)
    except AgentError:
        return {}  # compose files that do not parse: status still shows the rest


def diff(rec: Reconciler) -> DiffView:
    """What a sync would change. Validates like a pass (InvalidInput propagates)."""
    try:
        with StateLock(rec.cfg.agent.state_dir):
            fetched: Fetched | None = fetch_desired(rec)
            origin = "fetched"
    except LockHeld:
        fetched, origin = cached_desired(rec), "cached"
        if fetched is None:
            raise
    assert fetched is not None
    state: AgentState = rec.store.load()
    # a cached desired state is validated against project_dir's files as they are
    loaded = rec.load_desired(state, fetched, files=origin == "fetched")
    stack = loaded.stack
    observed = observe_all(rec)
    plan = plan_for(rec, loaded, observed, state)
    config = config_keys_changed(rec, loaded, plan.config_changed) if stack else {}
    drift = [] if stack else sorted(s for s, ok in _running_config(rec, observed).items()
                                    if ok is False)
    return DiffView(revision=fetched.revision,
                    failed_before=fetched.revision in state.failed_revisions,
                    changes=list(plan.changes), unverified=list(plan.unverified),
                    origin=origin, config=config, config_drift=drift,
                    files_written=stack.plan.writes if stack else [],
                    files_removed=stack.plan.deletes if stack else [])


# ================================================================== the read model
# What ``status`` and ``diff`` ask of a pass that is not run: the desired state it last
# validated, a fresh fetch, one observation, its plan and the compose files' view.

def cached_desired(rec: Reconciler) -> Fetched | None:
    """The desired state the last pass validated (no fetch, nothing written)."""
    path = rec.cfg.agent.state_dir / DESIRED_CACHE
    try:
        doc = json.loads(path.read_bytes())
        return Fetched(str(doc["revision"]), str(doc["content"]).encode(), str(doc["path"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fetch_desired(rec: Reconciler) -> Fetched:
    """Fetch the desired state afresh (writes the source's own cache: hold the lock)."""
    return rec.fetch(rec.store.load())


def observe_all(rec: Reconciler) -> dict[str, list[ObservedContainer]]:
    return rec.engine.observe(rec.cfg.compose.name)


def plan_for(rec: Reconciler, loaded: Loaded,
             observed: Mapping[str, Sequence[ObservedContainer]], state: AgentState) -> Plan:
    failed = loaded.revision in state.failed_revisions
    target = effective_target(loaded.desired, state.known_good, failed)
    return rec.plan(loaded.stack, loaded.revision, target, observed, state)


def running_config(rec: Reconciler, observed: Mapping[str, Sequence[ObservedContainer]]
                   ) -> dict[str, bool | None]:
    """Per running service: whether its containers' configuration is the one the
    compose files in project_dir give it (at the digest it runs), None when unknown.
    A False without from_repo: someone edited the compose files since (or the
    containers)."""
    pinned = {}
    for s, cs in observed.items():
        d = running_digest(cs)
        live = [c for c in cs if c.digest == d and d is not None]
        if live and "@" in live[0].image_ref:
            pinned[s] = f"{live[0].image_ref.split('@', 1)[0]}@{d}"
    hashes = rec.project_compose().config_hashes(
        pinned, rec.files.labels() if rec.files is not None else None)
    out: dict[str, bool | None] = {}
    for s, cs in observed.items():
        have = running_config_hash(cs)
        out[s] = None if have is None or s not in hashes else have == hashes[s]
    return out


def config_keys_changed(rec: Reconciler, loaded: Loaded,
                        services: Sequence[str]) -> dict[str, list[str]]:
    """Per service, the top-level compose keys (``environment``, ``ports``, ``labels``…)
    whose value differs between project_dir's compose files and the revision's, and
    the git files it reads whose content changes (first)."""
    if loaded.stack is not None and loaded.stack.reasons:
        return {s: loaded.stack.reasons.get(s) or ["?"] for s in services}
    now = rec.project_compose().services()
    out = {}
    for s in services:
        a, b = now.get(s) or {}, loaded.compose_services.get(s) or {}
        out[s] = sorted(k for k in {*a, *b} if a.get(k) != b.get(k)) or ["(added)"
                                                                         if not a else "?"]
    return out
