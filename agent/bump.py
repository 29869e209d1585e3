"""`gitops-agent bump`: set services' digests in desired-state.yml, in place.

The release pipeline's last step (and a human's tool for bumping ``traefik`` by hand).
The file is edited as round-trip YAML, so comments, key order, quoting and indentation
survive; only the values that change are rewritten.

Rules, all checked before anything is written:

* a digest must be ``sha256:`` + 64 lowercase hex characters;
* a service not in the file is refused, unless ``--image`` gives its repository (then it
  is appended);
* a ``pinned: true`` service is refused unless ``--force`` (it stays pinned, at the new
  digest) or ``--skip-pinned`` (it is left as it is, the others are bumped);
* one call is all or nothing: a single refused service leaves the file untouched;
* bumping to the digest already there changes nothing (the file is not even rewritten);
* when the digest changes and no ``--tag`` is given, the old ``tag`` is removed: it named a
  different image;
* the result is re-parsed with the same parser the agent and ``validate`` use, and must
  equal the old state with exactly the requested changes applied, or nothing is written.

The pure part is :func:`bump_text` (text in, text and messages out); :func:`bump_file`
adds the reading and the atomic write; :func:`cmd_bump` is the CLI.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.desired import (
    DIGEST_RE,
    REPOSITORY_RE,
    SERVICE_NAME_RE,
    SERVICE_NAME_RULE,
    TAG_RE,
    DesiredState,
    parse_desired_state,
)
from agent.errors import AgentError, DesiredStateError, InvalidInput, StateWriteError

DEFAULT_FILE = Path("desired-state.yml")


class BumpRefused(AgentError):
    """The bump is well-formed but refused (a pinned service without --force). Exit 1."""


class BumpWriteError(AgentError):
    """The edited file could not be written. Exit 1; the old file is intact."""


class BumpUsageError(InvalidInput):
    """The command line does not describe a bump (e.g. --digest without --service). Exit 2."""


@dataclass(frozen=True)
class Change:
    """One requested bump: ``service`` to ``digest`` (and optionally tag, repository)."""

    service: str
    digest: str
    tag: str | None = None
    image: str | None = None


# --------------------------------------------------------------------------- pure editing
def _short(digest: str | None) -> str:
    if digest is None:
        return "(none)"
    return digest[: len("sha256:") + 12]


def check_changes(changes: Sequence[Change]) -> list[str]:
    """Problems with the requested changes themselves, whatever the file says."""
    problems: list[str] = []
    seen: set[str] = set()
    for c in changes:
        where = f"At '{c.service}'"
        if not SERVICE_NAME_RE.match(c.service):
            problems.append(
                f"{where}: {c.service!r} is not a valid service name ({SERVICE_NAME_RULE})"
            )
        if c.service in seen:
            problems.append(f"{where}: service given more than once")
        seen.add(c.service)
        if not DIGEST_RE.match(c.digest):
            problems.append(
                f"{where}: malformed digest {c.digest!r}: must be 'sha256:' followed by 64 "
                "lowercase hex characters"
            )
        if c.tag is not None and not TAG_RE.match(c.tag):
            problems.append(f"{where}: {c.tag!r} is not a valid tag")
        if c.image is not None and ("@" in c.image or not REPOSITORY_RE.match(c.image)):
            problems.append(
                f"{where}: {c.image!r} is not a valid image repository (lowercase, "
                "no tag, no digest)"
            )
    return problems


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML(typ="rt", pure=True)
    y.preserve_quotes = True
    y.width = 4096  # never fold a long line the file did not fold
    y.allow_unicode = True
    return y


def _guess_indent(text: str) -> int:
    """The mapping indent of the file: the first indented line that is not a comment."""
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if stripped and not stripped.startswith("#") and len(stripped) < len(line):
            return len(line) - len(stripped)
    return 2


def _expected_state(
    old: DesiredState, changes: Sequence[Change], source: str
) -> DesiredState:
    services: dict[str, Any] = {n: s.model_dump(exclude_defaults=True)
                                for n, s in old.services.items()}
    for c in changes:
        spec = services.setdefault(c.service, {})
        if c.image is not None:
            spec["image"] = c.image
        if spec.get("digest") != c.digest:
            spec.pop("tag", None)
        spec["digest"] = c.digest
        if c.tag is not None:
            spec["tag"] = c.tag
    try:
        return DesiredState.model_validate({"version": old.version, "services": services})
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise DesiredStateError(source, [f"the bumped state would be invalid: {e}"]) from None


def bump_text(
    text: str,
    changes: Sequence[Change],
    *,
    force: bool = False,
    skip_pinned: bool = False,
    source: str = "desired-state.yml",
) -> tuple[str, list[str]]:
    """Apply ``changes`` to desired-state YAML ``text``.

    Returns ``(new_text, messages)``; ``new_text == text`` when nothing changes. Raises
    :class:`DesiredStateError` (the file or a change is invalid, a service is unknown and
    no image is given) or :class:`BumpRefused` (a pinned service without ``force``); in
    both cases every problem is reported at once. With ``skip_pinned``, pinned services
    are left as they are (and said so) instead of refusing the whole call.
    """
    if not changes:
        raise BumpUsageError(source, ["nothing to bump: give --service NAME --digest DIGEST"])
    problems = check_changes(changes)
    if problems:
        raise DesiredStateError(source, problems)
    old = parse_desired_state(text.encode("utf-8"), source)

    refused: list[str] = []
    skipped: dict[str, str] = {}
    for c in changes:
        spec = old.services.get(c.service)
        if spec is None:
            if c.image is None:
                known = ", ".join(sorted(old.services)) or "none"
                problems.append(
                    f"At 'services.{c.service}': unknown service (the file has: {known}); "
                    "give --image REPOSITORY to add it"
                )
            continue
        changes_something = (
            spec.digest != c.digest
            or (c.tag is not None and spec.tag != c.tag)
            or (c.image is not None and spec.image != c.image)
        )
        if spec.pinned and changes_something and not force:
            if skip_pinned:
                skipped[c.service] = (
                    f"{c.service}: pinned at {_short(spec.digest)}; not bumped to "
                    f"{_short(c.digest)} (skipped)"
                )
                continue
            refused.append(
                f"{c.service} is pinned at {_short(spec.digest)}; not bumped to "
                f"{_short(c.digest)} (remove 'pinned: true' or use --force)"
            )
    if problems:
        raise DesiredStateError(source, problems)
    if refused:
        raise BumpRefused(f"{source}: " + "; ".join(refused) + "; nothing written")

    yaml = _yaml()
    indent = _guess_indent(text)
    yaml.indent(mapping=indent, sequence=indent + 2, offset=indent)
    doc = yaml.load(text)
    if text.lstrip().startswith("---"):
        yaml.explicit_start = True
    services = doc["services"]

    from ruamel.yaml.comments import CommentedMap

    messages: list[str] = []
    changed = False
    for c in changes:
        if c.service in skipped:
            messages.append(skipped[c.service])
            continue
        spec = old.services.get(c.service)
        if spec is None:
            assert c.image is not None
            node = CommentedMap()
            node["image"] = c.image
            node["digest"] = c.digest
            if c.tag is not None:
                node["tag"] = c.tag
            services[c.service] = node
            messages.append(f"{c.service}: added {c.image}@{c.digest}")
            changed = True
            continue
        node = services[c.service]
        notes: list[str] = []
        if c.image is not None and spec.image != c.image:
            node["image"] = c.image
            notes.append(f"image {spec.image} -> {c.image}")
        if spec.digest != c.digest:
            node["digest"] = c.digest
            notes.append(f"{_short(spec.digest)} -> {_short(c.digest)}")
            if c.tag is None and "tag" in node:
                _delete_key(node, "tag")
                notes.append(f"tag {spec.tag} removed (it named the old image)")
        if c.tag is not None and spec.tag != c.tag:
            if "tag" in node:
                node["tag"] = c.tag
            else:
                node.insert(list(node.keys()).index("digest") + 1, "tag", c.tag)
            notes.append(f"tag {spec.tag or '(none)'} -> {c.tag}")
        if notes:
            if spec.pinned:
                notes.append("pinned: bumped because of --force, still pinned")
            messages.append(f"{c.service}: " + ", ".join(notes))
            changed = True
        else:
            messages.append(f"{c.service}: already at {_short(c.digest)}; unchanged")

    if not changed:
        return text, messages

    out = io.StringIO()
    yaml.dump(doc, out)
    new_text = out.getvalue()
    # Never hand back a file the agent would refuse, or one that says something else.
    new = parse_desired_state(new_text.encode("utf-8"), source)
    expected = _expected_state(old, [c for c in changes if c.service not in skipped], source)
    if new != expected:  # pragma: no cover - a ruamel surprise, not an input problem
        raise DesiredStateError(
            source, ["internal error: the edited YAML does not say what was asked; nothing written"]
        )
    return new_text, messages


def _delete_key(node: Any, key: str) -> None:
    """Delete ``key`` from a round-trip mapping, keeping the lines that follow it.

    ruamel attaches the comment lines and blank lines *after* a key (up to the next key,
    even one of the parent mapping) to that key; deleting it naively would drop them.
    Its own end-of-line comment goes with it; the following lines move to the previous key.
    """
    keys = list(node.keys())
    idx = keys.index(key)
    slot = node.ca.items.get(key)
    token = slot[2] if slot and len(slot) > 2 else None
    del node[key]
    node.ca.items.pop(key, None)
    if token is None or idx == 0:
        return
    rest = token.value.split("\n", 1)[1] if "\n" in token.value else ""
    if not rest:
        return
    prev = keys[idx - 1]
    prev_slot = node.ca.items.setdefault(prev, [None, None, None, None])
    if prev_slot[2] is not None:
        prev_slot[2].value += rest
    else:
        from ruamel.yaml.error import CommentMark
        from ruamel.yaml.tokens import CommentToken

        prev_slot[2] = CommentToken("\n" + rest, CommentMark(0), None)


# --------------------------------------------------------------------------- file
def bump_file(
    path: Path,
    changes: Sequence[Change],
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


def changes_from_items(items: Sequence[tuple[str, str]], source: str = "bump") -> list[Change]:
    """Group ``(field, value)`` pairs into changes: each ``--service`` starts a group.

    Options before the first ``--service`` belong to the first group, so
    ``--digest D --service S`` works for a single service.
    """
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
    return [Change(g["service"], g["digest"], g.get("tag"), g.get("image")) for g in groups]


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
    "BumpRefused",
    "BumpUsageError",
    "BumpWriteError",
    "Change",
    "add_bump_parser",
    "bump_file",
    "bump_text",
    "changes_from_items",
    "check_changes",
    "cmd_bump",
]
