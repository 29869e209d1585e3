"""The commands on a config of ``[[stack]]`` tables: each stack in its own section (or one
JSON object with a ``stacks`` list), ``--stack NAME`` for one. The exit code is the worst
of the stacks' (the highest)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.stacks import StackSet
from agent.stacks_config import AgentFile, StackSpec

if TYPE_CHECKING:
    from agent.reconcile import Reconciler

OneStack = Callable[[AgentConfig, argparse.Namespace, Path | None, "Reconciler | None"], int]


def for_each_stack(file: AgentFile, specs: list[StackSpec], args: argparse.Namespace,
                   one: OneStack) -> int:
    if args.command == "sync":
        return sync_stacks(file, args.stack, force=args.force)
    if args.command == "rollback" and len(specs) > 1:
        raise ConfigError("--stack", [
            "rollback undoes one stack's release: name it with --stack NAME (stacks: "
            + ", ".join(file.names()) + ")"])
    stacks = StackSet.build(file, only=args.stack) if args.command in ("status", "diff") \
        else None
    as_json = bool(getattr(args, "json", False))
    codes: list[int] = []
    docs: list[dict[str, object]] = []
    try:
        for i, spec in enumerate(specs):
            rec = stacks.run(spec.name).rec if stacks is not None else None
            if as_json:
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    code = one(spec.cfg, args, file.state_dir, rec)
                doc = json.loads(out.getvalue()) if out.getvalue().strip() else {}
                docs.append({"stack": spec.name, **doc, "exit_code": code})
            else:
                if len(specs) > 1:  # --stack NAME: that stack's output as it is
                    print(("\n" if i else "") + f"== stack {spec.name} ==", flush=True)
                code = one(spec.cfg, args, file.state_dir, rec)
            codes.append(code)
    finally:
        if stacks is not None:
            stacks.close()
    code = max(codes)
    if as_json:
        print(json.dumps({"kind": "stacks", "version": 1, "command": args.command,
                          "exit_code": code, "stacks": docs}, indent=2))
    return code


def sync_stacks(file: AgentFile, only: str | None, *, force: bool) -> int:
    """One round, as the daemon runs it: every stack (or ``only``), a repo fetched once, a
    stack after the stacks it depends on, under the agent's one lock."""
    from agent.state import StateLock, StateStore

    StateStore(file.state_dir).ensure_dir()
    stacks = StackSet.build(file, report=True, only=only)
    try:
        with StateLock(file.state_dir):
            results = stacks.run_round(lambda run: run.rec.run_pass(force=force))
    finally:
        stacks.close()
    codes = []
    for spec in file.select(only):
        r = results.get(spec.name)
        if r is None:
            print(f"gitops-agent: stack {spec.name}: the pass crashed (see the log)",
                  file=sys.stderr)
            codes.append(1)
            continue
        rev = (r.revision or "-")[:12]
        line = f"stack {spec.name}: {r.outcome} at {rev}"
        if r.exit_code != 0:
            first = (r.reason or "").splitlines()[0] if r.reason else ""
            print(f"gitops-agent: {line}" + (f": {first}" if first else ""), file=sys.stderr)
        else:
            print(line + (f": {r.reason}" if r.reason and not r.ok else ""))
        codes.append(r.exit_code)
    return max(codes)
