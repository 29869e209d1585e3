"""The ``docker compose`` v2 edge. Argument lists only; typed errors with command, exit code
and stderr. The agent never builds: every ``up`` passes ``--no-build``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from agent.errors import ComposeError, ComposeFileError, ComposeMissing, StateWriteError
from agent.log import redact_text
from agent.staging import env_files, pinned, rewrite, with_labels
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
        real_dir: Path | None = None,
    ) -> None:
        self.command = list(command)
        # a mirror of the real project_dir (compose.from_repo's staging): compose runs in
        # the mirror, and the model and errors it prints name real_dir's paths
        self.real_dir = real_dir
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
        # where the pins went when state_dir refused them (a full or read-only disk): a
        # private temp file this process reads until state_dir takes writes again
        self._spare: Path | None = None

    @property
    def override_in_use(self) -> Path | None:
        return self._spare or self.override

    def _base(self, with_override: bool = True, profiles: Sequence[str] | None = None) -> list[str]:
        args = [*self.command, "--project-name", self.project_name,
                "--project-directory", str(self.project_dir)]
        for profile in self.profiles if profiles is None else profiles:
            args += ["--profile", profile]
        for f in self.files:
            args += ["--file", str(f)]
        over = self.override_in_use
        if with_override and over is not None and over.exists():
            args += ["--file", str(over)]
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
            raise self._file_error(e) from None
        model: dict[str, Any] = json.loads(out)
        if self.real_dir is not None:
            model = rewrite(model, self.project_dir, self.real_dir)
        return model

    def _file_error(self, e: ComposeError) -> ComposeFileError:
        """compose refused the files: its last line, in real_dir's paths, cut after the
        file and line it names (compose quotes the offending line of an env file, and an
        env_file may be any file on the host)."""
        lines = [ln for ln in e.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"docker compose config exited {e.returncode}"
        files = [str(f) for f in self.files]
        if self.real_dir is not None:
            reason = rewrite(reason, self.project_dir, self.real_dir)
            files = [rewrite(f, self.project_dir, self.real_dir) for f in files]
        return ComposeFileError(", ".join(files), [cut_quoted(reason)])

    def services(self) -> dict[str, Any]:
        """The services of the compose model. ``docker compose config`` costs ~45 ms of CPU,
        most of an idle pass, so the model is cached until a compose file or the project's
        ``.env`` changes (path, size, mtime)."""
        services: dict[str, Any] = self.model().get("services") or {}
        return services

    def model(self) -> dict[str, Any]:
        """The whole compose model (active profiles), cached like :meth:`services`."""
        key = self._files_key()
        if key and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        model = self.config()
        self._cache = (key, model)
        return model

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

    def config_hashes(self, images: Mapping[str, str],
                      labels: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
        """Per service, the configuration hash compose labels its containers with
        (``com.docker.compose.config-hash``), as it will be with services pinned to
        ``images`` and carrying ``labels`` (what the override adds). Compose recreates a
        container whose label differs; so does the agent.

        compose's resolved model goes back to compose on stdin (nothing is written):
        ``up`` hashes the model with ``env_file`` read and dropped, which is exactly what
        ``config --format json`` prints, while ``config --hash`` on the files themselves
        would hash the ``env_file`` entries too. Cached like :meth:`services`, per pin set."""
        key = (self._files_key(), tuple(sorted(images.items())),
               tuple(sorted((s, tuple(sorted(v.items()))) for s, v in (labels or {}).items())))
        if key[0] and self._hash_cache is not None and self._hash_cache[0] == key:
            return self._hash_cache[1]
        doc = dict(self.model())
        doc["services"] = with_labels(pinned(doc.get("services") or {}, images), labels or {})
        args = [*self.command, "--project-name", self.project_name,
                "--project-directory", str(self.project_dir)]
        for profile in self.profiles:
            args += ["--profile", profile]
        try:
            out = self._run([*args, "--file", "-", "config", "--hash", "*"], timeout=60,
                            stdin=json.dumps(doc).encode())
        except ComposeError as e:
            raise self._file_error(e) from None
        hashes = dict(ln.split(None, 1) for ln in out.splitlines() if len(ln.split()) == 2)
        self._hash_cache = (key, hashes)
        return hashes

    def _files_key(self) -> tuple[tuple[str, int, int], ...]:
        """What the cached model depends on: the compose files and the project's ``.env``.
        Empty (never cached) when a compose file pulls in other files (``include:``,
        ``extends: file:``): those could change unseen."""
        key = []
        env: list[Path] = []  # the env files the services read are part of the model
        for f in self.files:
            try:
                text = f.read_bytes()
            except OSError:
                continue
            if _REFERS_TO_FILES.search(text):
                return ()
            env += [self.project_dir / p for ps in env_files([text]).values() for p in ps]
        for f in [*self.files, self.project_dir / ".env", *env]:
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

    def pin(self, images: Mapping[str, str],
            labels: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Write the generated override that pins services to ``image@digest`` (and adds
        the agent's labels: the digest of the git files a service reads), atomically: a
        crash leaves the old pins or the new ones."""
        if self.override is None:
            raise ValueError("this compose project has no override file")
        data = render_override(dict(images), labels)
        try:
            write_atomic(self.override, data)
        except StateWriteError as e:
            # a rollback must still reach the containers when state_dir takes no writes
            self._write_spare(data, e)
            return
        if self._spare is not None:
            self._spare.unlink(missing_ok=True)
            self._spare = None

    def _write_spare(self, data: bytes, cause: StateWriteError) -> None:
        try:
            fd, name = tempfile.mkstemp(prefix="gitops-agent-override-", suffix=".json")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError:
            raise cause from None
        if self._spare is not None:
            self._spare.unlink(missing_ok=True)
        self._spare = Path(name)
        log.warning("agent.compose.override_elsewhere", path=name, error=str(cause),
                    message="state_dir refused the pins; compose reads them from a private "
                            "temp file until state_dir takes writes again")

    def remove(self, services: Sequence[str]) -> None:
        """Stop and remove the containers of ``services`` (a service that had no previous
        release to roll back to)."""
        if not services:
            return
        self._run([*self._base(), "rm", "--stop", "--force", "--", *services])


def render_override(images: dict[str, str],
                    labels: Mapping[str, Mapping[str, str]] | None = None) -> bytes:
    """The generated override that pins managed services to ``image@digest`` and carries
    the agent's labels. JSON is YAML, so compose reads it as is."""
    services: dict[str, dict[str, Any]] = {name: {"image": ref}
                                           for name, ref in sorted(images.items())}
    for name, extra in sorted((labels or {}).items()):
        if extra:
            services.setdefault(name, {})["labels"] = dict(sorted(extra.items()))
    doc = {"services": dict(sorted(services.items()))}
    return (json.dumps(doc, indent=2) + "\n").encode()


_AFTER_LINE = re.compile(r"(\bline \d+)\b.*", re.IGNORECASE)


def cut_quoted(reason: str) -> str:
    """compose's error text up to the file and line it names: what follows may quote the
    line (an env file's, a host file's), which never goes into a reason or a log."""
    return _AFTER_LINE.sub(r"\1 (the line's text is not shown)", reason, count=1)
