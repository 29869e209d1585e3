"""``gitops-agent validate``: a desired-state file, and optionally the compose project it
deploys, judged as the agent judges them at sync time.

One source of truth for "which services exist": compose's own model of the project
(``docker compose config``, with the same project directory, ``.env`` and profiles as on the
server), so includes, ``extends``, ``!reset``/``!override``, multi-document files,
``${VAR:?message}`` and profiles mean what compose says they mean. Without a compose binary
the compose files are not checked, and the verdict says so: it never claims more than it
checked.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.desired import (
    DesiredState,
    check_against_compose,
    parse_desired_state,
    resolve_update_orders,
)
from agent.edges.compose import Compose, find_compose_command
from agent.errors import ComposeFileError, DesiredStateError


@dataclass(frozen=True)
class Verdict:
    """What was checked, and what could not be."""

    desired: DesiredState
    compose_files: tuple[Path, ...] = ()  # checked against these (empty: not asked or not run)
    not_checked: str | None = None  # why the compose files given were NOT checked

    @property
    def complete(self) -> bool:
        """Everything asked for was checked (and found valid)."""
        return self.not_checked is None


def compose_missing(command: Sequence[str]) -> str | None:
    """Why compose v2 cannot be run here, or None when it can (``compose version``)."""
    try:
        proc = subprocess.run([*command, "version"], capture_output=True, timeout=30,
                              check=False)
    except FileNotFoundError:
        return f"{command[0]}: command not found"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{' '.join(command)} version: {e}"
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        return f"{' '.join(command)} version exited {proc.returncode}" + (
            f": {lines[-1]}" if lines else "")
    return None


def project_name_of(project_dir: Path) -> str:
    """The project name compose would derive from the directory (as the agent config does)."""
    return re.sub(r"[^a-z0-9_-]", "", project_dir.name.lower()) or "default"


def validate(
    file: Path,
    compose_files: Sequence[Path] = (),
    *,
    profiles: Sequence[str] = (),
    project_dir: Path | None = None,
    command: Sequence[str] | None = None,
) -> Verdict:
    """Raises DesiredStateError / ComposeFileError (invalid input) with every problem."""
    try:
        data = file.read_bytes()
    except OSError as e:
        raise DesiredStateError(str(file), [f"cannot read: {e.strerror}"]) from None
    desired = parse_desired_state(data, str(file))
    if not compose_files:
        return Verdict(desired)
    unreadable = [f"compose file not found: {f}" for f in compose_files if not f.is_file()]
    if unreadable:
        raise ComposeFileError(", ".join(str(f) for f in compose_files), unreadable)
    cmd = find_compose_command(command)
    why = compose_missing(cmd)
    if why is not None:
        return Verdict(desired, not_checked=why)
    root = (project_dir or compose_files[0].parent).resolve()
    compose = Compose(cmd, root, [str(f.resolve()) for f in compose_files],
                      project_name_of(root), profiles=profiles)
    services = compose.services()
    inactive = compose.inactive_services() if set(desired.services) - set(services) else {}
    names = ", ".join(str(f) for f in compose_files)
    check_against_compose(desired, services, str(file), inactive=inactive,
                          compose_files=names)
    resolve_update_orders(desired, services, str(file))
    return Verdict(desired, compose_files=tuple(compose_files))
