"""``[compose.allow]``: the host policy's model, what compose files from git may ask of this
host (checked by agent/policy.py).

Pure: imports nothing that touches Docker, git or the network.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from agent.config_base import Strict

_SERVICE_RE = re.compile(r"^(\*|[a-zA-Z0-9._][a-zA-Z0-9._-]{0,254})\Z")
_CAPABILITY_RE = re.compile(r"^(\*|[A-Za-z_]{1,64})\Z")


def _service_name(v: str) -> str:
    if not _SERVICE_RE.match(v):
        raise ValueError(f"{v!r} is not a compose service name (or \"*\" for every service)")
    return v


def _capability(v: str) -> str:
    if not _CAPABILITY_RE.match(v):
        raise ValueError(f"{v!r} is not a capability name (NET_ADMIN, or \"*\" for any)")
    return v


def normalize_capability(name: str) -> str:
    """``cap_net_admin``, ``CAP_NET_ADMIN`` and ``NET_ADMIN`` are one capability."""
    return name.upper().removeprefix("CAP_")


# a compose service name, or "*" for every service
_ServiceName = Annotated[str, AfterValidator(_service_name)]
_Capability = Annotated[str, AfterValidator(_capability)]


class ComposeAllow(Strict):
    """``[compose.allow]``: what a compose file from git (``compose.from_repo``) may ask of
    this host beyond an ordinary container. The admin decides here; nothing in git can
    loosen it. Each service list names compose services, ``"*"`` meaning every service.

    * ``privileged``: services that may run ``privileged: true``.
    * ``host_namespaces``: services that may join a host namespace (``pid``, ``ipc``,
      ``uts``, ``userns_mode``, ``cgroup`` or ``network_mode`` set to ``host``).
    * ``cap_add``: a list of services that may add any capability (``["traefik"]``), or a
      table of service -> the capabilities it may add
      (``cap_add = { traefik = ["NET_BIND_SERVICE"] }``; ``"*"`` for any; names compared
      case-insensitively without a ``CAP_`` prefix; compose's ``ALL`` is a name like any
      other and must itself be listed).
    * ``devices``: services that may map host devices (``devices``, ``device_cgroup_rules``).
    * ``security_opt``: services that may turn confinement off (``seccomp``, ``apparmor``
      or ``systempaths`` ``unconfined``, ``label`` ``disable``).
    * ``bind_sources``: host paths outside project_dir that may be read or mounted: bind
      mounts, local volumes bound to a device path, ``env_file``/``label_file``, and the
      ``file:`` of configs and secrets. An exact absolute path (``"/etc/localtime"``), or a
      directory ending in ``/`` (``"/srv/shared/"``: that directory and everything below).
    * ``include_outside``: whether ``include:`` and ``extends: {file: ...}`` may name files
      that are not files of the repository (``../shared/x.yml``, ``/etc/x.yml``, a local
      file of project_dir, a remote resource). Default: no.
    """

    privileged: list[_ServiceName] = Field(default_factory=list)
    host_namespaces: list[_ServiceName] = Field(default_factory=list)
    cap_add: dict[_ServiceName, list[_Capability]] = Field(default_factory=dict)
    devices: list[_ServiceName] = Field(default_factory=list)
    security_opt: list[_ServiceName] = Field(default_factory=list)
    bind_sources: list[str] = Field(default_factory=list)
    include_outside: bool = False

    @field_validator("cap_add", mode="before")
    @classmethod
    def _cap_add_list(cls, v: Any) -> Any:
        """The list form: each service may add any capability (``["*"]``)."""
        if isinstance(v, list):
            if not all(isinstance(x, str) for x in v):
                raise ValueError("must be a list of services, or a table of service -> "
                                 "capabilities (cap_add = { traefik = [\"NET_BIND_SERVICE\"] })")
            return {x: ["*"] for x in v}
        if not isinstance(v, dict):
            raise ValueError("must be a list of services, or a table of service -> "
                             "capabilities (cap_add = { traefik = [\"NET_BIND_SERVICE\"] })")
        return v

    @field_validator("bind_sources")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/") or ".." in p.split("/") or "\0" in p:
                raise ValueError(f"{p!r} must be an absolute host path without '..' "
                                 "(a directory: end it with '/')")
        return v

    def allows(self, key: Literal["privileged", "host_namespaces", "devices", "security_opt"],
               service: str) -> bool:
        """Whether ``service`` is named (or ``"*"``) under the service list ``key``."""
        names: list[str] = getattr(self, key)
        return service in names or "*" in names

    def capabilities(self, service: str) -> set[str]:
        """The capabilities ``service`` may add (upper case, no ``CAP_`` prefix); ``"*"``
        among them: any."""
        caps = [*self.cap_add.get(service, []), *self.cap_add.get("*", [])]
        return {c if c == "*" else normalize_capability(c) for c in caps}
