"""status, diff and history as a script sees them: exit codes (status's table, diff
--exit-code), the --json objects, one timestamp format (ISO 8601 UTC, seconds, Z), status
with the engine down, and 'rolled back from X, running Y' after a rollback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fakes import (
    HEALTHY,
    UNHEALTHY,
    FakeEngine,
    FakeSource,
    desired_yaml,
    digest_of,
    shop_reconciler,
)
from structlog.testing import capture_logs

from agent import cli
from agent.reconcile import Reconciler

WEB = "registry.test:5000/shop/web"
V1, V2, BAD = digest_of("v1"), digest_of("v2"), digest_of("bad")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")


@pytest.fixture
def rec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Reconciler:
    engine = FakeEngine()
    engine.publish(WEB, V1, HEALTHY)
    engine.publish(WEB, V2, HEALTHY)
    engine.publish(WEB, BAD, UNHEALTHY)
    source = FakeSource()
    source.commit(desired_yaml({"web": (WEB, V1)}))
    r = shop_reconciler(tmp_path, engine, source, project_dir="p",
                        health_timeout_seconds=0.5)
    assert r.run_pass().outcome == "applied"
    monkeypatch.setattr(cli, "_reconciler", lambda cfg, report=False: r)
    return r


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, dict)
    return doc


def test_status_at_the_desired_revision_and_healthy_exits_0_with_a_json_object(
        rec: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_status(rec.cfg, as_json=True) == 0
    doc = _json(capsys)
    assert (doc["kind"], doc["version"], doc["exit_code"]) == ("status", 1, 0)
    assert isinstance(doc["last_applied"], dict) and ISO.match(doc["last_applied"]["at"])


def test_status_text_times_are_iso_8601_utc_seconds(
        rec: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_status(rec.cfg, as_json=False) == 0
    out = capsys.readouterr().out
    [when] = re.findall(r"last applied: \S+ applied at (\S+)", out)
    assert ISO.match(when), out


def test_status_after_a_failed_pass_that_left_the_host_behind_exits_1(
        rec: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    source = rec.source
    assert isinstance(source, FakeSource)
    source.commit(desired_yaml({"web": (WEB, V2)}))
    rec.source.fetch()  # the cache is written only by a pass: run one that is held back
    engine = rec.engine
    assert isinstance(engine, FakeEngine)
    engine.registry_down = 100
    assert rec.run_pass().outcome == "error"
    assert cli.cmd_status(rec.cfg, as_json=False) == 1
    assert "out-of-date" in capsys.readouterr().out


def test_status_after_a_rolled_back_release_says_so_and_exits_5(
        rec: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    first = rec.store.load().last_applied
    assert first is not None and first.revision is not None
    source = rec.source
    assert isinstance(source, FakeSource)
    source.commit(desired_yaml({"web": (WEB, BAD)}))
    result = rec.run_pass()
    assert result.outcome == "rolled-back"
    assert cli.cmd_status(rec.cfg, as_json=False) == cli.STATUS_ROLLED_BACK == 5
    out = capsys.readouterr().out
    assert f"rolled back from {result.revision[:12]}, running {first.revision[:12]}" in out
    assert "rolled-back" in out and "out-of-date" not in out
    assert cli.cmd_status(rec.cfg, as_json=True) == cli.STATUS_ROLLED_BACK == 5
    assert _json(capsys)["rolled_back"] == {"from": result.revision, "running": first.revision}


def test_status_with_the_engine_down_shows_the_record_and_exits_3_without_a_traceback(
        rec: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    engine = rec.engine
    assert isinstance(engine, FakeEngine)
    engine.down = True
    assert cli.cmd_status(rec.cfg, as_json=False) == 3
    out = capsys.readouterr().out
    assert "ENGINE UNREACHABLE" in out and "last attempted:" in out and "applied at" in out
    assert "Traceback" not in out


def test_diff_exit_code_is_1_when_a_sync_would_change_something_and_0_when_not(
        rec: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_diff(rec.cfg, exit_code=True) == 0
    assert "no changes" in capsys.readouterr().out
    source = rec.source
    assert isinstance(source, FakeSource)
    source.commit(desired_yaml({"web": (WEB, V2)}))
    assert cli.cmd_diff(rec.cfg, exit_code=True) == 1
    capsys.readouterr()
    assert cli.cmd_diff(rec.cfg) == 0  # without --exit-code: 0, as git diff
    capsys.readouterr()
    with capture_logs():  # the fetch's log lines stay off stdout
        assert cli.cmd_diff(rec.cfg, as_json=True, exit_code=True) == 1
    doc = _json(capsys)
    assert (doc["kind"], doc["version"], doc["would_change"]) == ("diff", 1, True)
    assert doc["changes"] == [{"service": "web", "image": WEB, "old": V1, "new": V2,
                               "config": [], "because": []}]


def test_history_json_is_an_object_of_passes_with_iso_times(
        rec: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_history(rec.cfg, as_json=True, n=5) == 0
    doc = _json(capsys)
    assert (doc["kind"], doc["version"]) == ("history", 1)
    passes = doc["passes"]
    assert isinstance(passes, list) and passes[0]["outcome"] == "applied"
    assert ISO.match(passes[0]["started_at"])
    assert cli.cmd_history(rec.cfg, as_json=False, n=5) == 0
    assert ISO.match(capsys.readouterr().out.split()[0])


def test_status_help_documents_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["status", "--help"], configure_logging=False)
    out = capsys.readouterr().out
    for code in ("0  at the desired revision", "1  not at the desired revision",
                 "3  the Docker engine is unreachable", "5  rolled back"):
        assert code in out


def test_output_json_is_the_same_as_json(rec: Reconciler, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(f'''[source]\nrepo = "https://git.test/shop.git"\n[compose]\n'''
                    f'''project_dir = "{tmp_path / 'p'}"\n[agent]\n'''
                    f'''state_dir = "{tmp_path / 'state'}"\n''')
    for command in ("status", "diff", "history"):
        argv = [command, "--output", "json", "--config", str(conf)]
        with capture_logs():  # structlog's test default would print to stdout
            code = cli.main(argv, configure_logging=False)
        out = capsys.readouterr().out
        assert code == 0, out
        assert json.loads(out)["kind"] == command, out
