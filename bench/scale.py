"""Issue 7, item 3 — scale on one host: projects of 1, 10 and 50 services.

The agent runs with ``update: stop-first`` — the same operation as compose's recreate (its
default, start-first, adds ``handover_seconds`` = 5 s per release; see release_overhead.py).
Every service has its own image repository (tiny busybox httpd, no HEALTHCHECK; the agent's
settle_seconds = 0, so "healthy" means running — what `up --wait` waits for without a
healthcheck). Two kinds of release, each timed for the agent (`gitops-agent sync`) and for
plain compose (`docker compose pull` + `docker compose up -d --wait`), alternating which goes
first, target images removed from the engine before every run:

* one service changes (s00 moves to its other digest);
* every service changes.

Also counted: containers recreated by each run (target: the one-service change touches one).
Targets: one-service agent time at 50 services within ±10% of 1 service; all-services agent
time ≤ 1.2× plain compose.

    .venv/bin/python bench/scale.py [--quick] [--sizes 1,10,50] [--pairs N] [--all-pairs N]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Bench, Rounds, base_args, log, median, print_table, remove_images, write_results


def run_size(b: Bench, n: int, digests: list[dict[str, str]], one_pairs: int,
             all_pairs: int) -> dict[str, Any]:
    names = [f"s{i:02d}" for i in range(n)]
    st = b.stack(f"benchscale{n}", {s: f"bench/{s}" for s in names}, settle=0.0,
                 health_timeout=300, stop_grace="2s", update="stop-first")
    version = {s: "v1" for s in names}

    def pins() -> dict[str, str]:
        return {s: digests[i][version[s]] for i, s in enumerate(names)}

    log(f"{n} services: initial deployment")
    st.commit(pins())
    st.sync()
    st.hand_pin(pins())
    out: dict[str, Any] = {"services": n}
    for kind, changing, pairs in (("one", names[:1], one_pairs), ("all", names, all_pairs)):
        rows = []
        rounds = Rounds(b.client)

        def one_round(i: int, kind: str = kind, changing: list[str] = changing
                      ) -> dict[str, Any]:
            order = ("agent", "hand") if i % 2 == 0 else ("hand", "agent")
            row: dict[str, Any] = {}
            for arm in order:
                running = st.running_refs()
                for s in changing:  # the other digest than the one running
                    i_s = names.index(s)
                    version[s] = ("v2" if running.get(s) == st.ref(s, digests[i_s]["v1"])
                                  else "v1")
                target = pins()
                remove_images(b.client, [st.ref(s, target[s]) for s in changing])
                before = st.container_ids()
                if arm == "agent":
                    st.commit(target, f"{kind} {i}")
                    t, rec = st.sync()
                    row["agent"] = t.seconds
                    row["agent_pass"] = rec["duration_seconds"]
                    row["phases"] = rec.get("phases", {})
                    st.hand_pin(target)
                else:
                    h = st.hand_release(target)
                    row["hand"] = h["total"]
                    row["hand_pull"] = h["pull"]
                    row["hand_up"] = h["up_wait"]
                after = st.container_ids()
                row[f"{arm}_touched"] = sum(1 for s in after if after[s] != before.get(s))
                if not st.all_healthy(target):
                    raise RuntimeError(f"{n} services, {kind}, {arm}: not all running")
            row["ratio"] = row["agent"] / row["hand"]
            log(f"{n} services, {kind} change, pair {i}: agent {row['agent']:.2f}s "
                f"(touched {row['agent_touched']}) hand {row['hand']:.2f}s "
                f"(touched {row['hand_touched']}) phases {row['phases']}")
            return row

        for i in range(pairs):
            rows.append(rounds.run(one_round, i))
        out[kind] = {
            "discarded_rounds": rounds.discarded,
            "pairs": rows,
            "agent_s": median(r["agent"] for r in rows),
            "agent_pass_s": median(r["agent_pass"] for r in rows),
            "hand_s": median(r["hand"] for r in rows),
            "hand_pull_s": median(r["hand_pull"] for r in rows),
            "hand_up_s": median(r["hand_up"] for r in rows),
            "ratio": median(r["ratio"] for r in rows),
            "agent_touched": max(r["agent_touched"] for r in rows),
            "hand_touched": max(r["hand_touched"] for r in rows),
            "phases_s": {p: median(r["phases"].get(p, 0.0) for r in rows)
                         for p in ("fetch", "validate", "observe", "pull", "apply", "health")},
        }
    st.down()
    b.stacks.remove(st)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__ or "")
    ap.add_argument("--sizes", default=None)
    ap.add_argument("--pairs", type=int, default=None, help="pairs for the one-service change")
    ap.add_argument("--all-pairs", type=int, default=None, help="pairs for the all change")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in (args.sizes or ("1,5" if args.quick else "1,10,50")).split(",")]
    one_pairs = args.pairs or (2 if args.quick else 5)
    all_pairs = args.all_pairs or (1 if args.quick else 3)

    with Bench("scale") as b:
        log(f"building {2 * max(sizes)} images")
        digests = [{v: b.image(f"bench/s{i:02d}", v, "nohealth") for v in ("v1", "v2")}
                   for i in range(max(sizes))]
        results = [run_size(b, n, digests, one_pairs, all_pairs) for n in sizes]

    base = results[0]["one"]["agent_s"]
    for r in results:
        r["one"]["vs_smallest"] = r["one"]["agent_s"] / base
    largest = results[-1]
    res: dict[str, Any] = {
        "sizes": results,
        "met": {
            "one_change_touches_one": all(r["one"]["agent_touched"] == 1 for r in results),
            "one_change_flat_10pct": abs(largest["one"]["vs_smallest"] - 1) <= 0.10,
            "all_change_le_1.2x_compose": all(r["all"]["ratio"] <= 1.2 for r in results),
        },
    }
    print("\n== scale (item 3): medians; agent = gitops-agent sync, compose = pull + up -d --wait ==")
    rows = []
    for r in results:
        for kind in ("one", "all"):
            k = r[kind]
            rows.append([str(r["services"]), kind, f"{k['agent_s']:.2f}", f"{k['hand_s']:.2f}",
                         f"{k['ratio']:.2f}", str(k["agent_touched"]), str(k["hand_touched"]),
                         " ".join(f"{p[:2]}={v:.2f}" for p, v in k["phases_s"].items())])
    print(print_table(rows, ["services", "change", "agent (s)", "compose (s)", "a/b",
                             "agent recreated", "compose recreated", "agent phases (s)"]))
    print("one-service change, agent time vs 1 service: " + ", ".join(
        f"{r['services']}: {r['one']['vs_smallest']:.2f}x" for r in results))
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}"
                                  for k, v in res["met"].items()))
    write_results("scale", res, args.json)
    return res


if __name__ == "__main__":
    main()
