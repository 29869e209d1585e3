"""The Docker engine edge (docker SDK): observe containers, pull by digest, inspect health."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import docker
import docker.auth
import docker.errors
import requests.exceptions
import structlog
import urllib3.exceptions

from agent.desired import registry_of
from agent.errors import (
    DockerUnavailable,
    ImageNotFound,
    ImageRemovalRefused,
    LocalPermissionDenied,
    PlatformMismatch,
    RegistryAuthError,
    RegistryUnavailable,
)
from agent.log import redact_text
from agent.plan import ObservedContainer, repository_of
from agent.ports import LocalImage

log = structlog.get_logger()

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
CONFIG_HASH_LABEL = "com.docker.compose.config-hash"
ONEOFF_LABEL = "com.docker.compose.oneoff"
NETWORK_LABEL = "com.docker.compose.network"

_AUTH_MARKERS = (
    "unauthorized",
    "authentication required",
    "no basic auth credentials",
    "denied",
    "forbidden",
)
# status codes as whole words only: a digest's hex or a port number may contain "401"
_AUTH_CODES = re.compile(r"\b40[13]\b")
_NOT_FOUND_MARKERS = ("manifest unknown", "not found", "manifest for", "does not exist")


def split_ref(ref: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` -> (repo, digest)."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref = ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref, digest


# "no matching manifest for linux/amd64 in the manifest list entries" (a manifest list /
# OCI index without the engine's platform)
_NO_PLATFORM_RE = re.compile(r"no matching manifest for (\S+) in the manifest list", re.I)
# Go's PathError/OpError on the host: "open /var/lib/docker/tmp/x: permission denied",
# "dial unix /var/run/docker.sock: connect: permission denied". A registry's refusal reads
# "denied: requested access to the resource is denied" and names no local path.
_LOCAL_PERMISSION_RE = re.compile(
    r"(?:^|[\s\"'])/[^\s\"']*:(?: [a-z]+:)? permission denied", re.I)


def classify_pull_error(
    registry: str, reference: str, message: str, available: str | None = None
) -> Exception:
    """The typed error for an engine's pull error message. ``available`` names the platforms
    a manifest list offers, when known (for the message)."""
    msg = redact_text(" ".join(message.split()))
    low = msg.lower()
    if _LOCAL_PERMISSION_RE.search(msg) or "operation not permitted" in low:
        return LocalPermissionDenied(
            f"the Docker engine could not pull {reference}: {msg} (a permission problem on "
            "this host, not the registry's credentials: check the Docker socket's group and "
            "the engine's data-root)"
        )
    platform = _NO_PLATFORM_RE.search(msg)
    if platform:
        return PlatformMismatch(
            reference, platform.group(1),
            available or "only other platforms (its manifest list has no entry for it)",
        )
    if (any(m in low for m in _AUTH_MARKERS) or _AUTH_CODES.search(low)) \
            and "connection refused" not in low:
        return RegistryAuthError(registry, reference, msg)
    if "manifest unknown" in low or ("not found" in low and "dial tcp" not in low
                                     and "no such host" not in low):
        return ImageNotFound(f"registry {registry} has no manifest {reference}: {msg}")
    return RegistryUnavailable(registry, reference, msg)


def _image_platform(img: dict[str, Any]) -> str:
    return "/".join(x for x in (img.get("Os"), img.get("Architecture"), img.get("Variant")) if x)


def _permission_denied(e: BaseException) -> bool:
    """A PermissionError anywhere in a requests/urllib3 exception (the Docker socket)."""
    seen: set[int] = set()
    todo: list[object] = [e]
    while todo:
        x = todo.pop()
        if not isinstance(x, BaseException) or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, PermissionError):
            return True
        todo += [*x.args, x.__cause__, x.__context__, getattr(x, "reason", None)]
    return False


def _socket_denied(what: str) -> LocalPermissionDenied:
    return LocalPermissionDenied(
        f"permission denied on the Docker socket during {what}: the agent's user (uid "
        f"{os.geteuid()}) may not use the Docker engine; run the agent as root or add its "
        "user to the socket's group"
    )


@contextmanager
def api_errors(what: str) -> Iterator[None]:
    """An engine API call that could not reach the engine: DockerUnavailable, or
    LocalPermissionDenied for the socket's permissions."""
    try:
        yield
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        if _permission_denied(e):
            raise _socket_denied(what) from None
        raise DockerUnavailable(f"Docker engine not reachable during {what}: {e}") from None


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
        # A pull that shows no progress for this long is given up (docker-py's own pull
        # waits forever, and the engine has no timeout on a registry that accepts a
        # request and never answers it).
        self._pull_stall_timeout = pull_stall_timeout
        self._lock = threading.Lock()
        self._platform: tuple[str, str] | None = None

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
                    img = self.client.api.inspect_image(image_id)
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
    def has_image(self, image: str, digest: str) -> bool:
        """The image is local *and* carries the manifest digest asked for."""
        ref = f"{image}@{digest}"
        with self._api("image inspect"):
            try:
                img = self.client.api.inspect_image(ref)
            except docker.errors.ImageNotFound:
                return False
            except docker.errors.NotFound:
                return False
        if ref not in (img.get("RepoDigests") or []):
            return False
        # an image for another platform (pulled by hand, say) is as good as absent: the
        # pull then says why it cannot be used
        return not self._foreign(img)

    def platform(self) -> tuple[str, str]:
        """The engine's ``(os, architecture)``, as Go names them (``linux``, ``amd64``)."""
        if self._platform is None:
            with self._api("version"):
                v = self.client.api.version()
            self._platform = (str(v.get("Os") or "linux"), str(v.get("Arch") or "amd64"))
        return self._platform

    def _foreign(self, img: dict[str, Any]) -> bool:
        os_, arch = self.platform()
        return (img.get("Os") or os_) != os_ or (img.get("Architecture") or arch) != arch

    def _check_platform(self, image: str, digest: str) -> None:
        ref = f"{image}@{digest}"
        with self._api("image inspect"):
            try:
                img = self.client.api.inspect_image(ref)
            except docker.errors.NotFound:
                return  # the caller says the image is not local
        if self._foreign(img):
            raise PlatformMismatch(ref, "/".join(self.platform()), _image_platform(img))

    def _available_platforms(self, image: str, digest: str,
                             auth: dict[str, str] | None) -> str | None:
        """The platforms a manifest list offers, asked of the engine (best effort)."""
        try:
            dist = self.client.api.inspect_distribution(f"{image}@{digest}", auth_config=auth)
        except Exception:  # noqa: BLE001 - only for the message
            return None
        names = sorted({
            "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
            for p in dist.get("Platforms") or []
        })
        return ", ".join(n for n in names if n) or None

    def pull(self, image: str, digest: str, auth: dict[str, str] | None = None) -> None:
        """Pull ``image@digest``. The engine verifies the content against the digest.

        Raises RegistryUnavailable (transient), RegistryAuthError, ImageNotFound,
        PlatformMismatch (nothing for the engine's OS/architecture) or LocalPermissionDenied.
        """
        registry = registry_of(image)
        ref = f"{image}@{digest}"
        try:
            for chunk in self._pull_stream(image, digest, auth):
                if "error" in chunk:
                    detail = str(chunk.get("errorDetail", {}).get("message") or chunk["error"])
                    raise self._classify(registry, image, digest, auth, detail)
        except docker.errors.APIError as e:
            raise self._classify(registry, image, digest, auth,
                                 str(e.explanation or e)) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as e:
            if _permission_denied(e):
                raise _socket_denied(f"pull of {ref}") from None
            # The stream stalled or broke: a registry that stopped answering, or the engine
            # itself going away. Ask the engine which.
            if not self.answers():
                raise DockerUnavailable(
                    f"Docker engine not reachable during pull of {ref}: {e}") from None
            stalled = isinstance(e, requests.exceptions.Timeout | urllib3.exceptions.TimeoutError)
            if not stalled and isinstance(e, requests.exceptions.ConnectionError):
                stalled = isinstance(e.args[0] if e.args else None,
                                     urllib3.exceptions.ReadTimeoutError)
            why = (f"no progress for {self._pull_stall_timeout:g}s "
                   "(the registry accepts connections but does not answer)"
                   if stalled else f"connection dropped: {e}")
            raise RegistryUnavailable(registry, ref, why) from None
        # the engine pulls a single-platform manifest for another OS/architecture without a
        # word (only a manifest list is matched against the engine's platform)
        self._check_platform(image, digest)
        if not self.has_image(image, digest):
            raise RegistryUnavailable(registry, ref, "pull finished but the image is not local")

    def _classify(self, registry: str, image: str, digest: str,
                  auth: dict[str, str] | None, message: str) -> Exception:
        ref = f"{image}@{digest}"
        err = classify_pull_error(registry, ref, message)
        if isinstance(err, PlatformMismatch):
            available = self._available_platforms(image, digest, auth)
            if available:
                err = classify_pull_error(registry, ref, message, available)
        return err

    def _pull_stream(
        self, image: str, digest: str, auth: dict[str, str] | None
    ) -> Iterator[dict[str, Any]]:
        """``APIClient.pull`` with a read timeout: docker-py passes ``timeout=None`` for
        pulls, so a stalled registry would block the pass forever."""
        api: Any = self.client.api  # the private helpers of docker-py's APIClient
        headers: dict[str, Any] = {}
        if auth is None:
            header = docker.auth.get_config_header(api, docker.auth.resolve_repository_name(
                image)[0])
            if header:
                headers["X-Registry-Auth"] = header
        else:
            headers["X-Registry-Auth"] = docker.auth.encode_header(auth)
        response = api._post(
            api._url("/images/create"), params={"fromImage": image, "tag": digest},
            headers=headers, stream=True, timeout=self._pull_stall_timeout,
        )
        api._raise_for_status(response)
        stream: Iterator[dict[str, Any]] = api._stream_helper(response, decode=True)
        return stream

    # ------------------------------------------------------------------ retention
    def local_images(self, repository: str) -> list[LocalImage]:
        """Images referenced by ``repository`` (by tag or by digest), each with its digests
        and references there, and whether a container (in any state) was created from it.
        References of other repositories to the same image are not listed."""
        with self._api("image list"):
            images = self.client.api.images()
            # image id -> the repositories its containers were created from (by name)
            users: dict[str, set[str]] = {}
            for c in self.client.api.containers(all=True):
                name = str(c.get("Image") or "")
                users.setdefault(str(c.get("ImageID")), set()).add(
                    "" if name.startswith("sha256:") else repository_of(name))
        out = []
        for img in images:
            every = [r for r in (img.get("RepoTags") or []) + (img.get("RepoDigests") or [])
                     if r and not r.startswith("<none>")]
            refs = tuple(sorted(r for r in every if repository_of(r) == repository))
            if not refs:
                continue
            digests = tuple(r.split("@", 1)[1] for r in refs if "@" in r)
            mine = users.get(str(img["Id"]), set())
            # a container created through another repository's reference (the same content
            # pushed elsewhere) keeps that reference: removing this repository's is safe
            elsewhere = any(repository_of(r) != repository for r in every)
            in_use = bool(mine) and (repository in mine or "" in mine or not elsewhere)
            out.append(LocalImage(id=str(img["Id"]), digests=digests, references=refs,
                                  in_use=in_use))
        return out

    def remove_reference(self, reference: str) -> None:
        """``docker rmi REFERENCE``, never forced: untags it, and deletes the image when it
        was its last reference; the engine refuses an image a container uses."""
        with self._api("image remove"):
            try:
                self.client.api.remove_image(reference, force=False, noprune=False)
            except docker.errors.ImageNotFound:
                return
            except docker.errors.APIError as e:
                raise ImageRemovalRefused(
                    f"the engine refused to remove {reference}: {e.explanation or e}"
                ) from None

    def answers(self) -> bool:
        """The engine answers a ping (after an error: was it the engine or the registry?)."""
        try:
            return bool(self.client.api.ping())
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False
