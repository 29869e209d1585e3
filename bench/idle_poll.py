"""Issue 7, item 2 — idle poll cost: what one pass costs when nothing changes.

`gitops-agent run` (a real daemon process) polls a deployed, unchanged stack. Passes are
driven back to back with SIGHUP (interval 1 h, so the scheduler adds none). Counted per pass:

* git requests: the source is served by `git daemon` on 127.0.0.1 (a network remote; its
  log counts upload-pack requests = fetches). A local-path remote is measured too, for
  comparison (not a network request);
* registry requests: the registry's access log;
* Docker API calls: a counting unix-socket proxy in front of the engine (DOCKER_HOST), by
  method and path; GET/HEAD are reads, anything else mutates (target: none);
* CPU: /proc/PID/stat utime+stime of the daemon, and of its waited-for children (git,
  docker compose) — both are what the host pays per pass;
* wall: the pass duration the agent logs;
* RSS: /proc/PID/status VmRSS after the first pass and every 100 passes.

    .venv/bin/python bench/idle_poll.py [--quick] [--passes N]
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Bench,
    Daemon,
    DockerSocketProxy,
    GitDaemon,
    base_args,
    is_mutating,
    log,
    median,
    proc_cpu,
    proc_rss_mb,
    write_results,
)

_ID = re.compile(r"/[0-9a-f]{64}|/sha256:[0-9a-f]{64}|/127\.0\.0\.1:\d+/\S+?(?=/json)")


def norm(path: str) -> str:
    path = path.split("?", 1)[0]
    path = re.sub(r"^/v1\.\d+", "", path)
    return _ID.sub("/{id}", path)


def measure(b: Bench, st: Any, passes: int, label: str, git: GitDaemon | None) -> dict[str, Any]:
    proxy = DockerSocketProxy(b.root / f"docker-{len(b.cleanups)}.sock").start()
    b.cleanups.append(proxy.stop)
    d = Daemon(st, env={"DOCKER_HOST": proxy.docker_host}).start()
    d.wait_for("agent.pass.completed", timeout=120)  # the first pass, at start
    rss = [(1, proc_rss_mb(d.pid))]
    cpu0 = proc_cpu(d.pid)
    calls0 = len(proxy.snapshot())
    reg0 = len(b.registry.access_log())
    git0 = git.requests() if git else 0
    for i in range(2, passes + 2):
        d.hup()
        d.wait_for("agent.pass.completed", count=i, timeout=120)
        if i % 100 == 0:
            rss.append((i, proc_rss_mb(d.pid)))
    rss.append((passes + 1, proc_rss_mb(d.pid)))
    cpu1 = proc_cpu(d.pid)
    calls = proxy.snapshot()[calls0:]
    reg = b.registry.access_log()[reg0:]
    gitn = (git.requests() - git0) if git else None
    done = [e for _, e in d.lines if e.get("event") == "agent.pass.completed"][1:]
    outcomes = Counter(e["outcome"] for e in done)
    d.stop()
    proxy.stop()
    by_kind = Counter(f"{c.method} {norm(c.path)} [{c.agent.split('/')[0]}]" for c in calls)
    res = {
        "source": label,
        "passes": passes,
        "outcomes": dict(outcomes),
        "wall_median_s": median(e["duration_seconds"] for e in done),
        "wall_p90_s": sorted(e["duration_seconds"] for e in done)[int(0.9 * (len(done) - 1))],
        "cpu_self_ms_per_pass": (cpu1["self"] - cpu0["self"]) * 1000 / passes,
        "cpu_children_ms_per_pass": (cpu1["children"] - cpu0["children"]) * 1000 / passes,
        "cpu_total_ms_per_pass": (cpu1["total"] - cpu0["total"]) * 1000 / passes,
        "docker_calls_per_pass": len(calls) / passes,
        "docker_mutating_calls": sum(1 for c in calls if is_mutating(c)),
        "docker_calls_by_kind_per_pass": {k: v / passes for k, v in sorted(by_kind.items())},
        "registry_requests_per_pass": len(reg) / passes,
        "git_requests_per_pass": (gitn / passes) if gitn is not None else None,
        "rss_mb": rss,
    }
    log(f"{label}: {res['wall_median_s']:.3f}s/pass, cpu {res['cpu_total_ms_per_pass']:.1f} ms, "
        f"docker {res['docker_calls_per_pass']:.1f}, rss {rss[0][1]:.1f}->{rss[-1][1]:.1f} MB")
    return res


def child_costs(b: Bench, st: Any, git_url: str, n: int) -> dict[str, dict[str, float]]:
    """CPU and wall of the subprocesses an idle pass runs, each run ``n`` times here."""
    import resource
    import subprocess
    import time

    mirror = b.root / "cost-mirror.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(mirror)], check=True)
    ref = f"refs/heads/{st.repo.branch}"
    fetch = ["git", "fetch", "--quiet", "--prune", "--no-tags", "--force", git_url,
             f"+{ref}:{ref}"]
    subprocess.run(fetch, cwd=mirror, check=True)
    cmds = {
        "docker compose config --format json": (
            st.compose("config", "--format", "json"), st.project_dir),
        "git fetch (git://, no change)": (fetch, mirror),
        "git rev-parse (x2 per pass)": (
            ["git", "rev-parse", "--verify", "--quiet", ref + "^{commit}"], mirror),
        "git cat-file blob": (["git", "cat-file", "blob", f"{ref}:desired-state.yml"], mirror),
    }
    out = {}
    for name, (cmd, cwd) in cmds.items():
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        for _ in range(n):
            subprocess.run(cmd, cwd=cwd, capture_output=True, check=True)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out[name] = {
            "cpu_ms": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000 / n,
            "wall_ms": (time.perf_counter() - t0) * 1000 / n,
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__ or "")
    ap.add_argument("--passes", type=int, default=None)
    args = ap.parse_args(argv)
    passes = args.passes or (40 if args.quick else 1000)
    local_passes = min(passes, 40 if args.quick else 200)

    with Bench("idle") as b:
        log("building images")
        web = b.image("bench/web", "v1", "healthy")
        api = b.image("bench/api", "v1", "nohealth")
        st = b.stack("benchidle", {"web": "bench/web", "api": "bench/api"}, settle=1.0)
        git = GitDaemon(st.repo.root, b.root / "git-daemon.log").start()
        b.cleanups.append(git.stop)
        st.commit({"web": web, "api": api})
        st.sync()  # deployed; every pass from here on is a no-op

        results = []
        log(f"git daemon source: {passes} passes")
        st.source_url = git.url(st.repo.origin)
        st.write_config()
        results.append(measure(b, st, passes, "git://127.0.0.1 (git daemon)", git))
        log(f"local-path source: {local_passes} passes")
        st.source_url = None
        st.write_config()
        results.append(measure(b, st, local_passes, "local path", None))
        costs = child_costs(b, st, git.url(st.repo.origin), 10 if args.quick else 30)

    gd = results[0]
    rss_start, rss_end = gd["rss_mb"][0][1], gd["rss_mb"][-1][1]
    res: dict[str, Any] = {
        "runs": results,
        "child_process_costs": costs,
        "targets": {"git_requests_per_pass": 1, "registry_requests_per_pass": 0,
                    "docker_mutating_calls": 0, "cpu_ms_per_pass": 30, "rss_mb": 45},
        "met": {
            "one_source_request": gd["git_requests_per_pass"] == 1.0,
            "zero_registry_requests": gd["registry_requests_per_pass"] == 0,
            "no_mutating_docker_calls": gd["docker_mutating_calls"] == 0,
            "cpu_le_30ms_self": gd["cpu_self_ms_per_pass"] <= 30,
            "cpu_le_30ms_incl_children": gd["cpu_total_ms_per_pass"] <= 30,
            "rss_le_45mb": max(r for _, r in gd["rss_mb"]) <= 45,
            "rss_flat_within_2mb": abs(rss_end - rss_start) <= 2,
        },
    }
    print("\n== idle poll cost (item 2): nothing to change ==")
    for r in results:
        print(f"-- source {r['source']}, {r['passes']} passes, outcomes {r['outcomes']}")
        print(f"   wall per pass: median {r['wall_median_s'] * 1000:.0f} ms, "
              f"p90 {r['wall_p90_s'] * 1000:.0f} ms")
        print(f"   CPU per pass: agent process {r['cpu_self_ms_per_pass']:.1f} ms + children "
              f"(git, compose) {r['cpu_children_ms_per_pass']:.1f} ms = "
              f"{r['cpu_total_ms_per_pass']:.1f} ms")
        print(f"   git requests per pass: {r['git_requests_per_pass']}   registry requests "
              f"per pass: {r['registry_requests_per_pass']}")
        print(f"   Docker API calls per pass: {r['docker_calls_per_pass']:.2f} "
              f"(mutating in total: {r['docker_mutating_calls']})")
        for k, v in r["docker_calls_by_kind_per_pass"].items():
            print(f"      {v:6.2f}  {k}")
        print("   RSS MB (after pass n): " + ", ".join(f"{n}: {m:.1f}" for n, m in r["rss_mb"]))
    print("-- what the children cost (each command run alone here, mean of repeated runs):")
    for k, v in costs.items():
        print(f"   {v['cpu_ms']:6.1f} ms CPU  {v['wall_ms']:6.1f} ms wall  {k}")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}"
                                  for k, v in res["met"].items()))
    write_results("idle_poll", res, args.json)
    return res


if __name__ == "__main__":
    main()
