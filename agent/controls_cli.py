"""``gitops-agent freeze | unfreeze | rollback``: the operator's brake (agent/controls.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.config import AgentConfig
from agent.errors import LockHeld
from agent.outcomes import EXIT_OK


def _short(d: str | None) -> str:
    return "-" if not d else d.removeprefix("sha256:")[:12]


def _describe(rec: object) -> str:
    """A freeze record, with its time as every CLI time (ISO 8601 UTC)."""
    from agent.timefmt import iso

    by, at, reason = (getattr(rec, k, None) for k in ("by", "at", "reason"))
    return f"frozen by {by} at {iso(at)}: {reason}"


def cmd_control(cfg: AgentConfig, args: argparse.Namespace, *,
                lock_dir: Path | None = None) -> int:
    from agent import controls

    user = controls.current_user()
    state_dir = cfg.agent.state_dir
    if args.command == "freeze":
        rec, before = controls.freeze(state_dir, args.reason, user)
        if before is not None:
            print(f"was {_describe(before)}")
        print(_describe(rec))
        print("new revisions are not applied on this host (passes still fetch, validate and "
              "report) until 'gitops-agent unfreeze'")
        return EXIT_OK
    if args.command == "unfreeze":
        lifted = controls.unfreeze(state_dir, user)
        if lifted is None:
            print("not frozen")
        else:
            print(f"unfrozen by {user} (was {_describe(lifted)}); the next pass applies the "
                  "desired revision")
        return EXIT_OK
    return _rollback(cfg, args.to, user, lock_dir or state_dir)


def _rollback(cfg: AgentConfig, to: str | None, user: str, lock_dir: Path) -> int:
    from agent import controls
    from agent.app import build_reconciler
    from agent.state import StateLock, StateStore

    state_dir = cfg.agent.state_dir
    StateStore(state_dir).ensure_dir()
    lock = StateLock(lock_dir)  # the agent's one lock ([[stack]]: state_dir's)
    try:
        lock.acquire()
    except LockHeld:
        pid = controls.lock_holder(lock_dir)
        if pid is None:
            raise
        print(f"the agent is running (pid {pid}): asking it to roll back before its next pass")
        a = cfg.agent
        report = controls.ask_daemon(state_dir, pid, to, user,
                                     timeout=3 * a.health_timeout_seconds + 600)
    else:
        try:
            rec = build_reconciler(cfg, report=True)
            target = controls.pick_target(rec.store.load(), to)
            from agent.timefmt import iso

            when = iso(target.at)
            digests = ", ".join(f"{s} {_short(d.digest)}"
                                for s, d in sorted(target.digests.items()))
            print(f"rolling back to {target.revision[:12]} (applied {when}): {digests}")
            report = controls.perform_rollback(rec, to, user)
        finally:
            lock.release()
    _print(report)
    return report.exit_code


def _print(r: object) -> None:
    from agent.controls import RollbackReport

    assert isinstance(r, RollbackReport)
    if r.pulled:
        print("images no longer on this host, pulled from the registry: " + ", ".join(
            f"{p.split('@')[0]} {_short(p.split('@', 1)[1])}" for p in r.pulled))
    else:
        print("all images were local: neither the git source nor the registry was needed")
    for c in r.changes:
        svc, rest = c.split(": ", 1)
        old, new = rest.split(" -> ")
        print(f"  {svc}: {_short(old if old != 'none' else None)} -> {_short(new)}")
    if r.outcome in ("applied", "no-op"):
        print(f"rolled back to {r.target[:12]}: {r.outcome}, healthy")
        print(f"host {r.frozen}")
        if r.rolled_from and r.rolled_from != r.target:
            print(f"revision {r.rolled_from[:12]} is marked failed (not retried until a new "
                  "commit or 'sync --force'); 'gitops-agent unfreeze' resumes releases")
    else:
        first = (r.reason or "").splitlines()[0] if r.reason else ""
        print(f"gitops-agent: rollback to {r.target[:12]}: {r.outcome}: {first}",
              file=sys.stderr)
        print("the host is not frozen by this rollback", file=sys.stderr)
