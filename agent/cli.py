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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import log as agent_log
from agent import queries_cli
from agent.config import DEFAULT_CONFIG_PATH, AgentConfig
from agent.errors import AgentError, ConfigError
from agent.outcomes import EXIT_ENVIRONMENT, EXIT_INVALID, EXIT_OK, disposition
from agent.queries_cli import STATUS_EPILOG, cmd_history
from agent.queries_cli import STATUS_ROLLED_BACK as STATUS_ROLLED_BACK  # tests read it here

if TYPE_CHECKING:
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


def cmd_status(cfg: AgentConfig, *, as_json: bool, rec: Reconciler | None = None) -> int:
    return queries_cli.cmd_status(rec or _reconciler(cfg), as_json=as_json)


def cmd_diff(cfg: AgentConfig, *, as_json: bool = False, exit_code: bool = False,
             rec: Reconciler | None = None) -> int:
    from agent.state import StateStore

    StateStore(cfg.agent.state_dir).ensure_dir()
    return queries_cli.cmd_diff(rec or _reconciler(cfg), as_json=as_json, exit_code=exit_code)


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

