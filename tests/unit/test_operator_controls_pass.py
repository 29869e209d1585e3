"""Operator controls with the honest fakes: freeze, deploy windows, rollback from recorded
releases (no source), image retention. The e2e suite proves the same on the real rig
(tests/e2e/test_operator_controls.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fakes import (
    CRASH,
    HEALTHY,
    UNHEALTHY,
    FakeCompose,
    FakeEngine,
    FakeSource,
    desired_yaml,
    digest_of,
)
from structlog.testing import capture_logs

from agent import controls, health, retention
from agent.config import parse_config
from agent.errors import ConfigError, InvalidInput, LockHeld, NoRollbackTarget, StateWriteError
from agent.outcomes import PassResult
from agent.ports import GateQuestion
from agent.reconcile import Reconciler
from agent.state import LOCK_FILE
from agent.windows import next_opening, parse_window, zone

REG = "registry.test:5000"
WEB, API, OTHER = f"{REG}/shop/web", f"{REG}/shop/api", f"{REG}/other/tool"
V = [digest_of(f"v{i}") for i in range(10)]
BAD, CRASHY = digest_of("bad"), digest_of("crash")


def _cfg(tmp: Path, **agent: Any) -> Any:
    return parse_config({
        "source": {"repo": "https://git.test/shop.git"},
        "compose": {"project_dir": str(tmp / "project"), "project_name": "shop"},
        "agent": {"state_dir": str(tmp / "state"), "settle_seconds": 0.0,
                  "handover_seconds": 0.0, "health_timeout_seconds": 2.0,
                  "pull_concurrency": 1, **agent},
    })


@dataclass
class World:
    tmp: Path
    source: FakeSource
    engine: FakeEngine
    compose: FakeCompose
    rec: Reconciler

    def release(self, web: str, api: str = V[0]) -> str:
        return self.source.commit(desired_yaml({"web": (WEB, web), "api": (API, api)}))

    def sync(self, force: bool = False) -> PassResult:
        return self.rec.run_pass(force=force)

    def state(self) -> dict[str, Any]:
        return json.loads((self.tmp / "state" / "state.json").read_text())

    def running(self, service: str) -> set[str | None]:
        return {c.digest for c in self.engine.of(service) if c.status == "running"}

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"


def _world(tmp: Path, **agent: Any) -> World:
    engine = FakeEngine()
    for image in (WEB, API):
        for d in V:
            engine.publish(image, d, HEALTHY)
        engine.publish(image, BAD, UNHEALTHY)
        engine.publish(image, CRASHY, CRASH)
    compose = FakeCompose(engine, model={"web": {}, "api": {}})
    source = FakeSource()
    cfg = _cfg(tmp, **agent)
    rec = Reconciler(cfg, source=source, engine=engine, compose=compose,
                     sleep=lambda _s: None, gates=controls.build_gates(cfg))
    return World(tmp, source, engine, compose, rec)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(health, "CONFIRM_SECONDS", 0.05)
    yield _world(tmp_path)


# ------------------------------------------------------------------ freeze
def test_a_frozen_host_applies_no_new_revision_and_says_who_froze_it_and_why(
        world: World) -> None:
    world.release(V[1])
    assert world.sync().outcome == "applied"
    controls.freeze(world.state_dir, "incident 42: database failover", "alice")
    world.release(V[2])
    pulls = list(world.engine.pulls)
    with capture_logs() as logs:
        r = world.sync()
    assert (r.outcome, r.exit_code) == ("frozen", 0)
    assert r.reason is not None
    assert "frozen by alice" in r.reason and "incident 42: database failover" in r.reason
    assert world.running("web") == {V[1]} and world.engine.pulls == pulls
    assert "agent.gate.frozen" in [e["event"] for e in logs]
    assert world.state()["history"][0]["outcome"] == "frozen"
    assert world.source.fetches >= 2  # a frozen pass still fetches and validates
    assert controls.unfreeze(world.state_dir, "bob") is not None
    assert world.sync().outcome == "applied"
    assert world.running("web") == {V[2]}


def test_frozen_means_hands_off_even_for_a_crashed_service(world: World) -> None:
    world.release(V[1])
    world.sync()
    controls.freeze(world.state_dir, "hands off", "alice")
    for c in world.engine.of("web"):
        c.status, c.exit_code = "exited", 137
    ups = len(world.compose.ups)
    assert world.sync().outcome == "frozen"
    assert len(world.compose.ups) == ups
    assert world.running("web") == set()


def test_a_freeze_survives_a_new_agent_process(world: World, tmp_path: Path) -> None:
    world.release(V[1])
    world.sync()
    controls.freeze(world.state_dir, "maintenance", "carol")
    again = _world(tmp_path)  # a restarted agent on the same state_dir
    again.source, again.rec.source = world.source, world.source
    world.release(V[2])
    assert again.sync().outcome == "frozen"


def test_a_damaged_freeze_record_keeps_the_host_frozen(world: World) -> None:
    world.release(V[1])
    world.state_dir.mkdir(parents=True, exist_ok=True)
    (world.state_dir / controls.FREEZE_FILE).write_text("{not json")
    r = world.sync()
    assert r.outcome == "frozen" and "damaged" in (r.reason or "")
    assert world.running("web") == set()


def test_freeze_without_a_reason_is_refused(world: World) -> None:
    with pytest.raises(InvalidInput, match="give a reason"):
        controls.freeze(world.state_dir, "   ", "alice")
    assert not (world.state_dir / controls.FREEZE_FILE).exists()


def test_the_freezing_user_is_the_sudo_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "dave")
    assert controls.current_user() == "dave"


# ------------------------------------------------------------------ windows
def test_windows_parse_days_ranges_and_reject_nonsense() -> None:
    w = parse_window("Mon-Fri 08:00-17:00")
    assert w.days == frozenset(range(5)) and (w.start, w.end) == (480, 1020)
    assert parse_window("Fri-Mon 00:00-24:00").days == frozenset({4, 5, 6, 0})
    assert parse_window("Sat,Sun 10:00-12:30").days == frozenset({5, 6})
    for bad in ("Mon-Fri", "Xyz 08:00-09:00", "Mon 17:00-08:00", "Mon 08:00-25:00",
                "Mon 08:61-09:00"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_bad_windows_or_timezone_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="agent.windows"):
        _cfg(tmp_path, windows=["Mon-Fri 8-17"])
    with pytest.raises(ConfigError, match="agent.timezone"):
        _cfg(tmp_path, timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="agent.keep_releases"):
        _cfg(tmp_path, keep_releases=0)


def test_next_opening_is_in_the_configured_zone() -> None:
    tz = zone("Europe/Berlin")
    # Friday 2026-11-27 18:00 UTC = 19:00 Berlin: the next Mon-Fri window opens Monday 08:00
    opens = next_opening([parse_window("Mon-Fri 08:00-17:00")],
                         datetime(2026, 11, 27, 18, 0, tzinfo=UTC), tz)
    assert opens is not None
    assert (opens.strftime("%a %H:%M"), opens.astimezone(UTC).hour) == ("Mon 08:00", 7)


def _window_gate(text: str, now: datetime) -> controls.WindowGate:
    return controls.WindowGate((parse_window(text),), "UTC", clock=lambda: now)


def test_outside_the_window_a_new_revision_waits_and_names_the_next_opening() -> None:
    sat = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    gate = _window_gate("Mon-Fri 08:00-17:00", sat)
    answer = gate.check(GateQuestion("r1", ("web",), converging=False, force=False))
    assert answer is not None and answer.outcome == "waiting"
    assert "the next opens Mon 2026-11-30 08:00 UTC" in answer.reason
    # inside the window, nothing to do, a failed release converging back, or --force: go on
    assert _window_gate("Sat 11:00-13:00", sat).check(
        GateQuestion("r1", ("web",), False, False)) is None
    assert gate.check(GateQuestion("r1", (), False, False)) is None
    assert gate.check(GateQuestion("r1", ("web",), converging=True, force=False)) is None
    assert gate.check(GateQuestion("r1", ("web",), converging=False, force=True)) is None


def test_a_window_waiting_pass_touches_nothing_and_force_ignores_the_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "CONFIRM_SECONDS", 0.05)
    w = _world(tmp_path, windows=["Mon 00:00-00:01"])
    w.release(V[1])
    now = datetime.now(UTC)
    if now.weekday() == 0 and now.hour == 0 and now.minute == 0:
        pytest.fail("run outside Monday 00:00 UTC")  # the one minute the window is open
    r = w.sync()
    assert (r.outcome, r.exit_code) == ("waiting", 0) and "next opens" in (r.reason or "")
    assert w.running("web") == set()
    assert w.sync(force=True).outcome == "applied"
    controls.freeze(w.state_dir, "freeze beats force", "alice")
    w.release(V[2])
    assert w.sync(force=True).outcome == "frozen"


# ------------------------------------------------------------------ rollback
def _releases(world: World, *digests: str) -> list[str]:
    revs = []
    for d in digests:
        revs.append(world.release(d))
        assert world.sync().outcome == "applied"
    return revs


def test_rollback_returns_to_the_previous_release_without_the_source_and_freezes(
        world: World) -> None:
    r1, r2 = _releases(world, V[1], V[2])
    world.source.down = 100  # the git source is gone
    fetches, pulls = world.source.fetches, list(world.engine.pulls)
    report = controls.perform_rollback(world.rec, None, "alice")
    assert (report.outcome, report.exit_code, report.target) == ("applied", 0, r1)
    assert report.pulled == [] and world.engine.pulls == pulls  # all local
    assert world.source.fetches == fetches
    assert world.running("web") == {V[1]}
    st = world.state()
    assert st["known_good"]["web"]["digest"] == V[1]
    assert st["last_applied"]["revision"] == r1
    assert r2 in st["failed_revisions"]  # the bad revision is not re-applied after unfreeze
    fr = controls.read_freeze(world.state_dir)
    assert fr is not None and fr.reason == f"rollback to {r1[:12]} by alice"
    world.source.down = 0
    controls.unfreeze(world.state_dir, "alice")
    assert world.sync().outcome == "skipped" and world.running("web") == {V[1]}


def test_rollback_pulls_images_that_are_gone_and_says_so(world: World) -> None:
    _releases(world, V[1], V[2])
    world.engine.local.discard(f"{WEB}@{V[1]}")
    report = controls.perform_rollback(world.rec, None, "alice")
    assert report.pulled == [f"web@{V[1]}"] and report.outcome == "applied"
    assert world.engine.pulls[-1] == f"{WEB}@{V[1]}"


def test_rollback_to_a_named_revision_and_an_unknown_one(world: World) -> None:
    r1, _r2, _r3 = _releases(world, V[1], V[2], V[3])
    with pytest.raises(NoRollbackTarget, match="not a recorded release"):
        controls.perform_rollback(world.rec, "deadbeefdead", "alice")
    report = controls.perform_rollback(world.rec, r1[:10], "alice")
    assert report.target == r1 and world.running("web") == {V[1]}


def test_rollback_with_no_earlier_release_touches_nothing(world: World) -> None:
    _releases(world, V[1])
    with pytest.raises(NoRollbackTarget, match="no earlier applied release"):
        controls.perform_rollback(world.rec, None, "alice")
    assert controls.read_freeze(world.state_dir) is None


def test_a_rollback_target_that_is_unhealthy_is_rolled_back_and_not_frozen(
        world: World) -> None:
    _releases(world, V[1], V[2])
    # pretend the older release was recorded with a digest that now crashes
    st = world.rec.store.load()
    st.releases[1].digests["web"] = st.releases[1].digests["web"].model_copy(
        update={"digest": CRASHY})
    world.rec.store.save(st)
    report = controls.perform_rollback(world.rec, None, "alice")
    assert (report.outcome, report.exit_code) == ("rolled-back", 1)
    assert world.running("web") == {V[2]}
    assert controls.read_freeze(world.state_dir) is None


def test_the_daemon_serves_a_rollback_request_at_its_next_pass(world: World) -> None:
    r1, _ = _releases(world, V[1], V[2])
    (world.state_dir / controls.ROLLBACK_REQUEST).write_text(
        json.dumps({"id": "abc", "to": None, "user": "erin", "expires_at": time.time() + 60}))
    result = controls.daemon_pass(world.rec, world.state_dir)
    assert result is not None and (result.outcome, result.revision) == ("applied", r1)
    doc = json.loads((world.state_dir / controls.ROLLBACK_RESULT).read_text())
    assert doc["id"] == "abc" and doc["report"]["frozen"].startswith("frozen by erin")
    assert not (world.state_dir / controls.ROLLBACK_REQUEST).exists()
    # no request: an ordinary pass (frozen now)
    again = controls.daemon_pass(world.rec, world.state_dir)
    assert again is not None and again.outcome == "frozen"


def test_an_expired_rollback_request_is_not_performed(world: World) -> None:
    _releases(world, V[1], V[2])
    (world.state_dir / controls.ROLLBACK_REQUEST).write_text(
        json.dumps({"id": "old", "to": None, "user": "erin", "expires_at": time.time() - 1}))
    with capture_logs() as logs:
        result = controls.daemon_pass(world.rec, world.state_dir)
    assert result is not None and result.outcome == "no-op"  # an ordinary pass
    assert world.running("web") == {V[2]}
    assert "agent.rollback.request_expired" in [e["event"] for e in logs]
    assert not (world.state_dir / controls.ROLLBACK_REQUEST).exists()


def test_rollback_never_signals_a_one_off_command_holding_the_lock(tmp_path: Path) -> None:
    # a process that holds the lock without handling SIGHUP: a sync, which SIGHUP would kill
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / LOCK_FILE).write_text(f"{child.pid}\n")
        with pytest.raises(LockHeld, match=rf"one-off gitops-agent command \(pid {child.pid}\)"):
            controls.lock_holder(tmp_path)
        assert child.poll() is None  # not signalled
    finally:
        child.kill()
        child.wait()
    (tmp_path / LOCK_FILE).write_text(f"{os.getpid()}\n")
    old = signal.signal(signal.SIGHUP, lambda *_: None)  # as the daemon does
    try:
        assert controls.lock_holder(tmp_path) == os.getpid()
    finally:
        signal.signal(signal.SIGHUP, old)


def test_a_rollback_request_nobody_served_is_withdrawn(tmp_path: Path) -> None:
    old = signal.signal(signal.SIGHUP, lambda *_: None)
    try:
        with pytest.raises(StateWriteError, match="withdrawn: nothing was rolled back"):
            controls.ask_daemon(tmp_path, os.getpid(), None, "erin", timeout=0.3, poll=0.05)
    finally:
        signal.signal(signal.SIGHUP, old)
    assert not (tmp_path / controls.ROLLBACK_REQUEST).exists()


# ------------------------------------------------------------------ retention
def test_retention_keeps_the_last_n_known_good_digests_and_never_other_repositories(
        world: World) -> None:
    world.engine.publish(OTHER, V[9], HEALTHY)
    world.engine.pull(OTHER, V[9])
    _releases(world, *V[1:7])  # six releases of web
    web_local = {r.split("@")[1] for r in world.engine.local if r.startswith(WEB + "@")}
    assert web_local == {V[3], V[4], V[5], V[6]}  # the running one + 3 rollback targets
    assert f"{OTHER}@{V[9]}" in world.engine.local
    assert f"{API}@{V[0]}" in world.engine.local  # api's only (running) digest


def test_retention_never_removes_an_image_a_container_uses(world: World) -> None:
    _releases(world, V[1])
    world.engine.local.add(f"{WEB}@{V[8]}")
    stray = world.engine.start("web", f"{WEB}@{V[8]}")  # a container by hand
    st = world.rec.store.load()
    removed = retention.prune(world.engine, st, 1)
    assert removed == [] and f"{WEB}@{V[8]}" in world.engine.local
    world.engine.containers.pop(stray.id)
    assert len(retention.prune(world.engine, st, 1)) == 1


def test_a_retention_failure_never_fails_the_release(world: World) -> None:
    world.release(V[1])
    orig = world.engine.local_images

    def broken(repository: str) -> Any:
        raise RuntimeError("engine hiccup")

    world.engine.local_images = broken  # type: ignore[method-assign]
    with capture_logs() as logs:
        assert world.sync().outcome == "applied"
    assert "agent.retention.failed" in [e["event"] for e in logs]
    world.engine.local_images = orig  # type: ignore[method-assign]


def test_status_lists_rollback_targets_on_disk_and_the_freeze(world: World) -> None:
    from agent import queries

    r1, r2, r3 = _releases(world, V[1], V[2], V[3])
    assert [t["revision"] for t in retention.targets_on_disk(world.engine,
                                                             world.rec.store.load())] == [r2, r1]
    world.engine.local.discard(f"{WEB}@{V[1]}")
    controls.freeze(world.state_dir, "incident", "alice")
    view = queries.status(world.rec)
    assert [t["revision"] for t in view.rollback_targets] == [r2]
    assert view.frozen is not None and view.frozen["by"] == "alice"
    assert view.frozen["reason"] == "incident"


# ------------------------------------------------------------------ the Docker edge's listing
class _Api:
    """The two list calls of the Engine API retention reads, from in-memory records."""

    def __init__(self, images: list[dict[str, Any]], containers: list[dict[str, Any]]) -> None:
        self._images, self._containers = images, containers

    def images(self) -> list[dict[str, Any]]:
        return self._images

    def containers(self, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002
        return self._containers


class _Client:
    def __init__(self, api: _Api) -> None:
        self.api = api


def test_the_docker_edge_lists_only_this_repositorys_references_and_real_use() -> None:
    from agent.edges.docker import DockerEngine

    repo, mirror = "reg:5000/shop/web", "mirror:5000/shop/web"
    images = [
        # the same content pushed to a mirror too; a container runs it through the mirror
        {"Id": "sha256:aa", "RepoTags": [f"{repo}:v1", f"{mirror}:v1"],
         "RepoDigests": [f"{repo}@{V[1]}", f"{mirror}@{V[1]}"]},
        # used through this repository
        {"Id": "sha256:bb", "RepoTags": None, "RepoDigests": [f"{repo}@{V[2]}"]},
        # only this repository's, no container: free to go
        {"Id": "sha256:cc", "RepoTags": ["<none>:<none>"], "RepoDigests": [f"{repo}@{V[3]}"]},
        # another repository only: not listed
        {"Id": "sha256:dd", "RepoTags": ["other/tool:1"], "RepoDigests": []},
    ]
    containers = [{"ImageID": "sha256:aa", "Image": f"{mirror}@{V[1]}"},
                  {"ImageID": "sha256:bb", "Image": f"{repo}@{V[2]}"}]
    engine = DockerEngine(client=_Client(_Api(images, containers)))  # type: ignore[arg-type]
    got = {i.id: i for i in engine.local_images(repo)}
    assert set(got) == {"sha256:aa", "sha256:bb", "sha256:cc"}
    assert got["sha256:aa"].references == (f"{repo}:v1", f"{repo}@{V[1]}")
    assert got["sha256:aa"].digests == (V[1],) and not got["sha256:aa"].in_use
    assert got["sha256:bb"].in_use and not got["sha256:cc"].in_use
