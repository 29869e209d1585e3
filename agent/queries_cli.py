"""The read-only commands: ``status``, ``diff`` and ``history``, rendered as text or as
their documented JSON (kind, version 1), each with its exit code (STATUS_EPILOG).

The views come from agent/queries.py; agent/cli.py builds the pass they read and dispatches.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from agent.outcomes import EXIT_ENVIRONMENT, EXIT_OK
from agent.state import GATE_OUTCOMES
from agent.timefmt import iso

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.queries import DiffView, StatusView
    from agent.reconcile import Reconciler

# 3 and 4 mean what they mean for every command (unreachable; state_dir / socket refused)
STATUS_OK, STATUS_BEHIND, STATUS_ENGINE_DOWN, STATUS_ROLLED_BACK = 0, 1, 3, 5
STATUS_EPILOG = """\
Exit codes:
  0  at the desired revision and healthy (or deliberately held there: frozen, outside a
     deploy window, waiting for a rollout wave)
  1  not at the desired revision, a managed service not healthy, or the last pass failed
  2  the agent config is invalid
  3  the Docker engine is unreachable (the recorded last outcome is shown)
  4  state_dir cannot be read, or the Docker socket refuses this user
  5  rolled back: the desired revision failed and the host runs the previous release
Times are ISO 8601 UTC (2026-01-31T12:00:00Z)."""


_TIME_KEYS = ("at", "started_at", "target_at")


def _times(doc: object) -> object:
    """``doc`` with every timestamp (keys at, started_at) in :func:`iso` form."""
    if isinstance(doc, dict):
        return {k: (iso(v) if k in _TIME_KEYS and v is not None else _times(v))
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [_times(v) for v in doc]
    return doc


def _short(d: str | None) -> str:
    return "-" if not d else d.removeprefix("sha256:")[:12]


def status_exit_code(view: StatusView) -> int:
    """The status table (STATUS_EPILOG)."""
    if view.engine_problem is not None:
        return EXIT_ENVIRONMENT if view.engine_error == "LocalPermissionDenied" \
            else STATUS_ENGINE_DOWN
    managed = [s for s in view.services if s.desired is not None or s.known_good is not None]
    last = view.last_attempted or {}
    gated = last.get("outcome") in GATE_OUTCOMES and \
        last.get("revision") == view.desired_revision
    if view.rolled_back is not None:
        ok = all(s.running == s.known_good and s.health in ("healthy", "running")
                 for s in managed if s.known_good is not None)
        return STATUS_ROLLED_BACK if ok else STATUS_BEHIND
    if view.desired_revision is None or view.desired_problem:
        return STATUS_BEHIND
    for s in managed:
        if gated and s.running is None:
            continue  # held before its first release here
        if s.health not in ("healthy", "running"):
            return STATUS_BEHIND
        if s.desired is not None and s.running != s.desired and not gated:
            return STATUS_BEHIND
    if last.get("outcome") in ("failed", "rolled-back", "invalid", "error", "degraded",
                               "skipped"):
        return STATUS_BEHIND
    return STATUS_OK


def cmd_status(rec: Reconciler, *, as_json: bool) -> int:
    """``status`` of the stack ``rec`` runs."""
    from agent import queries

    view = queries.status(rec)
    code = status_exit_code(view)
    if as_json:
        doc = {"kind": "status", "version": 1, "exit_code": code,
               **_times(view.to_json())}  # type: ignore[dict-item]
        print(json.dumps(doc, indent=2))
        return code
    files = (f"   files from {_short(view.files_revision)}"
             if view.files_revision is not None else "")
    print(f"project {view.project}   desired revision {_short(view.desired_revision)}{files}")
    if view.engine_problem:
        print(f"ENGINE UNREACHABLE: {view.engine_problem.splitlines()[0]}; running digests "
              "and health unknown, the recorded outcome follows")
    if view.rolled_back:
        print(f"ROLLED BACK: rolled back from {view.rolled_back['from'][:12]}, running "
              f"{view.rolled_back['running'][:12]}")
    if view.frozen:
        fr = view.frozen
        text = (f"frozen by {fr['by']} at {iso(fr['at'])}: {fr['reason']}"
                if fr.get("by") is not None else fr["describe"])
        print(f"FROZEN: {text} ('gitops-agent unfreeze' to resume)")
    if view.desired_problem:
        print(f"  desired state: {view.desired_problem}")
    rows: list[tuple[str, ...]] = [("SERVICE", "DESIRED", "RUNNING", "HEALTH", "REPLICAS", "")]
    for s in view.services:
        note = "pinned" if s.pinned else ""
        if s.desired and s.running != s.desired and not view.engine_problem:
            back = view.rolled_back is not None and s.running == s.known_good
            note = (note + (" rolled-back" if back else " out-of-date")).strip()
        if s.config_matches is False:
            note = (note + " config-differs").strip()
        rows.append((s.service, _short(s.desired), _short(s.running), s.health,
                     s.replicas or "", note))
    if not any(s.replicas for s in view.services):  # compose: no replicas column
        rows = [(*r[:4], r[5]) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for key, v in (("last_attempted", view.last_attempted),
                   ("last_applied", view.last_applied)):
        label = key.replace("_", " ")
        if v:
            reason = f" — {v['reason'].splitlines()[0]}" if v.get("reason") else ""
            print(f"{label}: {_short(v['revision'])} {v['outcome']} at {iso(v['at'])}{reason}")
        else:
            print(f"{label}: never")
    if view.last_release:
        print(f"last release changed: {'; '.join(view.last_release)}")
    for t in view.rollback_targets:  # what `rollback` can return to from local images
        print(f"rollback target on disk: {_short(str(t['revision']))} applied {iso(t['at'])}")
    if view.wave is not None:
        print(f"rollout wave: {view.wave}")
    return code


def diff_json(view: DiffView) -> dict[str, object]:
    """The documented ``diff --json`` object (kind "diff", version 1)."""
    return {
        "kind": "diff", "version": 1, "revision": view.revision, "origin": view.origin,
        "failed_before": view.failed_before, "would_change": _would_change(view),
        "changes": [{"service": c.service, "image": c.image, "old": c.old, "new": c.new,
                     "config": view.config.get(c.service, []), "because": list(c.because)}
                    for c in view.changes],
        "unverified": list(view.unverified), "config_drift": list(view.config_drift),
        "files_written": list(view.files_written), "files_removed": list(view.files_removed),
    }


def _would_change(view: DiffView) -> bool:
    """A sync would recreate a container or write/remove a file (verifying a service that
    already runs its target, or config drift the pass does not act on, changes nothing)."""
    return bool(view.changes or view.files_written or view.files_removed)


def cmd_diff(rec: Reconciler, *, as_json: bool = False, exit_code: bool = False) -> int:
    """``diff`` of the stack ``rec`` runs (its state_dir exists: agent/cli.py made it)."""
    from agent import queries

    view = queries.diff(rec)
    code = 1 if exit_code and _would_change(view) else EXIT_OK
    if as_json:
        print(json.dumps(diff_json(view), indent=2))
        return code
    note = " (failed before: not retried without --force)" if view.failed_before else ""
    if view.origin == "cached":
        note += " (as last fetched by the running agent)"
    print(f"revision {view.revision[:12]}{note}")
    if not (view.changes or view.unverified or view.config_drift or view.files_written
            or view.files_removed):
        print("no changes")
    for c in view.changes:
        keys = view.config.get(c.service)
        what = (f"config: {', '.join(keys)}" if c.old == c.new and keys
                else f"{_short(c.old)} -> {_short(c.new)}")
        if keys and c.old != c.new:
            what += f"; config: {', '.join(keys)}"
        print(f"~ {c.service}: {what}  ({c.image})")
    for s in view.config_drift:
        print(f"! {s}: running configuration differs from the compose files in project_dir")
    for f in view.files_written:
        print(f"> {f}: written from git")
    for f in view.files_removed:
        print(f"- {f}: removed (git no longer has it)")
    for s in view.unverified:
        print(f"? {s}: running the target digest, not yet verified healthy")
    return code


def cmd_history(cfg: AgentConfig, *, as_json: bool, n: int) -> int:
    from agent.state import StateStore

    state = StateStore(cfg.agent.state_dir).load()
    records = state.history[: max(0, n)]
    if as_json:
        doc = {"kind": "history", "version": 1,
               "passes": _times([r.model_dump(mode="json") for r in records])}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    if not records:
        print("no passes recorded")
    for r in records:
        rep = f" (x{r.repeats})" if r.repeats > 1 else ""
        outcome = {"rolled-back": "failed and rolled back"}.get(r.outcome, r.outcome)
        print(f"{iso(r.started_at)}  {_short(r.revision)}  {outcome}{rep}  "
              f"{r.duration_seconds:.1f}s")
        for c in r.changes:
            print(f"    {c.describe()}")
        if r.reason and r.outcome not in ("applied", "no-op"):
            print(f"    reason: {r.reason.splitlines()[0]}")
    return EXIT_OK
