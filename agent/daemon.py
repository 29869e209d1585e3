"""`gitops-agent run`: the long-running service.

A pass runs every ``interval_seconds`` (+ jitter); passes never overlap. SIGHUP runs a pass
now (after the current one, if one is running). SIGTERM/SIGINT stop taking passes; a pass in
flight finishes (its rollout completes or rolls back within ``health_timeout_seconds``),
then the process exits 0. The systemd notify protocol is spoken when $NOTIFY_SOCKET is set.

Time. The schedule runs on the monotonic clock, never on the wall clock: an NTP step, a
wrong RTC corrected at boot or an operator's ``date -s`` cannot stop polling. APScheduler
stays the scheduler that *runs* passes (one executor thread, ``max_instances=1``, jobs
coalesced, ``shutdown(wait=True)`` lets a pass in flight finish), but it cannot decide *when*:
APScheduler 3 compares every job's ``next_run_time`` with ``datetime.now()`` and sleeps for
the wall-clock difference, so any trigger -- its IntervalTrigger or a custom one -- that
hands it a wall-clock fire time is delayed by hours when the clock steps back by hours after
that time was computed. So the due times live in :class:`MonotonicSchedule`; when one comes,
the main loop submits the pass as a job due since :data:`DUE_LONG_AGO`, which APScheduler
runs at once whatever the wall clock says (``misfire_grace_time=None``).

The clock (``agent.timefmt.Clock``: ``monotonic()`` and ``wait(event, timeout)``) is handed
in: the real one by default, a virtual one in the unit tests, whose time moves only when the
test moves it -- the schedule, the jitter and the watchdog are proven without real waits.

Watchdog. ``WATCHDOG=1`` is sent only while passes keep completing: if none has completed
for :meth:`Daemon.liveness_bound` seconds (a pass hung, the scheduler died, submitted passes
never start), the agent stops feeding the watchdog and systemd restarts it.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
from datetime import UTC, datetime
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from agent.config import AgentConfig
from agent.edges.systemd import Notifier, watchdog_interval
from agent.outcomes import PassResult
from agent.reconcile import Reconciler
from agent.stacks_config import AgentFile, single
from agent.state import StateLock, StateStore
from agent.timefmt import SYSTEM_CLOCK, Clock

log = structlog.get_logger()

JOB_ID = "reconcile"
# A one-off pass is submitted as "due since 2000": with misfire_grace_time=None APScheduler
# runs it at once, and no step of the wall clock (back by less than 26 years) makes it look
# like a future job.
DUE_LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
# The slack, on top of the passes' own budgets, before a silent agent is declared stuck:
# pulls, git fetches and compose calls are bounded by their own timeouts (minutes).
LIVENESS_SLACK_SECONDS = 600.0
# How long the main loop may sleep at most (it also wakes for signals, due passes and the
# watchdog): bounds how late a stopped scheduler or a hung pass is noticed.
MAX_SLEEP_SECONDS = 30.0


class MonotonicSchedule:
    """When the next pass is due, in monotonic seconds: on the grid ``start + k*interval``,
    each delayed by U(0, jitter) so a fleet restarted at once spreads its polls while the
    mean period stays ``interval``. Grid points that passed while a pass ran are coalesced
    (skipped), as APScheduler's ``coalesce=True`` would."""

    def __init__(self, interval: float, jitter: float, start: float,
                 rng: random.Random | None = None) -> None:
        self.interval = interval
        self.jitter = jitter
        self._start = start
        self._rng = rng or random.Random()  # noqa: S311 - spreading polls, not security
        self._k = 0
        self.due = self._jittered(0)

    def _jittered(self, k: int) -> float:
        delay = self._rng.uniform(0, self.jitter) if self.jitter > 0 else 0.0
        return self._start + k * self.interval + delay

    def advance(self, now: float) -> float:
        """The pass due at ``self.due`` was taken at ``now``: the next grid point whose
        jitter window has not entirely passed (a jitter larger than the interval skips none)."""
        k = math.floor((now - self._start - self.jitter) / self.interval) + 1
        self._k = max(self._k + 1, k)
        self.due = self._jittered(self._k)
        return self.due


class Daemon:
    """``cfg``: a one-stack config, or the whole config file (``[[stack]]`` tables: every
    stack's pass each round, agent/stacks.py). ``reconciler``: the one stack's pass, built
    elsewhere (tests). ``clock``: what the schedule and the watchdog read and wait on."""

    def __init__(self, cfg: AgentConfig | AgentFile, reconciler: Reconciler | None = None,
                 notifier: Notifier | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        from agent.stacks import StackRun, StackSet

        file = cfg if isinstance(cfg, AgentFile) else single(cfg)
        if reconciler is not None:
            stacks = StackSet(file, [StackRun(file.specs[0], reconciler)],
                              observers=list(getattr(reconciler, "observers", ())))
        else:
            # the daemon serves GET /metrics on [metrics] listen
            stacks = StackSet.build(file, report=True, serve_metrics=True)
        self.file = file
        self.cfg = file.specs[0].cfg  # the first stack's (the only one's without [[stack]])
        self.agent = file.agent
        self.stacks = stacks
        self.reconciler = stacks.runs[0].rec  # the first stack's (one-stack tests read it)
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._pass_lock = threading.Lock()
        self._pass_started: float | None = None
        self._started = clock.monotonic()
        self._last_completed: float | None = None
        self._withholding = False
        self._hup_pending = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._hup = threading.Event()
        self.passes = 0
        self.completed = 0

    # ------------------------------------------------------------------ passes
    def _tick(self) -> None:
        """One scheduled (or SIGHUP-requested) pass; never raises, never overlaps."""
        if not self._pass_lock.acquire(blocking=False):
            self._hup_pending.set()
            return
        try:
            while not self._stop.is_set():
                self._hup_pending.clear()
                self._one_pass()
                if not self._hup_pending.is_set():
                    break
                log.info("agent.daemon.pass_requested", trigger="SIGHUP during a pass")
        finally:
            self._pass_lock.release()

    def _one_pass(self) -> None:
        self._pass_started = self.clock.monotonic()
        self.passes += 1
        result: PassResult | str | None = None
        try:
            from agent.controls import daemon_pass  # a pending `rollback` request first

            results = self.stacks.run_round(
                lambda run: daemon_pass(run.rec, run.spec.cfg.agent.state_dir))
            result = _summary(results) if self.file.multi else results.popitem()[1]
        except Exception as e:  # noqa: BLE001 - the daemon lives on; next pass as scheduled
            log.error("agent.daemon.pass_crashed", error=repr(e))
        finally:
            self._pass_started = None
            # a crashed pass still completed: the daemon's machinery is alive
            self._last_completed = self.clock.monotonic()
            self.completed += 1
        if isinstance(result, str):
            self.notifier.status(result)
        elif result is not None:
            rev = (result.revision or "-")[:12]
            when = datetime.now().astimezone().strftime("%H:%M:%S")
            line = f"{result.outcome} at {rev} ({when})"
            if result.reason and not result.ok:
                line += f": {result.reason.splitlines()[0][:200]}"
            self.notifier.status(line)
        else:
            self.notifier.status("last pass crashed; see the journal")

    def _submit(self) -> None:
        """Hand one pass to APScheduler, to run at once whatever the wall clock says."""
        # A fresh job id each time: a pass submitted just as the previous one returns must
        # not be dropped by max_instances; _tick's lock keeps passes from overlapping.
        self.scheduler.add_job(self._tick, "date", run_date=DUE_LONG_AGO, name=JOB_ID)

    def request_pass(self) -> None:
        if self._pass_lock.locked():
            self._hup_pending.set()
            log.info("agent.daemon.reload", message="a pass is running; another follows it")
            return
        log.info("agent.daemon.reload", message="running a pass now")
        # no jitter; the interval grid is left as it is
        self._submit()

    # ------------------------------------------------------------------ watchdog
    def liveness_bound(self) -> float:
        """Seconds without a completed pass after which the agent counts as stuck.

        Between two completions lie at most the wait for the next due time (interval +
        jitter) and one pass: its rollout waits up to health_timeout for health, a rollback
        up to health_timeout again, and the pulls, git fetch and compose calls before them
        are bounded by their own timeouts -- a third health_timeout plus LIVENESS_SLACK
        covers those generously, so a slow but legitimate pass is never killed."""
        a = self.agent
        # stacks run one after another in the worst case (dependencies, concurrency 1)
        health = sum(s.cfg.agent.health_timeout_seconds for s in self.file.specs)
        return a.interval_seconds + a.jitter_seconds + 3 * health + LIVENESS_SLACK_SECONDS

    def _alive(self, now: float) -> bool:
        """Passes keep completing: the last one completed (or the daemon started) within
        the liveness bound."""
        last = self._last_completed if self._last_completed is not None else self._started
        return now - last <= self.liveness_bound()

    def _feed_watchdog(self, now: float) -> None:
        if self._alive(now):
            if self._withholding:
                log.info("agent.daemon.watchdog_resumed")
                self._withholding = False
            self.notifier.watchdog()
            return
        if not self._withholding:
            self._withholding = True
            last = self._last_completed if self._last_completed is not None else self._started
            log.error("agent.daemon.watchdog_withheld",
                      seconds_since_last_pass=round(now - last, 1),
                      bound_seconds=self.liveness_bound(),
                      pass_running=self._pass_started is not None,
                      scheduler_running=self.scheduler.running,
                      message="no pass completed in time; systemd's watchdog restarts the agent")
            self.notifier.status("stuck: no pass completed in time; waiting for the watchdog")

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        a = self.agent
        self._started = self.clock.monotonic()
        schedule = MonotonicSchedule(a.interval_seconds, a.jitter_seconds, self._started)
        from agent.webhook import start_webhook

        # a signed push takes the SIGHUP path (hup() only sets flags: thread-safe, coalesced)
        first, *others = [s.cfg for s in self.file.specs]
        webhook = start_webhook(first, self.hup, others)
        self.scheduler.start()
        log.info("agent.daemon.started", interval_seconds=a.interval_seconds,
                 jitter_seconds=a.jitter_seconds, liveness_bound_seconds=self.liveness_bound(),
                 project=", ".join(s.cfg.compose.name for s in self.file.specs),
                 source=self.stacks.describe())
        self.notifier.ready(f"started; polling {self.stacks.describe()}")
        wd = watchdog_interval()
        next_ping = self._started
        try:
            while not self._stop.is_set():
                now = self.clock.monotonic()
                if now >= schedule.due:
                    schedule.advance(now)
                    if not self._pass_lock.locked():  # else coalesced into the running one
                        self._submit()
                if wd is not None and now >= next_ping:
                    self._feed_watchdog(now)
                    next_ping = now + wd
                if self._hup.is_set():
                    self._hup.clear()
                    self.request_pass()
                until = schedule.due
                if wd is not None:
                    until = min(until, next_ping)
                timeout = min(max(until - self.clock.monotonic(), 0.0), MAX_SLEEP_SECONDS)
                self.clock.wait(self._wake, timeout)
                self._wake.clear()
        finally:
            if webhook is not None:
                webhook.close()
            log.info("agent.daemon.stopping", signal="SIGTERM/SIGINT",
                     message="finishing the pass in flight" if self._pass_lock.locked() else "")
            self.notifier.stopping()
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)  # a pass in flight finishes or rolls back
            self.stacks.close()  # engines, and the metrics server
            log.info("agent.daemon.stopped", passes=self.passes)
            self.notifier.close()
        return 0

    def stop(self) -> None:
        """Signal-safe: only sets flags; the main loop acts."""
        self._stop.set()
        self._wake.set()

    def hup(self) -> None:
        """Signal-safe: only sets flags; the main loop asks for a pass."""
        self._hup.set()
        self._wake.set()


def _summary(results: dict[str, PassResult | None]) -> str:
    """The systemd status line for a round of many stacks."""
    parts = [f"{name} {r.outcome if r is not None else 'crashed'}"
             for name, r in sorted(results.items())]
    when = datetime.now().astimezone().strftime("%H:%M:%S")
    return f"{', '.join(parts)} ({when})"[:400]


def run_daemon(cfg: AgentConfig | AgentFile) -> int:
    logging.basicConfig(level=logging.WARNING)  # APScheduler's own warnings, if any
    # APScheduler's own records are plain text; the agent logs what matters as events
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    state_dir = cfg.state_dir if isinstance(cfg, AgentFile) else cfg.agent.state_dir
    store = StateStore(state_dir)
    store.ensure_dir()
    lock = StateLock(state_dir)  # one lock for every stack
    lock.acquire()  # LockHeld: the second agent refuses to start (exit 4)
    try:
        daemon = Daemon(cfg)

        def on_term(_signum: int, _frame: FrameType | None) -> None:
            daemon.stop()

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            daemon.hup()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        return daemon.run()
    finally:
        lock.release()
