"""The Docker engine's image store (docker SDK): pull by digest with the platform check,
what is local, retention's list and removal; and how the engine's and a registry's errors map
to the agent's typed errors (shared with the containers' side, :mod:`agent.edges.docker`)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.auth
import docker.errors
import requests.exceptions
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
from agent.plan import repository_of
from agent.ports import LocalImage

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



class DockerImages:
    """The engine's images, for :class:`agent.edges.docker.DockerEngine` (which delegates
    its image operations here). ``client`` gives the engine's (lazily made) API client,
    ``answers`` whether the engine answers a ping (after a broken pull stream: was it the
    engine or the registry?). Safe to share between threads (concurrent pulls)."""

    def __init__(
        self,
        client: Callable[[], docker.DockerClient],
        answers: Callable[[], bool],
        pull_stall_timeout: float = 120,
    ) -> None:
        self._client = client
        self._answers = answers
        # A pull that shows no progress for this long is given up (docker-py's own pull
        # waits forever, and the engine has no timeout on a registry that accepts a
        # request and never answers it).
        self._pull_stall_timeout = pull_stall_timeout
        self._platform: tuple[str, str] | None = None

    def _untyped(self) -> Any:
        """The API client, for the calls docker's stubs leave untyped (the image and
        distribution inspects; mypy's ``disallow_untyped_calls`` stays on here)."""
        return self._client().api

    def has_image(self, image: str, digest: str) -> bool:
        """The image is local *and* carries the manifest digest asked for."""
        ref = f"{image}@{digest}"
        with api_errors("image inspect"):
            try:
                img = self._untyped().inspect_image(ref)
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
            with api_errors("version"):
                v = self._client().api.version()
            self._platform = (str(v.get("Os") or "linux"), str(v.get("Arch") or "amd64"))
        return self._platform

    def _foreign(self, img: dict[str, Any]) -> bool:
        os_, arch = self.platform()
        return (img.get("Os") or os_) != os_ or (img.get("Architecture") or arch) != arch

    def _check_platform(self, image: str, digest: str) -> None:
        ref = f"{image}@{digest}"
        with api_errors("image inspect"):
            try:
                img = self._untyped().inspect_image(ref)
            except docker.errors.NotFound:
                return  # the caller says the image is not local
        if self._foreign(img):
            raise PlatformMismatch(ref, "/".join(self.platform()), _image_platform(img))

    def _available_platforms(self, image: str, digest: str,
                             auth: dict[str, str] | None) -> str | None:
        """The platforms a manifest list offers, asked of the engine (best effort)."""
        try:
            dist = self._untyped().inspect_distribution(f"{image}@{digest}", auth_config=auth)
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
            if not self._answers():
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
        api: Any = self._client().api  # the private helpers of docker-py's APIClient
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

    def local_images(self, repository: str) -> list[LocalImage]:
        """Images referenced by ``repository`` (by tag or by digest), each with its digests
        and references there, and whether a container (in any state) was created from it.
        References of other repositories to the same image are not listed."""
        with api_errors("image list"):
            images = self._client().api.images()
            # image id -> the repositories its containers were created from (by name)
            users: dict[str, set[str]] = {}
            for c in self._client().api.containers(all=True):
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
        with api_errors("image remove"):
            try:
                self._client().api.remove_image(reference, force=False, noprune=False)
            except docker.errors.ImageNotFound:
                return
            except docker.errors.APIError as e:
                raise ImageRemovalRefused(
                    f"the engine refused to remove {reference}: {e.explanation or e}"
                ) from None
