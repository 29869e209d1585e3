"""The agent's exception hierarchy.

Errors are sorted by *kind*, as Flux's controllers do, because the kind decides what
happens next:

* ``InvalidInput`` (config, desired-state, compose file; a git host that refuses:
  ``SourceRefused``/``SourceNotFound``): *stalled*. Nothing is touched and
  the revision is not retried until it changes. Exit code 2.
* ``TransientError`` (source or registry unreachable, Docker engine restarting): retried
  with backoff; never marks a revision failed. Exit code 3 when the pass could not even learn
  what to deploy, 1 when a release was aborted before anything was touched.
* ``ReleaseFailed``: the release was tried and did not become healthy (rolled back), or
  could not be pulled. Exit code 1.
* ``AgentEnvironmentError``: the agent cannot keep a record (state_dir unwritable, lock held
  by another agent). It refuses to act. Exit code 4.

Only :mod:`agent.cli` turns these into exit codes.
"""

from __future__ import annotations

from collections.abc import Sequence


class AgentError(Exception):
    """Base class of every error the agent raises on purpose."""


# --------------------------------------------------------------------------- invalid input
class InvalidInput(AgentError):
    """Input that will not become valid by retrying. Carries every problem found."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        lines = [f"{self.source}: {len(self.problems)} problems"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class ConfigError(InvalidInput):
    """The agent's own TOML configuration is invalid."""


class DesiredStateError(InvalidInput):
    """desired-state.yml is invalid (syntax, schema, or inconsistent with compose)."""


class ComposeFileError(InvalidInput):
    """The compose files on the server do not parse."""


class StackFilesError(InvalidInput):
    """The compose project's files in the repository (``compose.from_repo``) cannot be
    deployed: missing, too large, not plain files, or their path is taken by a local file."""


class SourceRefused(InvalidInput):
    """The git host answered and refused: the repository or the branch does not exist, or
    the credentials (token, SSH key) are refused. Retrying the same configuration cannot
    help -- a person must fix ``source.*`` -- so it is stalled (exit 2), never retried.
    ``source`` names the setting to fix; ``stderr`` is git's whole (redacted) output."""

    def __init__(self, source: str, problems: Sequence[str], *, stderr: str = "") -> None:
        self.stderr = stderr
        super().__init__(source, problems)


class SourceNotFound(SourceRefused):
    """The repository (``source.repo``) or the branch (``source.branch``) does not exist,
    or the credentials cannot see it."""


class UntrustedRevision(InvalidInput):
    """The revision is refused by the trust policy (signature, allowlist)."""


# --------------------------------------------------------------------------- transient
class TransientError(AgentError):
    """Worth retrying later; never marks a revision failed."""


class SourceUnavailable(TransientError):
    """The git host / API could not be reached or answered with a server error."""


class RegistryUnavailable(TransientError):
    """The registry could not be reached, timed out, or answered 5xx."""

    def __init__(self, registry: str, reference: str, reason: str) -> None:
        self.registry = registry
        self.reference = reference
        self.reason = reason
        super().__init__(f"registry {registry} unavailable while pulling {reference}: {reason}")


class DockerUnavailable(TransientError):
    """The Docker engine did not answer."""


# --------------------------------------------------------------------------- release failures
class ReleaseFailed(AgentError):
    """The release could not be made to run; the last known-good digests run."""


class RegistryAuthError(ReleaseFailed):
    """The registry refused our credentials (401/403). Not retried."""

    def __init__(self, registry: str, reference: str, reason: str) -> None:
        self.registry = registry
        self.reference = reference
        self.reason = reason
        super().__init__(
            f"registry {registry} refused the credentials for {reference} ({reason}); "
            f"run 'docker login {registry}' as the agent's user or set "
            f"[registry.\"{registry}\"] username/password_file in the agent config"
        )


class Unhealthy(ReleaseFailed):
    """The release was applied and did not become healthy: it is rolled back."""


class ApplyFailed(ReleaseFailed):
    """``docker compose`` could not apply the release: it is rolled back."""


class ImageNotFound(ReleaseFailed):
    """The registry does not have the manifest the desired state names."""


class PlatformMismatch(ReleaseFailed):
    """The digest names an image (or a manifest list) with nothing for the engine's
    OS/architecture. Permanent for that digest: nothing is touched, the revision fails."""

    def __init__(self, reference: str, wanted: str, actual: str) -> None:
        self.reference = reference
        self.wanted = wanted
        self.actual = actual
        super().__init__(
            f"{reference} is for {actual}, but the Docker engine runs {wanted}; "
            f"build and push an image for {wanted} (or a multi-platform index that has one)"
        )


class ImageRemovalRefused(AgentError):
    """The engine refused to remove an image (a container uses it, or it is referenced
    elsewhere): retention leaves it, never forces."""


class NoRollbackTarget(InvalidInput):
    """``rollback`` has no recorded release to return to (or not the one asked for)."""


class CommandError(AgentError):
    """A subprocess at the edge (compose, git) failed. Carries command, exit code, stderr."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: str) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "(no output)"
        super().__init__(f"{self.command[0]} exited {returncode}: {tail}")


class ComposeError(CommandError):
    """``docker compose`` failed."""


class GitError(CommandError):
    """``git`` failed. The message carries git's whole stderr (one line: its lines joined
    with `` | ``), not only its last line: git puts the cause first ("ERROR: Repository not
    found.") and generic advice last."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(command, returncode, stderr)
        whole = one_line(stderr) or "(no output)"
        Exception.__init__(self, f"{self.command[0]} exited {returncode}: {whole}")


def one_line(text: str) -> str:
    """A tool's multi-line output as one line: non-empty lines stripped, joined by `` | ``."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------- environment
class AgentEnvironmentError(AgentError):
    """The agent cannot work safely here (cannot record state, lock held)."""


class LockHeld(AgentEnvironmentError):
    """Another agent holds the state_dir lock."""


class StateWriteError(AgentEnvironmentError):
    """state_dir is unwritable or full."""


class UnsafeStateDir(AgentEnvironmentError):
    """state_dir (or a file in it) could be changed by someone other than the agent's user:
    owned by another user, group/other-writable, or a symlink where a file must be."""


class ComposeMissing(AgentEnvironmentError):
    """The compose v2 binary is not installed (or not executable) on this host."""

    def __init__(self, command: Sequence[str], reason: str) -> None:
        self.command = list(command)
        super().__init__(
            f"the compose command {self.command[0]!r} cannot be run ({reason}); install "
            "docker compose v2 or set [compose] command in the agent config"
        )


class NotSwarmManager(AgentEnvironmentError):
    """``[engine] kind = "swarm"`` on an engine that is not a swarm manager (a worker, or
    outside any swarm): only a manager can deploy a stack and read its update state."""


class LocalPermissionDenied(AgentEnvironmentError):
    """The agent's user may not use the Docker socket, or the engine could not write its
    own local storage: a host problem, not a registry credential problem."""
