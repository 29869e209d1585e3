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

Part C (no Docker) — ``--scale-hosts`` N (1000) real status reporters all post one release
at once against the fake with GitHub's secondary limits (80/min, 500/h per token) in
simulated time (60 s steps, no sleeping): minutes until every host's success is on GitHub,
shared token vs per-host tokens, pending on vs off. (Gate reads are not in part C.)

    .venv/bin/python bench/fleet.py [--intervals N] [--rig] [--soak S] [--interval I]
                                    [--scale-hosts N]
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: F401  (puts tests/ and the repo on sys.path)
from common import base_args, log, write_results

from agent.desired import Wave
from agent.edges.github_statuses import GitHubStatuses
from agent.fleet import RolloutGate
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
    args = ap.parse_args()
    from agent import log as agent_log

    agent_log.configure(json=False, level="warning")
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
    if args.rig:
        results["three_daemons"] = part_b(args.soak, args.interval)
    write_results("fleet", results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
