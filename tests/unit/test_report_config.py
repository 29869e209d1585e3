"""[agent] host, [report.github], [metrics]: defaults and every error at once with its path."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.report import build_observers, commit_url, host_name
from agent.report.github_status import GitHubStatusReporter
from agent.report.metrics import MetricsObserver


def base(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"source": {"repo": "/r"},
            "compose": {"project_dir": str(tmp_path)},
            "agent": {"state_dir": str(tmp_path)}, **extra}


def test_reporting_is_off_unless_configured(tmp_path):
    assert build_observers(parse_config(base(tmp_path))) == []


def test_host_defaults_to_the_machines_hostname(tmp_path):
    cfg = parse_config(base(tmp_path))
    assert host_name(cfg) == socket.gethostname().split(".")[0].lower()
    cfg = parse_config(base(tmp_path, agent={"host": "prod-1", "state_dir": str(tmp_path)}))
    assert host_name(cfg) == "prod-1"


def test_every_reporting_error_is_reported_at_once_with_its_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config(base(tmp_path, agent={"host": "Prod 1"},
                          report={"github": {"repo": "acme", "token_file": "/t",
                                             "api_url": "http://example.com",
                                             "context": "deploy/{hostname}"}},
                          metrics={"listen": "127.0.0.1:99999", "port": 1}))
    assert "At 'agent.host': only a-z 0-9 . _ - (starting with a letter or digit)" in \
        e.value.problems
    assert "At 'metrics.listen': port must be 1-65535" in e.value.problems
    where = [p.split("'")[1] for p in e.value.problems]
    assert where == ["agent.host", "report.github.repo", "report.github.api_url",
                     "report.github.context", "metrics.listen", "metrics.port"]


def test_status_repo_defaults_to_the_github_source_and_is_required_otherwise(tmp_path):
    gh = {"github": {"token_file": "/t"}}
    cfg = parse_config({**base(tmp_path, report=gh), "source": {"kind": "github",
                                                                "repo": "acme/shop"}})
    assert cfg.report.github is not None and cfg.report.github.repo == "acme/shop"
    with pytest.raises(ConfigError, match="report.github.repo is required"):
        parse_config(base(tmp_path, report=gh))


def test_api_url_is_https_or_loopback_http(tmp_path):
    for url in ("https://ghe.example.com/api/v3", "http://127.0.0.1:8080", "http://[::1]:1"):
        parse_config(base(tmp_path, report={"github": {"repo": "a/b", "token_file": "/t",
                                                       "api_url": url}}))
    with pytest.raises(ConfigError, match="https"):
        parse_config(base(tmp_path, report={"github": {"repo": "a/b", "token_file": "/t",
                                                       "api_url": "http://10.0.0.1"}}))


def test_commit_url_for_github_and_github_enterprise(tmp_path):
    cfg = parse_config({**base(tmp_path), "source": {"kind": "github", "repo": "acme/shop"}})
    assert commit_url(cfg, "abc") == "https://github.com/acme/shop/commit/abc"
    cfg = parse_config({**base(tmp_path), "source": {
        "kind": "github", "repo": "acme/shop", "api_url": "https://ghe.example.com/api/v3"}})
    assert commit_url(cfg, "abc") == "https://ghe.example.com/acme/shop/commit/abc"
    assert commit_url(parse_config(base(tmp_path)), "abc") is None  # git source


def test_build_observers_builds_what_is_configured(tmp_path):
    token = tmp_path / "token"
    token.write_text("t0k3n")
    token.chmod(0o600)
    cfg = parse_config(base(tmp_path, report={"github": {"repo": "a/b",
                                                         "token_file": str(token)}},
                            metrics={"textfile": str(tmp_path / "m.prom")}))
    kinds = [type(o) for o in build_observers(cfg)]
    assert kinds == [MetricsObserver, GitHubStatusReporter]
