"""status and diff: typed read-only views. status writes nothing; diff fetches only under
the state_dir lock, and while another agent holds it shows what that agent last validated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fakes import (
    HEALTHY,
    FakeEngine,
    FakeSource,
    desired_yaml,
    digest_of,
    shop_reconciler,
)

from agent import queries
from agent.reconcile import Reconciler

WEB = "registry.test:5000/shop/web"
V1, V2 = digest_of("v1"), digest_of("v2")


@pytest.fixture
def rec(tmp_path: Path) -> Reconciler:
    engine = FakeEngine()
    engine.publish(WEB, V1, HEALTHY)
    engine.publish(WEB, V2, HEALTHY)
    source = FakeSource()
    source.commit(desired_yaml({"web": (WEB, V1)}))
    r = shop_reconciler(tmp_path, engine, source, project_dir="p")
    assert r.run_pass().outcome == "applied"
    return r


def _tree(d: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in d.rglob("*")}


def test_status_is_typed_and_writes_nothing(rec: Reconciler) -> None:
    before = _tree(rec.cfg.agent.state_dir)
    view = queries.status(rec)
    assert _tree(rec.cfg.agent.state_dir) == before
    [web] = view.services
    assert (web.service, web.desired, web.running, web.health) == ("web", V1, V1, "healthy")
    assert view.to_json()["services"][0]["known_good"] == V1


def test_diff_fetches_under_the_lock_and_lists_the_change(rec: Reconciler) -> None:
    source = rec.source
    assert isinstance(source, FakeSource)
    source.commit(desired_yaml({"web": (WEB, V2)}))
    view = queries.diff(rec)
    assert view.origin == "fetched" and [c.service for c in view.changes] == ["web"]
    assert rec.engine.containers and all(  # type: ignore[attr-defined]
        c.digest == V1 for c in rec.engine.containers.values())  # type: ignore[attr-defined]


def test_diff_while_the_daemon_holds_the_lock_reads_what_it_last_validated(
        rec: Reconciler) -> None:
    source = rec.source
    assert isinstance(source, FakeSource)
    source.commit(desired_yaml({"web": (WEB, V2)}))
    fetches = source.fetches
    holder = subprocess.Popen(  # another process holds the lock, as a running daemon does
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from agent.state import StateLock; l = StateLock(Path(sys.argv[1])); l.acquire(); "
         "print('locked', flush=True); time.sleep(60)", str(rec.cfg.agent.state_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        view = queries.diff(rec)
    finally:
        holder.kill()
        holder.wait()
    assert view.origin == "cached" and source.fetches == fetches  # nothing fetched
    assert view.changes == []  # the cached revision is the one applied
