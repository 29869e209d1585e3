"""The reporting tables of the agent's configuration: ``[report.github]``, ``[metrics]``,
``[webhook]``, ``[notify]`` and ``[fleet]`` (read by agent/report/, agent/webhook.py and
agent/fleet.py).

Pure: imports nothing that touches Docker, git or the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from agent.config_base import Strict, url_credentials_problem

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
NOTIFY_EVENTS = ("applied", "rolled-back", "failed", "invalid", "stuck", "recovered")
NotifyEvent = Literal["applied", "rolled-back", "failed", "invalid", "stuck", "recovered"]


class GitHubReportConfig(Strict):
    """``[report.github]``: a commit status on each revision this host handles."""

    repo: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    api_url: str = "https://api.github.com"
    token_file: Path
    context: str = Field(default="deploy/{host}", min_length=1, max_length=100)
    timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 5.0
    # post ``pending`` when a release starts, as well as its verdict: off by default, it
    # doubles the statuses a fleet spends of GitHub's content-creation limit (BENCHMARKS)
    post_pending: bool = False
    # whose deploy statuses count for rollout waves: GitHub logins; default (None) the
    # login of token_file's own token — a CI job or a branch workflow with statuses:write
    # posts as another login and can neither release nor halt a wave
    trusted_creators: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\[\]-]*$")]] | None = None

    @field_validator("api_url")
    @classmethod
    def _https(cls, v: str) -> str:
        from urllib.parse import urlsplit

        problem = url_credentials_problem(v)
        if problem:
            raise ValueError(problem.replace("source.token_file", "report.github.token_file"))
        u = urlsplit(v)
        if u.scheme == "https" and u.hostname:
            return v.rstrip("/")
        if u.scheme == "http" and u.hostname in _LOOPBACK_HOSTS:
            return v.rstrip("/")  # a test server on loopback
        raise ValueError("must be an https:// URL (http:// only to loopback)")

    @field_validator("context")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        rest = v.replace("{host}", "").replace("{stack}", "")
        if rest.count("{") or rest.count("}"):
            raise ValueError("only the {host} and {stack} placeholders are known")
        return v


class ReportConfig(Strict):
    github: GitHubReportConfig | None = None


class MetricsConfig(Strict):
    listen: str | None = None
    textfile: Path | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        import re

        if v is None:
            return v
        m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})", v)
        if not m:
            raise ValueError("must be HOST:PORT, e.g. \"127.0.0.1:9120\"")
        if not 0 < int(m.group(2)) < 65536:
            raise ValueError("port must be 1-65535")
        return v


class WebhookConfig(Strict):
    """``[webhook]``: a signed push from the git host starts a pass at once (polling stays
    the fallback). ``kind`` says how requests are signed: ``github`` (``X-Hub-Signature-256``
    HMAC-SHA256), ``gitea`` (Gitea/Forgejo ``X-Gitea-Signature``/``X-Forgejo-Signature``
    HMAC-SHA256) or ``gitlab`` (``X-Gitlab-Token``, compared in constant time); ``auto``
    accepts any of them. The secret is read from ``secret_file`` (0600, never logged)."""

    listen: str = "127.0.0.1:9300"
    secret_file: Path
    kind: Literal["auto", "github", "gitlab", "gitea"] = "auto"
    # requests per minute from one source address before 429 (a flood costs no pass)
    rate_limit_per_minute: Annotated[int, Field(ge=1, le=10_000)] = 60

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        out = MetricsConfig._host_port(v)
        assert out is not None
        return out


def _default_notify_on() -> list[NotifyEvent]:
    return ["rolled-back", "failed", "invalid", "stuck", "recovered"]


class NotifyConfig(Strict):
    urls: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9+.-]*://.+")]] = Field(min_length=1)
    on: list[NotifyEvent] = Field(default_factory=_default_notify_on)
    repeat_seconds: Annotated[float, Field(ge=0)] = 3600
    stuck_after_seconds: Annotated[float, Field(gt=0)] = 900


class FleetConfig(Strict):
    """``[fleet]``: how a rollout wave is judged done (agent/fleet.py). ``sample``: the
    successes a wave of named hosts needs before the next wave goes (all of them when it
    names fewer); ``"all"``: every named host (the strict gate). A wave's min_hosts wins; a
    failure from any host of an earlier wave always halts."""

    sample: Annotated[int, Field(ge=1, le=100000)] | Literal["all"] = 10
