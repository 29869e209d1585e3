"""Notifications through Apprise (``slack://``, ``discord://``, ``mailto://``, ``json://`` …).

One message per event — ``applied``, ``rolled-back``, ``failed``, ``invalid`` for a pass's
outcome; ``stuck`` once the source or the engine has been unreachable for
``stuck_after_seconds``, ``recovered`` once when it answers again. The same event for the
same revision and reason is not sent again within ``repeat_seconds``. What was sent when is
kept in ``state_dir/report-notify.json`` (written only when it changes), so a restart or a
``sync`` run from cron does not repeat it. A message that cannot be sent is logged
(``agent.report.failed``) and tried again only when its event happens again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.errors import ConfigError, DockerUnavailable, SourceUnavailable
from agent.log import register_secret
from agent.outcomes import PassResult
from agent.report import commit_url, first_line, host_name, load_json, save_json, short

log = structlog.get_logger()

STATE_FILE = "report-notify.json"
OUTCOME_EVENTS = ("applied", "rolled-back", "failed", "invalid")
TITLES = {"applied": "deployed", "rolled-back": "rolled back", "failed": "release failed",
          "invalid": "invalid revision", "stuck": "stuck", "recovered": "recovered"}

Send = Callable[[str, str, str], bool]  # (title, body, kind) -> delivered


class Notifier:
    def __init__(
        self,
        send: Send,
        *,
        host: str,
        on: Sequence[str],
        repeat_seconds: float,
        stuck_after_seconds: float,
        state_dir: Path,
        commit_url: Callable[[str | None], str | None] = lambda _rev: None,
        clock: Callable[[], float] = time.time,
        stack: str | None = None,
    ) -> None:
        self.send = send
        self.host = host
        self.stack = stack
        self.on = set(on)
        self.repeat = repeat_seconds
        self.stuck_after = stuck_after_seconds
        self.commit_url = commit_url
        self.clock = clock
        self.path = state_dir / STATE_FILE
        data = load_json(self.path, "notifications")
        self.sent: dict[str, float] = {str(k): float(v)
                                       for k, v in (data.get("sent") or {}).items()}
        since = data.get("unreachable_since")
        self.unreachable_since: float | None = float(since) if since is not None else None
        self.stuck_sent = bool(data.get("stuck_sent"))

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> Notifier:
        n = cfg.notify
        assert n is not None
        return cls(apprise_sender(n.urls), host=host_name(cfg), on=n.on,
                   repeat_seconds=n.repeat_seconds, stuck_after_seconds=n.stuck_after_seconds,
                   state_dir=cfg.agent.state_dir,
                   commit_url=lambda rev: commit_url(cfg, rev), stack=cfg.stack_name)

    # ------------------------------------------------------------------ PassObserver
    def release_started(self, revision: str, services: Sequence[str]) -> None:
        pass  # a message per outcome, not per start

    def pass_finished(self, result: PassResult) -> None:
        try:
            self._handle(result)
        except Exception as e:  # noqa: BLE001 - a notification never affects the pass
            log.error("agent.report.crashed", reporter="notify", error=repr(e))

    def _handle(self, r: PassResult) -> None:
        now = self.clock()
        changed = False
        events: list[str] = []
        unreachable = r.outcome == "error" and isinstance(
            r.error, SourceUnavailable | DockerUnavailable)
        if unreachable:
            if self.unreachable_since is None:
                self.unreachable_since, changed = now, True
            if not self.stuck_sent and now - self.unreachable_since >= self.stuck_after:
                events.append("stuck")
        elif self.unreachable_since is not None:
            if self.stuck_sent:
                events.append("recovered")
            else:
                self.unreachable_since, changed = None, True
        if r.outcome in OUTCOME_EVENTS:
            events.append(r.outcome)
        for event in events:
            if event not in self.on:
                if event in ("stuck", "recovered"):
                    changed |= self._episode(event, now)
                continue
            key = f"{event}|{r.revision or '-'}|{first_line(r.reason, 500)}"
            if event in OUTCOME_EVENTS:
                last = self.sent.get(key)
                if last is not None and now - last < self.repeat:
                    log.debug("agent.report.suppressed", reporter="notify", notification=event)
                    continue
            title, body, kind = self.message(event, r, now)
            if not self._deliver(event, title, body, kind, r.revision):
                continue
            if event in OUTCOME_EVENTS:
                self.sent[key] = now
            else:
                self._episode(event, now)
            changed = True
        for k in [k for k, t in self.sent.items() if now - t >= self.repeat]:
            del self.sent[k]
            changed = True
        if changed:
            save_json(self.path, {"sent": self.sent, "unreachable_since": self.unreachable_since,
                                  "stuck_sent": self.stuck_sent}, "notifications")

    def _episode(self, event: str, now: float) -> bool:
        """Advance the stuck/recovered episode (also when that event is not wanted)."""
        if event == "stuck":
            self.stuck_sent = True
        else:
            self.unreachable_since, self.stuck_sent = None, False
        return True

    # ------------------------------------------------------------------ the message
    def message(self, event: str, r: PassResult, now: float) -> tuple[str, str, str]:
        rev = (r.revision or "")[:12]
        where = f"{self.host}/{self.stack}" if self.stack else self.host
        title = f"{where}: {TITLES[event]}" + (f" {rev}" if rev else "")
        lines = [f"host: {self.host}", *([f"stack: {self.stack}"] if self.stack else []),
                 f"outcome: {event}"]
        if rev:
            lines.append(f"revision: {rev}")
        if r.changes:
            lines.append("services: " + ", ".join(
                f"{c.service} {short(c.old)} -> {short(c.new)}" for c in r.changes))
        if event == "stuck" and self.unreachable_since is not None:
            lines.append(f"unreachable for {int(now - self.unreachable_since)} s")
        if r.reason and event != "recovered":
            lines.append(f"reason: {first_line(r.reason, 1000)}")
        url = self.commit_url(r.revision)
        if url:
            lines.append(f"commit: {url}")
        kind = {"applied": "success", "recovered": "success", "stuck": "warning"}.get(
            event, "failure")
        return title, "\n".join(lines), kind

    def _deliver(self, event: str, title: str, body: str, kind: str,
                 revision: str | None) -> bool:
        ev = {"reporter": "notify", "notification": event, "revision": (revision or "-")[:12]}
        try:
            ok = self.send(title, body, kind)
        except Exception as e:  # noqa: BLE001
            log.warning("agent.report.failed", **ev, error=repr(e))
            return False
        if ok:
            log.info("agent.report.sent", **ev)
        else:
            log.warning("agent.report.failed", **ev,
                        message="no notification URL accepted the message")
        return ok


def apprise_sender(urls: Sequence[str]) -> Send:
    """An Apprise object for ``urls``; a URL Apprise cannot use is a ConfigError (its
    position only: the URL itself may hold a token)."""
    import apprise

    # Apprise logs its own failures with the target's address; the agent logs its own event
    logging.getLogger("apprise").setLevel(logging.CRITICAL)
    ap = apprise.Apprise()
    bad = []
    for i, url in enumerate(urls):
        register_secret(url)
        if not ap.add(url):
            bad.append(f"At 'notify.urls.{i}': not a URL Apprise can send to "
                       f"(scheme {url.split('://', 1)[0]!r})")
    if bad:
        raise ConfigError("config", bad)
    kinds: dict[str, Any] = {"success": apprise.NotifyType.SUCCESS,
                             "warning": apprise.NotifyType.WARNING,
                             "failure": apprise.NotifyType.FAILURE}

    def send(title: str, body: str, kind: str) -> bool:
        return bool(ap.notify(title=title, body=body, notify_type=kinds[kind]))

    return send
