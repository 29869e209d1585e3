"""Reporting: each pass's outcome where people look — a commit status on GitHub,
Prometheus metrics, notifications (Apprise). Observers of the pass (:class:`PassObserver`):
they never raise into the pass and never hold it up for long; a report that cannot be
delivered is logged (``agent.report.*``) and, for commit statuses, retried later.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.ports import PassObserver
from agent.state import ImageDigest, write_atomic

if TYPE_CHECKING:
    from agent.report.metrics import StackMetrics

log = structlog.get_logger()


def host_name(cfg: AgentConfig) -> str:
    """``[agent] host``, else the machine's hostname (its first label, lower-cased)."""
    if cfg.agent.host:
        return cfg.agent.host
    name = socket.gethostname().split(".")[0].lower()
    return "".join(c for c in name if c.isalnum() or c in "._-") or "localhost"


def short(digest: str | None, n: int = 12) -> str:
    return "none" if not digest else digest.removeprefix("sha256:")[:n]


def first_line(text: str | None, limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def runs_line(target: Mapping[str, ImageDigest]) -> str:
    return ", ".join(f"{s}@{short(d.digest)}" for s, d in sorted(target.items()))


def commit_url(cfg: AgentConfig, revision: str | None) -> str | None:
    """The commit's web page when the source is GitHub (github.com or GitHub Enterprise)."""
    if revision is None or cfg.source.kind != "github":
        return None
    api = urlsplit(cfg.source.api_url)
    if api.hostname == "api.github.com":
        web = "https://github.com"
    else:  # GHE: https://ghe.example.com/api/v3 -> https://ghe.example.com
        web = f"{api.scheme}://{api.netloc}{api.path.removesuffix('/api/v3').rstrip('/')}"
    return f"{web}/{cfg.source.repo}/commit/{revision}"


def load_json(path: Path, what: str) -> dict[str, Any]:
    """A reporter's small persisted state; a missing or unreadable file starts empty."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("agent.report.state_unreadable", what=what, path=str(path), error=str(e))
        return {}
    return data if isinstance(data, dict) else {}


def save_json(path: Path, data: Mapping[str, Any], what: str) -> None:
    try:
        write_atomic(path, json.dumps(data, separators=(",", ":")).encode(), mode=0o600)
    except AgentError as e:
        log.warning("agent.report.state_write_failed", what=what, error=str(e))


def build_observers(cfg: AgentConfig, *, serve_metrics: bool = False,
                    metrics: StackMetrics | None = None) -> list[PassObserver]:
    """The observers the config asks for. ``serve_metrics``: the daemon also serves
    ``GET /metrics`` on ``[metrics] listen`` (a one-off ``sync`` only writes the textfile).
    ``metrics``: one stack of many; its metrics join the agent's, labelled with the stack
    (served and written by that StackMetrics).

    Raises ConfigError (a bad token file) before any pass runs.
    """
    # local and instant first: metrics never wait behind a slow GitHub or chat server
    observers: list[PassObserver] = []
    if metrics is not None:
        observers.append(metrics.observer(cfg))
    elif cfg.metrics.listen is not None or cfg.metrics.textfile is not None:
        from agent.report.metrics import MetricsObserver

        m = MetricsObserver.from_config(cfg)
        if serve_metrics and cfg.metrics.listen is not None:
            m.serve(cfg.metrics.listen)
        observers.append(m)
    if cfg.report.github is not None:
        from agent.report.github_status import GitHubStatusReporter

        observers.append(GitHubStatusReporter.from_config(cfg))
    if cfg.notify is not None:
        from agent.report.notify import Notifier

        observers.append(Notifier.from_config(cfg))
    return observers


__all__ = ["build_observers", "commit_url", "host_name"]
