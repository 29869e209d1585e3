"""The daemon's schedule: jittered passes on the interval grid, SIGHUP passes at once,
never two passes at the same time, the watchdog fed only while passes complete. The
reconciler is faked and the daemon's clock is virtual (:class:`VirtualClock`: its time
moves only when the test moves it), so the real main loop, APScheduler and the notify
socket are exercised in virtual seconds, at exact times, without real waits."""

from __future__ import annotations

import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apscheduler.schedulers.base as aps_base
import pytest
from apscheduler.events import EVENT_JOB_ADDED, EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobEvent
from structlog.testing import capture_logs

import agent.daemon as daemon_mod
from agent.config import parse_config
from agent.daemon import MAX_SLEEP_SECONDS, Daemon, MonotonicSchedule
from agent.edges.systemd import Notifier
from agent.outcomes import PassResult
from agent.timefmt import SYSTEM_CLOCK, Clock

REAL_TIMEOUT = 5.0  # how long (real seconds) the test waits for a thread to act


def _wait(pred: Callable[[], object], timeout: float = REAL_TIMEOUT) -> None:
    """Until ``pred()`` holds, in real time (the daemon's threads acting, not time passing)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "the daemon did not act in time"
        time.sleep(0.001)


class VirtualClock:
    """A :class:`agent.timefmt.Clock` whose time moves only by :meth:`advance` / :meth:`fire`.
    A wait returns when its event is set (noticed within a millisecond) or when the clock has
    been moved to or past its deadline."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._cond = threading.Condition()
        self._waits: list[tuple[float, threading.Event]] = []  # in progress

    def monotonic(self) -> float:
        with self._cond:
            return self._now

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._cond:
            entry = (self._now + timeout, event)
            self._waits.append(entry)
            self._cond.notify_all()
            try:
                while not event.is_set() and self._now < entry[0]:
                    self._cond.wait(0.001)
                return event.is_set()
            finally:
                self._waits.remove(entry)
                self._cond.notify_all()

    def _pending(self) -> list[float]:
        return [d for d, e in self._waits if d > self._now and not e.is_set()]

    def deadline(self) -> float:
        """The deadline of the wait in progress (the main loop's), once one is."""
        with self._cond:
            assert self._cond.wait_for(self._pending, REAL_TIMEOUT), "no wait began"
            return min(self._pending())

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def fire(self) -> float:
        """Jump to the deadline of the wait in progress; the new time."""
        with self._cond:
            assert self._cond.wait_for(self._pending, REAL_TIMEOUT), "no wait began"
            self._now = min(self._pending())
            self._cond.notify_all()
            return self._now


def test_the_system_clock_waits_on_the_monotonic_clock_and_an_event_cuts_it_short():
    clock: Clock = SYSTEM_CLOCK
    event = threading.Event()
    t0 = clock.monotonic()
    assert clock.wait(event, 0.02) is False
    assert clock.monotonic() - t0 >= 0.02
    event.set()
    t1 = time.monotonic()
    assert clock.wait(event, 30) is True
    assert time.monotonic() - t1 < 1


class FakeReconciler:
    """Passes that complete at once, each recording the daemon's (virtual) time it began."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.started: list[float] = []
        self.running = 0
        self.ended = 0
        self.max_running = 0
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
            self.started.append(self.clock.monotonic())
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self._body()
        with self._lock:
            self.running -= 1
            self.ended += 1
        return PassResult("no-op", "a" * 40)

    def _body(self) -> None:
        pass


class GatedReconciler(FakeReconciler):
    """Passes complete at once until ``hang`` is set; from then on each pass blocks until
    the test lets it go (``finish``: a pass that takes as long as the test says, or one stuck
    on an engine or registry that never answers)."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.hang = threading.Event()
        self._go = threading.Semaphore(0)

    def _body(self) -> None:
        if self.hang.is_set():
            assert self._go.acquire(timeout=REAL_TIMEOUT)

    def finish(self, wait: bool = True) -> None:
        """Lets the pass in progress end (``wait``: and returns once it has)."""
        ended = self.ended
        self._go.release()
        if wait:
            _wait(lambda: self.ended > ended)


class Harness:
    """A daemon on its own thread and virtual clock; counts the passes it handed to
    APScheduler and those APScheduler finished running."""

    def __init__(self, d: Daemon, clock: VirtualClock) -> None:
        self.d, self.clock = d, clock
        self.handed = self.done = 0
        self.control_ids: set[str] = set()
        d.scheduler.add_listener(self._count, EVENT_JOB_ADDED | EVENT_JOB_EXECUTED
                                 | EVENT_JOB_ERROR)
        self.thread = threading.Thread(target=d.run, daemon=True)
        self.start_time = clock.monotonic()
        self.thread.start()

    def _count(self, event: JobEvent) -> None:
        if event.job_id in self.control_ids:
            return
        if event.code == EVENT_JOB_ADDED:
            self.handed += 1
        else:
            self.done += 1

    def settle(self) -> None:
        """Until the main loop waits again and every pass it handed over has run or is
        running (a pass the test holds): nothing more happens until the clock moves or the
        test lets a pass go."""
        self.clock.deadline()  # the loop has handed over all it will until the clock moves
        rec = self.d.reconciler
        _wait(lambda: self.handed - self.done == rec.running)  # type: ignore[attr-defined]

    def fire(self) -> float:
        """Settle, then move the clock to the main loop's next wake-up; returns the new time
        once the loop has acted on it (and waits again)."""
        self.settle()
        now = self.clock.fire()
        self.clock.deadline()
        return now

    def stop(self) -> None:
        self.d.stop()
        self.thread.join(REAL_TIMEOUT)
        assert not self.thread.is_alive()


def _cfg(tmp_path: Path, interval: float, jitter: float, **agent: object):  # type: ignore[no-untyped-def]
    return parse_config({
        "source": {"repo": str(tmp_path)},
        "compose": {"project_dir": str(tmp_path)},
        "agent": {"interval_seconds": interval, "jitter_seconds": jitter,
                  "state_dir": str(tmp_path / "state"), **agent},
    })


def _daemon(tmp_path: Path, interval: float, jitter: float,
            rec: FakeReconciler | None = None, notifier: Notifier | None = None) -> Harness:
    clock = rec.clock if rec is not None else VirtualClock()
    rec = rec or FakeReconciler(clock)
    d = Daemon(_cfg(tmp_path, interval, jitter), reconciler=rec,  # type: ignore[arg-type]
               notifier=notifier or Notifier(""), clock=clock)
    return Harness(d, clock)


@pytest.fixture(autouse=True)
def _no_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)


def test_first_pass_is_delayed_by_jitter_so_a_fleet_restart_spreads(tmp_path):
    # a fleet of six daemons restarted together (each its own state_dir and clock)
    jitter = 20.0
    assert jitter < MAX_SLEEP_SECONDS  # the first wake-up is the first pass
    fleet = [_daemon(tmp_path / f"host{i}", interval=3600, jitter=jitter) for i in range(6)]
    delays = []
    for h in fleet:
        h.fire()
        h.settle()
        rec = h.d.reconciler
        assert len(rec.started) == 1  # type: ignore[attr-defined]
        delays.append(rec.started[0] - h.start_time)  # type: ignore[attr-defined]
        h.stop()
    assert all(0 <= x <= jitter for x in delays), delays
    assert max(delays) - min(delays) > 1.0, delays  # spread, not all at once


def test_the_first_pass_waits_for_its_jittered_due_time_and_not_longer(tmp_path):
    h = _daemon(tmp_path, interval=3600, jitter=20)
    rec = h.d.reconciler
    due = h.clock.deadline()
    assert h.start_time < due <= h.start_time + 20
    h.clock.advance(due - h.start_time - 0.5)  # just before it: woken, but nothing runs
    h.settle()
    assert rec.started == []  # type: ignore[attr-defined]
    assert h.fire() == due
    h.settle()
    assert rec.started == [due]  # type: ignore[attr-defined]
    h.stop()


def test_passes_follow_the_interval_grid(tmp_path):
    h = _daemon(tmp_path, interval=60, jitter=0)
    rec = h.d.reconciler
    while len(rec.started) < 4:  # type: ignore[attr-defined]
        h.fire()
    h.settle()
    h.stop()
    s = h.start_time
    assert rec.started == [s, s + 60, s + 120, s + 180]  # type: ignore[attr-defined]


def test_sighup_pass_runs_at_once_without_jitter(tmp_path):
    h = _daemon(tmp_path, interval=3600, jitter=20)
    rec = h.d.reconciler
    first = h.fire()
    h.settle()
    assert rec.started == [first]  # type: ignore[attr-defined]
    h.d.hup()  # no time passes: the pass must come without the clock moving
    h.settle()
    assert rec.started == [first, first]  # type: ignore[attr-defined]
    h.stop()


def test_passes_never_overlap_and_a_sighup_during_a_pass_runs_after_it(tmp_path):
    clock = VirtualClock()
    rec = GatedReconciler(clock)
    rec.hang.set()  # every pass runs until the test finishes it
    h = _daemon(tmp_path, interval=1, jitter=0, rec=rec)
    s = h.start_time
    _wait(lambda: rec.running == 1)  # pass 1 at s
    h.d.hup()  # during pass 1: it follows pass 1
    assert h.fire() == s + 1  # grid points during a pass: coalesced into it
    assert h.fire() == s + 2
    rec.finish()  # pass 1 took 2 s: pass 2 (the SIGHUP's) starts at once
    _wait(lambda: len(rec.started) == 2)
    assert h.fire() == s + 3
    rec.finish()  # pass 2 ends at s + 3; the points s + 1, s + 2 and s + 3 never ran
    h.settle()
    assert h.fire() == s + 4
    _wait(lambda: len(rec.started) == 3)
    rec.finish()
    h.settle()
    h.stop()
    assert rec.started == [s, s + 2, s + 4]
    assert rec.max_running == 1



def test_a_signed_push_to_the_daemons_webhook_runs_a_pass_at_once(tmp_path):
    import hashlib
    import hmac
    import http.client
    import json

    import rig

    secret = tmp_path / "webhook.secret"
    secret.write_text("s3cret-webhook-value-42\n")
    secret.chmod(0o600)
    port = rig.free_port()
    cfg = parse_config({
        "source": {"repo": "https://git.example.com/ops/stack.git"},
        "compose": {"project_dir": str(tmp_path)},
        "agent": {"interval_seconds": 3600, "jitter_seconds": 20,
                  "state_dir": str(tmp_path / "state")},
        "webhook": {"listen": f"127.0.0.1:{port}", "secret_file": str(secret),
                    "kind": "github"},
    })
    clock = VirtualClock()
    rec = FakeReconciler(clock)
    h = Harness(Daemon(cfg, reconciler=rec, notifier=Notifier(""),  # type: ignore[arg-type]
                       clock=clock), clock)
    first = h.fire()  # the loop runs: the webhook listens
    h.settle()
    body = json.dumps({"ref": "refs/heads/main", "repository": {
        "clone_url": "https://git.example.com/ops/stack.git"}}).encode()
    mac = hmac.new(b"s3cret-webhook-value-42", body, hashlib.sha256).hexdigest()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("POST", "/hook", body=body, headers={
            "X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={mac}",
            "Content-Type": "application/json"})
        assert c.getresponse().status == 202
    finally:
        c.close()
    h.settle()  # no time passes: the push's pass comes without the clock moving
    h.stop()
    assert rec.started == [first, first]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- time: monotonic schedule
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
    interval, jitter = 60.0, 10.0
    h = _daemon(tmp_path, interval=interval, jitter=jitter)
    rec = h.d.reconciler
    # the control: a wall-clock trigger (APScheduler's own IntervalTrigger) on the same
    # scheduler and wall clock, which does run
    control: list[float] = []
    h.control_ids.add("control")
    _wait(lambda: h.d.scheduler.running)
    job = h.d.scheduler.add_job(lambda: control.append(time.monotonic()), "interval",
                                seconds=0.02, id="control")
    while len(rec.started) < 2:  # type: ignore[attr-defined]
        h.fire()
    h.settle()
    _wait(lambda: len(control) >= 1)

    SteppedWallClock.offset = timedelta(hours=3)  # the wall clock jumps back 3 hours
    passes_before = len(rec.started)  # type: ignore[attr-defined]
    t_step = h.clock.monotonic()
    while len(rec.started) - passes_before < 4:  # type: ignore[attr-defined]
        h.fire()
    h.settle()
    # ... while the wall-clock trigger on the very same scheduler now waits for hours
    wall_wait = h.d.scheduler.get_job("control").next_run_time - SteppedWallClock.now(UTC)
    h.stop()

    after = rec.started[passes_before:]  # type: ignore[attr-defined]
    gaps = [b - a for a, b in zip([t_step, *after], after, strict=False)]
    # every gap (the step's included) within interval + jitter: the agent keeps polling
    assert max(gaps) <= interval + jitter, gaps
    assert wall_wait > timedelta(hours=2), "the fake wall clock step did not take effect"
    assert job.id == "control"


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
class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET. A datagram
    is queued when the daemon's send returns, so a settled daemon's messages are all here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def drain(self) -> list[str]:
        """Every message queued so far."""
        out: list[str] = []
        while True:
            try:
                out.extend(self.sock.recv(4096).decode().splitlines())
            except BlockingIOError:
                return out


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            ) -> Iterator[tuple[Harness, GatedReconciler, NotifySocket]]:
    """A daemon under a 0.1 s watchdog (pings every 0.05 s of its clock), its notify socket."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    ns = NotifySocket(tmp_path / "notify")
    clock = VirtualClock()
    rec = GatedReconciler(clock)
    d = Daemon(_cfg(tmp_path, 0.2, 0, health_timeout_seconds=30),
               reconciler=rec, notifier=Notifier(str(ns.path)), clock=clock)  # type: ignore[arg-type]
    h = Harness(d, clock)
    yield h, rec, ns
    rec.hang.clear()
    rec.finish(wait=False)
    h.stop()
    ns.sock.close()


def _pings(h: Harness, ns: NotifySocket, wake_ups: int) -> list[str]:
    """What the daemon sent over its next ``wake_ups`` wake-ups."""
    for _ in range(wake_ups):
        h.fire()
    h.settle()
    return ns.drain()


def test_liveness_bound_covers_interval_jitter_and_a_rollout_plus_rollback(tmp_path):
    h = _daemon(tmp_path, interval=60, jitter=10)
    d = h.d
    h.stop()
    # a pass may wait health_timeout for the rollout and again for a rollback
    assert d.liveness_bound() >= 60 + 10 + 2 * d.cfg.agent.health_timeout_seconds


def test_watchdog_is_fed_every_half_period_while_passes_complete(watched):
    h, rec, ns = watched
    h.settle()
    ns.drain()
    t0 = h.clock.monotonic()
    sent = _pings(h, ns, 8)
    elapsed = h.clock.monotonic() - t0
    # a ping each 0.05 s of the clock (the wake-ups between are the passes, every 0.2 s)
    assert sent.count("WATCHDOG=1") >= math.floor(elapsed / 0.05) >= 4, (sent, elapsed)
    assert len(rec.started) >= 2


def test_watchdog_is_withheld_when_a_pass_hangs_past_the_bound_and_resumes_after(watched):
    h, rec, ns = watched
    d = h.d
    assert "WATCHDOG=1" in _pings(h, ns, 4)  # fed while passes complete
    rec.hang.set()
    while rec.running == 0:  # the next pass starts, and hangs
        h.fire()
    h.settle()
    bound = d.liveness_bound()
    with capture_logs() as logs:
        h.clock.advance(0.8 * bound)  # a slow pass, still within the bound: fed
        assert "WATCHDOG=1" in _pings(h, ns, 1)
        h.clock.advance(0.4 * bound)  # now past the bound with no pass completed
        h.settle()
        stuck = ns.drain()
        assert "WATCHDOG=1" not in stuck, stuck
        assert any(m.startswith("STATUS=stuck") for m in stuck), stuck
        silent = _pings(h, ns, 6)
        assert "WATCHDOG=1" not in silent, silent
        withheld = [e for e in logs if e["event"] == "agent.daemon.watchdog_withheld"]
        assert len(withheld) == 1 and withheld[0]["pass_running"] is True
        rec.hang.clear()
        rec.finish()  # the pass completes: the agent is alive again
        assert "WATCHDOG=1" in _pings(h, ns, 2)  # within two wake-ups: one is a ping
    assert any(e["event"] == "agent.daemon.watchdog_resumed" for e in logs)


def test_watchdog_is_withheld_when_the_scheduler_dies(watched):
    h, rec, ns = watched
    d = h.d
    h.settle()
    assert rec.started
    d.scheduler.shutdown(wait=False)  # passes are still submitted, none ever runs
    with capture_logs() as logs:
        for _ in range(6):  # not yet: within the bound
            h.clock.fire()
            h.clock.deadline()
        assert "WATCHDOG=1" in ns.drain()
        h.clock.advance(d.liveness_bound() + 1)
        h.clock.deadline()
        ns.drain()
        for _ in range(6):
            h.clock.fire()
            h.clock.deadline()
        assert "WATCHDOG=1" not in ns.drain()
    withheld = [e for e in logs if e["event"] == "agent.daemon.watchdog_withheld"]
    assert withheld and withheld[0]["scheduler_running"] is False
