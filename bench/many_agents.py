"""Issue 7, item 6 — many agents polling one source.

1,000 simulated agents poll one GitHub repository for 10 minutes of simulated time, on a
virtual clock. Each agent's schedule is the daemon's (agent/daemon.py): APScheduler's
``IntervalTrigger`` ticks on a fixed grid every ``interval_seconds`` (60 by default), the first
tick at start, and every pass — the first included — waits ``uniform(0, jitter_seconds)``
(10 by default) after its tick. The mean period is ``interval``; offsets do not accumulate.

Two fleets:

* ``staggered``: agents started at uniformly random moments (hosts booted at different
  times), measured after one warm-up hour;
* ``herd``: every agent (re)started within the same second (a config-management push or a
  package upgrade restarting the service fleet-wide), measured from that second.

The per-request cost comes from real requests: ``agent.edges.github.GitHubSource`` against
``tests/github_server.py`` (the fake GitHub REST API with ETag/304 semantics) on 127.0.0.1 —
requests per idle poll, per release poll, and client time per request.

    .venv/bin/python bench/many_agents.py [--quick] [--agents N] [--minutes M]
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: F401  (puts tests/ and the repo on sys.path)
from apscheduler.triggers.interval import IntervalTrigger
from common import base_args, log, median, write_results


def fire_times(start: float, interval: float, jitter: float, until: float,
               epoch: datetime) -> list[float]:
    """Pass times (seconds after ``epoch``) of one agent started at ``start``, as
    agent/daemon.py schedules them: APScheduler's IntervalTrigger without jitter puts ticks
    on the grid ``start + k * interval`` (the first at start), and each tick waits
    ``uniform(0, jitter)`` before its pass (``Daemon._scheduled_tick``)."""
    trig = IntervalTrigger(seconds=interval, timezone=UTC,
                           start_date=epoch + timedelta(seconds=start))
    out = []
    tick = epoch + timedelta(seconds=start)
    while True:
        t = (tick - epoch).total_seconds() + (random.uniform(0, jitter) if jitter else 0.0)
        if t > until:
            break
        out.append(t)
        nxt = trig.get_next_fire_time(tick, tick + timedelta(microseconds=1))
        if nxt is None:
            break
        tick = nxt
    return out


def simulate(agents: int, minutes: float, interval: float, jitter: float, fleet: str,
             seed: int = 1) -> dict[str, Any]:
    random.seed(seed)  # IntervalTrigger draws its jitter from the random module
    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    warm = 3600.0 if fleet == "staggered" else 0.0
    t_end = warm + minutes * 60
    all_t: list[float] = []
    for _ in range(agents):
        start = random.uniform(0, interval) if fleet == "staggered" else random.uniform(0, 1)
        all_t += [t for t in fire_times(start, interval, jitter, t_end, epoch) if t >= warm]
    rel = [t - warm for t in all_t]
    per_min = Counter(int(t // 60) for t in rel)
    per_s = Counter(int(t) for t in rel)
    secs = [per_s.get(s, 0) for s in range(int(minutes * 60))]
    mins = [per_min.get(m, 0) for m in range(int(minutes))]
    # how the herd spreads: the span holding 90% of cycle k's requests
    spread = []
    if fleet == "herd":
        by_agent_cycle: dict[int, list[float]] = {}
        # recompute per agent to know each request's cycle number
        random.seed(seed)
        for _ in range(agents):
            start = random.uniform(0, 1)
            for k, t in enumerate(fire_times(start, interval, jitter, t_end, epoch)):
                by_agent_cycle.setdefault(k, []).append(t)
        for k in sorted(by_agent_cycle)[: int(minutes)]:
            ts = sorted(by_agent_cycle[k])
            if len(ts) < agents * 0.9:
                break
            spread.append({"cycle": k, "p5_s": ts[int(0.05 * len(ts))],
                           "p95_s": ts[int(0.95 * len(ts)) - 1],
                           "span90_s": ts[int(0.95 * len(ts)) - 1] - ts[int(0.05 * len(ts))],
                           "stdev_s": statistics.pstdev(ts)})
    busy = sorted(secs)
    return {
        "fleet": fleet, "agents": agents, "minutes": minutes,
        "interval_s": interval, "jitter_s": jitter,
        "requests": len(rel),
        "per_minute": mins,
        "per_minute_median": median(mins), "per_minute_max": max(mins),
        "per_second_mean": len(rel) / (minutes * 60),
        "per_second_p50": busy[len(busy) // 2], "per_second_p99": busy[int(0.99 * len(busy))],
        "per_second_max": busy[-1],
        "seconds_with_no_request": sum(1 for x in secs if x == 0),
        "herd_spread": spread,
    }


def sample_real_requests(n_agents: int, idle_polls: int) -> dict[str, Any]:
    """Real GitHubSource polls against the fake GitHub server: what each poll costs."""
    from github_server import FakeGitHub

    from agent.edges.github import GitHubSource

    with FakeGitHub(repo="acme/shop") as gh, tempfile.TemporaryDirectory() as tmp:
        gh.commit({"desired-state.yml": b"version: 1\nservices: {}\n"})
        sources = []
        for i in range(n_agents):
            d = Path(tmp) / f"a{i}"
            d.mkdir()
            sources.append(GitHubSource("acme/shop", "main", "desired-state.yml",
                                        state_dir=d, api_url=gh.api_url, token="t0ken"))
        r0 = gh.request_count
        for s in sources:
            s.fetch()  # first poll: head (200) + contents
        first = (gh.request_count - r0) / n_agents
        r0 = gh.request_count
        statuses0 = dict(gh.status_counts)
        cpu0, t0 = time.process_time(), time.perf_counter()
        lat = []
        for i in range(idle_polls):
            s = sources[i % n_agents]
            a = time.perf_counter()
            s.fetch()
            lat.append(time.perf_counter() - a)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0  # client + server: both run in this process
        idle = (gh.request_count - r0) / idle_polls
        statuses = {k: v - statuses0.get(k, 0) for k, v in gh.status_counts.items()}
        gh.commit({"desired-state.yml": b"version: 1\nservices: {}\n# release\n"})
        r0 = gh.request_count
        for s in sources:
            s.fetch()
        release = (gh.request_count - r0) / n_agents
        for s in sources:
            s.close()
    return {
        "agents_sampled": n_agents, "idle_polls": idle_polls,
        "requests_first_poll": first, "requests_per_idle_poll": idle,
        "requests_per_release_poll": release, "idle_statuses": statuses,
        "idle_poll_latency_median_ms": median(lat) * 1000,
        "idle_poll_wall_ms": wall * 1000 / idle_polls,
        "idle_poll_cpu_ms_client_and_server": cpu * 1000 / idle_polls,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__ or "")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--interval", type=float, default=60)
    ap.add_argument("--jitter", type=float, default=10)
    args = ap.parse_args(argv)
    agents = 100 if args.quick and args.agents == 1000 else args.agents

    log("sampling real polls against the fake GitHub server")
    real = sample_real_requests(20 if args.quick else 50, 200 if args.quick else 2000)
    log("simulating")
    sims = [simulate(agents, args.minutes, args.interval, args.jitter, f)
            for f in ("staggered", "herd")]
    no_jitter = simulate(agents, args.minutes, args.interval, 0, "herd")

    res = {"real_requests": real, "simulations": sims, "herd_without_jitter": no_jitter}
    print(f"\n== many agents (item 6): {agents} agents, one GitHub source, "
          f"{args.minutes:g} simulated minutes, interval {args.interval:g}s + "
          f"jitter U(0,{args.jitter:g})s ==")
    print(f"real polls (GitHubSource -> fake GitHub on 127.0.0.1): first poll "
          f"{real['requests_first_poll']:.0f} requests, idle poll "
          f"{real['requests_per_idle_poll']:.2f} (statuses {real['idle_statuses']}), release "
          f"poll {real['requests_per_release_poll']:.0f}; idle poll "
          f"{real['idle_poll_latency_median_ms']:.2f} ms median wall, "
          f"{real['idle_poll_cpu_ms_client_and_server']:.2f} ms CPU (client+server)")
    for s in [*sims, no_jitter]:
        label = s["fleet"] + ("" if s["jitter_s"] else ", no jitter")
        print(f"-- {label}: {s['requests']} requests; per minute median "
              f"{s['per_minute_median']:.0f}, max {s['per_minute_max']}; per second mean "
              f"{s['per_second_mean']:.1f}, p50 {s['per_second_p50']}, p99 "
              f"{s['per_second_p99']}, max {s['per_second_max']}; seconds without a "
              f"request {s['seconds_with_no_request']}/{int(s['minutes'] * 60)}")
        print("   per minute: " + " ".join(str(x) for x in s["per_minute"]))
        if s["herd_spread"]:
            print("   herd: 90% of cycle k's requests fall within (s): " + ", ".join(
                f"k={c['cycle']}: {c['span90_s']:.1f}" for c in s["herd_spread"]))
    print(f"source load at 1 request per idle poll: ≈{sims[0]['per_minute_median']:.0f} "
          f"requests/min; on a release every agent makes "
          f"{real['requests_per_release_poll']:.0f} requests on its next poll")
    write_results("many_agents", res, args.json)
    return res


if __name__ == "__main__":
    main()
