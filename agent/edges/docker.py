"""The Docker engine edge (docker SDK): observe a compose project's containers, stop, start
and re-network them. The image side (pull by digest with the platform check, the local image
store) and the engine's error mapping are :mod:`agent.edges.docker_images`; the engine
delegates to it, and the names are importable from here as before."""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import docker
import docker.errors
import structlog

from agent.desired import registry_of
from agent.edges.docker_images import (
    DockerImages,
    _permission_denied,
    _socket_denied,
    api_errors,
    classify_pull_error,
)
from agent.errors import DockerUnavailable
from agent.plan import ObservedContainer
from agent.ports import LocalImage

log = structlog.get_logger()

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
CONFIG_HASH_LABEL = "com.docker.compose.config-hash"
ONEOFF_LABEL = "com.docker.compose.oneoff"
NETWORK_LABEL = "com.docker.compose.network"


def split_ref(ref: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` -> (repo, digest)."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref = ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref, digest


_EXITED_RE = re.compile(r"^Exited \((-?\d+)\)")


def _from_summary(service: str, summary: dict[str, Any]) -> ObservedContainer:
    """An ObservedContainer from the container list alone (no inspect)."""
    image_ref = summary.get("Image") or ""
    status_text = summary.get("Status") or ""
    health = None
    if "(healthy)" in status_text:
        health = "healthy"
    elif "(unhealthy)" in status_text:
        health = "unhealthy"
    elif "(health: starting)" in status_text:
        health = "starting"
    exited = _EXITED_RE.match(status_text)
    return ObservedContainer(
        service=service,
        container_id=summary["Id"],
        name=((summary.get("Names") or ["?"])[0]).lstrip("/"),
        image_ref=image_ref,
        digest=split_ref(image_ref)[1],
        status=summary.get("State") or "unknown",
        health=health,
        exit_code=int(exited.group(1)) if exited else 0,
        config_hash=(summary.get("Labels") or {}).get(CONFIG_HASH_LABEL),
    )


class DockerEngine:
    """Thin wrapper over the docker SDK, the compose platform's engine
    (:class:`agent.ports.ContainerEngine`: images and the project's containers). One API
    client, safe to share between threads for the read-only calls the agent makes
    concurrently (pulls). Swarm's engine (:class:`agent.edges.swarm.SwarmEngine`) holds one
    for the client and the local image store, and offers none of its container operations."""

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        timeout: float = 120,
        pull_stall_timeout: float = 120,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._lock = threading.Lock()
        # the image side, through the same (lazily made) client
        self.images = DockerImages(lambda: self.client, self.answers, pull_stall_timeout)

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = docker.from_env(timeout=int(self._timeout))
                    except docker.errors.DockerException as e:
                        if _permission_denied(e):
                            raise _socket_denied("connect") from None
                        raise DockerUnavailable(f"Docker engine not reachable: {e}") from None
        return self._client

    def _api(self, what: str) -> AbstractContextManager[None]:
        return api_errors(what)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ observe
    def observe(
        self,
        project: str,
        services: Collection[str] | None = None,
        *,
        detail: bool = False,
    ) -> dict[str, list[ObservedContainer]]:
        """Containers of a compose project, by service, with the digest each was created
        from. Read-only, and cheap: one list call. The list gives each container's image
        reference (``repo@sha256:…`` as the agent creates them), state and health; only with
        ``detail`` (the health wait: restart count, exit code, health-check output), or for
        a container created from a tag, is a container of ``services`` (all when None)
        inspected as well. Containers of other services come from the list alone."""
        with self._api("observe"):
            raw = self.client.api.containers(
                all=True, filters={"label": f"{PROJECT_LABEL}={project}"}
            )
            out: dict[str, list[ObservedContainer]] = {}
            image_digests: dict[str, list[str]] = {}
            for summary in raw:
                labels = summary.get("Labels") or {}
                if labels.get(ONEOFF_LABEL) == "True":
                    continue
                service = labels.get(SERVICE_LABEL, "?")
                wanted = services is None or service in services
                pinned = "@sha256:" in (summary.get("Image") or "")
                if not wanted or (pinned and not detail):
                    c = _from_summary(service, summary)
                else:
                    try:
                        attrs = self.client.api.inspect_container(summary["Id"])
                    except docker.errors.NotFound:
                        continue  # removed between the list and the inspect
                    c = self._to_observed(attrs, image_digests)
                out.setdefault(c.service, []).append(c)
            return out

    def _to_observed(
        self, attrs: dict[str, Any], image_digests: dict[str, list[str]]
    ) -> ObservedContainer:
        labels = attrs["Config"].get("Labels") or {}
        image_ref = attrs["Config"].get("Image") or ""
        repo, digest = split_ref(image_ref)
        if digest is None:
            image_id = attrs.get("Image", "")
            if image_id not in image_digests:
                try:
                    api: Any = self.client.api  # docker's stubs leave inspect_image untyped
                    img = api.inspect_image(image_id)
                    image_digests[image_id] = list(img.get("RepoDigests") or [])
                except docker.errors.NotFound:
                    image_digests[image_id] = []
            matches = {
                split_ref(rd)[1] for rd in image_digests[image_id] if split_ref(rd)[0] == repo
            }
            if len(matches) == 1:
                digest = matches.pop()
        state = attrs.get("State") or {}
        health = state.get("Health") or {}
        logs = health.get("Log") or []
        output = (logs[-1].get("Output") or "").strip() if logs else ""
        return ObservedContainer(
            service=labels.get(SERVICE_LABEL, "?"),
            container_id=attrs["Id"],
            name=attrs.get("Name", "").lstrip("/"),
            image_ref=image_ref,
            digest=digest,
            status=state.get("Status", "unknown"),
            health=health.get("Status") or None,
            restart_count=int(attrs.get("RestartCount") or 0),
            exit_code=int(state.get("ExitCode") or 0),
            health_output=output[-300:],
            config_hash=labels.get(CONFIG_HASH_LABEL),
        )

    def stop_and_remove(self, container_id: str) -> None:
        """Stop gracefully — the container's own stop signal and grace period (compose's
        ``stop_signal`` / ``stop_grace_period``) — then remove it (anonymous volumes kept
        out of it: named volumes are never touched)."""
        with self._api("stop"):
            try:
                self.client.api.stop(container_id)
                self.client.api.remove_container(container_id)
            except docker.errors.NotFound:
                pass

    def start_container(self, container_id: str) -> None:
        """Start a container compose created without starting it (``up --no-start``)."""
        with self._api("start"):
            self.client.api.start(container_id)

    def set_alias(self, container_id: str, alias: str, *, present: bool) -> bool:
        """Make ``alias`` (a service's name) resolvable, or not, to this container on every
        network it is attached to with aliases (user-defined networks); its other aliases
        stay. The engine cannot edit an endpoint's aliases in place, so each network whose
        aliases must change is disconnected and connected again with the new list, asking
        for the same IPv4 address (granted on networks with a configured subnet; elsewhere
        the engine hands out the lowest free address, which is the one just released).
        Idempotent: returns whether anything changed."""
        with self._api("network reconnect"):
            try:
                attrs = self.client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                return False
            short_id = attrs["Id"][:12]
            networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
            changed = False
            for net, ep in sorted(networks.items()):
                aliases = [a for a in (ep.get("Aliases") or []) if a != short_id]
                if not aliases and not present:
                    continue  # no aliases here (the default bridge): nothing resolves by name
                if (alias in aliases) == present:
                    continue
                want = [*aliases, alias] if present else [a for a in aliases if a != alias]
                ip = ep.get("IPAddress") or None
                self.client.api.disconnect_container_from_network(container_id, net)
                try:
                    self.client.api.connect_container_to_network(
                        container_id, net, aliases=want, ipv4_address=ip)
                except docker.errors.APIError:
                    if ip is None:
                        raise
                    # "user specified IP address is supported only ... configured subnets"
                    self.client.api.connect_container_to_network(container_id, net,
                                                                 aliases=want)
                log.info("agent.apply.alias_set", container=attrs.get("Name", "").lstrip("/"),
                         network=net, alias=alias, present=present)
                changed = True
            return changed

    def ensure_connected(self, container_id: str, project: str,
                         networks: Mapping[str, Sequence[str]], alias: str | None) -> list[str]:
        """Connect the container to any of ``networks`` (compose's network keys -> the
        aliases the service declares there) it is not attached to — what a process killed
        between a network disconnect and its connect leaves — with its own name, the
        declared aliases and ``alias`` when given. Returns the keys connected."""
        with self._api("network connect"):
            try:
                attrs = self.client.api.inspect_container(container_id)
            except docker.errors.NotFound:
                return []
            attached = set((attrs.get("NetworkSettings") or {}).get("Networks") or {})
            by_key = {
                (n.get("Labels") or {}).get(NETWORK_LABEL): n["Name"]
                for n in self.client.api.networks(filters={"label": f"{PROJECT_LABEL}={project}"})
            }
            name = attrs.get("Name", "").lstrip("/")
            done = []
            for key, declared in sorted(networks.items()):
                net = by_key.get(key) or f"{project}_{key}"
                if net in attached:
                    continue
                aliases = [name, *declared, *([alias] if alias else [])]
                self.client.api.connect_container_to_network(container_id, net, aliases=aliases)
                log.warning("agent.apply.network_reconnected", container=name, network=net,
                            message="the container had lost this network (a pass killed "
                                    "mid-reconnect); connected again")
                done.append(key)
            return done

    # ------------------------------------------------------------------ images
    # (agent.edges.docker_images: pull by digest, the platform check, retention's images)
    def has_image(self, image: str, digest: str) -> bool:
        """The image is local *and* carries the manifest digest asked for."""
        return self.images.has_image(image, digest)

    def platform(self) -> tuple[str, str]:
        """The engine's ``(os, architecture)``, as Go names them (``linux``, ``amd64``)."""
        return self.images.platform()

    def pull(self, image: str, digest: str, auth: dict[str, str] | None = None) -> None:
        """Pull ``image@digest`` (:meth:`DockerImages.pull`)."""
        self.images.pull(image, digest, auth)

    def local_images(self, repository: str) -> list[LocalImage]:
        """Images referenced by ``repository`` (:meth:`DockerImages.local_images`)."""
        return self.images.local_images(repository)

    def remove_reference(self, reference: str) -> None:
        """``docker rmi REFERENCE``, never forced (:meth:`DockerImages.remove_reference`)."""
        self.images.remove_reference(reference)


    def answers(self) -> bool:
        """The engine answers a ping (after an error: was it the engine or the registry?)."""
        try:
            return bool(self.client.api.ping())
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False


__all__ = ["CONFIG_HASH_LABEL", "NETWORK_LABEL", "ONEOFF_LABEL", "PROJECT_LABEL", "SERVICE_LABEL",
           "DockerEngine", "DockerImages", "api_errors", "classify_pull_error", "registry_of",
           "split_ref"]
