"""Issue 7, item 4 — reaction time: from `git push` of a release to the new release healthy,
with `gitops-agent run` (a real daemon process) watching.

* interval mode: the daemon polls every ``--interval`` seconds (jitter 0); commits land at a
  random moment of the interval, so the time is the wait for the next poll + the rollout;
* SIGHUP mode (`systemctl reload gitops-agent`): the commit is followed by SIGHUP — the
  rollout alone.

"Healthy" is the agent's `agent.pass.completed` (outcome applied) for that revision, which it
logs after the health check passed; the container's health is checked independently too.
The agent's default update order applies (start-first: the new container starts beside the
old one, then ``handover_seconds`` = 5 s before the old one stops); the time to the new
container healthy is reported too. The new image is removed from the engine before each commit (CI just pushed it).

    .venv/bin/python bench/reaction.py [--quick] [--reps N] [--interval S]
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Bench, Daemon, Rounds, base_args, log, median, remove_images, write_results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__ or "")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--interval", type=float, default=None)
    args = ap.parse_args(argv)
    reps = args.reps or (2 if args.quick else 6)
    interval = args.interval or (5.0 if args.quick else 10.0)
    rnd = random.Random(7)

    res: dict[str, Any] = {"interval_seconds": interval, "jitter_seconds": 0}
    with Bench("reaction") as b:
        log("building images")
        web = {"v1": b.image("bench/web", "v1", "healthy"),
               "v2": b.image("bench/web", "v2", "healthy")}
        st = b.stack("benchreact", {"web": "bench/web"}, settle=1.0, interval=interval)
        st.commit({"web": web["v1"]})
        st.sync()

        for mode in ("interval", "sighup"):
            st.interval = interval if mode == "interval" else 3600
            st.write_config()
            d = Daemon(st).start()
            d.wait_for("agent.pass.completed", timeout=120)
            rows = []
            rounds = Rounds(b.client)

            def one(i: int, mode: str = mode, d: Daemon = d) -> dict[str, float]:
                if mode == "interval":
                    time.sleep(rnd.uniform(0, interval))  # commit at a random phase
                running = st.running_refs().get("web")
                target = "v2" if running == st.ref("web", web["v1"]) else "v1"
                remove_images(b.client, [st.ref("web", web[target])])
                rev = st.commit({"web": web[target]}, f"{mode} {i}")
                t0 = time.monotonic()
                if mode == "sighup":
                    d.hup()
                t1, ev = d.wait_for("agent.pass.completed", timeout=300,
                                    where=lambda e, rev=rev: e.get("revision") == rev)
                # the new container healthy (before the start-first handover to the old one)
                th, _ = d.wait_for("agent.health.healthy", timeout=5,
                                   where=lambda e, rev=rev: e.get("revision") == rev[:12])
                if ev["outcome"] != "applied" or not st.all_healthy({"web": web[target]}):
                    raise RuntimeError(f"{mode} {i}: {ev}")
                total = t1 - t0
                log(f"{mode} {i}: commit -> healthy {total:.2f}s "
                    f"(rollout {ev['duration_seconds']:.2f}s)")
                return {"total": total, "rollout": ev["duration_seconds"],
                        "wait": total - ev["duration_seconds"], "to_healthy": th - t0}

            for i in range(reps):
                rows.append(rounds.run(one, i))
            d.stop()
            res[mode] = {
                "discarded_rounds": rounds.discarded,
                "runs": rows,
                "median_total_s": median(r["total"] for r in rows),
                "median_to_healthy_s": median(r["to_healthy"] for r in rows),
                "median_rollout_s": median(r["rollout"] for r in rows),
                "median_wait_s": median(r["wait"] for r in rows),
                "max_total_s": max(r["total"] for r in rows),
            }

    print("\n== reaction time (item 4): commit -> new release healthy, daemon running ==")
    iv, hup = res["interval"], res["sighup"]
    print(f"new container healthy: interval mode median {iv['median_to_healthy_s']:.2f}s, "
          f"SIGHUP median {hup['median_to_healthy_s']:.2f}s (pass done after the 5 s "
          "start-first handover, below)")
    print(f"interval {interval:.0f}s, jitter 0: median {iv['median_total_s']:.2f}s "
          f"(wait for the poll {iv['median_wait_s']:.2f}s + rollout {iv['median_rollout_s']:.2f}s),"
          f" max {iv['max_total_s']:.2f}s; expected ≈ interval/2 + rollout")
    print(f"SIGHUP (systemctl reload): median {hup['median_total_s']:.2f}s "
          f"(signal to pass start {hup['median_wait_s']:.2f}s + rollout "
          f"{hup['median_rollout_s']:.2f}s), max {hup['max_total_s']:.2f}s")
    print("with the default config (interval 60 s, jitter 10 s), expect ≈ 33 s mean "
          "wait (periods of 60 + U(0,10) s) + the rollout, worst case ≈ 70 s + rollout")
    write_results("reaction", res, args.json)
    return res


if __name__ == "__main__":
    main()
