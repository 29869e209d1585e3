"""What happened (the *status*), kept apart from the spec, in ``state_dir``.

State is one JSON file written atomically (temp file, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new record, never half of one.
A lock file keeps two agents off one state_dir.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import AgentEnvironmentError, LockHeld, StateWriteError, UnsafeStateDir

STATE_FILE = "state.json"
LOCK_FILE = "agent.lock"
MAX_FAILED_REVISIONS = 50

log = structlog.get_logger()


def short_digest(d: str | None) -> str:
    """``1a2b3c4d5e6f`` for ``sha256:1a2b3c4d5e6f…``; ``none`` for no digest."""
    return "none" if d is None else d.removeprefix("sha256:")[:12]

Outcome = Literal[
    "applied",  # the desired digests run and are healthy after changes
    "no-op",  # nothing to change, everything healthy
    "rolled-back",  # release failed its health checks; the last known-good digests run
    "failed",  # release not applied (pull failed, auth refused, apply error); nothing changed
    "invalid",  # config/desired-state/compose invalid; nothing touched (stalled)
    "skipped",  # revision failed before; not retried until it changes (or --force)
    "error",  # transient error (source/registry/docker unreachable); retried later
    "degraded",  # nothing to change, but a managed service is not healthy
    "frozen",  # an operator froze releases on this host: nothing applied
    "waiting",  # a new revision waits for a deploy window
    "held",  # a new revision waits for an earlier rollout wave
]

# outcomes a gate ends a pass with: nothing applied, not a failure (exit 0)
GATE_OUTCOMES = ("frozen", "waiting", "held")


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageDigest(_Model):
    image: str
    digest: str


class Change(_Model):
    service: str
    image: str
    old: str | None
    new: str
    # compose.from_repo: why a service whose digest stays changes (the git files it reads
    # that changed, then the compose keys)
    because: list[str] = Field(default_factory=list)

    def describe(self) -> str:
        """``web: 1a2b3c4d5e6f -> 4d5e6f...``, or for a configuration change
        ``web: config (conf/app.env)``."""
        if self.old == self.new and self.because:
            return f"{self.service}: config ({', '.join(self.because)})"
        return f"{self.service}: {short_digest(self.old)} -> {short_digest(self.new)}"


class RevisionRecord(_Model):
    revision: str | None
    at: datetime
    outcome: Outcome
    reason: str | None = None


class InFlight(_Model):
    """Written before any container is touched; cleared when the pass is recorded."""

    revision: str
    started_at: datetime
    phase: Literal["apply", "verify", "rollback"]
    previous: dict[str, ImageDigest | None]
    target: dict[str, ImageDigest]


class PassRecord(_Model):
    started_at: datetime
    duration_seconds: float
    revision: str | None
    outcome: Outcome
    changes: list[Change] = Field(default_factory=list)
    reason: str | None = None
    forced: bool = False
    phases: dict[str, float] = Field(default_factory=dict)
    repeats: int = 1  # consecutive identical no-op passes are folded into one record


class ReleaseRecord(_Model):
    """A release that ran healthy (applied): what ``rollback`` returns to, and what image
    retention keeps."""

    revision: str
    at: datetime
    digests: dict[str, ImageDigest]
    orders: dict[str, Literal["stop-first", "start-first"]] = Field(default_factory=dict)


MAX_RELEASES = 100


class AgentState(_Model):
    version: Literal[1] = 1
    last_attempted: RevisionRecord | None = None
    last_applied: RevisionRecord | None = None
    known_good: dict[str, ImageDigest] = Field(default_factory=dict)
    failed_revisions: dict[str, str] = Field(default_factory=dict)
    in_flight: InFlight | None = None
    history: list[PassRecord] = Field(default_factory=list)
    releases: list[ReleaseRecord] = Field(default_factory=list)  # newest first, bounded

    def note_release(self, revision: str | None, digests: dict[str, ImageDigest],
                     at: datetime,
                     orders: Mapping[str, Literal["stop-first", "start-first"]] | None = None,
                     ) -> None:
        """A pass ended ``applied``: its digests are a known-good release."""
        if revision is None or not digests:
            return
        self.releases.insert(0, ReleaseRecord(revision=revision, at=at, digests=dict(digests),
                                              orders=dict(orders or {})))
        del self.releases[MAX_RELEASES:]

    def record_pass(self, rec: PassRecord, limit: int) -> None:
        last = self.history[0] if self.history else None
        if (
            last is not None
            and rec.outcome in ("no-op", "skipped", "error", "invalid", *GATE_OUTCOMES)
            and last.outcome == rec.outcome
            and last.revision == rec.revision
            and last.reason == rec.reason
            and not rec.changes
        ):
            last.repeats += 1
            last.duration_seconds = rec.duration_seconds
            return
        self.history.insert(0, rec)
        del self.history[limit:]

    def mark_failed(self, revision: str, reason: str) -> None:
        self.failed_revisions.pop(revision, None)
        self.failed_revisions[revision] = reason
        while len(self.failed_revisions) > MAX_FAILED_REVISIONS:
            self.failed_revisions.pop(next(iter(self.failed_revisions)))


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / STATE_FILE

    def ensure_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as e:
            raise StateWriteError(f"state_dir {self.dir} cannot be created: {e.strerror}") from None
        check_state_dir_safe(self.dir)
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise StateWriteError(
                f"state_dir {self.dir} is not writable; the agent refuses to act without a record"
            )

    def load(self) -> AgentState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        except OSError as e:
            raise AgentEnvironmentError(f"cannot read {self.path}: {e.strerror}") from None
        try:
            return AgentState.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as e:
            raise AgentEnvironmentError(
                f"{self.path} is not a valid state file ({type(e).__name__}); "
                "move it aside to start afresh"
            ) from None

    def save(self, state: AgentState) -> None:
        data = state.model_dump_json(indent=2).encode() + b"\n"
        write_atomic(self.path, data)

    def probe_writable(self) -> None:
        """Fail early, before touching containers, if a record could not be written."""
        write_atomic(self.dir / ".probe", b"x" * 4096)
        with contextlib.suppress(OSError):
            (self.dir / ".probe").unlink()


def check_state_dir_safe(state_dir: Path) -> None:
    """state_dir holds the lock, the record and the compose override the agent deploys:
    nobody but the agent's user may be able to change what is in it."""
    try:
        st = os.stat(state_dir)
    except OSError as e:
        raise StateWriteError(f"state_dir {state_dir} cannot be read: {e.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateDir(f"state_dir {state_dir} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeStateDir(
            f"state_dir {state_dir} is owned by uid {st.st_uid}, not by the agent's user "
            f"(uid {os.geteuid()}); the agent refuses to act: run "
            f"'chown {os.geteuid()} {state_dir}'"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeStateDir(
            f"state_dir {state_dir} is writable by group or others (mode {mode:04o}); "
            f"the agent refuses to act: run 'chmod go-w {state_dir}'"
        )


def write_atomic(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Write ``data`` to a new temp file and rename it over ``path``: a symlink at ``path``
    is replaced, never followed."""
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, path)
        tmp_name = None
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        what = "full" if e.errno == errno.ENOSPC else "not writable"
        raise StateWriteError(
            f"cannot write {path}: {e.strerror} (state_dir {what}); "
            "the agent refuses to act without a record"
        ) from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


class StateLock:
    """An exclusive, non-blocking flock on ``state_dir/agent.lock``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            # never through a symlink: a link planted at agent.lock must not make the agent
            # create or truncate a file elsewhere
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o640)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeStateDir(
                    f"lock file {self.path} is a symlink; the agent refuses to follow it: "
                    "remove it"
                ) from None
            raise StateWriteError(f"cannot open lock file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
            os.close(fd)
            raise LockHeld(
                f"another gitops-agent holds {self.path}{holder}; "
                "only one agent may work on a state_dir at a time"
            ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def save_best_effort(save: Callable[[], None], *, what: str) -> None:
    """After the intent is recorded, a failed save never stops the verdict or the
    rollback: the recorded intent already lets the next pass converge."""
    try:
        save()
    except StateWriteError as e:
        log.error("agent.state.write_failed", what=what, error=str(e),
                  message="continuing: the recorded intent lets the next pass converge")
