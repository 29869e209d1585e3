"""`gitops-agent bump`: the command line and the file around :func:`agent.bump.bump_text`.

:func:`bump_file` reads desired-state.yml, hands its text to the pure edit and writes the
result back atomically (keeping the file's mode; a symlink stays a symlink);
:func:`changes_from_items` turns the ordered ``--service/--digest/--tag/--image`` options
into :class:`~agent.bump.DigestBump` values; :func:`add_bump_parser` and :func:`cmd_bump`
are the sub-command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError, DesiredStateError, StateWriteError

if TYPE_CHECKING:
    from agent.bump import DigestBump

# agent.bump (the edit itself) is imported where it is used: every command builds the
# parser, so the daemon would otherwise carry the round-trip editor it never runs.

DEFAULT_FILE = Path("desired-state.yml")


class BumpWriteError(AgentError):
    """The edited file could not be written. Exit 1; the old file is intact."""


# --------------------------------------------------------------------------- file
def bump_file(
    path: Path,
    changes: Sequence[DigestBump],
    *,
    force: bool = False,
    skip_pinned: bool = False,
    dry_run: bool = False,
) -> tuple[bool, list[str]]:
    """Bump ``path`` in place, atomically. Returns (changed, messages)."""
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DesiredStateError(source, [f"cannot read: {e.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DesiredStateError(source, [f"not UTF-8 text (byte {e.start})"]) from None
    from agent.bump import bump_text

    new_text, messages = bump_text(
        text, changes, force=force, skip_pinned=skip_pinned, source=source
    )
    if new_text == text:
        return False, messages
    if dry_run:
        return True, messages
    target = path.resolve()  # a symlinked desired-state.yml stays a symlink
    try:
        mode = target.stat().st_mode & 0o7777
        write_atomic(target, new_text.encode("utf-8"), mode=mode)
    except (OSError, StateWriteError) as e:
        # write_atomic words its error for the state_dir; keep only the cause.
        reason = str(e).split(" (state_dir")[0]
        raise BumpWriteError(f"{reason}; {path} is unchanged") from None
    return True, messages


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    from agent.state import write_atomic as _write_atomic

    _write_atomic(path, data, mode=mode)


# --------------------------------------------------------------------------- CLI
_FIELDS = {"--service": "service", "--digest": "digest", "--tag": "tag", "--image": "image"}


class _InOrder(argparse.Action):
    """Records (field, value) in command-line order, so --service starts a group."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = list(getattr(namespace, "bump_items", None) or [])
        items.append((_FIELDS[option_string or ""], str(values)))
        namespace.bump_items = items


def changes_from_items(items: Sequence[tuple[str, str]], source: str = "bump") -> list[DigestBump]:
    """Group ``(field, value)`` pairs into changes: each ``--service`` starts a group.

    Options before the first ``--service`` belong to the first group, so
    ``--digest D --service S`` works for a single service.
    """
    from agent.bump import BumpUsageError, DigestBump

    groups: list[dict[str, str]] = []
    pending: dict[str, str] = {}
    problems: list[str] = []
    for field, value in items:
        if field == "service":
            groups.append({"service": value})
            if len(groups) == 1 and pending:
                groups[0].update(pending)
                pending = {}
            continue
        target = groups[-1] if groups else pending
        if field in target:
            who = target.get("service", "the first service")
            problems.append(f"--{field} given twice for {who}")
        target[field] = value
    if pending:
        problems.append("--digest/--tag/--image given but no --service")
    for g in groups:
        if "digest" not in g:
            problems.append(f"--service {g['service']} needs a --digest")
    if problems:
        raise BumpUsageError(source, problems)
    return [DigestBump(g["service"], g["digest"], g.get("tag"), g.get("image")) for g in groups]


def add_bump_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bump",
        help="set services' digests in desired-state.yml (keeps comments and layout)",
        description=(
            "Set one or more services' digests in desired-state.yml, in place, keeping\n"
            "comments, key order and formatting. Several services in one call: repeat the\n"
            "group '--service NAME --digest DIGEST [--tag TAG] [--image REPO]'; each\n"
            "--service starts a new group and the options after it apply to it. The call\n"
            "is all or nothing. Bumping to the digest already there changes nothing."
        ),
        epilog=(
            "examples:\n"
            "  gitops-agent bump --service web --digest sha256:<64 hex> --tag sha-1a2b3c4\n"
            "  gitops-agent bump deploy/desired-state.yml \\\n"
            "      --service api --digest sha256:<64 hex> \\\n"
            "      --service worker --digest sha256:<64 hex> --image ghcr.io/acme/shop/worker\n"
            "exit codes: 0 bumped or already there; 1 refused (pinned service without\n"
            "--force or --skip-pinned) or unwritable; 2 invalid (malformed digest, unknown\n"
            "service without --image, invalid file or arguments)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, nargs="?", default=DEFAULT_FILE,
                   help=f"the desired-state file (default {DEFAULT_FILE})")
    p.add_argument("--service", metavar="NAME", action=_InOrder, dest="bump_items",
                   help="service to bump; starts a new group (repeatable)")
    p.add_argument("--digest", metavar="sha256:HEX", action=_InOrder, dest="bump_items",
                   help="its new digest (required in each group)")
    p.add_argument("--tag", metavar="TAG", action=_InOrder, dest="bump_items",
                   help="record this tag next to the digest (else a stale tag is removed)")
    p.add_argument("--image", metavar="REPO", action=_InOrder, dest="bump_items",
                   help="the image repository (no tag); adds the service if it is new, "
                        "changes the repository if it differs")
    p.add_argument("--force", action="store_true",
                   help="bump pinned services too (they stay pinned)")
    p.add_argument("--skip-pinned", action="store_true",
                   help="leave pinned services as they are and bump the others, instead of "
                        "refusing the whole call (what the release workflow does)")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would change; write nothing")


def cmd_bump(args: argparse.Namespace) -> int:
    path: Path = args.file
    changes = changes_from_items(getattr(args, "bump_items", None) or [], str(path))
    changed, messages = bump_file(path, changes, force=args.force,
                                  skip_pinned=args.skip_pinned, dry_run=args.dry_run)
    for m in messages:
        print(m)
    if not changed:
        print(f"{path}: already up to date; nothing changed")
    elif args.dry_run:
        print(f"{path}: would be changed (dry run; nothing written)")
    else:
        print(f"{path}: updated")
    sys.stdout.flush()
    return 0


__all__ = [
    "BumpWriteError",
    "add_bump_parser",
    "bump_file",
    "changes_from_items",
    "cmd_bump",
]
