"""Staged rollout over many hosts (``rollout:`` in desired-state.yml), with no server of
our own: every host posts its outcome as a commit status (``deploy/{host}``, see
:mod:`agent.report.github_status`), and a host of a later wave reads those statuses before
it applies a revision.

:func:`decide` is pure (the waves, this host, the statuses, GitHub's clock -> a reason to
hold, or None); :class:`RolloutGate` is the :class:`agent.ports.Gate` the pass asks after
the diff and before any pull.

* A host belongs to the first wave whose ``hosts`` (names or shell-style patterns) match
  its ``[agent] host``; a host matching none is held ("not in any rollout wave").
* Wave 1 applies at once. A host of wave N applies revision R only when no host of an
  earlier wave reported ``failure`` or ``error`` on R and every earlier wave is done for R:
  a sample of its hosts posted ``success`` on R (``min_hosts`` when given, else
  ``[fleet] sample`` of its named hosts, default 10, all of them when it names fewer, else
  1) and ``soak_seconds`` have passed since the success that completed the sample
  (GitHub's clock on both ends: the status's ``updated_at`` and the answer's ``Date``).
  Hosts outside the sample need not post success before the next wave goes. ``[fleet]
  sample = "all"`` keeps the strict gate: each named host must succeed, patterns need
  ``min_hosts`` (default 1) and the soak runs from the wave's last success.
* Only statuses posted by a trusted creator count (``[report.github] trusted_creators``,
  default the login of the host's own report token): a CI job or a branch workflow with
  ``statuses: write`` posting ``deploy/web-2`` can neither release nor halt a wave.
* A ``failure`` or ``error`` on R from a host of an earlier wave stops the rollout of R:
  the host does not apply R (``held``, the reason names that host and its status), keeps
  running what it runs and posts nothing on R. A newer revision starts afresh.
* A pass with nothing to change, or one converging on the known-good digests after R
  failed here, is never held. ``sync --force`` does not skip the waves.
* Held by an earlier wave's soak, the gate does not read again until the soak it saw ends
  (GitHub's time of that read plus the time elapsed on this host): no status could release
  the host before then, and a failure that appears meanwhile holds it as well (seen at the
  first read after the soak).
* The statuses could not be read: TransientError, the pass ends ``error`` (exit 3) and
  touches nothing; the next pass asks again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
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


DEFAULT_SAMPLE = 10  # successes of a wave of named hosts that release the next wave


def wave_need(wave: Wave, sample: int | None) -> int:
    """How many successes from hosts of ``wave`` make it done. ``sample`` N (the default
    gate): ``min_hosts`` when given, else N of its named hosts (all of them when it names
    fewer), else 1 (patterns only). ``sample`` None (the strict gate): every named host,
    and ``min_hosts`` (default 1) of the hosts its patterns match."""
    if sample is None:
        return len(wave.exact) + ((wave.min_hosts or 1) if wave.patterns else 0)
    if wave.min_hosts is not None:
        return wave.min_hosts
    return max(1, min(sample, len(wave.exact)))


def decide(host: str, rollout: Sequence[Wave], reports: Sequence[HostReport],
           now: datetime, revision: str, *, sample: int | None = DEFAULT_SAMPLE
           ) -> str | None:
    """Why ``host`` must not apply ``revision`` now, or None when it may (see
    :func:`judge`)."""
    return judge(host, rollout, reports, now, revision, sample=sample)[0]


def judge(host: str, rollout: Sequence[Wave], reports: Sequence[HostReport],
          now: datetime, revision: str, *, sample: int | None = DEFAULT_SAMPLE
          ) -> tuple[str | None, datetime | None]:
    """:func:`decide`'s reason, and when the hold is an earlier wave's soak, the time it
    ends (until then no new status can release this host: only a failure, which holds it
    too, so the gate need not read again before then).

    Every gate: a ``failure`` or ``error`` from any host of an earlier wave stops the
    rollout. ``sample`` N (default :data:`DEFAULT_SAMPLE`): each earlier wave is done once
    :func:`wave_need` of its hosts (any of them) reported success and ``soak_seconds`` have
    passed since the success that completed that sample, so hosts outside the sample need
    not post success before the next wave goes. ``sample`` None (strict): each named host
    must succeed, patterns need ``min_hosts``, and the soak runs from the wave's last
    success."""
    rev = revision[:12]
    mine = wave_of(host, rollout)
    if mine is None:
        return f"{host} is not in any rollout wave of {rev}", None
    if mine == 0:
        return None, None
    member = {r.host: wave_of(r.host, rollout) for r in reports}
    earlier = [r for r in reports if (w := member[r.host]) is not None and w < mine]
    for r in sorted(earlier, key=lambda r: (member[r.host] or 0, r.host)):
        if r.state in FAILED_STATES:
            name = rollout[member[r.host] or 0].name
            return (f"rollout of {rev} stopped: {r.host} (wave {name}) reported {r.state}; "
                    f"this host keeps what it runs"), None
    for i, wave in enumerate(rollout[:mine]):
        ok = {r.host: r.at for r in earlier if member[r.host] == i and r.state == "success"}
        waiting = (_strict_wait(wave, ok, rev) if sample is None else
                   _sample_wait(wave, ok, rev, wave_need(wave, sample)))
        if waiting is not None:
            return waiting, None
        if wave.soak_seconds and ok:
            times = sorted(ok.values())
            done_at = times[-1] if sample is None else times[wave_need(wave, sample) - 1]
            until = done_at + timedelta(seconds=wave.soak_seconds)
            if now < until:
                return f"waiting for wave {wave.name} to soak until {_fmt(until)} ({rev})", until
    return None, None


def _missing(names: Sequence[str], rev: str, wave: Wave) -> str:
    return (f"waiting for wave {wave.name}: {', '.join(names[:5])} "
            f"{'has' if len(names) == 1 else 'have'} not reported success on {rev}")


def _strict_wait(wave: Wave, ok: Mapping[str, datetime], rev: str) -> str | None:
    missing = [h for h in wave.exact if h not in ok]
    if missing:
        return _missing(missing, rev, wave)
    if wave.patterns:
        need = wave.min_hosts or 1
        got = sum(1 for h in ok if h not in wave.exact)
        if got < need:
            return (f"waiting for wave {wave.name}: {got} of {need} hosts matching "
                    f"{' '.join(wave.patterns)} reported success on {rev}")
    return None


def _sample_wait(wave: Wave, ok: Mapping[str, datetime], rev: str, need: int) -> str | None:
    if len(ok) >= need:
        return None
    if not wave.patterns and need == len(wave.exact):
        return _missing([h for h in wave.exact if h not in ok], rev, wave)
    of = (f"hosts matching {' '.join(wave.patterns)}" if not wave.exact else
          f"its {len(wave.exact)} named hosts" if not wave.patterns else "its hosts")
    return f"waiting for wave {wave.name}: {len(ok)} of {need} {of} reported success on {rev}"


class RolloutGate:
    """The rollout waves as a gate of the pass (:class:`agent.ports.Gate`)."""

    def __init__(self, host: str, *, context: str | None,
                 read: Callable[[str], StatusesRead] | None,
                 trusted: Callable[[], Collection[str]] | None = None,
                 sample: int | None = DEFAULT_SAMPLE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if sample is not None and sample < 1:
            raise ValueError(f"sample is a count of hosts (>= 1) or None, not {sample!r}")
        self.host = host
        self.sample = sample  # see decide(); None: the strict gate
        self.clock = clock
        # (revision, GitHub's time of the last read, self.clock() then, soak end, reason):
        # held by an earlier wave's soak, the gate does not read again before it ends
        self._soaking: tuple[str, datetime, float, datetime, str] | None = None
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
        if (soaking := self._still_soaking(question.revision)) is not None:
            return self._hold(question, soaking, read=False)
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
        reason, until = judge(self.host, rollout, reports, got.now, question.revision,
                              sample=self.sample)
        self._soaking = None if until is None or reason is None else (
            question.revision, got.now, self.clock(), until, reason)
        if reason is not None:
            return self._hold(question, reason)
        log.info("agent.fleet.released", host=self.host, wave=rollout[i].name,
                 revision=question.revision[:12], why="earlier waves done")
        return None

    def _still_soaking(self, revision: str) -> str | None:
        """The reason of the last hold while an earlier wave's soak it saw has not ended
        (GitHub's time of that read plus the time elapsed here), else None. No status can
        release this host before then: only a failure could appear, and it holds too."""
        if self._soaking is None or self._soaking[0] != revision:
            return None
        _, read_at, read_clock, until, reason = self._soaking
        # Date is to the second: count it a second late, to read early rather than late
        if read_at + timedelta(seconds=1 + self.clock() - read_clock) >= until:
            return None
        return reason

    def _hold(self, question: GateQuestion, reason: str, *, read: bool = True
              ) -> GateAnswer:
        log.info("agent.fleet.held", host=self.host, revision=question.revision[:12],
                 reason=reason, read=read)
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
        return [RolloutGate(host_name(cfg), context=None, read=None, sample=fleet_sample(cfg))]
    from agent.edges.github_statuses import GitHubStatuses
    from agent.secrets import read_secret_file

    assert gh.repo is not None
    client = GitHubStatuses(repo=gh.repo, api_url=gh.api_url,
                            token=read_secret_file(gh.token_file, "report.github.token_file"),
                            timeout=gh.timeout_seconds, state_dir=cfg.agent.state_dir)
    listed = gh.trusted_creators

    def trusted() -> Collection[str]:
        return frozenset(listed) if listed is not None else frozenset([client.token_login()])

    # a [[stack]]'s statuses: its own context (deploy/{host}/{stack}), the stack named
    context = gh.context.replace("{stack}", cfg.stack_label)
    return [RolloutGate(host_name(cfg), context=context, read=client.read,
                        trusted=trusted, sample=fleet_sample(cfg))]


def fleet_sample(cfg: AgentConfig) -> int | None:
    """``[fleet] sample`` (a count, or ``"all"`` for the strict gate: None); without a
    ``[fleet]`` section :data:`DEFAULT_SAMPLE`."""
    fleet = getattr(cfg, "fleet", None)
    value = getattr(fleet, "sample", DEFAULT_SAMPLE)
    if value == "all" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("agent config", [
            f"At 'fleet.sample': a count of hosts (>= 1) or \"all\", not {value!r}"])
    return value


__all__ = ["DEFAULT_SAMPLE", "RolloutGate", "build_gates", "decide", "describe_wave",
           "fleet_sample", "judge", "wave_need", "wave_of"]
