"""Staged rollout over many hosts (``rollout:`` in desired-state.yml), with no server of
our own: every host posts its outcome as a commit status (``deploy/{host}``, see
:mod:`agent.report.github_status`), and a host of a later wave reads those statuses before
it applies a revision.

:func:`decide` is pure (the waves, this host, the statuses, GitHub's clock -> a reason to
hold, or None); :class:`RolloutGate` is the :class:`agent.ports.Gate` the pass asks after
the diff and before any pull.

* A host belongs to the first wave whose ``hosts`` (names or shell-style patterns) match
  its ``[agent] host``; a host matching none is held ("not in any rollout wave").
* Wave 1 applies at once. A host of wave N applies revision R only when every earlier wave
  is done for R: each host it names exactly has posted ``success`` on R, its patterns have
  at least ``min_hosts`` (default 1) successes on R, and ``soak_seconds`` have passed since
  the wave's last success (GitHub's clock on both ends: the status's ``updated_at`` and
  the answer's ``Date``).
* Only statuses posted by a trusted creator count (``[report.github] trusted_creators``,
  default the login of the host's own report token): a CI job or a branch workflow with
  ``statuses: write`` posting ``deploy/web-2`` can neither release nor halt a wave.
* A ``failure`` or ``error`` on R from a host of an earlier wave stops the rollout of R:
  the host does not apply R (``held``, the reason names that host and its status), keeps
  running what it runs and posts nothing on R. A newer revision starts afresh.
* A pass with nothing to change, or one converging on the known-good digests after R
  failed here, is never held. ``sync --force`` does not skip the waves.
* The statuses could not be read: TransientError, the pass ends ``error`` (exit 3) and
  touches nothing; the next pass asks again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from agent.config import AgentConfig
from agent.desired import Wave
from agent.errors import ConfigError
from agent.ports import Gate, GateAnswer, GateQuestion

if TYPE_CHECKING:
    from agent.edges.github_statuses import StatusesRead

log = structlog.get_logger()

FAILED_STATES = ("failure", "error")


def wave_of(host: str, rollout: Sequence[Wave]) -> int | None:
    """The index of the first wave that matches ``host``, else None."""
    for i, w in enumerate(rollout):
        if w.matches(host):
            return i
    return None


def describe_wave(host: str, rollout: Sequence[Wave] | None) -> str | None:
    """``canary (wave 1 of 3)``; None without a rollout."""
    if rollout is None:
        return None
    i = wave_of(host, rollout)
    if i is None:
        return "none: not in any rollout wave (never released)"
    return f"{rollout[i].name} (wave {i + 1} of {len(rollout)})"


@dataclass(frozen=True)
class HostReport:
    host: str
    state: str  # success, failure, error, pending
    at: datetime


def host_from_context(template: str) -> Callable[[str], str | None]:
    """``deploy/{host}`` -> a function from a status context to the host it names."""
    before, _, after = template.partition("{host}")
    rx = re.compile(re.escape(before) + r"([a-z0-9][a-z0-9._-]*)" + re.escape(after) + r"\Z")

    def host(context: str) -> str | None:
        m = rx.match(context)
        return m.group(1) if m else None

    return host


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def decide(host: str, rollout: Sequence[Wave], reports: Sequence[HostReport],
           now: datetime, revision: str) -> str | None:
    """Why ``host`` must not apply ``revision`` now, or None when it may."""
    rev = revision[:12]
    mine = wave_of(host, rollout)
    if mine is None:
        return f"{host} is not in any rollout wave of {rev}"
    if mine == 0:
        return None
    member = {r.host: wave_of(r.host, rollout) for r in reports}
    earlier = [r for r in reports if (w := member[r.host]) is not None and w < mine]
    for r in sorted(earlier, key=lambda r: (member[r.host] or 0, r.host)):
        if r.state in FAILED_STATES:
            name = rollout[member[r.host] or 0].name
            return (f"rollout of {rev} stopped: {r.host} (wave {name}) reported {r.state}; "
                    f"this host keeps what it runs")
    for i, wave in enumerate(rollout[:mine]):
        ok = {r.host: r.at for r in earlier if member[r.host] == i and r.state == "success"}
        missing = [h for h in wave.exact if h not in ok]
        if missing:
            return (f"waiting for wave {wave.name}: {', '.join(missing[:5])} "
                    f"{'has' if len(missing) == 1 else 'have'} not reported success on {rev}")
        if wave.patterns:
            need = wave.min_hosts or 1
            got = sum(1 for h in ok if h not in wave.exact)
            if got < need:
                return (f"waiting for wave {wave.name}: {got} of {need} hosts matching "
                        f"{' '.join(wave.patterns)} reported success on {rev}")
        if wave.soak_seconds and ok:
            until = max(ok.values()) + timedelta(seconds=wave.soak_seconds)
            if now < until:
                return f"waiting for wave {wave.name} to soak until {_fmt(until)} ({rev})"
    return None


class RolloutGate:
    """The rollout waves as a gate of the pass (:class:`agent.ports.Gate`)."""

    def __init__(self, host: str, *, context: str | None,
                 read: Callable[[str], StatusesRead] | None,
                 trusted: Callable[[], Collection[str]] | None = None) -> None:
        self.host = host
        self.context = context  # the [report.github] context template, None without it
        self.read = read
        self.trusted = trusted  # the logins whose statuses count; None: every status

    def check(self, question: GateQuestion) -> GateAnswer | None:
        rollout = question.rollout
        if rollout is None:
            return None
        self._need_reporting(question.revision)
        if not question.services or question.converging:
            return None
        assert self.read is not None and self.context is not None
        i = wave_of(self.host, rollout)
        if i == 0:
            log.info("agent.fleet.released", host=self.host, wave=rollout[0].name,
                     revision=question.revision[:12], why="first wave")
            return None
        if i is None:
            return self._hold(question, f"{self.host} is not in any rollout wave of "
                                        f"{question.revision[:12]}")
        got = self.read(question.revision)
        to_host = host_from_context(self.context)
        trusted = self.trusted() if self.trusted is not None else None
        ours = [s for s in got.statuses if (h := to_host(s.context)) is not None
                and h != self.host]
        counted = [s for s in ours if trusted is None or s.creator in trusted]
        if len(counted) < len(ours):
            log.warning("agent.fleet.statuses_ignored", revision=question.revision[:12],
                        contexts=sorted(s.context for s in ours if s not in counted)[:10],
                        creators=sorted({str(s.creator) for s in ours if s not in counted}),
                        message="posted by a login not in report.github.trusted_creators")
        reports = [HostReport(h, s.state, s.updated_at) for s in counted
                   if (h := to_host(s.context)) is not None]
        log.info("agent.fleet.statuses_read", revision=question.revision[:12],
                 requests=got.requests, not_modified=got.not_modified, hosts=len(reports))
        reason = decide(self.host, rollout, reports, got.now, question.revision)
        if reason is not None:
            return self._hold(question, reason)
        log.info("agent.fleet.released", host=self.host, wave=rollout[i].name,
                 revision=question.revision[:12], why="earlier waves done")
        return None

    def _hold(self, question: GateQuestion, reason: str) -> GateAnswer:
        log.info("agent.fleet.held", host=self.host, revision=question.revision[:12],
                 reason=reason)
        return GateAnswer("held", reason)

    def _need_reporting(self, revision: str) -> None:
        if self.read is None or self.context is None:
            raise ConfigError("agent config", [
                f"At 'report.github': revision {revision[:12]} has rollout waves, which need "
                f"[report.github] (each host reads the others' commit statuses); add it or "
                f"remove rollout: from desired-state.yml"])
        if "{host}" not in self.context:
            raise ConfigError("agent config", [
                f"At 'report.github.context': rollout waves need the {{host}} placeholder in "
                f"the context ({self.context!r}) to tell the hosts' statuses apart"])


def build_gates(cfg: AgentConfig) -> list[Gate]:
    """The rollout gate, reading statuses with ``[report.github]``'s repo, api_url and token.
    Raises ConfigError (a bad token file) before any pass runs."""
    from agent.report import host_name

    gh = cfg.report.github
    if gh is None:
        return [RolloutGate(host_name(cfg), context=None, read=None)]
    from agent.edges.github_statuses import GitHubStatuses
    from agent.secrets import read_secret_file

    assert gh.repo is not None
    client = GitHubStatuses(repo=gh.repo, api_url=gh.api_url,
                            token=read_secret_file(gh.token_file, "report.github.token_file"),
                            timeout=gh.timeout_seconds, state_dir=cfg.agent.state_dir)
    listed = gh.trusted_creators

    def trusted() -> Collection[str]:
        return frozenset(listed) if listed is not None else frozenset([client.token_login()])

    return [RolloutGate(host_name(cfg), context=gh.context, read=client.read,
                        trusted=trusted)]


__all__ = ["RolloutGate", "build_gates", "decide", "describe_wave", "wave_of"]
