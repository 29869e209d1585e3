"""The Docker Swarm edge: a stack's services and tasks (docker SDK), registry manifest checks
in place of local pulls, and ``docker stack deploy`` (CLI, argument lists only)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions
import structlog

from agent.desired import registry_of
from agent.edges.compose import Compose
from agent.edges.docker import DockerEngine, api_errors, classify_pull_error, split_ref
from agent.errors import ComposeError, ComposeMissing, DockerUnavailable, NotSwarmManager
from agent.log import redact_text
from agent.plan import ObservedContainer
from agent.ports import LocalImage
from agent.swarm import SwarmService, SwarmTask

log = structlog.get_logger()

STACK_LABEL = "com.docker.stack.namespace"

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(text: str | None) -> datetime | None:
    """Swarm's RFC 3339 timestamps (nanoseconds) -> an aware datetime."""
    if not text or text.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00"))
    except ValueError:
        return None


def _task(raw: dict[str, Any]) -> SwarmTask:
    status = raw.get("Status") or {}
    image = ((raw.get("Spec") or {}).get("ContainerSpec") or {}).get("Image") or ""
    return SwarmTask(digest=split_ref(image)[1], state=str(status.get("State") or "unknown"),
                     desired=str(raw.get("DesiredState") or ""),
                     error=str(status.get("Err") or ""), at=parse_time(status.get("Timestamp")))


def _observed(service: str, raw: dict[str, Any], has_healthcheck: bool) -> ObservedContainer:
    """A running task as the pass's ObservedContainer (status/health as the health wait
    reads them). Swarm reports a task with a health check ``starting`` until it is healthy
    and fails it when it turns unhealthy."""
    status = raw.get("Status") or {}
    image = ((raw.get("Spec") or {}).get("ContainerSpec") or {}).get("Image") or ""
    state = str(status.get("State") or "unknown")
    cstatus = status.get("ContainerStatus") or {}
    if state == "running":
        st, health = "running", "healthy" if has_healthcheck else None
    elif state == "starting":
        st, health = "running", "starting"
    elif state in ("failed", "rejected", "shutdown", "complete", "orphaned", "remove"):
        st, health = "exited", None
    else:  # new, pending, assigned, accepted, preparing, ready
        st, health = "created", None
    return ObservedContainer(
        service=service, container_id=str(raw.get("ID") or ""),
        name=f"{service}.{raw.get('Slot') or raw.get('NodeID', '')}", image_ref=image,
        digest=split_ref(image)[1], status=st, health=health,
        exit_code=int(cstatus.get("ExitCode") or 0), health_output=str(status.get("Err") or ""),
    )


class SwarmEngine:
    """The engine as a Swarm manager sees it (:class:`agent.ports.Engine`, never a
    :class:`agent.ports.ContainerEngine`): services of a stack instead of containers of a
    project, and a registry manifest request instead of a local pull (the nodes pull). It
    holds a :class:`DockerEngine` for the API client and the manager's local image store
    (retention), and offers no container operation: Swarm replaces its tasks itself."""

    def __init__(self, client: docker.DockerClient | None = None, timeout: float = 120,
                 *, docker_engine: DockerEngine | None = None) -> None:
        self.docker = docker_engine or DockerEngine(client, timeout)

    @property
    def client(self) -> docker.DockerClient:
        return self.docker.client

    @staticmethod
    def _api(what: str) -> AbstractContextManager[None]:
        return api_errors(what)

    def close(self) -> None:
        self.docker.close()

    def answers(self) -> bool:
        """The engine answers a ping (after an error: was it the engine or the registry?)."""
        return self.docker.answers()

    # the manager's own image store, as retention prunes it
    def local_images(self, repository: str) -> list[LocalImage]:
        return self.docker.local_images(repository)

    def remove_reference(self, reference: str) -> None:
        self.docker.remove_reference(reference)

    def require_manager(self) -> None:
        """Refuse to act anywhere but on a manager node (NotSwarmManager, exit 4)."""
        with self._api("info"):
            info = self.client.api.info()
        sw = info.get("Swarm") or {}
        if sw.get("ControlAvailable"):
            return
        where = ("this Docker engine is a swarm worker" if sw.get("LocalNodeState") == "active"
                 else "this Docker engine is not in a swarm "
                      f"(LocalNodeState {sw.get('LocalNodeState') or 'unknown'})")
        raise NotSwarmManager(
            f"[engine] kind = \"swarm\", but {where}: run the agent on a swarm manager node "
            "(or 'docker swarm init'), or set [engine] kind = \"compose\"")

    def _stack_services(self, stack: str) -> dict[str, dict[str, Any]]:
        with self._api("service list"):
            api: Any = self.client.api
            raw = api.services(filters={"label": f"{STACK_LABEL}={stack}"})
        prefix = f"{stack}_"
        return {str(s["Spec"]["Name"]).removeprefix(prefix): s for s in raw}

    def _tasks(self, service_id: str, *, running_only: bool) -> list[dict[str, Any]]:
        filters: dict[str, Any] = {"service": service_id}
        if running_only:
            filters["desired-state"] = "running"
        with self._api("task list"):
            api: Any = self.client.api
            tasks: list[dict[str, Any]] = api.tasks(filters=filters)
        # the service filter matches by prefix: keep this service's own tasks
        return [t for t in tasks if t.get("ServiceID") == service_id]

    def observe(
        self, project: str, services: Collection[str] | None = None, *, detail: bool = False
    ) -> dict[str, list[ObservedContainer]]:
        """The running tasks of the stack's services, by compose service name."""
        self.require_manager()
        out: dict[str, list[ObservedContainer]] = {}
        for name, svc in sorted(self._stack_services(project).items()):
            if services is not None and name not in services:
                continue
            hc = ((svc["Spec"].get("TaskTemplate") or {}).get("ContainerSpec") or {}).get(
                "Healthcheck") or {}
            # the image's own HEALTHCHECK is not in the spec: a task that reached "running"
            # passed whatever check its container has, so count it healthy unless disabled
            has_hc = (hc.get("Test") or ["?"])[0] != "NONE"
            tasks = self._tasks(svc["ID"], running_only=True)
            out[name] = [_observed(name, t, has_hc) for t in tasks]
        return out

    def swarm_services(self, stack: str, names: Sequence[str]) -> dict[str, SwarmService]:
        out = {}
        for name, svc in self._stack_services(stack).items():
            if name not in names:
                continue
            spec = svc.get("Spec") or {}
            image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get(
                "Image") or ""
            us = svc.get("UpdateStatus") or {}
            mode = spec.get("Mode") or {}
            replicas = (int((mode.get("Replicated") or {}).get("Replicas") or 0)
                        if "Replicated" in mode else None)
            out[name] = SwarmService(
                name=name, spec_digest=split_ref(image)[1],
                update_state=us.get("State") or None, update_started=parse_time(
                    us.get("StartedAt")), update_message=str(us.get("Message") or ""),
                replicas=replicas,
                tasks=tuple(_task(t) for t in self._tasks(svc["ID"], running_only=False)))
        return out

    # ------------------------------------------------------------------ images
    def has_image(self, image: str, digest: str) -> bool:
        """Never "local": on a swarm the nodes pull; the agent asks the registry."""
        return False

    def pull(self, image: str, digest: str, auth: dict[str, str] | None = None) -> None:
        """Check the registry has ``image@digest`` (a manifest request through the engine,
        with the configured credentials or the agent user's docker login). Raises
        ImageNotFound, RegistryAuthError or RegistryUnavailable; nothing is pulled."""
        registry, ref = registry_of(image), f"{image}@{digest}"
        try:
            with self._api("distribution inspect"):
                api: Any = self.client.api
                dist = api.inspect_distribution(ref, auth_config=auth)
        except docker.errors.APIError as e:
            raise classify_pull_error(registry, ref, str(e.explanation or e)) from None
        except requests.exceptions.RequestException as e:
            raise DockerUnavailable(f"Docker engine not reachable during manifest check of "
                                    f"{ref}: {e}") from None
        got = (dist.get("Descriptor") or {}).get("digest")
        if got != digest:
            raise classify_pull_error(registry, ref, f"manifest unknown: registry answered {got}")
        log.info("agent.swarm.manifest_found", image=image, digest=digest)


def docker_command() -> str:
    return shutil.which("docker") or "docker"


class SwarmStack(Compose):
    """The stack as a ComposeProject: the model from ``docker compose config`` of the same
    files (validation), ``docker stack deploy`` to act."""

    def __init__(self, command: Sequence[str], project_dir: Path, files: Sequence[str],
                 stack: str, override: Path, *, docker: str | None = None,
                 registry_auth: Mapping[str, Mapping[str, str]] | None = None,
                 timeout: float = 600) -> None:
        super().__init__(command, project_dir, files, stack, override=override, timeout=timeout)
        self.docker = docker or docker_command()
        self.registry_auth = dict(registry_auth or {})

    def _docker(self, args: list[str]) -> None:
        cmd = [self.docker, *args]
        with tempfile.TemporaryDirectory(prefix="gitops-agent-docker-") as tmp:
            env = dict(os.environ)
            if self.registry_auth:
                # configured credentials for --with-registry-auth, in a private config that
                # lives only as long as the command (never on its command line)
                cfg = Path(tmp) / "config.json"
                fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump({"auths": {host: {"auth": base64.b64encode(
                        f"{a['username']}:{a['password']}".encode()).decode()}
                        for host, a in self.registry_auth.items()}}, f)
                env["DOCKER_CONFIG"] = tmp
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=self.timeout,
                                      check=False, cwd=self.project_dir, env=env)
            except subprocess.TimeoutExpired:
                raise ComposeError(cmd, -1, f"timed out after {self.timeout:.0f}s") from None
            except (FileNotFoundError, PermissionError):
                raise ComposeMissing(cmd, "the docker CLI cannot be run") from None
        if proc.returncode != 0:
            raise ComposeError(cmd, proc.returncode,
                               redact_text(proc.stderr.decode(errors="replace")))

    def up(self, services: Sequence[str], *, pull: str = "never",
           scale: Mapping[str, int] | None = None, no_recreate: bool = False,
           start: bool = True) -> None:
        """``docker stack deploy`` of the whole stack with the override pinning digests:
        Swarm updates only the services whose spec changed."""
        args = ["stack", "deploy", "--detach=true", "--with-registry-auth",
                "--resolve-image", "never"]
        for f in self.files:
            args += ["--compose-file", str(f)]
        over = self.override_in_use
        if over is not None and over.exists():
            args += ["--compose-file", str(over)]
        self._docker([*args, "--", self.project_name])

    def remove(self, services: Sequence[str]) -> None:
        if services:
            self._docker(["service", "rm", "--", *[f"{self.project_name}_{s}"
                                                   for s in services]])

    def remove_stack(self) -> None:
        self._docker(["stack", "rm", "--", self.project_name])
