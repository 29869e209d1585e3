"""desired-state.yml: parsing and validation (the *spec*).

Pure: no Docker, git or network. Every problem is reported at once, each with its path
(``At 'services.web.digest': ...``). The parser raises only :class:`DesiredStateError`,
whatever the bytes, and never returns a partially valid state.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent

from agent.config import format_validation_error
from agent.errors import DesiredStateError

MAX_BYTES = 256 * 1024  # ~1,000 services; parsing is pure Python, so bounded
MAX_SERVICES = 1000
# The document needs 3 levels. Deeper nesting is refused while scanning: ruamel's scanner is
# quadratic in the nesting depth (10 KB of '[' took ~20 s) and its composer recursive.
MAX_DEPTH = 32

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
# A service name as the compose specification defines it ([a-zA-Z0-9._-]+, upper case
# included: compose accepts "serviceB"), ASCII only so lookalike characters (unicode tricks)
# cannot smuggle a second "web" in. It may not start with '-': names go into compose's argv
# and must never read as an option. (\Z, not $: "$" also matches before a trailing newline,
# which would let "web\n" or "sha256:...\n" through.)
SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9._][a-zA-Z0-9._-]{0,254}\Z")
SERVICE_NAME_RULE = (
    "ASCII letters, digits, '.', '_' or '-' (as the compose specification allows), "
    "not starting with '-'"
)
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


MAX_WAVES = 50
WAVE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
# an [agent] host name, or a shell-style pattern of them (fnmatch: * ? [...])
HOST_PATTERN_RE = re.compile(r"^[a-z0-9*?\[\]!._-]{1,63}\Z")
GLOB_CHARS = frozenset("*?[")


class Wave(BaseModel):
    """One wave of a staged rollout (``rollout:`` in desired-state.yml)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    hosts: Annotated[list[str], Field(min_length=1, max_length=1000)]
    # the wave is done this long after its last host reported success
    soak_seconds: Annotated[int | float, Field(ge=0, le=7 * 86400)] = 0
    # for hosts given by patterns: how many successes make the wave done (default 1)
    min_hosts: Annotated[int, Field(ge=1, le=100000)] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not WAVE_NAME_RE.match(v):
            raise ValueError("a wave name is 1-63 of letters, digits, '.', '_' or '-'")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        bad = [h for h in v if not HOST_PATTERN_RE.match(h)]
        if bad:
            raise ValueError(
                "hosts are [agent] host names or shell-style patterns of them "
                "(a-z 0-9 . _ - and * ? [ ]): " + ", ".join(repr(b) for b in bad[:5]))
        return v

    @model_validator(mode="after")
    def _min_hosts_needs_patterns(self) -> Wave:
        if self.min_hosts is not None and not self.patterns:
            raise ValueError("min_hosts counts hosts matched by patterns; this wave names "
                             "its hosts exactly (each must succeed): remove min_hosts")
        return self

    @property
    def exact(self) -> list[str]:
        """Hosts named exactly: each must report success."""
        return [h for h in self.hosts if not GLOB_CHARS & set(h)]

    @property
    def patterns(self) -> list[str]:
        return [h for h in self.hosts if GLOB_CHARS & set(h)]

    def matches(self, host: str) -> bool:
        from fnmatch import fnmatchcase

        return any(fnmatchcase(host, p) for p in self.hosts)


class DesiredState(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    version: Literal[1]
    services: Annotated[dict[str, ServiceSpec], Field(max_length=MAX_SERVICES)]
    # staged rollout over many hosts (agent/fleet.py); None: every host applies at once
    rollout: Annotated[list[Wave], Field(min_length=1, max_length=MAX_WAVES)] | None = None

    @field_validator("rollout")
    @classmethod
    def _unique_waves(cls, v: list[Wave] | None) -> list[Wave] | None:
        if v is not None:
            names = [w.name for w in v]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"wave names must be unique; more than once: {', '.join(dup)}")
        return v

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
                    f"service names must be strings of {SERVICE_NAME_RULE}: "
                    f"{', '.join(repr(b) for b in bad[:5])}"
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
        raise DesiredStateError(source, [yaml_problem(e)]) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as e:
        raise DesiredStateError(source, [f"not valid YAML: {type(e).__name__}: {e}"]) from None


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def yaml_problem(err: YAMLError) -> str:
    """One line, in the user's terms, for a YAML error: what and where (line, column) —
    without the library's stream names ("<unicode string>") or its hints to programmers."""
    if not isinstance(err, MarkedYAMLError):
        return f"not valid YAML: {' '.join(str(err).split())}"
    problem = " ".join((err.problem or "").split())
    where = _at(err.problem_mark)
    if isinstance(err, DuplicateKeyError):
        m = re.match(r'found duplicate key "(.*?)" with value', problem)
        key = m.group(1) if m else "?"
        first = _at(err.context_mark).split(",")[0] if err.context_mark is not None else ""
        return (f'not valid YAML: duplicate key "{key}" at {where.split(",")[0]} '
                f"(the mapping starts at {first})")
    if problem.startswith("could not determine a constructor for the tag"):
        tag = problem.rsplit(" ", 1)[-1]
        return (f"not valid YAML: the tag {tag} at {where} is not allowed here "
                "(desired-state is plain YAML; tags such as !reset and !override belong in "
                "compose files)")
    if problem == "but found another document":
        return (f"not valid YAML: a second document starts at {where.split(',')[0]} ('---'); "
                "desired-state is a single document")
    context = " ".join((err.context or "").split())
    text = f"not valid YAML: {where}: {problem}" if where else f"not valid YAML: {problem}"
    if context and err.context_mark is not None:
        text += f" ({context} started at {_at(err.context_mark)})"
    return text


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
    desired: DesiredState,
    compose_services: Iterable[str],
    source: str,
    *,
    inactive: Mapping[str, Sequence[str]] | None = None,
    compose_files: str = "",
) -> None:
    """A service listed in desired-state must be a service of the compose project as compose
    itself resolves it (includes, extends, overrides, active profiles).

    ``inactive`` maps the services that exist only under profiles that are not active to
    those profiles: such a service is named as such, with the profile that would enable it.
    """
    known = set(compose_services)
    gated = inactive or {}
    files = f"the compose files {compose_files}" if compose_files else "the compose files"
    problems = []
    for name in desired.services:
        if name in known:
            continue
        if name in gated:
            names = list(gated[name])
            which = (f"profile {names[0]!r}, which is not active" if len(names) == 1 else
                     f"profiles {', '.join(repr(p) for p in names)}, none of them active")
            problems.append(
                f"At 'services.{name}': service {name!r} is in {files} but only "
                f"under {which}; activate it with "
                f"[compose] profiles in the agent config (validate: --profile NAME) or "
                f"remove the service from desired-state"
            )
        else:
            problems.append(
                f"At 'services.{name}': no service {name!r} in {files} "
                f"(they define: {', '.join(sorted(known | set(gated))) or 'nothing'})"
            )
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
        f"At 'services.{name}.image': {spec.image!r} ({'/'.join(normalize_repository(spec.image))}"
        f") is outside the allowlist ([trust] allowed_images)"
        for name, spec in desired.services.items()
        if not any(_image_allowed(spec.image, entry) for entry in allowed)
    ]
    if problems:
        raise DesiredStateError(source, problems)


DOCKER_HUB = "docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io")


def _split_domain(name: str) -> tuple[str, str]:
    """(domain, path) as docker's reference library splits a name: the first component is a
    registry only if it has a '.' or ':' or is 'localhost'; else the name is on Docker Hub."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain = first.lower()
        return (DOCKER_HUB if domain in _HUB_ALIASES else domain), rest
    return DOCKER_HUB, name


def repository_of(image_ref: str) -> str:
    """``repo[:tag][@digest]`` -> ``repo``: the digest goes first, then a ``:tag`` in the
    last path component only (``localhost:5000/x/y:tag`` -> ``localhost:5000/x/y``: a
    registry port is not a tag). The rule of ``agent.plan.repository_of``."""
    ref = image_ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref = ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref


def normalize_repository(image: str) -> tuple[str, str]:
    """An image repository in docker's normalised form (``ParseNormalizedNamed``):
    ``traefik``, ``library/traefik``, ``docker.io/traefik`` and
    ``index.docker.io/library/traefik`` are all ``("docker.io", "library/traefik")``. A tag
    or digest is dropped: ``ghcr.io/acme/web:1.2@sha256:...`` is ``("ghcr.io", "acme/web")``."""
    domain, path = _split_domain(repository_of(image))
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return domain, path


def _image_allowed(image: str, entry: str) -> bool:
    """Whether ``image`` is allowed by one ``[trust] allowed_images`` entry.

    Both sides are normalised first. An entry ending in ``/`` is a namespace: every
    repository *below* it (``ghcr.io/acme/`` allows ``ghcr.io/acme/web``; ``ghcr.io/``
    allows all of ghcr.io; ``traefik/`` allows ``docker.io/traefik/whoami``). Any other
    entry is a repository: that repository and those below it, whole components only
    (``traefik`` is ``docker.io/library/traefik``: not ``traefik/whoami``, not
    ``ghcr.io/traefik``).

    An image with a tag and/or digest (``ghcr.io/acme/web:1.2``, as compose files name
    them) is matched by its repository (``ghcr.io/acme/web``). An entry names repositories,
    never a tag: one carrying a tag or digest allows nothing.
    """
    domain, path = normalize_repository(image)
    if repository_of(entry) != entry:
        return False
    if entry.endswith("/"):
        namespace = entry.rstrip("/")
        if not namespace:
            return False
        # split as if a repository followed, so "ghcr.io/" is a registry, "traefik/" a
        # namespace on Docker Hub
        want_domain, want_path = _split_domain(namespace + "/_")
        want_path = want_path[: -len("/_")] if want_path != "_" else ""
        return domain == want_domain and (not want_path or path.startswith(want_path + "/"))
    want_domain, want_path = normalize_repository(entry)
    return domain == want_domain and (path == want_path or path.startswith(want_path + "/"))


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
