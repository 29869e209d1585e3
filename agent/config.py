"""The agent's TOML configuration: parsed and validated up front, every error at once.

The tables live here (source, compose, agent, registry, trust, engine) and in
agent/config_allow.py (``[compose.allow]``) and agent/config_report.py (report, metrics,
webhook, notify, fleet); agent/config_base.py holds the strict base and the URL checks.

Pure: imports nothing that touches Docker, git or the network.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.config_allow import ComposeAllow
from agent.config_base import Strict, cleartext_to_remote_host, url_credentials_problem
from agent.config_report import (
    FleetConfig,
    MetricsConfig,
    NotifyConfig,
    ReportConfig,
    WebhookConfig,
)
from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/gitops-agent/agent.toml")


class SourceConfig(Strict):
    kind: Literal["git", "github"] = "git"
    repo: str = Field(min_length=1)
    branch: str = Field(default="main", min_length=1)
    path: str = Field(default="desired-state.yml", min_length=1)
    # git kind: an SSH deploy key for ssh:// or git@ URLs
    ssh_key_file: Path | None = None
    # github kind: REST API base and an optional token file
    api_url: str = "https://api.github.com"
    token_file: Path | None = None
    timeout_seconds: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("repo", "api_url")
    @classmethod
    def _no_credentials_in_url(cls, v: str) -> str:
        problem = url_credentials_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("token_file")
    @classmethod
    def _token_only_over_tls(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        # fields are validated in order: kind, repo and api_url are known here
        if v is None:
            return v
        url = info.data.get("api_url") if info.data.get("kind") == "github" else \
            info.data.get("repo")
        if isinstance(url, str) and cleartext_to_remote_host(url):
            raise ValueError(
                "a token would be sent in clear text over http:// to a remote host; use "
                "https:// (http:// is accepted only to loopback: 127.0.0.0/8, ::1, localhost)"
            )
        return v

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in Path(v).parts:
            raise ValueError("must be a path relative to the repository root")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> SourceConfig:
        if self.kind == "github":
            parts = self.repo.split("/")
            if len(parts) != 2 or not all(parts):
                raise ValueError("with kind = \"github\", repo must be \"owner/name\"")
        return self




class ComposeConfig(Strict):
    project_dir: Path
    files: list[str] = Field(default_factory=lambda: ["compose.yml"], min_length=1)
    project_name: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    # The compose v2 command; default: docker-compose v2 binary on PATH or the CLI plugin.
    command: list[str] | None = None
    # The compose profiles the project runs with (each passed as --profile). Empty: compose
    # decides, as it does by hand (COMPOSE_PROFILES in the environment or the project's .env).
    profiles: list[Annotated[str, Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")]] = Field(
        default_factory=list)
    # Paths in the repository (a directory: every file under it) written into project_dir
    # at each revision, at the same relative paths. None: compose files stay the server's.
    from_repo: list[str] | None = Field(default=None, min_length=1)
    # compose.from_repo: what the compose files from git may ask of this host
    # (agent/policy.py); everything beyond an ordinary container is refused by default
    allow: ComposeAllow = ComposeAllow()

    @field_validator("from_repo")
    @classmethod
    def _repo_paths(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for p in v:
            parts = p.rstrip("/").split("/")
            if not p or p.startswith("/") or any(x in ("", ".", "..") for x in parts) \
                    or "\\" in p or p.startswith(".git/") or parts[0] == ".git":
                raise ValueError(f"{p!r} must be a relative path inside the repository "
                                 "(no '..', no leading '/')")
        return v

    @property
    def name(self) -> str:
        return self.project_name or default_project_name(self.project_dir)


def default_project_name(project_dir: Path) -> str:
    """compose's project name for a directory when none is set: its name, lower case,
    without the characters compose refuses."""
    import re

    return re.sub(r"[^a-z0-9_-]", "", project_dir.name.lower()) or "default"


class AgentSection(Strict):
    interval_seconds: Annotated[float, Field(gt=0)] = 60
    jitter_seconds: Annotated[float, Field(ge=0)] = 10
    health_timeout_seconds: Annotated[float, Field(gt=0)] = 120
    # How long a container without a HEALTHCHECK must stay running (and not restart)
    # to count as healthy.
    settle_seconds: Annotated[float, Field(ge=0)] = 10
    # start-first: after the new containers are healthy, wait this long before stopping the
    # old ones, so proxies that discover backends by polling (Docker DNS, traefik's Docker
    # provider, HAProxy resolvers) have put the new ones in rotation.
    handover_seconds: Annotated[float, Field(ge=0)] = 2
    state_dir: Path = Path("/var/lib/gitops-agent")
    pull_concurrency: Annotated[int, Field(ge=1, le=32)] = 4
    # a pull showing no progress for this long is given up (and retried): a registry
    # that accepts connections and never answers must not hang the agent
    pull_stall_timeout_seconds: Annotated[float, Field(gt=0)] = 120
    history_limit: Annotated[int, Field(ge=1, le=10000)] = 200
    # this host's name in commit statuses, metrics and notifications (default: hostname)
    host: str | None = Field(default=None, min_length=1, max_length=63)
    # operator controls (agent/controls.py): new revisions are applied only inside one of
    # these windows ("Mon-Fri 08:00-17:00"), in this IANA zone; retention keeps the images
    # of the last keep_releases known-good releases of each managed service
    windows: list[str] | None = None
    timezone: str = "UTC"
    keep_releases: Annotated[int, Field(ge=1, le=100)] = 3
    # [[stack]]: how many stacks' passes may run at once (a stack waits for the stacks it
    # depends on whatever this is)
    stack_concurrency: Annotated[int, Field(ge=1, le=32)] = 2

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[str] | None) -> list[str] | None:
        from agent.windows import parse_window

        for w in v or []:
            parse_window(w)
        if v is not None and not v:
            raise ValueError("an empty list would never apply anything; drop the key instead")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from agent.windows import zone

        zone(v)
        return v

    @field_validator("host")
    @classmethod
    def _host_name(cls, v: str | None) -> str | None:
        import re

        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", v):
            raise ValueError("only a-z 0-9 . _ - (starting with a letter or digit)")
        return v


class RegistryCredentials(Strict):
    username: str = Field(min_length=1)
    password_file: Path


class TrustConfig(Strict):
    allowed_images: list[str] | None = None
    require_signed_commits: bool = False
    allowed_signers_file: Path | None = None
    # accept a head that does not descend from the last applied revision (a rewind or a
    # sideways move of the branch) when signed commits are required; logged
    allow_rewind: bool = False



class EngineConfig(Strict):
    """``[engine]``: what runs the services. ``compose`` (one host, ``docker compose``) or
    ``swarm`` (a Docker Swarm cluster: the stack is ``[compose] project_name``, deployed
    from ``[compose] files`` with ``docker stack deploy``; the agent runs on a manager)."""

    kind: Literal["compose", "swarm"] = "compose"


class AgentConfig(Strict):
    source: SourceConfig
    compose: ComposeConfig
    engine: EngineConfig = EngineConfig()
    agent: AgentSection = AgentSection()
    registry: dict[str, RegistryCredentials] = Field(default_factory=dict)
    trust: TrustConfig = TrustConfig()
    report: ReportConfig = ReportConfig()
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig | None = None
    webhook: WebhookConfig | None = None
    fleet: FleetConfig = FleetConfig()
    # the stack's name in reports (commit status context, metrics, notifications): set for
    # each [[stack]] by agent/stacks.py; None for a config without [[stack]] tables
    stack_name: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")

    @property
    def stack_label(self) -> str:
        """The stack's name in reports: its [[stack]] name, else the compose project's."""
        return self.stack_name or self.compose.name

    @model_validator(mode="after")
    def _report_repo(self) -> AgentConfig:
        gh = self.report.github
        if gh is not None and gh.repo is None:
            if self.source.kind != "github":
                raise ValueError("report.github.repo is required unless source.kind = \"github\"")
            object.__setattr__(gh, "repo", self.source.repo)  # frozen: set once, at load
        return self



def trust_problems(cfg: AgentConfig) -> list[str]:
    """[trust] combinations that would silently do nothing, each with its path."""
    t, problems = cfg.trust, []
    if t.require_signed_commits:
        if cfg.source.kind == "git" and t.allowed_signers_file is None:
            problems.append(
                "At 'trust.require_signed_commits': the git source verifies SSH signatures "
                "itself and needs trust.allowed_signers_file")
    else:
        if t.allowed_signers_file is not None:
            problems.append(
                "At 'trust.allowed_signers_file': has no effect without "
                "trust.require_signed_commits = true")
        if t.allow_rewind:
            problems.append(
                "At 'trust.allow_rewind': has no effect without "
                "trust.require_signed_commits = true (without signed commits a force-push "
                "is always followed)")
    return problems


def engine_problems(cfg: AgentConfig) -> list[str]:
    """[engine] and [compose] combinations the engine cannot run, each with its path."""
    if cfg.engine.kind == "swarm" and cfg.compose.from_repo is not None:
        return ["At 'compose.from_repo': compose files from git are only for "
                "[engine] kind = \"compose\"; with kind = \"swarm\" the stack is deployed "
                "from the server's [compose] files: remove from_repo"]
    return []


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def format_validation_error(err: ValidationError) -> list[str]:
    """Turn pydantic's errors into borgmatic-style lines: ``At 'a.b': message``."""
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        msg = msg.removeprefix("Value error, ")
        out.append(f"At '{_loc(loc)}': {msg}")
    return out


def parse_config(data: dict[str, Any], source: str = "config") -> AgentConfig:
    try:
        cfg = AgentConfig.model_validate(_coerce_paths(data))
    except ValidationError as e:
        raise ConfigError(source, format_validation_error(e)) from None
    problems = engine_problems(cfg) + trust_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


_PATH_KEYS = {
    ("source", "ssh_key_file"),
    ("source", "token_file"),
    ("compose", "project_dir"),
    ("agent", "state_dir"),
    ("trust", "allowed_signers_file"),
    ("metrics", "textfile"),
    ("webhook", "secret_file"),
}


def _coerce_paths(data: dict[str, Any]) -> dict[str, Any]:
    """TOML has no path type: strings at path-typed keys become Paths (strict mode)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for section, key in _PATH_KEYS:
        sec = out.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            sec[key] = Path(os.path.expanduser(sec[key]))
    rep = out.get("report")
    if isinstance(rep, dict) and isinstance(rep.get("github"), dict):
        gh = rep["github"] = dict(rep["github"])
        if isinstance(gh.get("token_file"), str):
            gh["token_file"] = Path(os.path.expanduser(gh["token_file"]))
    reg = out.get("registry")
    if isinstance(reg, dict):
        out["registry"] = {
            host: (
                {**c, "password_file": Path(c["password_file"])}
                if isinstance(c, dict) and isinstance(c.get("password_file"), str)
                else c
            )
            for host, c in reg.items()
        }
    return out


def read_toml(path: Path) -> dict[str, Any]:
    """The config file's TOML; ConfigError naming the file when it cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror}"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(str(path), [f"not valid TOML: {e}"]) from None


def resolve_project_dir(cfg: AgentConfig, base: Path) -> AgentConfig:
    """A relative project_dir is relative to the config file, like compose does for -f."""
    if cfg.compose.project_dir.is_absolute():
        return cfg
    return cfg.model_copy(update={"compose": cfg.compose.model_copy(
        update={"project_dir": (base / cfg.compose.project_dir).resolve()})})


def load_config(path: Path) -> AgentConfig:
    """A config of one stack (no ``[[stack]]`` tables); agent/stacks.py reads either form."""
    data = read_toml(path)
    if "stack" in data or "repo" in data:
        raise ConfigError(str(path), [
            "has [[stack]] tables: each stack is configured on its own (gitops-agent reads "
            "it whole; this command needs one stack)"])
    return resolve_project_dir(parse_config(data, str(path)), path.parent)
