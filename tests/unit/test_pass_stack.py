"""The pass with compose.from_repo, on the honest fakes: the compose files come from the
revision (FakeSource.files), compose reads them from project_dir or the staging copy
(FilesCompose), containers carry the configuration hash they were created with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes import (
    HEALTHY,
    UNHEALTHY,
    FakeCompose,
    FakeEngine,
    FakeSource,
    FilesCompose,
    desired_yaml,
    digest_of,
)
from structlog.testing import capture_logs

from agent import health
from agent.config import parse_config
from agent.outcomes import PassResult
from agent.reconcile import Reconciler

REG = "registry.test:5000"
WEB, API = f"{REG}/shop/web", f"{REG}/shop/api"
V1, BAD = digest_of("v1"), digest_of("bad")


def compose_doc(web_env: str = "one", **extra: Any) -> bytes:
    services = {"web": {"image": f"{WEB}:latest", "environment": {"X": web_env}},
                "api": {"image": f"{API}:latest"}, **extra}
    return json.dumps({"services": services}).encode()


@dataclass
class Shop:
    tmp: Path
    source: FakeSource
    engine: FakeEngine
    compose: FakeCompose
    rec: Reconciler

    @property
    def project(self) -> Path:
        return self.tmp / "project"

    def release(self, compose: bytes, web: str = V1, conf: bytes = b"level=info\n") -> str:
        rev = self.source.commit(desired_yaml({"web": (WEB, web), "api": (API, V1)},
                                              {"web": {"update": "stop-first"}}))
        self.source.files[rev] = {"compose.yml": compose, "conf/app.conf": conf}
        return rev

    def sync(self) -> tuple[PassResult, list[dict[str, Any]]]:
        with capture_logs() as logs:
            result = self.rec.run_pass()
        return result, logs

    def ids(self, service: str) -> set[str]:
        return {c.id for c in self.engine.of(service)}


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    monkeypatch.setattr(health, "CONFIRM_SECONDS", 0.05)
    engine = FakeEngine()
    for image in (WEB, API):
        engine.publish(image, V1, HEALTHY)
        engine.publish(image, BAD, UNHEALTHY)
    (tmp_path / "project").mkdir()
    compose = FakeCompose(engine, model_file=tmp_path / "project" / "compose.yml")
    source = FakeSource()
    cfg = parse_config({
        "source": {"repo": "https://git.test/shop.git"},
        "compose": {"project_dir": str(tmp_path / "project"), "project_name": "shop",
                    "from_repo": ["compose.yml", "conf/"]},
        "agent": {"state_dir": str(tmp_path / "state"), "settle_seconds": 0.0,
                  "handover_seconds": 0.0, "health_timeout_seconds": 2.0},
    })
    rec = Reconciler(cfg, source=source, engine=engine, compose=compose,
                     sleep=lambda _s: None, compose_for=lambda files, mirror=None: FilesCompose(files))
    yield Shop(tmp_path, source, engine, compose, rec)


@pytest.fixture
def deployed(shop: Shop) -> Shop:
    shop.release(compose_doc())
    result, _ = shop.sync()
    assert result.outcome == "applied", result.reason
    return shop


def test_the_revisions_files_are_written_and_run(deployed: Shop) -> None:
    assert (deployed.project / "compose.yml").read_bytes() == compose_doc()
    assert (deployed.project / "conf" / "app.conf").read_bytes() == b"level=info\n"
    assert deployed.ids("web") and deployed.ids("api")


def test_a_config_change_recreates_only_its_service(deployed: Shop) -> None:
    web, api = deployed.ids("web"), deployed.ids("api")
    deployed.release(compose_doc(web_env="two"))
    result, logs = deployed.sync()
    assert result.outcome == "applied", result.reason
    assert [e for e in logs if e["event"] == "agent.diff"][0]["config_changed"] == ["web"]
    assert deployed.ids("web") != web and deployed.ids("api") == api


def test_an_idle_pass_writes_no_file_and_calls_no_compose_up(deployed: Shop) -> None:
    ups = len(deployed.compose.ups)
    files = [*deployed.project.rglob("*"), *(deployed.tmp / "state" / "stack").rglob("*")]
    before = {p: p.stat().st_mtime_ns for p in files}
    result, logs = deployed.sync()
    assert result.outcome == "no-op", result.reason
    assert len(deployed.compose.ups) == ups
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert not any(e["event"] == "agent.stack.written" for e in logs)


def test_an_idle_pass_reads_no_file_from_the_source_and_still_corrects_drift(
        deployed: Shop) -> None:
    reads = deployed.source.file_reads
    (deployed.project / "conf" / "app.conf").write_bytes(b"level=debug\n")
    result, logs = deployed.sync()
    assert result.outcome == "no-op", result.reason
    assert deployed.source.file_reads == reads  # the applied revision's kept copy
    assert [e for e in logs if e["event"] == "agent.drift.corrected"][0]["files"] == [
        "conf/app.conf"]
    assert (deployed.project / "conf" / "app.conf").read_bytes() == b"level=info\n"


def test_unparsable_compose_in_git_is_invalid_and_nothing_is_touched(deployed: Shop) -> None:
    ids = deployed.ids("web") | deployed.ids("api")
    deployed.release(b"{not json", conf=b"level=debug\n")
    result, _ = deployed.sync()
    assert result.outcome == "invalid"
    assert (deployed.project / "compose.yml").read_bytes() == compose_doc()
    assert (deployed.project / "conf" / "app.conf").read_bytes() == b"level=info\n"
    assert deployed.ids("web") | deployed.ids("api") == ids


def test_a_failed_release_gets_the_last_applied_files_back(deployed: Shop) -> None:
    deployed.release(compose_doc(web_env="two"), web=BAD, conf=b"level=debug\n")
    result, _ = deployed.sync()
    assert result.outcome == "rolled-back"
    assert (deployed.project / "compose.yml").read_bytes() == compose_doc()
    assert (deployed.project / "conf" / "app.conf").read_bytes() == b"level=info\n"
    assert {c.digest for c in deployed.engine.of("web")} == {V1}
    # the next pass skips the failed revision: files and containers stay
    ids = deployed.ids("web")
    result, _ = deployed.sync()
    assert result.outcome == "skipped"
    assert deployed.ids("web") == ids
    assert (deployed.project / "compose.yml").read_bytes() == compose_doc()


def test_a_service_gone_from_the_compose_files_is_removed(deployed: Shop) -> None:
    rev = deployed.release(compose_doc(worker={"image": f"{API}:latest"}))
    deployed.engine.publish(API, V1, HEALTHY)
    result, _ = deployed.sync()  # worker: unmanaged, started with the files that add it
    assert rev and deployed.ids("worker"), result
    deployed.release(compose_doc())
    result, logs = deployed.sync()
    assert result.outcome == "no-op", result.reason
    assert deployed.ids("worker") == set()
    assert [e for e in logs if e["event"] == "agent.stack.removing"][0]["services"] == ["worker"]
