"""Command line. The only place that turns errors into exit codes.

Exit codes:
  0  the project runs the desired digests and is healthy (a no-op pass included)
  1  the release failed: not applied (pull failed, registry refused credentials) or applied
     and rolled back, or a failed revision that is not retried; the last known-good digests run
  2  invalid input: agent config, desired-state.yml or compose files (nothing touched)
  3  transient: the source or the Docker engine could not be reached (nothing touched)
  4  the agent cannot keep a record here (state_dir unwritable or full, lock held)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import log as agent_log
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig
from agent.errors import AgentError, ConfigError
from agent.outcomes import EXIT_ENVIRONMENT, EXIT_INVALID, EXIT_OK, disposition
from agent.state import GATE_OUTCOMES

if TYPE_CHECKING:
    from agent.queries import DiffView, StatusView
    from agent.reconcile import Reconciler


def _die(err: AgentError) -> int:
    print(f"gitops-agent: {err}", file=sys.stderr)
    return disposition(err).exit_code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gitops-agent",
        description="Pull-based GitOps agent for Docker Compose hosts.",
        epilog="Exit codes: 0 ok, 1 release failed, 2 invalid input, 3 source/engine "
        "unreachable, 4 cannot keep a record (state_dir, lock).",
    )
    from agent import __version__

    p.add_argument("--version", action="version", version=f"gitops-agent {__version__}")
    _common_options(p, default=True)
    sub = _Sub(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    s = sub.add_parser("sync", help="one reconcile pass")
    s.add_argument("--force", action="store_true", help="retry a revision that failed before")

    s = sub.add_parser(
        "status", help="desired vs running, health, last outcome",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=STATUS_EPILOG)
    s.add_argument("--json", action="store_true",
                   help="one JSON object on stdout (kind \"status\", version 1)")
    s.add_argument("--output", choices=("text", "json"), default=None,
                   help="--output json is --json")

    s = sub.add_parser("diff", help="what a sync would change, changing nothing",
                       epilog="Exit codes: 0 (with --exit-code: a sync would change nothing), "
                       "1 (with --exit-code only: a sync would change a container or a file), "
                       "2 invalid input, 3 source unreachable, 4 state_dir.")
    s.add_argument("--json", action="store_true",
                   help="one JSON object on stdout (kind \"diff\", version 1)")
    s.add_argument("--output", choices=("text", "json"), default=None,
                   help="--output json is --json")
    s.add_argument("--exit-code", action="store_true",
                   help="exit 1 when a sync would change something, 0 when not "
                   "(like git diff --exit-code)")

    s = sub.add_parser(
        "check-config", help="check the agent config and everything it points at "
        "(changes nothing)",
        epilog="Exit codes: 0 clean ('config OK: PATH'), 2 problems (each one line on "
        "stderr: PATH: key: what).")

    s = sub.add_parser(
        "validate", help="validate a desired-state file (needs no agent config; with "
        "--config, the agent config too, as check-config)",
        epilog="Exit codes: 0 valid (everything asked was checked), 2 invalid, 4 the "
        "desired-state file is valid but --compose files could not be checked (no compose "
        "binary).")
    s.add_argument("file", type=Path, nargs="?", default=None,
                   help="default desired-state.yml (with --config and no file: the config "
                   "only)")
    s.add_argument("--compose", type=Path, action="append", default=[], metavar="FILE",
                   help="check against the compose project of these files, as `docker "
                   "compose config` resolves it (repeatable, in order, like -f)")
    s.add_argument("--profile", action="append", default=[], metavar="NAME",
                   help="a profile the server runs with ([compose] profiles; repeatable)")
    s.add_argument("--project-directory", type=Path, default=None, metavar="DIR",
                   help="the project directory (its .env), as [compose] project_dir; "
                   "default: the first compose file's directory")

    s = sub.add_parser(
        "init", help="bring an existing stack: a first desired-state.yml from what the "
        "compose project runs now (needs no agent config)",
        epilog="Exit codes: 0 written (or printed), 2 --out exists (use --force), 3 the "
        "Docker engine is unreachable.")
    s.add_argument("--project-dir", type=Path, required=True, metavar="DIR")
    s.add_argument("-f", "--file", dest="files", action="append", default=[],
                   metavar="FILE", help="compose file (repeatable); default compose.yml")
    s.add_argument("--name", default=None, metavar="PROJECT",
                   help="compose project name (default: DIR's name, as compose)")
    s.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="write here (atomically) instead of stdout")
    s.add_argument("--force", action="store_true", help="overwrite --out")

    s = sub.add_parser("history", help="recorded passes, newest first")
    s.add_argument("--json", action="store_true",
                   help="one JSON object on stdout (kind \"history\", version 1)")
    s.add_argument("--output", choices=("text", "json"), default=None,
                   help="--output json is --json")
    s.add_argument("-n", type=int, default=20, help="how many (default 20)")

    sub.add_parser("run", help="the daemon: a pass every interval; SIGHUP for one now")

    s = sub.add_parser("freeze", help="stop applying new revisions on this host")
    s.add_argument("--reason", required=True, help="shown in status and history")
    sub.add_parser("unfreeze", help="resume applying new revisions")
    s = sub.add_parser("rollback", help="back to the previous applied release from local "
                       "images (no git, no registry when the images are local); then frozen")
    s.add_argument("--to", default=None, metavar="REVISION",
                   help="a recorded release (see status) instead of the previous one")

    from agent.bump_cli import add_bump_parser

    add_bump_parser(sub)
    return p


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


from agent.timefmt import iso  # noqa: E402  (one format for every command)

_TIME_KEYS = ("at", "started_at", "target_at")


def _times(doc: object) -> object:
    """``doc`` with every timestamp (keys at, started_at) in :func:`iso` form."""
    if isinstance(doc, dict):
        return {k: (iso(v) if k in _TIME_KEYS and v is not None else _times(v))
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [_times(v) for v in doc]
    return doc


def _common_options(p: argparse.ArgumentParser, *, default: bool) -> None:
    """--config and the log options, before or after the subcommand. Only the top-level
    parser sets defaults (a subcommand's would override what came before it)."""
    keep = argparse.SUPPRESS
    p.add_argument("--config", type=Path, default=None if default else keep,
                   help=f"agent config (TOML); default $GITOPS_AGENT_CONFIG, else "
                   f"{DEFAULT_CONFIG_PATH}")
    p.add_argument("--stack", default=None if default else keep, metavar="NAME",
                   help="with [[stack]] tables: only this stack (default: every stack, one "
                   "section each)")
    p.add_argument("--log-format", choices=("auto", "json", "console"),
                   default="auto" if default else keep)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default="info" if default else keep)


class _Sub:
    """Subcommand parsers that accept the common options too."""

    def __init__(self, actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self.actions = actions

    def add_parser(self, name: str, **kw: object) -> argparse.ArgumentParser:
        s = self.actions.add_parser(name, **kw)  # type: ignore[arg-type]
        _common_options(s, default=False)
        return s


def config_path(args: argparse.Namespace) -> Path:
    """--config, else $GITOPS_AGENT_CONFIG, else the default path."""
    import os

    if args.config is not None:
        return Path(args.config)
    env = os.environ.get("GITOPS_AGENT_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def main(argv: Sequence[str] | None = None, *, configure_logging: bool = True) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "output", None) == "json":
        args.json = True
    if args.command == "validate":
        args.file_given = args.file is not None
        if args.file is None:
            args.file = Path("desired-state.yml")
    if configure_logging:
        json_logs = {"auto": None, "json": True, "console": False}[args.log_format]
        agent_log.configure(json=json_logs, level=args.log_level)
    try:
        if args.command == "init":
            return cmd_init(args)
        if args.command == "check-config":
            return cmd_check_config(config_path(args))
        if args.command == "validate":
            code = cmd_check_config(Path(args.config)) if args.config is not None else EXIT_OK
            if args.config is not None and not args.file_given:
                return code
            return max(code, cmd_validate(args)) if code else cmd_validate(args)
        if args.command == "bump":
            from agent.bump_cli import cmd_bump

            return cmd_bump(args)
        from agent.stacks_config import load_agent_file

        file = load_agent_file(config_path(args))
        specs = file.select(args.stack)
        if args.command == "run":
            if args.stack is not None:
                raise ConfigError("--stack", ["run serves every stack of the config; --stack "
                                              "is for sync, status, diff, history and the "
                                              "operator commands"])
            from agent.daemon import run_daemon

            return run_daemon(file if file.multi else specs[0].cfg)
        if file.multi:
            from agent.stacks_cli import for_each_stack

            return for_each_stack(file, specs, args, one_stack)
        return one_stack(specs[0].cfg, args, None)
    except AgentError as e:
        return _die(e)
    except KeyboardInterrupt:
        return 130


def one_stack(cfg: AgentConfig, args: argparse.Namespace, lock_dir: Path | None,
              rec: Reconciler | None = None) -> int:
    """The command on one stack (``lock_dir``: the agent's lock, with [[stack]] tables
    state_dir's rather than the stack's own; ``rec``: its pass as agent/stacks.py built it,
    reading the shared repo)."""
    try:
        if args.command == "sync":
            return cmd_sync(cfg, force=args.force, lock_dir=lock_dir)
        if args.command == "status":
            return cmd_status(cfg, as_json=args.json, rec=rec)
        if args.command == "diff":
            return cmd_diff(cfg, as_json=args.json, exit_code=args.exit_code, rec=rec)
        if args.command == "history":
            return cmd_history(cfg, as_json=args.json, n=args.n)
        if args.command in ("freeze", "unfreeze", "rollback"):
            from agent.controls_cli import cmd_control

            return cmd_control(cfg, args, lock_dir=lock_dir)
    except AgentError as e:
        return _die(e)
    raise AssertionError(args.command)  # pragma: no cover


def _reconciler(cfg: AgentConfig, *, report: bool = False) -> Reconciler:
    """The pass as agent/app.py wires it (only a pass reports: sync, rollback)."""
    from agent.app import build_reconciler

    return build_reconciler(cfg, report=report)


def cmd_sync(cfg: AgentConfig, *, force: bool, lock_dir: Path | None = None) -> int:
    from agent.state import StateLock, StateStore

    StateStore(cfg.agent.state_dir).ensure_dir()
    rec = _reconciler(cfg, report=True)
    with StateLock(lock_dir or cfg.agent.state_dir):
        result = rec.run_pass(force=force)
    code = result.exit_code
    if code != EXIT_OK and result.reason:
        first = result.reason.splitlines()
        print(f"gitops-agent: {result.outcome}: {first[0]}", file=sys.stderr)
        for line in first[1:]:
            print(line, file=sys.stderr)
    elif result.outcome in ("frozen", "waiting", "held"):  # a gate: nothing applied, exit 0
        print(f"gitops-agent: {result.outcome}: {result.reason}")
    return code


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0: everything asked was checked and is valid; 2: invalid; 4: the desired-state
    file is valid but the compose files given could NOT be checked (no compose binary)."""
    from agent.validation import validate

    file: Path = args.file
    verdict = validate(file, args.compose, profiles=args.profile,
                       project_dir=args.project_directory)
    n = len(verdict.desired.services)
    if verdict.compose_files:
        print(f"{file}: valid ({n} services), checked against "
              f"{', '.join(str(f) for f in verdict.compose_files)} by docker compose")
        return EXIT_OK
    if verdict.not_checked is None:
        print(f"{file}: valid ({n} services); the desired-state file only (no --compose)")
        return EXIT_OK
    print(f"{file}: valid ({n} services); the desired-state file only", file=sys.stderr)
    print(f"gitops-agent: compose files NOT checked ({verdict.not_checked}): install docker "
          "compose v2 to check them, or drop --compose", file=sys.stderr)
    return EXIT_ENVIRONMENT


def _short(d: str | None) -> str:
    return "-" if not d else d.removeprefix("sha256:")[:12]


def cmd_init(args: argparse.Namespace) -> int:
    from agent.init_stack import desired_from_running, write_new

    out: Path | None = args.out
    if out is not None and out.exists() and not args.force:
        print(f"gitops-agent: {out} exists; nothing written (--force to overwrite)",
              file=sys.stderr)
        return EXIT_INVALID
    result = desired_from_running(args.project_dir, args.files, args.name)
    for w in result.warnings:
        print(f"gitops-agent: warning: {w}", file=sys.stderr)
    if out is None:
        sys.stdout.write(result.text)
        return EXIT_OK
    write_new(out, result.text, force=args.force)
    print(f"wrote {out} ({len(result.services)} services)")
    return EXIT_OK


def cmd_check_config(path: Path) -> int:
    from agent.check_config import check_config, render

    problems = check_config(path)
    if not problems:
        print(f"config OK: {path}")
        return EXIT_OK
    for line in render(path, problems):
        print(line, file=sys.stderr)
    return EXIT_INVALID


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


def cmd_status(cfg: AgentConfig, *, as_json: bool, rec: Reconciler | None = None) -> int:
    from agent import queries

    view = queries.status(rec or _reconciler(cfg))
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


def cmd_diff(cfg: AgentConfig, *, as_json: bool = False, exit_code: bool = False,
             rec: Reconciler | None = None) -> int:
    from agent import queries
    from agent.state import StateStore

    StateStore(cfg.agent.state_dir).ensure_dir()
    view = queries.diff(rec or _reconciler(cfg))
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

