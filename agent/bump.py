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

This module is the pure part: :func:`bump_text` (text in, text and messages out) and the
validation of the requested :class:`DigestBump` values. It reads no file and parses no
command line; :mod:`agent.bump_cli` adds the reading, the atomic write and the
``gitops-agent bump`` command.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
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
from agent.errors import AgentError, DesiredStateError, InvalidInput


class BumpRefused(AgentError):
    """The bump is well-formed but refused (a pinned service without --force). Exit 1."""


class BumpUsageError(InvalidInput):
    """The command line does not describe a bump (e.g. --digest without --service). Exit 2."""


@dataclass(frozen=True)
class DigestBump:
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


def check_changes(changes: Sequence[DigestBump]) -> list[str]:
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
    old: DesiredState, changes: Sequence[DigestBump], source: str
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
    changes: Sequence[DigestBump],
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


__all__ = [
    "BumpRefused",
    "BumpUsageError",
    "DigestBump",
    "bump_text",
    "check_changes",
]
