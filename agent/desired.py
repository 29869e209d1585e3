"""desired-state.yml: parsing and validation (the *spec*).

Pure: no Docker, git or network. Every problem is reported at once, each with its path
(``At 'services.web.digest': ...``). The parser raises only :class:`DesiredStateError`,
whatever the bytes, and never returns a partially valid state.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent

from agent.config import format_validation_error
from agent.errors import DesiredStateError

MAX_BYTES = 256 * 1024  # ~1,000 services; parsing is pure Python, so bounded
MAX_SERVICES = 1000
# The document needs 3 levels. Deeper nesting is refused while scanning: ruamel's scanner is
# quadratic in the nesting depth (10 KB of '[' took ~20 s) and its composer recursive.
MAX_DEPTH = 32

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
# A service name as compose accepts it, restricted to ASCII so lookalike characters
# (unicode tricks) cannot smuggle a second "web" in. (\Z, not $: "$" also matches before a
# trailing newline, which would let "web\n" or "sha256:...\n" through.)
SERVICE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")
# distribution/reference, without tag or digest: [host[:port]/]path-component(/component)*
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
REPOSITORY_RE = re.compile(rf"^(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")

UpdateOrder = Literal["start-first", "stop-first"]


class ServiceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    image: str
    digest: str
    tag: str | None = None
    pinned: bool = False
    update: UpdateOrder | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if "@" in v:
            raise ValueError("must be a repository without a digest; put the digest in 'digest'")
        if len(v) > 255:
            raise ValueError("repository name longer than 255 characters")
        if not REPOSITORY_RE.match(v):
            last = v.rsplit("/", 1)[-1]
            if ":" in last:
                raise ValueError(
                    f"{v!r} carries a tag; images are pinned by digest: give the repository "
                    "here, the digest in 'digest' (and the tag, if wanted, in 'tag')"
                )
            raise ValueError(f"{v!r} is not a valid image repository (lowercase, no tag)")
        return v

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not DIGEST_RE.match(v):
            algo = v.split(":", 1)[0] if ":" in v else ""
            if algo and algo != "sha256":
                raise ValueError(f"digest algorithm {algo!r} is not supported; use sha256")
            raise ValueError("must be 'sha256:' followed by 64 lowercase hex characters")
        return v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        if v is not None and not TAG_RE.match(v):
            raise ValueError(f"{v!r} is not a valid tag")
        return v

    @property
    def reference(self) -> str:
        return f"{self.image}@{self.digest}"


class DesiredState(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: Literal[1]
    services: Annotated[dict[str, ServiceSpec], Field(max_length=MAX_SERVICES)]

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_int(cls, v: Any) -> Any:
        # Literal[1] compares by equality: without this, true and 1.0 would pass as 1.
        if type(v) is not int:
            raise ValueError(f"must be the integer 1, not {type(v).__name__} {v!r}")
        return v

    @field_validator("services", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            bad = [k for k in v if not isinstance(k, str) or not SERVICE_NAME_RE.match(k)]
            if bad:
                raise ValueError(
                    "service names must be strings of lowercase ASCII letters, digits, "
                    f"'.', '_' or '-': {', '.join(repr(b) for b in bad[:5])}"
                )
        return v

    def digests(self) -> dict[str, str]:
        return {name: s.digest for name, s in self.services.items()}


def load_yaml(data: bytes, source: str) -> Any:
    if len(data) > MAX_BYTES:
        raise DesiredStateError(source, [f"file is {len(data)} bytes; the limit is {MAX_BYTES}"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DesiredStateError(source, [f"not UTF-8 text (byte {e.start})"]) from None
    try:
        depth = 0
        for event in YAML(typ="safe", pure=True).parse(io.StringIO(text)):
            mark = event.start_mark
            line = f" at line {mark.line + 1}" if mark is not None else ""
            if isinstance(event, AliasEvent):
                raise DesiredStateError(
                    source, [f"YAML aliases (*name) are not allowed{line}"]
                )
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise DesiredStateError(
                        source, [f"nested deeper than {MAX_DEPTH} levels{line}"]
                    )
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
        return YAML(typ="safe", pure=True).load(text)
    except DesiredStateError:
        raise
    except YAMLError as e:
        one_line = " ".join(str(e).split())
        raise DesiredStateError(source, [f"not valid YAML: {one_line}"]) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as e:
        raise DesiredStateError(source, [f"not valid YAML: {type(e).__name__}: {e}"]) from None


def parse_desired_state(data: bytes, source: str = "desired-state.yml") -> DesiredState:
    """Parse and validate desired-state.yml bytes. Raises only DesiredStateError."""
    doc = load_yaml(data, source)
    if not isinstance(doc, dict):
        raise DesiredStateError(
            source, [f"At '(top level)': expected a mapping, got {type(doc).__name__}"]
        )
    try:
        return DesiredState.model_validate(doc)
    except ValidationError as e:
        raise DesiredStateError(source, format_validation_error(e)) from None
    except (RecursionError, TypeError, ValueError) as e:  # defensive: never leak others
        raise DesiredStateError(source, [f"invalid document: {type(e).__name__}"]) from None


def check_against_compose(
    desired: DesiredState, compose_services: Iterable[str], source: str
) -> None:
    """A service listed in desired-state but absent from the compose files is an error."""
    known = set(compose_services)
    problems = [
        f"At 'services.{name}': no service {name!r} in the compose files "
        f"(they define: {', '.join(sorted(known)) or 'nothing'})"
        for name in desired.services
        if name not in known
    ]
    if problems:
        raise DesiredStateError(source, problems)


def registry_of(image: str) -> str:
    """The registry host of an image repository (``docker.io`` when it names none)."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def check_allowed_images(desired: DesiredState, allowed: list[str] | None, source: str) -> None:
    if allowed is None:
        return
    problems = [
        f"At 'services.{name}.image': {spec.image!r} is outside the allowlist "
        f"([trust] allowed_images)"
        for name, spec in desired.services.items()
        if not any(_image_allowed(spec.image, prefix) for prefix in allowed)
    ]
    if problems:
        raise DesiredStateError(source, problems)


def _image_allowed(image: str, prefix: str) -> bool:
    if prefix.endswith("/"):
        return image.startswith(prefix)
    return image == prefix or image.startswith(prefix + "/")


STATEFUL_LABEL = "gitops-agent.stateful"


def declared_scale(compose_service: Mapping[str, Any]) -> int:
    """How many containers compose runs for a service (``scale`` or ``deploy.replicas``)."""
    deploy = compose_service.get("deploy") or {}
    for value in (compose_service.get("scale"), deploy.get("replicas")):
        if isinstance(value, int) and value >= 0:
            return value
    return 1


def why_not_twice(name: str, compose_service: Mapping[str, Any]) -> str | None:
    """Why a service cannot run two containers side by side, or None when it can."""
    for port in compose_service.get("ports") or []:
        published = port.get("published") if isinstance(port, Mapping) else None
        if published not in (None, "", "0", 0):
            return f"it publishes host port {published}"
    if compose_service.get("container_name"):
        return f"it has a fixed container_name ({compose_service['container_name']})"
    labels = compose_service.get("labels") or {}
    if isinstance(labels, Mapping) and str(labels.get(STATEFUL_LABEL, "")).lower() in (
        "true", "1", "yes"
    ):
        return f"it is declared stateful (label {STATEFUL_LABEL})"
    return None


def resolve_update_orders(
    desired: DesiredState, compose_services: Mapping[str, Any], source: str
) -> dict[str, UpdateOrder]:
    """Per service: ``update`` as set, else start-first where the service can run twice and
    stop-first where it cannot. An explicit start-first that cannot work is an error."""
    orders: dict[str, UpdateOrder] = {}
    problems = []
    for name, spec in desired.services.items():
        svc = compose_services.get(name) or {}
        blocker = why_not_twice(name, svc)
        if spec.update == "start-first" and blocker:
            problems.append(
                f"At 'services.{name}.update': start-first needs a service that can run "
                f"twice, but {blocker}; use 'update: stop-first' or change the compose file"
            )
        orders[name] = spec.update or ("stop-first" if blocker else "start-first")
    if problems:
        raise DesiredStateError(source, problems)
    return orders
