"""Run every benchmark of issue 7 in turn and print a summary (`make bench`).

    .venv/bin/python bench/run_all.py [--quick] [--only release_overhead,idle_poll,...]

Each benchmark runs as its own process (its own registry, compose projects and cleanup);
their full output goes to the terminal, their results to bench/results/NAME.json, and the
summary at the end lists each headline figure with its target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS_DIR, machine  # noqa: E402

BENCHES = ("release_overhead", "idle_poll", "scale", "reaction", "failed_release",
           "many_agents", "zero_downtime", "reporting_overhead")


def ok(flag: bool) -> str:
    return "met" if flag else "MISSED"


def summary(r: dict[str, Any]) -> list[str]:
    out = []
    if "release_overhead" in r:
        x = r["release_overhead"]
        ph = x["median_phases_s"]
        out.append(f"1. release overhead: agent/compose = {x['median_ratio']:.3f}, pass alone "
                   f"{x.get('median_pass_ratio', float('nan')):.3f} (median of "
                   f"{len(x['pairs'])} pairs; target <= 1.05: {ok(x['target_met'])}); agent "
                   f"{x['median_agent_s']:.2f}s vs compose {x['median_hand_s']:.2f}s; agent "
                   f"phases: process start {x['median_process_overhead_s']:.2f}, " + ", ".join(
                       f"{k} {v:.2f}" for k, v in ph.items())
                   + f", record {x['median_unphased_in_pass_s']:.2f}")
    if "idle_poll" in r:
        x = r["idle_poll"]
        g = x["runs"][0]
        m = x["met"]
        rss = g["rss_mb"]
        out.append(
            f"2. idle poll ({g['passes']} passes, {g['source']}): git requests/pass "
            f"{g['git_requests_per_pass']} ({ok(m['one_source_request'])}), registry "
            f"{g['registry_requests_per_pass']} ({ok(m['zero_registry_requests'])}), Docker "
            f"calls/pass {g['docker_calls_per_pass']:.1f}, mutating {g['docker_mutating_calls']}"
            f" ({ok(m['no_mutating_docker_calls'])}), CPU/pass {g['cpu_self_ms_per_pass']:.1f} "
            f"ms agent + {g['cpu_children_ms_per_pass']:.1f} ms children = "
            f"{g['cpu_total_ms_per_pass']:.1f} ms (<= 30: {ok(m['cpu_le_30ms_incl_children'])}),"
            f" wall {g['wall_median_s'] * 1000:.0f} ms, RSS {rss[0][1]:.1f} -> {rss[-1][1]:.1f} "
            f"MB (<= 45: {ok(m['rss_le_45mb'])}, flat: {ok(m['rss_flat_within_2mb'])})")
    if "scale" in r:
        x = r["scale"]
        parts = []
        for s in x["sizes"]:
            parts.append(f"{s['services']} svc: one {s['one']['agent_s']:.2f}s "
                         f"(compose {s['one']['hand_s']:.2f}s, recreated "
                         f"{s['one']['agent_touched']}), all {s['all']['agent_s']:.2f}s vs "
                         f"compose {s['all']['hand_s']:.2f}s = {s['all']['ratio']:.2f}x")
        m = x["met"]
        out.append("3. scale: " + "; ".join(parts) + f" — touches one: "
                   f"{ok(m['one_change_touches_one'])}, flat ±10%: "
                   f"{ok(m['one_change_flat_10pct'])}, all <= 1.2x: "
                   f"{ok(m['all_change_le_1.2x_compose'])}")
    if "reaction" in r:
        x = r["reaction"]
        out.append(f"4. reaction: interval {x['interval_seconds']:.0f}s: median "
                   f"{x['interval']['median_total_s']:.2f}s (rollout "
                   f"{x['interval']['median_rollout_s']:.2f}s); SIGHUP: median "
                   f"{x['sighup']['median_total_s']:.2f}s")
    if "failed_release" in r:
        x = r["failed_release"]
        out.append("5. failed release: " + "; ".join(
            f"{v}: {x[v]['to_old_healthy_s']:.2f}s to old healthy, no answer "
            f"{x[v]['no_answer_s']:.2f}s (longest gap {x[v]['longest_gap_s']:.2f}s), bad "
            f"release answered {x[v]['answered_by_bad_s']:.2f}s"
            for v in ("unhealthy", "crash") if v in x))
    if "many_agents" in r:
        x = r["many_agents"]
        s, h = x["simulations"]
        out.append(f"6. many agents ({s['agents']}): staggered {s['per_minute_median']:.0f} "
                   f"req/min (peak {s['per_second_max']}/s); herd restart "
                   f"{h['per_minute_median']:.0f} req/min, peak {h['per_second_max']}/s, "
                   f"1 request per idle poll "
                   f"({x['real_requests']['requests_per_idle_poll']:.2f} measured)")
    if "zero_downtime" in r:
        x = r["zero_downtime"]["summary"]
        cells = ", ".join(f"{case} {v['failed_max']} failed (max), slowest "
                          f"{v['slowest_ms_max']} ms" for case, v in x.items())
        out.append(f"9. zero-downtime (50 req/s through HAProxy): {cells}")
    if "reporting_overhead" in r:
        x = r["reporting_overhead"]
        cpu = x["in_process"]["with textfile"]["cpu_ms_per_pass"]
        d = x["daemon_cpu_self_ms_per_pass"]
        out.append(f"R. reporting on idle passes: GitHub requests "
                   f"{x['github_requests_on_idle_passes']} (target 0: "
                   f"{ok(x['github_requests_on_idle_passes'] == 0)}), observers' CPU/pass "
                   f"{cpu:.2f} ms (< 5: {ok(cpu < 5)}), daemon off/on {d['off']:.1f}/"
                   f"{d['on']:.1f} ms")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(BENCHES))
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    failed = []
    for name in names:
        t0 = time.monotonic()
        print(f"\n######## {name}{' --quick' if args.quick else ''}", flush=True)
        target = RESULTS_DIR / f"{name}{'-quick' if args.quick else ''}.json"
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", str(target)]
        if args.quick:
            cmd.append("--quick")
        rc = subprocess.call(cmd)
        print(f"######## {name}: exit {rc} in {time.monotonic() - t0:.0f}s", flush=True)
        if rc != 0:
            failed.append(name)
            continue
        results[name] = json.loads(target.read_text())
    for name in BENCHES:
        earlier = RESULTS_DIR / f"{name}{'-quick' if args.quick else ''}.json"
        if name not in results and name not in names and earlier.exists():
            results[name] = json.loads(earlier.read_text())
            print(f"(summary of {name} from an earlier run: {earlier})")
    print("\n================ summary ================")
    for k, v in machine().items():
        print(f"{k}: {v}")
    for line in summary(results):
        print(line)
    if failed:
        print(f"FAILED to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
