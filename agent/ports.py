"""The boundaries the reconcile pass talks to, as protocols.

Pure: the real implementations live in ``agent/edges`` (git/GitHub source, docker SDK,
compose CLI); the unit tests of the pass use honest in-memory fakes of the same shape
(``tests/fakes.py``). Reporting (commit statuses, metrics, notifications) plugs in as a
:class:`PassObserver`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from agent.desired import Wave
from agent.plan import ObservedContainer

if TYPE_CHECKING:
    from agent.outcomes import PassResult


@dataclass(frozen=True)
class Fetched:
    revision: str  # commit SHA the content was read at
    content: bytes  # desired-state.yml at exactly that revision
    path: str  # path inside the repository, for messages
    went_backwards: bool = False  # the branch head moved to an ancestor (force-push)
    trust_error: str | None = None  # set when the trust policy refuses this revision


class Source(Protocol):
    def fetch(self) -> Fetched: ...

    def describe(self) -> str: ...

    def is_ancestor(self, ancestor: str, descendant: str) -> bool: ...


@dataclass(frozen=True)
class LocalImage:
    """An image in the engine's store, as one repository references it."""

    id: str
    digests: tuple[str, ...]  # the manifest digests it is known by in that repository
    references: tuple[str, ...]  # that repository's references to it (repo@digest, repo:tag)
    in_use: bool  # a container (running or not) was created from it


class Engine(Protocol):
    """What every platform's engine offers (compose's Docker engine and a Swarm manager):
    what runs of a project, images by digest (``has_image``/``pull``: a Swarm manager asks
    the registry, its nodes pull), the local image store retention prunes, and whether the
    engine answers. Container operations are :class:`ContainerEngine`'s."""

    def observe(
        self, project: str, services: Collection[str] | None = None, *, detail: bool = False
    ) -> dict[str, list[ObservedContainer]]: ...

    def has_image(self, image: str, digest: str) -> bool: ...

    def pull(self, image: str, digest: str, auth: dict[str, str] | None = None) -> None: ...

    def local_images(self, repository: str) -> list[LocalImage]:
        """Images in the store referenced by ``repository`` (tag or digest)."""
        ...

    def remove_reference(self, reference: str) -> None:
        """Remove one reference (``repo@digest`` or ``repo:tag``), never forced; the engine
        deletes the image with its last reference, and refuses one a container uses."""
        ...

    def answers(self) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class ContainerEngine(Engine, Protocol):
    """The compose platform's engine: :class:`Engine` and the operations on single
    containers that only compose's strategies (start-first's rotation by name) and
    ``compose.from_repo``'s removal of dropped services use. A Swarm engine has none of
    them (Swarm replaces its tasks itself)."""

    def stop_and_remove(self, container_id: str) -> None: ...

    def start_container(self, container_id: str) -> None: ...

    def ensure_connected(self, container_id: str, project: str,
                         networks: Mapping[str, Sequence[str]], alias: str | None) -> list[str]:
        """Connect the container to the compose networks (key -> declared aliases) it lacks."""
        ...

    def set_alias(self, container_id: str, alias: str, *, present: bool) -> bool:
        """Make ``alias`` resolve, or not, to the container on its networks (other aliases
        kept). Idempotent; returns whether anything changed."""
        ...


class ComposeProject(Protocol):
    """``docker compose`` on the project: its model, and up/rm of named services."""

    def services(self) -> dict[str, Any]: ...

    def pin(self, images: Mapping[str, str],
            labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Pin services to ``image@digest`` (and add the agent's labels) for every later
        compose call (the override)."""

    def inactive_services(self) -> dict[str, list[str]]:
        """Services that exist only under profiles that are not active -> their profiles."""
        ...

    def up(
        self,
        services: Sequence[str],
        *,
        pull: str = "never",
        scale: Mapping[str, int] | None = None,
        no_recreate: bool = False,
        start: bool = True,
    ) -> None: ...

    def remove(self, services: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class GateQuestion:
    """What a gate is asked before a pass acts: may this host apply ``revision`` now?"""

    revision: str
    services: tuple[str, ...]  # the services the pass would touch (empty: nothing to do)
    converging: bool  # the revision failed before: the pass returns to known-good digests
    force: bool  # sync --force
    # the revision's ``rollout:`` waves (desired-state.yml), None when it has none
    rollout: tuple[Wave, ...] | None = None


@dataclass(frozen=True)
class GateAnswer:
    outcome: Literal["frozen", "waiting", "held"]
    reason: str


class Gate(Protocol):
    """A policy consulted after the diff and before anything is pulled or touched (freeze,
    deploy windows, rollout waves). ``None`` lets the pass go on; an answer ends it with that
    outcome (exit 0, nothing applied). A gate may raise TransientError (e.g. it could not
    read what it depends on): the pass ends ``error`` and touches nothing."""

    def check(self, question: GateQuestion) -> GateAnswer | None: ...


class PassObserver(Protocol):
    """Told about a pass as it happens. Must not raise and must not block for long: a
    report that cannot be delivered is the observer's problem, never the release's."""

    def release_started(self, revision: str, services: Sequence[str]) -> None: ...

    def pass_finished(self, result: PassResult) -> None: ...
