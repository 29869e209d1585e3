"""Outcomes of a pass, and the one table that decides them from an error's kind.

Pure: imports nothing that touches Docker, git or the network. The reconcile pass asks
:func:`disposition` what an error means (outcome, whether the revision is marked failed,
whether the release is rolled back, whether the recorded intent is kept); the CLI asks the
same table for the exit code. Nothing else decides either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.errors import (
    AgentEnvironmentError,
    AgentError,
    ApplyFailed,
    ImageNotFound,
    InvalidInput,
    PlatformMismatch,
    RegistryAuthError,
    RegistryUnavailable,
    ReleaseFailed,
    SourceRefused,
    SourceUnavailable,
    TransientError,
    Unhealthy,
)
from agent.state import Change, ImageDigest, Outcome

EXIT_OK = 0
EXIT_RELEASE_FAILED = 1
EXIT_INVALID = 2
EXIT_TRANSIENT = 3
EXIT_ENVIRONMENT = 4


@dataclass(frozen=True)
class Disposition:
    """What an error of one kind means for the pass."""

    outcome: Outcome
    exit_code: int
    rollback: bool = False  # containers were touched: return to the previous release
    mark_failed: bool = False  # the revision is not retried until it changes (or --force)
    keep_intent: bool = False  # in_flight stays recorded: the next pass converges


# Most specific first; the first row whose kind matches decides.
TABLE: tuple[tuple[type[BaseException], Disposition], ...] = (
    # the git host refused (no such repository or branch, credentials refused): stalled
    # like invalid input -- never retried by the retry policy (not transient); a person
    # fixes source.* and the next pass (or a restart) picks it up
    (SourceRefused, Disposition("invalid", EXIT_INVALID)),
    # invalid input is stalled: nothing touched, not retried until the revision changes
    (InvalidInput, Disposition("invalid", EXIT_INVALID)),
    # the release ran and did not become healthy, or compose could not apply it
    (Unhealthy, Disposition("rolled-back", EXIT_RELEASE_FAILED, rollback=True,
                            mark_failed=True)),
    (ApplyFailed, Disposition("rolled-back", EXIT_RELEASE_FAILED, rollback=True,
                              mark_failed=True)),
    # the registry has no such manifest: retrying the same revision cannot help
    (ImageNotFound, Disposition("failed", EXIT_RELEASE_FAILED, mark_failed=True)),
    # credentials refused: a person must fix them; retried each pass, nothing touched
    # the digest is an image for another OS/architecture than the engine's: permanent
    (PlatformMismatch, Disposition("failed", EXIT_RELEASE_FAILED, mark_failed=True)),
    (RegistryAuthError, Disposition("failed", EXIT_RELEASE_FAILED)),
    (ReleaseFailed, Disposition("failed", EXIT_RELEASE_FAILED)),
    # the agent cannot keep a record (state_dir, lock): it refuses to act
    (AgentEnvironmentError, Disposition("error", EXIT_ENVIRONMENT, keep_intent=True)),
    # the source could not be read: nothing known, nothing touched
    (SourceUnavailable, Disposition("error", EXIT_TRANSIENT, keep_intent=True)),
    # the registry is down: the pull (and so the release) failed before anything was touched
    (RegistryUnavailable, Disposition("error", EXIT_RELEASE_FAILED, keep_intent=True)),
    # the engine went away: retried; the intent stays so the next
    # pass converges, and the revision is never marked failed for the host's weather
    (TransientError, Disposition("error", EXIT_TRANSIENT, keep_intent=True)),
    (AgentError, Disposition("error", EXIT_RELEASE_FAILED, keep_intent=True)),
)

# Outcomes reached without an error.
OUTCOME_EXIT: dict[str, int] = {
    "applied": EXIT_OK,
    "no-op": EXIT_OK,
    "rolled-back": EXIT_RELEASE_FAILED,
    "failed": EXIT_RELEASE_FAILED,
    "skipped": EXIT_RELEASE_FAILED,
    "degraded": EXIT_RELEASE_FAILED,
    "invalid": EXIT_INVALID,
    "frozen": EXIT_OK,
    "waiting": EXIT_OK,
    "held": EXIT_OK,
}


def disposition(err: BaseException) -> Disposition:
    for kind, disp in TABLE:
        if isinstance(err, kind):
            return disp
    return Disposition("error", EXIT_RELEASE_FAILED, keep_intent=True)


def exit_code(outcome: str, err: BaseException | None) -> int:
    """The CLI's exit code for a pass: from its outcome where that decides (a release that
    applied exits 0 even if the final record could not be written), else from the kind of
    the error that ended it (``error`` passes: source, engine, registry, state_dir)."""
    if outcome in OUTCOME_EXIT:
        return OUTCOME_EXIT[outcome]
    if err is not None:
        return disposition(err).exit_code
    return EXIT_RELEASE_FAILED


@dataclass(frozen=True)
class ServiceReport:
    """One managed service as the pass last saw it."""

    digest: str | None  # what its running containers share, else None
    health: str  # healthy, running, unhealthy, starting, exited, restarting, missing


@dataclass
class PassResult:
    outcome: Outcome
    revision: str | None
    changes: list[Change] = field(default_factory=list)
    reason: str | None = None
    duration_seconds: float = 0.0
    error: AgentError | None = None
    phases: dict[str, float] = field(default_factory=dict)
    # the digests this pass aimed at, and the services as last observed (for reporting)
    target: dict[str, ImageDigest] = field(default_factory=dict)
    services: dict[str, ServiceReport] = field(default_factory=dict)
    forced: bool = False
    # a rollback cut short by the engine going away: the intent stays for the next pass
    keep_intent: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome in ("applied", "no-op")

    @property
    def exit_code(self) -> int:
        return exit_code(self.outcome, self.error)
