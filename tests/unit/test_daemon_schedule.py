"""The daemon's schedule: jittered passes on the interval grid, SIGHUP passes at once,
never two passes at the same time. The reconciler is faked: this is about timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import parse_config
from agent.daemon import Daemon
from agent.edges.systemd import Notifier
from agent.outcomes import PassResult


class FakeReconciler:
    def __init__(self, pass_seconds: float = 0.0) -> None:
        self.started: list[float] = []
        self.running = 0
        self.max_running = 0
        self.pass_seconds = pass_seconds
        self._lock = threading.Lock()

        class _Src:
            def describe(self) -> str:
                return "fake"

        class _Engine:
            def close(self) -> None:
                pass

        self.source, self.engine = _Src(), _Engine()

    def run_pass(self, *, force: bool = False) -> PassResult:
        with self._lock:
            self.started.append(time.monotonic())
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        time.sleep(self.pass_seconds)
        with self._lock:
            self.running -= 1
        return PassResult("no-op", "a" * 40)


def _daemon(tmp_path: Path, interval: float, jitter: float, rec: FakeReconciler) -> Daemon:
    cfg = parse_config({
        "source": {"repo": str(tmp_path)},
        "compose": {"project_dir": str(tmp_path)},
        "agent": {"interval_seconds": interval, "jitter_seconds": jitter,
                  "state_dir": str(tmp_path / "state")},
    })
    return Daemon(cfg, reconciler=rec, notifier=Notifier(""))  # type: ignore[arg-type]


def _run(d: Daemon) -> threading.Thread:
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    return t


def _wait(pred, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_first_pass_is_delayed_by_jitter_so_a_fleet_restart_spreads(tmp_path):
    # a fleet of six daemons restarted together (each its own state_dir)
    fleet = [(rec := FakeReconciler(), _daemon(tmp_path / f"host{i}", interval=3600,
                                                jitter=0.6, rec=rec)) for i in range(6)]
    started = []
    for _rec, d in fleet:
        started.append((time.monotonic(), _run(d)))
    for rec, _d in fleet:
        _wait(lambda rec=rec: rec.started)
    delays = [rec.started[0] - t0 for (rec, _d), (t0, _t) in zip(fleet, started, strict=True)]
    for (_rec, d), (_t0, t) in zip(fleet, started, strict=True):
        d.stop()
        t.join(5)
    assert all(0 <= x <= 0.6 + 0.3 for x in delays), delays
    assert max(delays) - min(delays) > 0.05  # spread, not all at once


def test_sighup_pass_runs_at_once_without_jitter(tmp_path):
    rec = FakeReconciler()
    d = _daemon(tmp_path, interval=3600, jitter=0, rec=rec)
    t = _run(d)
    _wait(lambda: len(rec.started) == 1)
    t0 = time.monotonic()
    d.hup()
    _wait(lambda: len(rec.started) == 2)
    assert rec.started[1] - t0 < 1.0
    d.stop()
    t.join(5)


def test_passes_never_overlap_and_a_sighup_during_a_pass_runs_after_it(tmp_path):
    rec = FakeReconciler(pass_seconds=0.25)  # each pass spans two or more grid points
    d = _daemon(tmp_path, interval=0.1, jitter=0, rec=rec)
    t = _run(d)
    _wait(lambda: len(rec.started) == 1)
    d.hup()
    _wait(lambda: len(rec.started) >= 3)
    d.stop()
    t.join(10)
    assert rec.max_running == 1
    assert not t.is_alive()


# ---------------------------------------------------------------- time: monotonic schedule
import math  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402

import apscheduler.schedulers.base as aps_base  # noqa: E402
import pytest  # noqa: E402
from apscheduler.triggers.interval import IntervalTrigger  # noqa: E402
from structlog.testing import capture_logs  # noqa: E402

import agent.daemon as daemon_mod  # noqa: E402
from agent.daemon import MonotonicSchedule  # noqa: E402


class SteppedWallClock(datetime):
    """datetime whose now() can be stepped: what APScheduler and the daemon see as the
    wall clock. The monotonic clock is untouched, as after a real `date -s`/NTP step."""

    offset = timedelta(0)

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
        return datetime.now(tz) - cls.offset


def test_a_wall_clock_step_back_by_hours_does_not_delay_the_next_pass(tmp_path, monkeypatch):
    SteppedWallClock.offset = timedelta(0)
    monkeypatch.setattr(aps_base, "datetime", SteppedWallClock)
    monkeypatch.setattr(daemon_mod, "datetime", SteppedWallClock)
    interval, jitter = 0.4, 0.1
    rec = FakeReconciler()
    d = _daemon(tmp_path, interval=interval, jitter=jitter, rec=rec)
    # the control: APScheduler's own IntervalTrigger on the same scheduler and clock
    control: list[float] = []
    t = _run(d)
    _wait(lambda: d.scheduler.running)
    d.scheduler.add_job(lambda: control.append(time.monotonic()),
                        IntervalTrigger(seconds=interval))
    _wait(lambda: len(rec.started) >= 2 and len(control) >= 2)

    SteppedWallClock.offset = timedelta(hours=3)  # the wall clock jumps back 3 hours
    t_step = time.monotonic()
    passes_before, control_before = len(rec.started), len(control)
    # the agent keeps polling: four more passes come (within 2.5 s: 0.5 s a pass at most)
    _wait(lambda: len(rec.started) - passes_before >= 4, timeout=2.5)
    d.stop()
    t.join(5)

    after = [s for s in rec.started if s > t_step]
    # every gap stays within interval + jitter (+ scheduling slack)
    assert len(rec.started) - passes_before >= 4, rec.started
    gaps = [b - a for a, b in zip([t_step, *after], after, strict=False)]
    assert max(gaps) <= interval + jitter + 0.3, gaps
    # ... while a wall-clock trigger on the very same scheduler stalls for 3 hours
    assert len(control) - control_before <= 1, "the fake wall clock step did not take effect"


def test_monotonic_schedule_stays_on_the_grid_and_coalesces_missed_points():
    s = MonotonicSchedule(interval=10, jitter=2, start=100.0, rng=random.Random(7))
    assert 100 <= s.due <= 102
    assert 110 <= s.advance(100.5) <= 112
    # a pass that ran past two grid points: the missed ones are skipped, not run back to back
    assert 140 <= s.advance(135.0) <= 142
    assert 150 <= s.advance(140.1) <= 152


def test_monotonic_schedule_with_jitter_wider_than_the_interval_skips_no_grid_point():
    s = MonotonicSchedule(interval=1, jitter=3, start=0.0, rng=random.Random(3))
    grid = []
    for _ in range(20):
        due = s.due
        grid.append(math.floor(due))  # due in [k, k + 3]
        s.advance(due)  # taken exactly when due
    assert all(k <= g <= k + 3 for k, g in zip(range(20), grid, strict=True)), grid


# ---------------------------------------------------------------- watchdog: passes must complete
class GatedReconciler(FakeReconciler):
    """Passes complete at once until ``hang`` is set; then the next pass blocks until
    ``release`` is set (a pass stuck on an engine or registry that never answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = threading.Event()
        self.release = threading.Event()

    def run_pass(self, *, force: bool = False) -> PassResult:
        if self.hang.is_set():
            with self._lock:
                self.running += 1
            self.release.wait(30)
            with self._lock:
                self.running -= 1
        return super().run_pass(force=force)


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)

    def collect(self, seconds: float, until: Callable[[list[str]], bool] | None = None,
                ) -> list[str]:
        """Every message within ``seconds``; with ``until``, returns as soon as the messages
        so far satisfy it (a presence check need not wait out the whole window)."""
        out: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                out.extend(self.sock.recv(4096).decode().splitlines())
            except TimeoutError:
                pass
            if until is not None and until(out):
                break
        return out


def pinged(messages: list[str]) -> bool:
    return "WATCHDOG=1" in messages


@pytest.fixture
def watched(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A daemon under a 0.1 s watchdog, its notify socket, and a steppable monotonic clock."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # pings every 0.05 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    ns = NotifySocket(tmp_path / "notify")
    skew = [0.0]
    rec = GatedReconciler()
    cfg = parse_config({
        "source": {"repo": str(tmp_path)},
        "compose": {"project_dir": str(tmp_path)},
        "agent": {"interval_seconds": 0.2, "jitter_seconds": 0, "health_timeout_seconds": 30,
                  "state_dir": str(tmp_path / "state")},
    })
    d = Daemon(cfg, reconciler=rec, notifier=Notifier(str(ns.path)),  # type: ignore[arg-type]
               monotonic=lambda: time.monotonic() + skew[0])
    t = _run(d)
    yield d, rec, ns, skew
    rec.release.set()
    d.stop()
    t.join(10)
    ns.sock.close()


def test_liveness_bound_covers_interval_jitter_and_a_rollout_plus_rollback(tmp_path):
    d = _daemon(tmp_path, interval=60, jitter=10, rec=FakeReconciler())
    # a pass may wait health_timeout for the rollout and again for a rollback
    assert d.liveness_bound() >= 60 + 10 + 2 * d.cfg.agent.health_timeout_seconds


def test_watchdog_is_withheld_when_a_pass_hangs_past_the_bound_and_resumes_after(watched):
    d, rec, ns, skew = watched
    # fed while passes complete
    assert ns.collect(0.5, until=lambda m: m.count("WATCHDOG=1") >= 4).count("WATCHDOG=1") >= 4
    rec.hang.set()
    _wait(lambda: rec.running == 1)
    bound = d.liveness_bound()
    with capture_logs() as logs:
        skew[0] += 0.8 * bound  # a slow pass, still within the bound: fed
        assert "WATCHDOG=1" in ns.collect(0.4, until=pinged)
        skew[0] += 0.4 * bound  # now past the bound with no pass completed
        drained = ns.collect(0.2)  # the pings already in flight
        silent = ns.collect(0.6)
        assert "WATCHDOG=1" not in silent, silent
        assert any(m.startswith("STATUS=stuck") for m in drained + silent)
        withheld = [e for e in logs if e["event"] == "agent.daemon.watchdog_withheld"]
        assert len(withheld) == 1 and withheld[0]["pass_running"] is True
        rec.release.set()  # the pass completes: the agent is alive again
        assert "WATCHDOG=1" in ns.collect(1.0, until=pinged)
    assert any(e["event"] == "agent.daemon.watchdog_resumed" for e in logs)


def test_watchdog_is_withheld_when_the_scheduler_dies(watched):
    d, rec, ns, skew = watched
    _wait(lambda: rec.started)
    d.scheduler.shutdown(wait=False)  # passes are still submitted, none ever runs
    with capture_logs() as logs:
        assert "WATCHDOG=1" in ns.collect(0.3, until=pinged)  # not yet: within the bound
        skew[0] += d.liveness_bound() + 1
        ns.collect(0.2)
        assert "WATCHDOG=1" not in ns.collect(0.6)
    withheld = [e for e in logs if e["event"] == "agent.daemon.watchdog_withheld"]
    assert withheld and withheld[0]["scheduler_running"] is False
