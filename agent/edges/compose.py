"""The ``docker compose`` v2 edge. Argument lists only; typed errors with command, exit code
and stderr. The agent never builds: every ``up`` passes ``--no-build``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from agent.errors import ComposeError, ComposeFileError, ComposeMissing
from agent.log import redact_text
from agent.state import write_atomic

log = structlog.get_logger()

# a top-level ``include:`` or an ``extends`` with ``file:``: the model depends on other files
_REFERS_TO_FILES = re.compile(rb"^include\s*:|^\s+file\s*:", re.MULTILINE)

PLUGIN_DIRS = (
    "~/.docker/cli-plugins",
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


def find_compose_command(configured: Sequence[str] | None = None) -> list[str]:
    """The compose v2 command: configured, else ``GITOPS_AGENT_COMPOSE``, else the CLI
    plugin binary called directly (it runs standalone), else ``docker compose``."""
    if configured:
        return list(configured)
    env = os.environ.get("GITOPS_AGENT_COMPOSE")
    if env:
        return [env]
    for d in PLUGIN_DIRS:
        p = Path(os.path.expanduser(d)) / "docker-compose"
        if p.is_file() and os.access(p, os.X_OK):
            return [str(p)]
    standalone = shutil.which("docker-compose")
    if standalone:
        return [standalone]
    return ["docker", "compose"]


def _plugin_missing(stderr: bytes) -> bool:
    """``docker compose`` run by a docker CLI without the compose plugin."""
    text = stderr.decode(errors="replace")
    return "'compose' is not a docker command" in text or "unknown command: docker compose" in \
        text


class Compose:
    def __init__(
        self,
        command: Sequence[str],
        project_dir: Path,
        files: Sequence[str],
        project_name: str,
        override: Path | None = None,
        timeout: float = 600,
        profiles: Sequence[str] = (),
    ) -> None:
        self.command = list(command)
        self.project_dir = project_dir
        self.files = [project_dir / f for f in files]
        self.project_name = project_name
        self.override = override
        self.timeout = timeout
        # the profiles the project runs with; empty: compose decides (COMPOSE_PROFILES in
        # the environment or the project's .env), exactly as a hand-run compose would
        self.profiles = list(profiles)
        self._cache: tuple[tuple[tuple[str, int, int], ...], dict[str, Any]] | None = None
        self._all_cache: tuple[tuple[tuple[str, int, int], ...], dict[str, Any]] | None = None
        self._hash_cache: tuple[Any, dict[str, str]] | None = None

    def _base(self, with_override: bool = True, profiles: Sequence[str] | None = None) -> list[str]:
        args = [*self.command, "--project-name", self.project_name,
                "--project-directory", str(self.project_dir)]
        for profile in self.profiles if profiles is None else profiles:
            args += ["--profile", profile]
        for f in self.files:
            args += ["--file", str(f)]
        if with_override and self.override is not None and self.override.exists():
            args += ["--file", str(self.override)]
        return args

    def _run(self, args: list[str], *, timeout: float | None = None,
             stdin: bytes | None = None) -> str:
        cmd = args
        try:
            proc = subprocess.run(
                cmd, capture_output=True, timeout=timeout or self.timeout, check=False,
                cwd=self.project_dir, input=stdin,
            )
        except subprocess.TimeoutExpired:
            raise ComposeError(cmd, -1, f"timed out after {timeout or self.timeout:.0f}s") from None
        except FileNotFoundError:
            raise ComposeMissing(cmd, "command not found") from None
        except PermissionError:
            raise ComposeMissing(cmd, "not executable by the agent's user") from None
        if proc.returncode == 127 or (proc.returncode != 0 and _plugin_missing(proc.stderr)):
            # "docker compose" without the plugin, or a wrapper that could not find it
            raise ComposeMissing(cmd, redact_text(
                proc.stderr.decode(errors="replace").strip().splitlines()[-1]
                if proc.stderr.strip() else f"exit {proc.returncode}"))
        if proc.returncode != 0:
            raise ComposeError(cmd, proc.returncode, redact_text(proc.stderr.decode(errors="replace")))
        return proc.stdout.decode(errors="replace")

    # ------------------------------------------------------------------ read
    def config(
        self, with_override: bool = False, profiles: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """The resolved compose model: compose's own (includes, extends, ``!reset``,
        interpolation, multi-document files, active profiles). ``profiles`` replaces the
        configured ones (``["*"]``: every profile). A file that does not parse is
        ComposeFileError."""
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise ComposeFileError("compose", [f"compose file not found: {m}" for m in missing])
        try:
            out = self._run([*self._base(with_override, profiles), "config", "--format", "json"],
                            timeout=60)
        except ComposeError as e:  # ComposeMissing is an environment error: it goes through
            lines = [ln for ln in e.stderr.strip().splitlines() if ln.strip()]
            raise ComposeFileError(
                ", ".join(str(f) for f in self.files),
                [lines[-1] if lines else f"docker compose config exited {e.returncode}"],
            ) from None
        model: dict[str, Any] = json.loads(out)
        return model

    def services(self) -> dict[str, Any]:
        """The services of the compose model. ``docker compose config`` costs ~45 ms of CPU,
        most of an idle pass, so the model is cached until a compose file or the project's
        ``.env`` changes (path, size, mtime)."""
        key = self._files_key()
        if key and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        services: dict[str, Any] = self.config().get("services") or {}
        self._cache = (key, services)
        return services

    def inactive_services(self) -> dict[str, list[str]]:
        """The services that exist only under profiles that are not active, each with its
        profiles (compose's model with ``--profile '*'``, minus :meth:`services`). Cached
        like :meth:`services`."""
        key = self._files_key()
        if key and self._all_cache is not None and self._all_cache[0] == key:
            everything: dict[str, Any] = self._all_cache[1]
        else:
            everything = self.config(profiles=["*"]).get("services") or {}
            self._all_cache = (key, everything)
        active = self.services()
        return {
            name: [str(p) for p in (svc.get("profiles") or [])]
            for name, svc in sorted(everything.items())
            if name not in active
        }

    def config_hashes(self, images: Mapping[str, str]) -> dict[str, str]:
        """Per service, the configuration hash compose labels its containers with
        (``com.docker.compose.config-hash``), as it would be with services pinned to
        ``images`` (the override, handed over on stdin: nothing is written). Compose
        recreates a container whose label differs; so does the agent. Cached like
        :meth:`services`, per pin set."""
        key = (self._files_key(), tuple(sorted(images.items())))
        if key[0] and self._hash_cache is not None and self._hash_cache[0] == key:
            return self._hash_cache[1]
        try:
            out = self._run([*self._base(with_override=False), "--file", "-", "config",
                             "--hash", "*"], timeout=60, stdin=render_override(dict(images)))
        except ComposeError as e:
            lines = [ln for ln in e.stderr.strip().splitlines() if ln.strip()]
            raise ComposeFileError(
                ", ".join(str(f) for f in self.files),
                [lines[-1] if lines else f"docker compose config exited {e.returncode}"],
            ) from None
        hashes = dict(ln.split(None, 1) for ln in out.splitlines() if len(ln.split()) == 2)
        self._hash_cache = (key, hashes)
        return hashes

    def _files_key(self) -> tuple[tuple[str, int, int], ...]:
        """What the cached model depends on: the compose files and the project's ``.env``.
        Empty (never cached) when a compose file pulls in other files (``include:``,
        ``extends: file:``): those could change unseen."""
        key = []
        for f in self.files:
            try:
                if _REFERS_TO_FILES.search(f.read_bytes()):
                    return ()
            except OSError:
                pass
        for f in [*self.files, self.project_dir / ".env"]:
            try:
                st = f.stat()
                key.append((str(f), st.st_size, st.st_mtime_ns))
            except OSError:
                key.append((str(f), -1, -1))
        return tuple(key)

    # ------------------------------------------------------------------ act
    def up(
        self,
        services: Sequence[str],
        *,
        pull: str = "never",
        scale: Mapping[str, int] | None = None,
        no_recreate: bool = False,
        start: bool = True,
    ) -> None:
        """Create or recreate ``services`` only (no dependencies), never building.

        With ``no_recreate`` and ``scale``, existing containers are left as they are and
        new ones (from the current model, i.e. the new digest) are added beside them:
        the first half of a start-first update. Without ``start`` they are only created
        (``--no-start``), for the caller to prepare and start.
        """
        if not services:
            return
        args = [*self._base(), "up", "--detach" if start else "--no-start", "--no-deps",
                "--no-build", "--pull", pull]
        if no_recreate:
            args.append("--no-recreate")
        for name, n in sorted((scale or {}).items()):
            args += ["--scale", f"{name}={n}"]
        self._run([*args, "--", *services])

    def pin(self, images: Mapping[str, str]) -> None:
        """Write the generated override that pins services to ``image@digest`` (atomically:
        a crash leaves the old pins or the new ones)."""
        if self.override is None:
            raise ValueError("this compose project has no override file")
        write_atomic(self.override, render_override(dict(images)))

    def remove(self, services: Sequence[str]) -> None:
        """Stop and remove the containers of ``services`` (a service that had no previous
        release to roll back to)."""
        if not services:
            return
        self._run([*self._base(), "rm", "--stop", "--force", "--", *services])


def render_override(images: dict[str, str]) -> bytes:
    """The generated override that pins managed services to ``image@digest``. JSON is YAML,
    so compose reads it as is."""
    doc = {"services": {name: {"image": ref} for name, ref in sorted(images.items())}}
    return (json.dumps(doc, indent=2) + "\n").encode()
