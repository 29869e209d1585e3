"""The daemon's schedule: jittered passes on the interval grid, SIGHUP passes at once,
never two passes at the same time. The reconciler is faked: this is about timing."""

from __future__ import annotations

import threading
import time
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
    delays = []
    for _ in range(6):
        rec = FakeReconciler()
        d = _daemon(tmp_path, interval=3600, jitter=0.6, rec=rec)
        t0 = time.monotonic()
        t = _run(d)
        _wait(lambda rec=rec: rec.started)
        delays.append(rec.started[0] - t0)
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
    rec = FakeReconciler(pass_seconds=0.5)
    d = _daemon(tmp_path, interval=0.1, jitter=0, rec=rec)
    t = _run(d)
    _wait(lambda: len(rec.started) == 1)
    d.hup()
    _wait(lambda: len(rec.started) >= 3)
    d.stop()
    t.join(10)
    assert rec.max_running == 1
    assert not t.is_alive()
