"""Operator controls: freeze with a reason, deploy windows, emergency rollback.

* **Freeze** is a small JSON record in ``state_dir`` (``freeze.json``), written atomically
  and without the state lock, so ``gitops-agent freeze`` works while the daemon runs: the
  :class:`FreezeGate` reads it once per pass, before anything is pulled or touched, and a
  frozen pass applies nothing (outcome ``frozen``, exit 0) whatever its plan.
* **Windows** (``[agent] windows``/``timezone``): outside every window the
  :class:`WindowGate` makes a new revision wait (outcome ``waiting``). A failed revision
  converging back on the known-good digests, and ``sync --force``, are never delayed.
* **Rollback** returns to a recorded release (``state.releases``) through
  :func:`agent.rollback.run_rollback`: no source, the registry only for images no longer local;
  on success the host is frozen with reason ``rollback to <rev> by <user>`` and the revision
  rolled back from is marked failed. While the daemon holds the state lock, ``rollback``
  leaves a request in ``state_dir`` and sends the daemon SIGHUP; the daemon performs it at
  the start of its next pass (never half-way through one) and writes the result back.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from agent.config import AgentConfig
from agent.errors import (
    AgentError,
    InvalidInput,
    LockHeld,
    NoRollbackTarget,
    StateWriteError,
)
from agent.outcomes import PassResult
from agent.ports import Gate, GateAnswer, GateQuestion
from agent.reconcile import Reconciler
from agent.rollback import run_rollback
from agent.state import (
    LOCK_FILE,
    AgentState,
    Outcome,
    ReleaseRecord,
    StateStore,
    utcnow,
    write_atomic,
)
from agent.windows import Window, in_any, next_opening, parse_window, zone

log = structlog.get_logger()

FREEZE_FILE = "freeze.json"
ROLLBACK_REQUEST = "rollback-request.json"
ROLLBACK_RESULT = "rollback-result.json"


def current_user() -> str:
    """Who runs the command: the sudo caller, else the login name."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid {os.getuid()}"


# ------------------------------------------------------------------ freeze
class FreezeRecord(BaseModel):
    reason: str
    by: str
    at: datetime

    def describe(self) -> str:
        return f"frozen by {self.by} at {self.at:%Y-%m-%d %H:%M:%S %Z}: {self.reason}"


def read_freeze(state_dir: Path) -> FreezeRecord | None:
    """The freeze record, or None. An unreadable or damaged record raises (a gate then
    ends the pass ``error``, touching nothing: a freeze is never lost to a bad file)."""
    path = state_dir / FREEZE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateWriteError(f"cannot read the freeze record {path}: {e.strerror}") from None
    try:
        return FreezeRecord.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        raise StateWriteError(f"the freeze record {path} is damaged; releases stay stopped "
                              "until 'gitops-agent unfreeze' removes it") from None


def freeze(state_dir: Path, reason: str, by: str) -> tuple[FreezeRecord, FreezeRecord | None]:
    """Freeze the host; returns the new record and the one it replaced."""
    reason = " ".join(reason.split())
    if not reason:
        raise InvalidInput("freeze --reason", ["give a reason (it is shown to everyone)"])
    StateStore(state_dir).ensure_dir()
    try:
        before = read_freeze(state_dir)
    except AgentError:
        before = None
    rec = FreezeRecord(reason=reason, by=by, at=utcnow())
    write_atomic(state_dir / FREEZE_FILE, rec.model_dump_json().encode() + b"\n")
    log.warning("agent.freeze.set", by=by, reason=reason)
    return rec, before


def unfreeze(state_dir: Path, by: str) -> FreezeRecord | None:
    """Lift the freeze; returns the record lifted (None: the host was not frozen)."""
    StateStore(state_dir).ensure_dir()
    try:
        before = read_freeze(state_dir)
    except AgentError:
        before = None
    path = state_dir / FREEZE_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateWriteError(f"cannot remove the freeze record {path}: {e.strerror}") from None
    log.warning("agent.freeze.lifted", by=by, was=before.describe() if before else None)
    return before


@dataclass(frozen=True)
class FreezeGate:
    """Frozen: the pass applies nothing, whatever its plan (no-op, degraded, converging)."""

    state_dir: Path

    def check(self, question: GateQuestion) -> GateAnswer | None:
        try:
            rec = read_freeze(self.state_dir)
        except StateWriteError as e:
            return GateAnswer("frozen", str(e))
        return None if rec is None else GateAnswer("frozen", rec.describe())


@dataclass(frozen=True)
class WindowGate:
    """Outside every deploy window, a new revision waits for the next one to open."""

    windows: tuple[Window, ...]
    timezone: str
    clock: Callable[[], datetime] = utcnow

    def check(self, question: GateQuestion) -> GateAnswer | None:
        if not question.services or question.converging or question.force:
            return None
        tz = zone(self.timezone)
        now = self.clock()
        if in_any(list(self.windows), now, tz):
            return None
        opens = next_opening(list(self.windows), now, tz)
        when = f"{opens:%a %Y-%m-%d %H:%M} {self.timezone}" if opens else "never"
        return GateAnswer("waiting", (
            f"outside the deploy windows ({'; '.join(w.text for w in self.windows)}); "
            f"the next opens {when}"))


def build_gates(cfg: AgentConfig) -> list[Gate]:
    gates: list[Gate] = [FreezeGate(cfg.agent.state_dir)]
    if cfg.agent.windows:
        gates.append(WindowGate(tuple(parse_window(w) for w in cfg.agent.windows),
                                cfg.agent.timezone))
    return gates


# ------------------------------------------------------------------ rollback
@dataclass
class RollbackReport:
    target: str  # revision rolled back to
    target_at: str
    rolled_from: str | None
    outcome: Outcome
    reason: str | None
    exit_code: int
    pulled: list[str] = field(default_factory=list)  # service@digest no longer local
    changes: list[str] = field(default_factory=list)
    frozen: str | None = None  # the freeze set afterwards

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pick_target(state: AgentState, to: str | None) -> ReleaseRecord:
    """``--to REV`` (a recorded release; a unique prefix of 7+ characters will do), else the
    newest release that is neither the last applied revision nor what runs now."""
    if to is not None:
        hits = [r for r in state.releases if len(to) >= 7 and r.revision.startswith(to)]
        if len({r.revision for r in hits}) == 1:
            return hits[0]
        known = ", ".join(dict.fromkeys(r.revision[:12] for r in state.releases)) or "none"
        what = "is ambiguous" if hits else "is not a recorded release"
        raise NoRollbackTarget(f"rollback --to {to}", [f"{what} (recorded releases: {known})"])
    last = state.last_applied.revision if state.last_applied else None
    current = {s: d.digest for s, d in state.known_good.items()}
    for rel in state.releases:
        if rel.revision != last and {s: d.digest for s, d in rel.digests.items()} != current:
            return rel
    raise NoRollbackTarget("rollback", ["no earlier applied release is recorded on this host "
                                        "(see 'gitops-agent status' for the rollback targets)"])


def perform_rollback(rec: Reconciler, to: str | None, user: str) -> RollbackReport:
    """Hold the state lock (or be the daemon). Raises NoRollbackTarget before touching
    anything; otherwise the rollback is recorded like a pass."""
    state = rec.store.load()
    target = pick_target(state, to)
    rolled_from = state.last_applied.revision if state.last_applied else None
    pulled = [f"{s}@{d.digest}" for s, d in sorted(target.digests.items())
              if not rec.engine.has_image(d.image, d.digest)]
    if pulled:
        log.warning("agent.rollback.pulling", images=pulled,
                    message="images of the rollback target are no longer local: pulling")
    result: PassResult = run_rollback(rec, target.revision, target.digests, target.orders)
    report = RollbackReport(
        target=target.revision, target_at=target.at.isoformat(), rolled_from=rolled_from,
        outcome=result.outcome, reason=result.reason, exit_code=result.exit_code,
        pulled=pulled, changes=[f"{c.service}: {c.old or 'none'} -> {c.new}"
                                for c in result.changes])
    if result.outcome in ("applied", "no-op"):
        fr, _ = freeze(rec.cfg.agent.state_dir,
                       f"rollback to {target.revision[:12]} by {user}", user)
        report.frozen = fr.describe()
        if rolled_from and rolled_from != target.revision:
            st = rec.store.load()
            st.mark_failed(rolled_from, f"rolled back to {target.revision[:12]} by {user}")
            rec.store.save(st)
    log.warning("agent.rollback.finished", target=target.revision, outcome=result.outcome,
                by=user, pulled=pulled)
    return report


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the running daemon that holds the state lock, None when unknown. A
    process that holds it without handling SIGHUP is a one-off command (``sync``, ``diff``):
    SIGHUP would kill it half-way through a pass, so it is never signalled — LockHeld."""
    pid: int | None = None
    with contextlib.suppress(OSError, ValueError):
        pid = int((state_dir / LOCK_FILE).read_text().strip())
    if pid is None:
        return None
    if not handles_sighup(pid):
        raise LockHeld(
            f"a one-off gitops-agent command (pid {pid}) holds {state_dir / LOCK_FILE}, "
            "not the daemon: try again when it ends")
    return pid


def handles_sighup(pid: int) -> bool:
    """Whether ``pid`` catches SIGHUP (the daemon's "pass now"), from the SigCgt mask in
    /proc/<pid>/status. A process that is gone or unreadable does not."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGHUP - 1) & 1)
    return False


def ask_daemon(state_dir: Path, pid: int, to: str | None, user: str, timeout: float,
               poll: float = 0.2) -> RollbackReport:
    """Leave a rollback request for the running daemon, wake it (SIGHUP) and wait for the
    result it writes back."""
    rid = uuid.uuid4().hex
    result_path = state_dir / ROLLBACK_RESULT
    with contextlib.suppress(FileNotFoundError):
        result_path.unlink()
    # the request expires with this command's wait: a daemon restarted hours later must
    # not perform a rollback nobody is waiting for any more
    write_atomic(state_dir / ROLLBACK_REQUEST,
                 json.dumps({"id": rid, "to": to, "user": user,
                             "expires_at": time.time() + timeout}).encode())
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        raise StateWriteError(f"cannot signal the agent (pid {pid}): {e.strerror}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            doc = json.loads(result_path.read_bytes())
            if doc.get("id") == rid:
                result_path.unlink()
                if doc.get("error"):
                    raise NoRollbackTarget(f"the running agent (pid {pid})", [str(doc["error"])])
                return RollbackReport(**doc["report"])
        time.sleep(poll)
    withdraw_request(state_dir, rid)
    raise StateWriteError(f"the agent (pid {pid}) did not perform the rollback within "
                          f"{timeout:.0f}s; the request was withdrawn: nothing was rolled back")


def withdraw_request(state_dir: Path, rid: str) -> None:
    path = state_dir / ROLLBACK_REQUEST
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if json.loads(path.read_bytes()).get("id") == rid:
            path.unlink()


def take_request(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / ROLLBACK_REQUEST
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.error("agent.rollback.bad_request", error=str(e))
        doc = None
    with contextlib.suppress(OSError):
        path.unlink()
    if not isinstance(doc, dict):
        return None
    expires = doc.get("expires_at")
    if not isinstance(expires, int | float) or expires < time.time():
        log.warning("agent.rollback.request_expired", user=str(doc.get("user")),
                    message="a rollback request nobody waits for any more: not performed")
        return None
    return doc


def daemon_pass(rec: Reconciler, state_dir: Path) -> PassResult | None:
    """The daemon's pass: a pending rollback request first (answered in the result file),
    else an ordinary reconcile pass. None: a request that could not be served."""
    req = take_request(state_dir)
    if req is None:
        return rec.run_pass()
    doc: dict[str, Any] = {"id": req.get("id")}
    to = req.get("to")
    try:
        report = perform_rollback(rec, to if isinstance(to, str) else None,
                                  str(req.get("user") or "unknown"))
        doc["report"] = report.to_json()
    except AgentError as e:
        log.error("agent.rollback.refused", error=str(e))
        doc["error"] = str(e)
        report = None
    write_atomic(state_dir / ROLLBACK_RESULT, json.dumps(doc).encode())
    if report is None:
        return None
    return PassResult(report.outcome, report.target, reason=report.reason)
