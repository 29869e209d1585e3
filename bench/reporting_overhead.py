"""Reporting on an idle pass: requests to GitHub and CPU per pass, reporting on vs off.

Two measurements:

* the observers alone, in this process: ``pass_finished`` of an idle (no-op) pass through
  the three real observers (commit statuses to the fake GitHub on 127.0.0.1, metrics with
  the HTTP endpoint and the textfile, Apprise ``json://`` to a loopback receiver), CPU by
  ``time.process_time`` over many passes — the precise figure;
* the real daemon on a deployed, unchanged stack (local-path git source), passes driven
  back to back with SIGHUP, reporting off and on alternately; CPU of the daemon process and
  its children from /proc, requests counted at the fake GitHub and at the receiver.

    .venv/bin/python bench/reporting_overhead.py [--quick] [--passes N]
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Bench, Daemon, base_args, log, median, proc_cpu, write_results  # noqa: I001
from github_server import FakeGitHub
from notify_receiver import NotifyReceiver

import rig

TOKEN = "ghs_bench_token"


def reporting_toml(gh: FakeGitHub, rx: NotifyReceiver, token: Path, port: int,
                   textfile: Path) -> str:
    return (f'host = "bench-1"\n\n[report.github]\nrepo = "acme/shop"\n'
            f'api_url = "{gh.api_url}"\ntoken_file = "{token}"\n\n'
            f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{textfile}"\n\n'
            f'[notify]\nurls = ["{rx.url}"]\n')


def in_process(root: Path, gh: FakeGitHub, rx: NotifyReceiver, token: Path, n: int
               ) -> dict[str, Any]:
    from agent.config import parse_config
    from agent.outcomes import PassResult, ServiceReport
    from agent.report import build_observers
    from agent.state import ImageDigest

    out: dict[str, Any] = {}
    for label, textfile in (("with textfile", True), ("http only", False)):
        state = root / f"inproc-{textfile}"
        state.mkdir()
        metrics: dict[str, Any] = {"listen": f"127.0.0.1:{rig.free_port()}"}
        if textfile:
            metrics["textfile"] = str(state / "gitops_agent.prom")
        cfg = parse_config({
            "source": {"repo": "/r"}, "compose": {"project_dir": str(root)},
            "agent": {"state_dir": str(state), "host": "bench-1"},
            "report": {"github": {"repo": "acme/shop", "api_url": gh.api_url,
                                  "token_file": str(token)}},
            "metrics": metrics, "notify": {"urls": [rx.url]}})
        observers = build_observers(cfg, serve_metrics=True)
        rev = gh.commit({})
        target = {s: ImageDigest(image=f"reg/{s}", digest="sha256:" + c * 64)
                  for s, c in (("web", "a"), ("api", "b"))}
        services = {s: ServiceReport(d.digest, "healthy") for s, d in target.items()}

        idle = functools.partial(PassResult, "no-op", rev, duration_seconds=0.05,
                                 target=target, services=services)

        for o in observers:  # the first pass to see the revision says so once
            o.pass_finished(idle())
        requests0, messages0 = gh.request_count, len(rx.received())
        t0 = time.process_time()
        for _ in range(n):
            for o in observers:
                o.pass_finished(idle())
        cpu_ms = (time.process_time() - t0) * 1000 / n
        out[label] = {"passes": n, "cpu_ms_per_pass": round(cpu_ms, 3),
                      "github_requests": gh.request_count - requests0,
                      "messages": len(rx.received()) - messages0}
        for o in observers:
            close = getattr(o, "close", None)
            if close:
                close()
        log(f"in-process, {label}: {cpu_ms:.3f} ms CPU per idle pass")
    return out


def daemon_run(st: Any, passes: int, label: str, gh: FakeGitHub, rx: NotifyReceiver
               ) -> dict[str, Any]:
    d = Daemon(st).start()
    d.wait_for("agent.pass.completed", timeout=120)
    time.sleep(1.0)  # the first pass's reports (a success status) are out
    requests0, messages0 = gh.request_count, len(rx.received())
    cpu0 = proc_cpu(d.pid)
    for i in range(2, passes + 2):
        d.hup()
        d.wait_for("agent.pass.completed", count=i, timeout=120)
    time.sleep(0.3)
    cpu1 = proc_cpu(d.pid)
    done = [e for _, e in d.lines if e.get("event") == "agent.pass.completed"][1:]
    d.stop()
    res = {
        "reporting": label, "passes": passes,
        "outcomes": sorted({e["outcome"] for e in done}),
        "wall_median_ms": round(median(e["duration_seconds"] for e in done) * 1000, 1),
        "cpu_self_ms_per_pass": round((cpu1["self"] - cpu0["self"]) * 1000 / passes, 2),
        "cpu_total_ms_per_pass": round((cpu1["total"] - cpu0["total"]) * 1000 / passes, 2),
        "github_requests": gh.request_count - requests0,
        "messages": len(rx.received()) - messages0,
    }
    log(f"daemon, reporting {label}: {res}")
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__ or "")
    ap.add_argument("--passes", type=int, default=None)
    args = ap.parse_args(argv)
    passes = args.passes or (30 if args.quick else 150)

    with Bench("reporting") as b, FakeGitHub(repo="acme/shop", token=TOKEN) as gh, \
            NotifyReceiver() as rx:
        token = b.root / "status-token"
        token.write_text(TOKEN)
        token.chmod(0o600)
        inproc = in_process(b.root, gh, rx, token, 20 * passes)

        web = b.image("bench/web", "v1", "healthy")
        api = b.image("bench/api", "v1", "nohealth")
        st = b.stack("benchreport", {"web": "bench/web", "api": "bench/api"}, settle=1.0)
        rev = st.commit({"web": web, "api": api})
        gh.known_commit(rev)
        st.sync()  # deployed; every pass from here on is a no-op
        on = reporting_toml(gh, rx, token, rig.free_port(), b.root / "gitops_agent.prom")
        runs = []
        for label in ("off", "on", "off", "on"):
            st.extra_agent = on if label == "on" else ""
            st.write_config()
            runs.append(daemon_run(st, passes, label, gh, rx))

    def mean(label: str, key: str) -> float:
        xs = [r[key] for r in runs if r["reporting"] == label]
        return round(sum(xs) / len(xs), 2)

    res: dict[str, Any] = {
        "in_process": inproc,
        "daemon_runs": runs,
        "daemon_cpu_total_ms_per_pass": {"off": mean("off", "cpu_total_ms_per_pass"),
                                         "on": mean("on", "cpu_total_ms_per_pass")},
        "daemon_cpu_self_ms_per_pass": {"off": mean("off", "cpu_self_ms_per_pass"),
                                        "on": mean("on", "cpu_self_ms_per_pass")},
        "github_requests_on_idle_passes": sum(r["github_requests"] for r in runs),
        "statuses_posted": len(gh.statuses_for()),
    }
    print("\n== reporting on an idle pass ==")
    for k, v in inproc.items():
        print(f"observers alone ({k}): {v['cpu_ms_per_pass']:.3f} ms CPU per pass over "
              f"{v['passes']} passes; GitHub requests {v['github_requests']}, "
              f"messages {v['messages']}")
    for r in runs:
        print(f"daemon, reporting {r['reporting']:>3}: {r['passes']} passes {r['outcomes']}, "
              f"CPU {r['cpu_self_ms_per_pass']:.2f} ms self / "
              f"{r['cpu_total_ms_per_pass']:.2f} ms with children, wall median "
              f"{r['wall_median_ms']} ms, GitHub requests {r['github_requests']}, "
              f"messages {r['messages']}")
    print(f"GitHub requests during idle passes: {res['github_requests_on_idle_passes']} "
          f"(statuses posted in all: {res['statuses_posted']})")
    write_results("reporting_overhead", res, args.json)
    return res


if __name__ == "__main__":
    main()
