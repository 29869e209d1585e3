"""Honest in-memory fakes of the pass's boundaries (agent.ports): they hold state —
commits, a registry, local images, containers with health — and can fail on demand.
They let the unit tests walk every path of the reconcile pass in milliseconds. The e2e
and fault suites prove the same paths against the real engine, registry, compose and git.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.errors import (
    ComposeError,
    ComposeFileError,
    DockerUnavailable,
    ImageNotFound,
    ImageRemovalRefused,
    RegistryAuthError,
    RegistryUnavailable,
    SourceUnavailable,
    StackFilesError,
)
from agent.plan import ObservedContainer
from agent.ports import Fetched, LocalImage
from agent.swarm import SwarmService, SwarmTask


class Killed(BaseException):
    """The process died here (SIGKILL): nothing after this point runs, nothing is recorded.
    A BaseException, so the pass's own error handling does not see it — as with a kill."""


def digest_of(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def image_id_of(ref: str) -> str:
    """The fake engine's image id of a local ``repo@digest``."""
    return digest_of("image:" + ref)


def desired_yaml(services: Mapping[str, tuple[str, str]], extra: Mapping[str, Any] | None = None
                 ) -> bytes:
    doc: dict[str, Any] = {"version": 1, "services": {}}
    for name, (image, digest) in services.items():
        doc["services"][name] = {"image": image, "digest": digest, **(extra or {}).get(name, {})}
    return json.dumps(doc).encode()  # JSON is YAML


@dataclass
class FakeSource:
    """A branch: a list of commits (revision, desired-state bytes); ``fetch`` reads the head."""

    commits: list[tuple[str, bytes]] = field(default_factory=list)
    down: int = 0  # the next N fetches fail (SourceUnavailable)
    fetches: int = 0
    # compose.from_repo: the repository's other files at each revision (path -> content)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    file_reads: int = 0

    def read_files(self, revision: str, paths: Sequence[str]) -> dict[str, bytes]:
        self.file_reads += 1
        tree = self.files.get(revision, {})
        out = {p: b for p, b in tree.items()
               if any(p == q or p.startswith(q.rstrip("/") + "/") for q in paths)}
        for q in paths:
            if not any(p == q or p.startswith(q.rstrip("/") + "/") for p in out):
                raise StackFilesError(f"compose.from_repo@{revision[:12]}",
                                      [f"{q!r} is not in the repository"])
        return out

    def commit(self, content: bytes) -> str:
        rev = hashlib.sha1(content + str(len(self.commits)).encode()).hexdigest()  # noqa: S324
        self.commits.append((rev, content))
        return rev

    def fetch(self) -> Fetched:
        self.fetches += 1
        if self.down > 0:
            self.down -= 1
            raise SourceUnavailable("git fetch failed: connection refused (fake)")
        rev, content = self.commits[-1]
        return Fetched(rev, content, "desired-state.yml")

    def describe(self) -> str:
        return "fake://repo@main"

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """A linear history: earlier commits are ancestors of later ones."""
        order = [rev for rev, _ in self.commits]
        if ancestor not in order or descendant not in order:
            return False
        return order.index(ancestor) <= order.index(descendant)


# how a container of an image behaves once started
HEALTHY, UNHEALTHY, CRASH, NOHEALTH = "healthy", "unhealthy", "crash", "nohealth"


@dataclass
class Container:
    id: str
    service: str
    image: str  # repo@digest
    status: str = "running"
    health: str | None = None
    exit_code: int = 0
    # network -> the names resolving to this container there (Docker's DNS aliases)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    config_hash: str | None = None

    @property
    def digest(self) -> str | None:
        return self.image.split("@", 1)[1] if "@" in self.image else None


@dataclass
class FakeBaseEngine:
    """What every platform's engine offers (``agent.ports.Engine``) with a registry behind
    it: ``registry`` maps image@digest to how a container of it behaves; ``local`` holds
    what has been pulled; ``containers`` what ``observe`` reports (a Swarm fake: the running
    tasks). No container operation: nothing can stop, start or re-alias one through it."""

    registry: dict[str, str] = field(default_factory=dict)
    local: set[str] = field(default_factory=set)
    containers: dict[str, Container] = field(default_factory=dict)
    down: bool = False  # the engine does not answer
    registry_down: int = 0  # the next N pulls fail as transient
    denied: set[str] = field(default_factory=set)  # registries refusing our credentials
    pulls: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    lose_engine_on_detail: bool = False  # the engine goes away during the health wait
    kill_on: str | None = None  # raise Killed when this call is made
    images_removed: list[str] = field(default_factory=list)  # repo@digest, by retention

    def publish(self, image: str, digest: str, behaviour: str = HEALTHY) -> None:
        self.registry[f"{image}@{digest}"] = behaviour

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.kill_on == call:
            raise Killed(call)
        if self.down:
            raise DockerUnavailable(f"Docker engine not reachable during {call} (fake)")

    # ---- agent.ports.Engine
    def observe(self, project: str, services: Collection[str] | None = None, *,
                detail: bool = False) -> dict[str, list[ObservedContainer]]:
        self._check("observe-detail" if detail else "observe")
        if detail and self.lose_engine_on_detail:
            self.lose_engine_on_detail = False
            self.down = True
            raise DockerUnavailable("Docker engine not reachable during observe (fake)")
        out: dict[str, list[ObservedContainer]] = {}
        for c in self.containers.values():
            out.setdefault(c.service, []).append(ObservedContainer(
                service=c.service, container_id=c.id, name=f"{project}-{c.service}-{c.id}",
                image_ref=c.image, digest=c.digest, status=c.status, health=c.health,
                exit_code=c.exit_code, config_hash=c.config_hash))
        return out

    def has_image(self, image: str, digest: str) -> bool:
        self._check("has_image")
        return f"{image}@{digest}" in self.local

    def pull(self, image: str, digest: str, auth: dict[str, str] | None = None) -> None:
        self._check("pull")
        ref = f"{image}@{digest}"
        registry = image.split("/", 1)[0]
        self.pulls.append(ref)
        if registry in self.denied:
            raise RegistryAuthError(registry, ref, "401 unauthorized (fake)")
        if self.registry_down > 0:
            self.registry_down -= 1
            raise RegistryUnavailable(registry, ref, "connection refused (fake)")
        if ref not in self.registry:
            raise ImageNotFound(f"registry {registry} has no manifest {ref}: manifest unknown")
        self.local.add(ref)

    def resolve(self, name: str) -> set[str]:
        """What Docker's DNS answers for ``name`` on the project's network: the running
        containers carrying it as an alias."""
        return {c.id for c in self.containers.values()
                if c.status == "running" and any(name in a for a in c.aliases.values())}

    def local_images(self, repository: str) -> list[LocalImage]:
        self._check("local_images")
        out = []
        for ref in sorted(self.local):
            repo, digest = ref.split("@", 1)
            if repo == repository:
                out.append(LocalImage(
                    id=image_id_of(ref), digests=(digest,), references=(ref,),
                    in_use=any(c.image == ref for c in self.containers.values())))
        return out

    def remove_reference(self, reference: str) -> None:
        self._check("remove_reference")
        if reference not in self.local:
            return
        if any(c.image == reference for c in self.containers.values()):
            raise ImageRemovalRefused(f"{reference} is used by a container (fake)")
        self.local.discard(reference)
        self.images_removed.append(reference)

    def answers(self) -> bool:
        return not self.down

    def close(self) -> None:
        pass


@dataclass
class FakeEngine(FakeBaseEngine):
    """The compose platform's Docker engine (``agent.ports.ContainerEngine``): the base
    fake plus the operations on single containers, and what FakeCompose creates."""

    removed: list[str] = field(default_factory=list)  # containers stop_and_remove took
    _seq: int = 0

    # ---- agent.ports.ContainerEngine
    def stop_and_remove(self, container_id: str) -> None:
        self._check("stop_and_remove")
        self.containers.pop(container_id, None)
        self.removed.append(container_id)

    def start_container(self, container_id: str) -> None:
        self._check("start_container")
        c = self.containers[container_id]
        if c.status != "created":
            return
        c.status = "running"
        behaviour = self.registry.get(c.image, NOHEALTH)
        if behaviour == HEALTHY:
            c.health = "healthy"
        elif behaviour == UNHEALTHY:
            c.health = "unhealthy"
        elif behaviour == CRASH:
            c.status, c.exit_code = "exited", 1

    def set_alias(self, container_id: str, alias: str, *, present: bool) -> bool:
        self._check("set_alias")
        c = self.containers.get(container_id)
        if c is None:
            return False
        changed = False
        for net, names in c.aliases.items():
            if (alias in names) != present:
                c.aliases[net] = [*names, alias] if present else [n for n in names if n != alias]
                changed = True
        return changed

    def ensure_connected(self, container_id: str, project: str,
                         networks: Mapping[str, Sequence[str]], alias: str | None) -> list[str]:
        self._check("ensure_connected")
        c = self.containers.get(container_id)
        if c is None:
            return []
        done = []
        for key, declared in sorted(networks.items()):
            if key not in c.aliases:
                c.aliases[key] = [f"{project}-{c.service}-{c.id}", *declared,
                                  *([alias] if alias else [])]
                done.append(key)
        return done

    # ---- for FakeCompose
    def create(self, service: str, image: str,
               networks: Mapping[str, Sequence[str]] | None = None,
               config_hash: str | None = None) -> Container:
        """As compose creates a container: on each of its networks (compose key -> declared
        aliases; the project's default network when none), resolvable by its own name, its
        service's name and the declared aliases."""
        self._seq += 1
        name = f"shop-{service}-{self._seq}"
        c = Container(id=f"c{self._seq}", service=service, image=image, status="created",
                      aliases={k: [name, service, *v]
                               for k, v in (networks or {"default": []}).items()},
                      config_hash=config_hash)
        self.containers[c.id] = c
        return c

    def start(self, service: str, image: str,
              networks: Mapping[str, Sequence[str]] | None = None,
              config_hash: str | None = None) -> Container:
        c = self.create(service, image, networks, config_hash)
        self.start_container(c.id)
        return c

    def of(self, service: str) -> list[Container]:
        return [c for c in self.containers.values() if c.service == service]


@dataclass
class FakeCompose:
    """``docker compose`` over the fake engine: the model is a services mapping; images come
    from the pins the agent set (as the real compose merges its override file)."""

    engine: FakeEngine
    model: dict[str, Any] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)
    inactive: dict[str, list[str]] = field(default_factory=dict)  # profile-gated services
    fail_up: int = 0  # the next N `up` calls fail (the release's fault)
    ups: list[tuple[list[str], dict[str, int], bool]] = field(default_factory=list)
    kill_on_up: int | None = None  # raise Killed on the Nth `up` call (1-based)
    # compose.from_repo: the model is read from this file (JSON) on every call, as the
    # real compose reads project_dir's files; containers carry its configuration hash
    model_file: Any = None

    def services(self) -> dict[str, Any]:
        if self.model_file is not None:
            self.model = FilesCompose([self.model_file]).services()
        return self.model

    def inactive_services(self) -> dict[str, list[str]]:
        return self.inactive

    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def pin(self, images: Mapping[str, str],
            labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.pins = dict(images)
        self.labels = {s: dict(v) for s, v in (labels or {}).items()}

    def _image(self, service: str) -> str:
        ref = self.pins.get(service) or self.model[service].get("image")
        return str(ref or f"unpinned/{service}")

    def up(self, services: Sequence[str], *, pull: str = "never",
           scale: Mapping[str, int] | None = None, no_recreate: bool = False,
           start: bool = True) -> None:
        if not services:
            return
        self.ups.append((list(services), dict(scale or {}), no_recreate))
        self.services()
        if self.kill_on_up == len(self.ups):
            raise Killed(f"compose up #{len(self.ups)}")
        self.engine._check("compose-up")
        if self.fail_up > 0:
            self.fail_up -= 1
            raise ComposeError(["docker", "compose", "up", *services], 1,
                               "Error response from daemon: invalid mount config (fake)")
        for s in services:
            image = self._image(s)
            if pull == "never" and image not in self.engine.local:
                raise ComposeError(["docker", "compose", "up", s], 18,
                                   f"pull access denied for {image}: image not local")
            want = (scale or {}).get(s, int(self.model.get(s, {}).get("scale", 1)))
            mine = self.engine.of(s)
            h = (config_hash(self.model[s], self.pins.get(s), self.labels.get(s))
                 if self.model_file is not None else None)
            if not no_recreate and h is not None:
                for c in mine:  # as compose: only a container of another config is recreated
                    if c.config_hash != h or c.image != image:
                        self.engine.containers.pop(c.id)
                mine = self.engine.of(s)
            elif not no_recreate:
                for c in mine:
                    self.engine.containers.pop(c.id)
                mine = []
            nets = {k: list((v or {}).get("aliases") or [])
                    for k, v in (self.model.get(s, {}).get("networks") or {}).items()}
            for _ in range(max(0, want - len(mine))):
                if start:
                    self.engine.start(s, image, nets or None, h)
                else:
                    self.engine.create(s, image, nets or None, h)

    def remove(self, services: Sequence[str]) -> None:
        self.engine._check("compose-rm")
        for s in services:
            for c in self.engine.of(s):
                self.engine.containers.pop(c.id)


def config_hash(service: Mapping[str, Any], pin: str | None,
                labels: Mapping[str, str] | None = None) -> str:
    """The fake's configuration hash: the service's model with its pinned image (and the
    agent's labels merged, as the real override does)."""
    doc = {**service, "image": pin or service.get("image")}
    if labels:
        doc["labels"] = {**(service.get("labels") or {}), **labels}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class FilesCompose:
    """compose on a set of files (JSON models merged in order), as the pass's staged and
    project_dir copies read them: a missing or unparsable file is ComposeFileError."""

    files: Sequence[Any]
    config_calls: int = 0

    def config(self, with_override: bool = False,
               profiles: Sequence[str] | None = None) -> dict[str, Any]:
        self.config_calls += 1
        services: dict[str, Any] = {}
        for f in self.files:
            try:
                doc = json.loads(f.read_bytes())
                services.update(doc["services"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ComposeFileError(str(f), [f"does not parse: {e!r}"]) from None
        return {"services": services}

    def services(self) -> dict[str, Any]:
        out: dict[str, Any] = self.config()["services"]
        return out

    def model(self) -> dict[str, Any]:
        return self.config()

    def inactive_services(self) -> dict[str, list[str]]:
        return {}

    def config_hashes(self, images: Mapping[str, str],
                      labels: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
        return {s: config_hash(svc, images.get(s), (labels or {}).get(s))
                for s, svc in self.services().items()}


def shop_reconciler(tmp: Any, engine: FakeEngine, source: FakeSource, *,
                    project_dir: str = "project", **agent: Any) -> Any:
    """The ``shop`` project on the honest fakes: a Reconciler over ``engine`` and
    ``source`` with state in ``tmp/state``, no settle or handover wait, no real sleeping;
    ``agent`` overrides ``[agent]`` keys (e.g. ``health_timeout_seconds``)."""
    from agent.config import parse_config
    from agent.reconcile import Reconciler

    cfg = parse_config({
        "source": {"repo": "https://git.test/shop.git"},
        "compose": {"project_dir": str(tmp / project_dir), "project_name": "shop"},
        "agent": {"state_dir": str(tmp / "state"), "settle_seconds": 0.0,
                  "handover_seconds": 0.0, **agent},
    })
    return Reconciler(cfg, source=source, engine=engine,
                      compose=FakeCompose(engine, model={"web": {}}), sleep=lambda _s: None)


# --------------------------------------------------------------------------- swarm
@dataclass
class FakeSwarm(FakeBaseEngine):
    """A one-node swarm on the base fake (no container operation): each service's spec,
    its UpdateStatus, and the running tasks as what ``observe`` reports. Tasks change only by
    a stack deploy; with ``own_rollback`` (``failure_action: rollback``) a deploy of an
    unhealthy digest ends in ``rollback_completed`` with the spec back on the old digest, as
    Swarm does (else the update pauses)."""

    specs: dict[str, str] = field(default_factory=dict)  # service -> digest
    update: dict[str, str | None] = field(default_factory=dict)
    deploys: list[dict[str, str]] = field(default_factory=list)
    own_rollback: bool = True  # failure_action: rollback (else pause)
    _tasks: int = 0

    def swarm_services(self, stack: str, names: Sequence[str]) -> dict[str, SwarmService]:
        self._check("swarm-services")
        out = {}
        for n in names:
            if n in self.specs:
                tasks = tuple(SwarmTask(c.digest, "running", "running")
                              for c in self.containers.values()
                              if c.service == n and c.status == "running")
                out[n] = SwarmService(n, self.specs[n], self.update.get(n),
                                      datetime.now(UTC), "", 1, tasks)
        return out

    def deploy(self, pins: dict[str, str]) -> None:
        self.deploys.append(dict(pins))
        for svc, ref in pins.items():
            digest = ref.split("@", 1)[1]
            old = self.specs.get(svc)
            if old == digest:
                continue
            behaviour = self.registry.get(ref)
            if behaviour == UNHEALTHY and old is not None and self.own_rollback:
                self.update[svc] = "rollback_completed"  # the spec stays on the old digest
                continue
            for cid in [c.id for c in self.containers.values() if c.service == svc]:
                del self.containers[cid]
            self._tasks += 1
            self.containers[f"t{self._tasks}"] = Container(
                id=f"t{self._tasks}", service=svc, image=ref,
                health="healthy" if behaviour == HEALTHY else "unhealthy")
            self.specs[svc] = digest
            self.update[svc] = "completed" if behaviour == HEALTHY else "paused"


@dataclass
class FakeStackDeploy:
    """``docker stack deploy`` of the pinned stack (the ComposeProject SwarmStack is)."""

    engine: FakeSwarm
    model: dict[str, Any] = field(default_factory=lambda: {"web": {}})
    pins: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def services(self) -> dict[str, Any]:
        return self.model

    def inactive_services(self) -> dict[str, list[str]]:
        return {}

    def pin(self, images: Any, labels: Any = None) -> None:
        self.pins = dict(images)

    def up(self, services: Sequence[str], **_: Any) -> None:
        self.engine.deploy({s: self.pins[s] for s in self.model if s in self.pins})

    def remove(self, services: Sequence[str]) -> None:
        self.removed += services
        for s in services:
            self.engine.specs.pop(s, None)
