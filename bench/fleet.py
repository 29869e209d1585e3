"""Fleet rollout waves: what waiting costs GitHub, and how long a release takes to spread.

Part A (no Docker) — 100 simulated hosts: each is the real gate (``agent.fleet.RolloutGate``)
with its own real statuses client (``agent.edges.github_statuses.GitHubStatuses``, ETags kept
per host) against ``tests/github_server.py`` on 127.0.0.1. Waves: canary (canary-1, soak),
eu (``eu-*``, 49 hosts, min_hosts 10), rest (``*``, 50 hosts). Every interval each host that
has not applied yet asks its gate once; a released host "applies" and posts ``success`` at
once. Counted: status reads per held host per interval, how many were 304 (free under
GitHub's rate limit) and how many counted.

Part B (the real rig, ``--rig``) — three real daemons (canary-1, prod-1, prod-2: separate
compose projects and state dirs, one git repo) release a new revision with ``soak_seconds``
S and ``interval_seconds`` I (no jitter); measured: from canary-1's ``success`` status to
the last prod host's ``success`` (posted once it runs healthy), expected S .. S + I + apply.

Part D (no Docker) — ``--waves-hosts`` N (1000): a whole release, merge to the last host
applied, on a simulated clock: every host is the real gate (``RolloutGate`` + its own
``GitHubStatuses``) and the real reporter on one shared token, against the fake with the
content-creation limits (in process: the fake's own answers, no socket); waves canary (1),
early (9 %, named), main (50 %, ``main-*``, ``min_hosts: 10``), rest; 600 s soaks; each
host passes once per ``--waves-interval`` at its own seeded phase. Runs: the gate before
issue 26 (``sample = "all"``, a read at every held pass), the default gate (sample 10, no
reads while an earlier wave soaks), a what-if (only the sample posts success) and a
failure in wave main. Printed: minutes to the last host applied, status reads per
interval (pages: one per 100 statuses), how many were not 304 (counted by GitHub).

Part C (no Docker) — ``--scale-hosts`` N (1000) real status reporters all post one release
at once against the fake with GitHub's secondary limits (80/min, 500/h per token) in
simulated time (60 s steps, no sleeping): minutes until every host's success is on GitHub,
shared token vs per-host tokens, pending on vs off. (Gate reads are not in part C.)

    .venv/bin/python bench/fleet.py [--intervals N] [--rig] [--soak S] [--interval I]
                                    [--scale-hosts N] [--waves-hosts N]
                                    [--waves-interval S]
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: F401  (puts tests/ and the repo on sys.path)
from common import base_args, log, write_results

from agent.desired import Wave
from agent.edges.github_statuses import GitHubStatuses
from agent.fleet import RolloutGate, wave_need, wave_of
from agent.ports import GateQuestion

TOKEN = "ghs_bench_fleet"


def part_a(intervals: int, interval: float, soak: float, canary_at: int) -> dict[str, Any]:
    from github_server import FakeGitHub

    waves = (Wave(name="canary", hosts=["canary-1"], soak_seconds=soak),
             Wave(name="eu", hosts=["eu-*"], min_hosts=10),
             Wave(name="rest", hosts=["*"]))
    hosts = ["canary-1"] + [f"eu-{i:02d}" for i in range(49)] + [f"us-{i:02d}" for i in
                                                                  range(50)]
    with FakeGitHub(repo="acme/shop", token=TOKEN, log_requests=False) as gh:
        rev = "b" * 40
        gh.known_commit(rev)
        gates = {}
        for h in hosts:
            client = GitHubStatuses(repo="acme/shop", api_url=gh.api_url, token=TOKEN,
                                    state_dir=None, timeout=5)
            gates[h] = RolloutGate(h, context="deploy/{host}", read=client.read)
        q = GateQuestion(rev, ("web",), converging=False, force=False, rollout=waves)
        applied: dict[str, int] = {}
        held_reads = held_304 = held_passes = 0
        per_interval = []
        t_start = time.monotonic()
        for k in range(intervals):
            tick = time.monotonic()
            before = (gh.request_count, gh.status_counts[304])
            held_now = 0
            released = []
            for h in hosts:
                if h in applied:
                    continue
                if h == "canary-1" and k < canary_at:
                    continue  # the canary's first pass on the revision comes later
                if gates[h].check(q) is None:
                    released.append(h)
                else:
                    held_now += 1
            reads = gh.request_count - before[0]
            n304 = gh.status_counts[304] - before[1]
            held_reads += reads
            held_304 += n304
            held_passes += held_now + len([h for h in released if h != "canary-1"])
            for h in released:  # "apply": a success status, at once
                gh.add_status(rev, f"deploy/{h}", "success")
                applied[h] = k
            per_interval.append({"interval": k, "asked": held_now + len(released),
                                 "held": held_now, "released": len(released),
                                 "requests": reads, "not_modified": n304})
            if len(applied) == len(hosts):
                break
            time.sleep(max(0.0, interval - (time.monotonic() - tick)))
        took = time.monotonic() - t_start
    counted = held_reads - held_304
    return {
        "hosts": len(hosts), "interval_seconds": interval, "soak_seconds": soak,
        "intervals_run": len(per_interval), "seconds": round(took, 1),
        "gate_passes_that_read": held_passes, "status_requests": held_reads,
        "requests_per_host_per_interval": round(held_reads / max(1, held_passes), 3),
        "not_modified_304": held_304, "counted_against_rate_limit": counted,
        "counted_per_host_pass": round(counted / max(1, held_passes), 3),
        "applied_at_interval": {w: sorted({applied[h] for h in hosts if h.startswith(w)})
                                for w in ("canary", "eu", "us")},
        "per_interval": per_interval,
    }


def part_b(soak: float, interval: float) -> dict[str, Any]:
    import rig
    from github_server import FakeGitHub
    from harness import DaemonProcess, Harness

    client = rig.docker_client()
    compose_cmd = ["docker", "compose"]
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmpd, \
            FakeGitHub(repo="acme/shop", token=TOKEN) as gh:
        tmp = Path(tmpd)
        reg = rig.Registry(port=rig.free_port(), workdir=tmp / "registry").start()
        daemons: list[DaemonProcess] = []
        hs: dict[str, Harness] = {}
        try:
            imgs = {
                "web-v1": rig.build_and_push(client, reg.host, "e2e/web", "v1", "healthy",
                                             "web v1", tmp / "ctx"),
                "web-v2": rig.build_and_push(client, reg.host, "e2e/web", "v2", "healthy",
                                             "web v2", tmp / "ctx"),
                "api-v1": rig.build_and_push(client, reg.host, "e2e/api", "v1", "nohealth",
                                             "api v1", tmp / "ctx"),
                "side": rig.build_and_push(client, reg.host, "e2e/side", "v1", "nohealth",
                                           "side", tmp / "ctx"),
            }
            token = tmp / "token"
            token.write_text(TOKEN)
            token.chmod(0o600)
            repo = rig.GitRepo(tmp / "git").init()
            run = uuid.uuid4().hex[:6]
            for name in ("canary-1", "prod-1", "prod-2"):
                extra = (f'host = "{name}"\n\n[report.github]\nrepo = "acme/shop"\n'
                         f'api_url = "{gh.api_url}"\ntoken_file = "{token}"\n')
                p = rig.Project(name=f"benchfleet{run}{name.replace('-', '')}",
                                root=tmp / name, registry=reg.host, repo=repo,
                                extra_config=extra)
                p.write(side_ref=f"{reg.host}/e2e/side@{imgs['side']}")
                text = p.config_path.read_text().replace(
                    "interval_seconds = 2", f"interval_seconds = {interval}")
                p.config_path.write_text(text)
                hs[name] = Harness(p, imgs, client, compose_cmd)

            def release(web: str, rollout: bool) -> str:
                h = hs["canary-1"]
                text = rig.desired_yaml({"web": (h.image("web"), imgs[web]),
                                         "api": (h.image("api"), imgs["api-v1"])})
                if rollout:
                    text += (f"rollout:\n  - name: canary\n    hosts: [canary-1]\n"
                             f"    soak_seconds: {soak}\n  - name: prod\n"
                             f"    hosts: [\"prod-*\"]\n")
                rev = repo.commit_file("desired-state.yml", text, "release")
                gh.known_commit(rev)
                return rev

            release("web-v1", rollout=False)
            for h in hs.values():
                assert h.sync().code == 0
            daemons = [DaemonProcess(h.project.config_path) for h in hs.values()]
            for d in daemons:
                d.wait_for("agent.pass.completed", timeout=120)
            samples = []
            for web in ("web-v2", "web-v1"):
                rev = release(web, rollout=True)
                seen: dict[str, float] = {}
                deadline = time.monotonic() + soak + 6 * interval + 120
                while len(seen) < 3 and time.monotonic() < deadline:
                    for s in gh.statuses_for(rev):
                        if s["state"] == "success":
                            seen.setdefault(s["context"].removeprefix("deploy/"),
                                            time.monotonic())
                        assert s["state"] in ("success", "pending"), s
                    time.sleep(0.05)
                assert len(seen) == 3, seen
                first = seen["canary-1"]
                last = max(seen["prod-1"], seen["prod-2"])
                samples.append({"release": web, "canary_success_to_last_healthy_s":
                                round(last - first, 2)})
                log(f"{web}: canary success -> last prod healthy {last - first:.2f}s")
            return {"soak_seconds": soak, "interval_seconds": interval, "jitter_seconds": 0,
                    "samples": samples}
        finally:
            for d in daemons:
                d.stop()
            for h in hs.values():
                h.teardown()
            reg.stop()


def part_c(hosts: int, *, shared_token: bool, pending: bool, interval: float = 60.0,
           max_intervals: int = 600) -> dict[str, Any]:
    """Posting only (no gate reads): ``hosts`` real reporters all start and finish one
    release at t=0 (one huge wave, the worst case) against the fake with GitHub's
    secondary limits (80/min, 500/h per token), on a simulated clock advanced by
    ``interval`` per step. Measured: simulated minutes until every host's ``success`` is
    on GitHub, requests made, refusals."""
    from github_server import FakeGitHub

    from agent.outcomes import PassResult
    from agent.report.github_status import GitHubStatusReporter

    now = [0.0]

    def clock() -> float:
        return now[0]

    with FakeGitHub(repo="acme/shop", log_requests=False) as gh, \
            tempfile.TemporaryDirectory() as tmp:
        gh.limit_content_creation(clock=clock)
        rev = gh.commit({})
        reps = []
        for i in range(hosts):
            d = Path(tmp) / f"h{i}"
            d.mkdir()
            reps.append(GitHubStatusReporter(
                repo="acme/shop", api_url=gh.api_url,
                token=TOKEN if shared_token else f"{TOKEN}_{i}", context="deploy/{host}",
                host=f"host-{i}", state_dir=d, timeout=5, clock=clock, post_pending=pending))
        for r in reps:
            r.release_started(rev, ["web"])
            r.pass_finished(PassResult("applied", rev, target={}))
        steps = 0
        while steps < max_intervals and sum(
                1 for st in gh.statuses if st["state"] == "success") < hosts:
            steps += 1
            now[0] += interval
            for r in reps:
                r.pass_finished(PassResult("applied", rev, target={}))
        done = sum(1 for st in gh.statuses if st["state"] == "success")
        return {"hosts": hosts, "shared_token": shared_token, "post_pending": pending,
                "interval_seconds": interval, "all_posted": done == hosts,
                "successes_posted": done, "statuses_posted": len(gh.statuses),
                "minutes_to_all_success": steps * interval / 60,
                "post_requests": gh.request_count, "refused_403": gh.creation_refusals}


class _InProcess(requests.adapters.BaseAdapter):
    """A requests transport straight into the fake GitHub's ``_answer`` (no socket: the
    same answers, ETags, pages and limits), with ``Date`` on the simulated clock; counts
    the combined-status reads. An answer to a status read is reused while no status was
    posted (the fake's answer is a function of the path, If-None-Match and the statuses)."""

    def __init__(self, gh: Any, clock: Any) -> None:
        super().__init__()
        self.gh, self.clock = gh, clock
        self.memo: dict[tuple[str, str | None], tuple[int, dict[str, str], bytes]] = {}
        self.version = -1
        self.reads = self.not_modified = 0

    def send(self, request: Any, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> Any:
        from email.utils import formatdate
        from urllib.parse import urlsplit

        from requests.structures import CaseInsensitiveDict

        u = urlsplit(request.url)
        raw = u.path + (f"?{u.query}" if u.query else "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        if request.method == "GET" and u.path.endswith("/status"):
            if len(self.gh.statuses) != self.version:
                self.memo.clear()
                self.version = len(self.gh.statuses)
            key = (raw, headers.get("if-none-match"))
            answer = self.memo.get(key)
            if answer is None:
                answer = self.memo[key] = self.gh._answer(request.method, raw, headers, body)
            self.reads += 1
            self.not_modified += answer[0] == 304
        else:
            answer = self.gh._answer(request.method, raw, headers, body)
        status, out, content = answer
        resp = requests.Response()
        resp.status_code = status
        resp.headers = CaseInsensitiveDict({**out, "Date": formatdate(self.clock(),
                                                                     usegmt=True)})
        resp._content = content
        resp.url, resp.request, resp.encoding = request.url, request, "utf-8"
        return resp

    def close(self) -> None:
        pass


def fleet_waves(hosts: int) -> tuple[list[str], tuple[Wave, ...]]:
    """``hosts`` names and four waves: canary (1 named host), early (the next 9 %, named),
    main (the next 50 %, ``main-*``, ``min_hosts: 10``), rest (``*``); 600 s soak each."""
    n_early = max(1, hosts // 10 - 1)
    n_main = hosts // 2
    early = [f"early-{i:04d}" for i in range(n_early)]
    names = (["canary-1"] + early + [f"main-{i:04d}" for i in range(n_main)]
             + [f"rest-{i:04d}" for i in range(hosts - 1 - n_early - n_main)])
    return names, (Wave(name="canary", hosts=["canary-1"], soak_seconds=600),
                   Wave(name="early", hosts=early, soak_seconds=600),
                   Wave(name="main", hosts=["main-*"], soak_seconds=600, min_hosts=10),
                   Wave(name="rest", hosts=["*"]))


class _ReadEveryPass(RolloutGate):
    """The gate as it was before issue 26's cut: it reads at every held pass, soak or not."""

    def _still_soaking(self, revision: str) -> str | None:
        return None


def part_d(hosts: int, *, sample: int | None, interval: float, shared_token: bool = True,
           bad_host: str | None = None, max_hours: float = 8.0,
           read_while_soaking: bool = False, sample_posts_only: bool = False
           ) -> dict[str, Any]:
    """A whole release on ``hosts`` simulated hosts, merge (t=0) to the last host applied:
    each host the real gate (``RolloutGate`` with its own ``GitHubStatuses``: ETags, pages
    of 100) and the real reporter (``GitHubStatusReporter``: outbox, retry-after), against
    the fake with GitHub's content-creation limits (80/min, 500/h per token), on a
    simulated clock. Each host passes once per ``interval`` at its own fixed phase
    (seeded, like jitter); a released host applies at once and posts its verdict; an
    applied host's later passes deliver its outbox. ``bad_host`` rolls the release back
    (posts ``failure``): measured then is who applied it before the waves stopped.
    ``sample_posts_only`` (a what-if: the reporter does not do this) keeps the successes of
    hosts outside each wave's sample (its first ``wave_need`` hosts by name) off GitHub;
    failures are posted as ever."""
    import random

    import github_server
    from github_server import FakeGitHub

    from agent.outcomes import PassResult
    from agent.report.github_status import GitHubStatusReporter

    t0 = 1_800_000_000.0
    now = [t0]

    def clock() -> float:
        return now[0]

    names, waves = fleet_waves(hosts)
    saved_now_iso = github_server._now_iso
    github_server._now_iso = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now[0]))
    try:
        with FakeGitHub(repo="acme/shop", log_requests=False) as gh, \
                tempfile.TemporaryDirectory() as tmp:
            gh.limit_content_creation(clock=clock)
            rev = gh.commit({})
            wire = _InProcess(gh, clock)

            def session() -> requests.Session:
                s = requests.Session()
                s.mount("http://", wire)
                return s

            gates, reps = {}, {}
            for i, h in enumerate(names):
                token = TOKEN if shared_token else f"{TOKEN}_{i}"
                reader = GitHubStatuses(repo="acme/shop", api_url=gh.api_url, token=token,
                                        state_dir=None, timeout=5, session=session())
                gate = _ReadEveryPass if read_while_soaking else RolloutGate
                gates[h] = gate(h, context="deploy/{host}", read=reader.read, sample=sample,
                                clock=clock)
                d = Path(tmp) / h
                d.mkdir()
                reps[h] = GitHubStatusReporter(
                    repo="acme/shop", api_url=gh.api_url, token=token,
                    context="deploy/{host}", host=h, state_dir=d, timeout=5,
                    session=session(), clock=clock)
            posting = set(names)
            if sample_posts_only:
                posting = {h for i, w in enumerate(waves) for h in
                           [x for x in names if wave_of(x, waves) == i][
                               :wave_need(w, sample if sample is not None else 10)]}
            rng = random.Random(26)
            phase = sorted((rng.random() * interval, h) for h in names)
            q = GateQuestion(rev, ("web",), converging=False, force=False, rollout=waves)
            applied: dict[str, float] = {}
            per_interval = []
            k = 0
            stopped_at: float | None = None
            while len(applied) < hosts and k * interval < max_hours * 3600:
                reads0, nm0 = wire.reads, wire.not_modified
                posts0, refused0 = len(gh.statuses), gh.creation_refusals
                held = held_stopped = 0
                for off, h in phase:
                    now[0] = t0 + k * interval + off
                    if h in applied:
                        if h in posting:
                            reps[h].pass_finished(PassResult("no-op", rev, target={}))
                        continue
                    answer = gates[h].check(q)
                    if answer is not None:
                        held += 1
                        if "stopped" in answer.reason:
                            held_stopped += 1
                            if stopped_at is None:
                                stopped_at = now[0] - t0
                        continue
                    applied[h] = now[0] - t0
                    outcome = "rolled-back" if h == bad_host else "applied"
                    if h in posting or outcome != "applied":
                        posting.add(h)
                        reps[h].pass_finished(PassResult(outcome, rev, target={},
                                                     reason="web unhealthy"))
                per_interval.append({
                    "interval": k, "held": held, "status_requests": wire.reads - reads0,
                    "not_modified": wire.not_modified - nm0,
                    "statuses_posted": len(gh.statuses) - posts0,
                    "refused_403": gh.creation_refusals - refused0})
                k += 1
                if bad_host is not None and held_stopped == hosts - len(applied):
                    break  # every host left is held by the failure: the rollout stopped
            posted = {s["context"].removeprefix("deploy/"): s["state"] for s in gh.statuses}
    finally:
        github_server._now_iso = saved_now_iso

    def minutes(x: float) -> float:
        return round(x / 60, 1)

    by_wave = {}
    for w in waves:
        ts = [t for h, t in applied.items() if wave_of(h, waves) == waves.index(w)]
        by_wave[w.name] = {"applied": len(ts), "first_min": minutes(min(ts)) if ts else None,
                           "last_min": minutes(max(ts)) if ts else None}
    reqs = [p["status_requests"] for p in per_interval]
    counted = [p["status_requests"] - p["not_modified"] for p in per_interval]
    return {
        "hosts": hosts, "sample": sample if sample is not None else "all",
        "reads_while_soaking": read_while_soaking, "sample_posts_only": sample_posts_only,
        "interval_seconds": interval, "shared_token": shared_token, "bad_host": bad_host,
        "waves": [{"name": w.name, "hosts": len(w.hosts) if w.exact else w.hosts,
                   "soak_seconds": w.soak_seconds, "min_hosts": w.min_hosts} for w in waves],
        "all_applied": len(applied) == hosts,
        "minutes_to_last_applied": minutes(max(applied.values())) if applied else None,
        "by_wave": by_wave, "intervals": len(per_interval),
        "status_requests_max_per_interval": max(reqs),
        "status_requests_mean_per_interval": round(sum(reqs) / len(reqs)),
        "counted_max_per_interval": max(counted),
        "counted_max_per_hour": round(max(counted) * 3600 / interval),
        "counted_total": sum(counted), "status_requests_total": sum(reqs),
        "successes_on_github_at_end": sum(1 for v in posted.values() if v == "success"),
        "failures_on_github_at_end": sum(1 for v in posted.values() if v == "failure"),
        "statuses_posted": len(gh.statuses), "refused_403": gh.creation_refusals,
        "stopped_at_min": minutes(stopped_at) if stopped_at is not None else None,
        "per_interval": per_interval,
    }


def report_d(d: dict[str, Any]) -> None:
    w = ", ".join(f"{n} {v['applied']} by {v['last_min']}" for n, v in d["by_wave"].items())
    head = (f"{d['hosts']} hosts, sample {d['sample']}, "
            f"{'reads every pass' if d['reads_while_soaking'] else 'no reads while soaking'}, "
            f"{'only samples post success (what-if), ' if d['sample_posts_only'] else ''}"
            f"interval {d['interval_seconds']:.0f}s"
            f"{'' if d['shared_token'] else ', per-host tokens'}")
    if d["bad_host"]:
        log(f"{head}, {d['bad_host']} fails: stopped at {d['stopped_at_min']} min; applied "
            f"(min): {w}; failures on GitHub {d['failures_on_github_at_end']}")
        return
    log(f"{head}: last host applied after {d['minutes_to_last_applied']} min (waves, last "
        f"applied min: {w}); status reads per interval max {d['status_requests_max_per_interval']}"
        f" (mean {d['status_requests_mean_per_interval']}), counted (not 304) max "
        f"{d['counted_max_per_interval']} = {d['counted_max_per_hour']}/h; "
        f"{d['statuses_posted']} statuses posted, {d['refused_403']} refused")


def main() -> int:
    ap = base_args(__doc__ or "")
    ap.add_argument("--intervals", type=int, default=30)
    ap.add_argument("--sim-interval", type=float, default=1.0)
    ap.add_argument("--rig", action="store_true", help="also run part B (3 real daemons)")
    ap.add_argument("--soak", type=float, default=5.0)
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--canary-at", type=int, default=10,
                    help="the interval of the canary's pass (the others wait until then)")
    ap.add_argument("--scale-hosts", type=int, default=1000,
                    help="part C: hosts posting statuses under GitHub's secondary limits")
    ap.add_argument("--waves-hosts", type=int, default=1000,
                    help="part D: hosts of a whole simulated rollout (0: skip part D)")
    ap.add_argument("--waves-interval", type=float, default=300.0,
                    help="part D: the hosts' interval_seconds (simulated)")
    args = ap.parse_args()
    from agent import log as agent_log

    agent_log.configure(json=False, level="error")  # part C/D: thousands of retries
    results: dict[str, Any] = {"simulated_100": part_a(args.intervals, args.sim_interval,
                                                       soak=3.0, canary_at=args.canary_at)}
    a = results["simulated_100"]
    log(f"100 hosts: {a['requests_per_host_per_interval']} status requests per waiting host "
        f"per interval; {a['not_modified_304']}/{a['status_requests']} were 304; "
        f"{a['counted_per_host_pass']} counted per waiting pass; applied at intervals "
        f"{a['applied_at_interval']}")
    scale = []
    for shared, pending in ((True, False), (True, True), (False, False), (False, True)):
        c = part_c(args.scale_hosts, shared_token=shared, pending=pending)
        scale.append(c)
        log(f"{c['hosts']} hosts, {'shared token' if shared else 'per-host tokens'}, "
            f"pending {'on' if pending else 'off'}: all success after "
            f"{c['minutes_to_all_success']:.0f} min ({c['statuses_posted']} statuses, "
            f"{c['post_requests']} POSTs, {c['refused_403']} refused)")
    results["posting_at_scale"] = scale
    if args.waves_hosts:
        runs = []
        for kw in ({"sample": None, "read_while_soaking": True},  # before issue 26's cut
                   {"sample": 10},                               # after: the default gate
                   {"sample": 10, "sample_posts_only": True},    # what-if (not built)
                   {"sample": 10, "bad_host": "main-0450"}):      # a failure in wave 3
            d = part_d(args.waves_hosts, interval=args.waves_interval, **kw)
            report_d(d)
            runs.append(d)
        results["waves_at_scale"] = runs
    if args.rig:
        results["three_daemons"] = part_b(args.soak, args.interval)
    write_results("fleet", results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
