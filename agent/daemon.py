"""`gitops-agent run`: the long-running service.

APScheduler runs a pass every ``interval_seconds`` (+ jitter); passes never overlap.
SIGHUP runs a pass now (after the current one, if one is running). SIGTERM/SIGINT stop
taking passes; a pass in flight finishes (its rollout completes or rolls back within
``health_timeout_seconds``), then the process exits 0. The systemd notify protocol is
spoken when $NOTIFY_SOCKET is set.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from datetime import datetime
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from agent.config import AgentConfig
from agent.edges.systemd import Notifier, watchdog_interval
from agent.reconcile import PassResult, Reconciler
from agent.secrets import registry_auth
from agent.state import StateLock, StateStore

log = structlog.get_logger()

JOB_ID = "reconcile"


class Daemon:
    def __init__(self, cfg: AgentConfig, reconciler: Reconciler | None = None,
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        if reconciler is None:
            from agent.report import build_observers

            # the daemon serves GET /metrics on [metrics] listen
            self.observers = build_observers(cfg, serve_metrics=True)
            reconciler = Reconciler(cfg, registry_auth=registry_auth(cfg),
                                    observers=self.observers)
        else:
            self.observers = list(getattr(reconciler, "observers", ()))
        self.reconciler = reconciler
        self.notifier = notifier or Notifier()
        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._pass_lock = threading.Lock()
        self._pass_started: float | None = None
        self._hup_pending = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._hup = threading.Event()
        self.passes = 0

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
        self._pass_started = time.monotonic()
        self.passes += 1
        result: PassResult | None = None
        try:
            result = self.reconciler.run_pass()
        except Exception as e:  # noqa: BLE001 - the daemon lives on; next pass as scheduled
            log.error("agent.daemon.pass_crashed", error=repr(e))
        finally:
            self._pass_started = None
        if result is not None:
            rev = (result.revision or "-")[:12]
            when = datetime.now().astimezone().strftime("%H:%M:%S")
            line = f"{result.outcome} at {rev} ({when})"
            if result.reason and not result.ok:
                line += f": {result.reason.splitlines()[0][:200]}"
            self.notifier.status(line)
        else:
            self.notifier.status("last pass crashed; see the journal")

    def _scheduled_tick(self) -> None:
        """A pass on the interval grid, delayed by U(0, jitter_seconds): a fleet restarted
        at once spreads its polls, and the mean period stays ``interval_seconds``."""
        jitter = self.cfg.agent.jitter_seconds
        if jitter > 0 and self._stop.wait(random.uniform(0, jitter)):  # noqa: S311
            return  # stopping
        self._tick()

    def request_pass(self) -> None:
        if self._pass_lock.locked():
            self._hup_pending.set()
            log.info("agent.daemon.reload", message="a pass is running; another follows it")
            return
        log.info("agent.daemon.reload", message="running a pass now")
        # a one-off job: no jitter, and the interval grid is left as it is
        self.scheduler.add_job(self._tick, next_run_time=datetime.now().astimezone())

    # ------------------------------------------------------------------ watchdog
    def _healthy_for_watchdog(self) -> bool:
        """Ping the watchdog unless a pass has hung far beyond anything legitimate."""
        started = self._pass_started
        if started is None:
            return True
        limit = self.cfg.agent.health_timeout_seconds * 3 + 600
        return time.monotonic() - started < limit

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        self.scheduler.add_job(
            self._scheduled_tick,
            IntervalTrigger(seconds=self.cfg.agent.interval_seconds),
            id=JOB_ID,
            next_run_time=datetime.now().astimezone(),
        )
        self.scheduler.start()
        log.info("agent.daemon.started", interval_seconds=self.cfg.agent.interval_seconds,
                 jitter_seconds=self.cfg.agent.jitter_seconds,
                 project=self.cfg.compose.name, source=self.reconciler.source.describe())
        self.notifier.ready(f"started; polling {self.reconciler.source.describe()}")
        wd = watchdog_interval()
        try:
            while not self._stop.is_set():
                self._wake.wait(timeout=wd if wd is not None else 3600)
                self._wake.clear()
                if self._hup.is_set() and not self._stop.is_set():
                    self._hup.clear()
                    self.request_pass()
                if wd is not None and self._healthy_for_watchdog():
                    self.notifier.watchdog()
        finally:
            log.info("agent.daemon.stopping", signal="SIGTERM/SIGINT",
                     message="finishing the pass in flight" if self._pass_lock.locked() else "")
            self.notifier.stopping()
            self.scheduler.shutdown(wait=True)  # a pass in flight finishes or rolls back
            self.reconciler.engine.close()
            for o in self.observers:
                close = getattr(o, "close", None)
                if close is not None:
                    close()  # the metrics server
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


def run_daemon(cfg: AgentConfig) -> int:
    logging.basicConfig(level=logging.WARNING)  # APScheduler's own warnings, if any
    # APScheduler's own records are plain text; the agent logs what matters as events
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    store = StateStore(cfg.agent.state_dir)
    store.ensure_dir()
    lock = StateLock(cfg.agent.state_dir)
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
