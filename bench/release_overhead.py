"""Issue 7, item 1 — release overhead: the agent vs plain compose on the same digest change.

One compose project (``web``: healthy busybox httpd with a 500 ms HEALTHCHECK; ``api``: no
healthcheck, unchanged). Each measurement moves ``web`` to the other of two digests, the
target image removed from the engine first, in both arms:

  (a) agent: commit desired-state.yml, then ``gitops-agent sync`` (a fresh process, as cron or
      a person runs it) — wall time of the command;
  (b) by hand: pin the digest in a compose override, then ``docker compose pull`` +
      ``docker compose up -d --wait`` (``--wait`` waits for the healthcheck too).

The agent runs with ``update: stop-first`` (the same operation as compose's recreate); a
third arm in each round measures the agent's default, start-first (the new container beside
the old one, ``handover_seconds`` = the default 2 s before the old one stops) — zero downtime, at a price.
Rounds rotate which arm goes first. Prints the median a/b ratio of the pairs (target
≤ 1.05) and the agent's time by phase (from the pass record it writes to its history).

    .venv/bin/python bench/release_overhead.py [--quick] [--pairs N]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Bench, Rounds, base_args, log, median, print_table, remove_images, write_results

PHASES = ("fetch", "validate", "observe", "pull", "apply", "health")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__ or "")
    ap.add_argument("--pairs", type=int, default=None)
    args = ap.parse_args(argv)
    pairs = args.pairs or (2 if args.quick else 7)

    with Bench("release") as b:
        log("building images")
        web = {"v1": b.image("bench/web", "v1", "healthy"),
               "v2": b.image("bench/web", "v2", "healthy")}
        api = b.image("bench/api", "v1", "nohealth")
        # stop-first: the agent replaces the container the way `compose up` recreates it
        st = b.stack("benchrel", {"web": "bench/web", "api": "bench/api"}, settle=1.0,
                     update="stop-first")
        # initial release, untimed
        st.commit({"web": web["v1"], "api": api})
        st.sync()
        st.hand_pin({"web": web["v1"], "api": api})

        rows: list[dict[str, Any]] = []
        rounds = Rounds(b.client)

        def one_round(i: int) -> dict[str, Any]:
            arms = ["agent", "hand", "default"]
            order = tuple(arms[(k + i) % 3] for k in range(3))
            if i % 2:
                order = order[::-1]
            pair: dict[str, Any] = {"pair": i, "order": "/".join(order)}
            for arm in order:
                running = st.running_refs().get("web")
                target = "v2" if running == st.ref("web", web["v1"]) else "v1"
                remove_images(b.client, [st.ref("web", web[target])])
                before = st.container_ids()
                if arm == "agent":
                    st.commit({"web": web[target], "api": api}, f"web {target}")
                    t, rec = st.sync()
                    pair["agent"] = t.seconds
                    pair["agent_pass"] = rec["duration_seconds"]
                    pair["phases"] = rec.get("phases", {})
                    st.hand_pin({"web": web[target], "api": api})  # keep the hand pins in step
                elif arm == "default":
                    # the agent's default update order: start-first (new container beside
                    # the old, handover_seconds = the default 2 s before the old one stops)
                    st.commit({"web": web[target], "api": api}, f"web {target}",
                              update="start-first")
                    t, rec = st.sync()
                    pair["default"] = t.seconds
                    pair["default_phases"] = rec.get("phases", {})
                    st.hand_pin({"web": web[target], "api": api})
                else:
                    h = st.hand_release({"web": web[target], "api": api})
                    pair["hand"] = h["total"]
                    pair["hand_pull"] = h["pull"]
                    pair["hand_up"] = h["up_wait"]
                after = st.container_ids()
                pair[f"{arm}_touched"] = sum(1 for s in after if after[s] != before.get(s))
                if not st.all_healthy({"web": web[target], "api": api}):
                    raise RuntimeError(f"{arm}: not running {target} healthy after the release")
            pair["ratio"] = pair["agent"] / pair["hand"]
            pair["default_ratio"] = pair["default"] / pair["hand"]
            log(f"pair {i}: agent {pair['agent']:.3f}s  hand {pair['hand']:.3f}s  "
                f"ratio {pair['ratio']:.3f}  start-first {pair['default']:.3f}s  phases {pair['phases']}")
            return pair

        for i in range(pairs):
            rows.append(rounds.run(one_round, i))

    ph = {p: median(r["phases"].get(p, 0.0) for r in rows) for p in PHASES}
    res: dict[str, Any] = {
        "pairs": rows,
        "median_agent_s": median(r["agent"] for r in rows),
        "median_agent_pass_s": median(r["agent_pass"] for r in rows),
        "median_hand_s": median(r["hand"] for r in rows),
        "median_hand_pull_s": median(r["hand_pull"] for r in rows),
        "median_hand_up_wait_s": median(r["hand_up"] for r in rows),
        "median_ratio": median(r["ratio"] for r in rows),
        "median_pass_ratio": median(r["agent_pass"] / r["hand"] for r in rows),
        "median_phases_s": ph,
        "median_process_overhead_s": median(r["agent"] - r["agent_pass"] for r in rows),
        "median_unphased_in_pass_s": median(
            r["agent_pass"] - sum(r["phases"].values()) for r in rows),
        "agent_touched": sorted({r["agent_touched"] for r in rows}),
        "hand_touched": sorted({r["hand_touched"] for r in rows}),
        "target_ratio": 1.05,
        "discarded_rounds": rounds.discarded,
        "median_default_s": median(r["default"] for r in rows),
        "median_default_ratio": median(r["default_ratio"] for r in rows),
        "default_touched": sorted({r["default_touched"] for r in rows}),
    }
    res["target_met"] = res["median_ratio"] <= 1.05
    print("\n== release overhead (item 1): same digest change, agent vs plain compose ==")
    print(print_table(
        [[str(r["pair"]), r["order"], f"{r['agent']:.3f}", f"{r['hand']:.3f}",
          f"{r['ratio']:.3f}", f"{r['default']:.3f}"] for r in rows],
        ["pair", "order", "agent sync, stop-first (s)", "pull+up --wait (s)", "a/b",
         "agent sync, start-first (s)"]))
    print(f"median a/b ratio: {res['median_ratio']:.3f}  (target <= 1.05: "
          f"{'met' if res['target_met'] else 'MISSED'})")
    print(f"the pass alone (what the daemon pays; no process start): median "
          f"{res['median_pass_ratio']:.3f}x compose")
    print(f"median agent sync {res['median_agent_s']:.3f}s = process start/exit "
          f"{res['median_process_overhead_s']:.3f}s + pass {res['median_agent_pass_s']:.3f}s")
    print("  pass by phase (median s): " + ", ".join(f"{p} {ph[p]:.3f}" for p in PHASES)
          + f", unphased (state writes, record) {res['median_unphased_in_pass_s']:.3f}")
    print(f"median plain compose {res['median_hand_s']:.3f}s = pull "
          f"{res['median_hand_pull_s']:.3f}s + up --wait {res['median_hand_up_wait_s']:.3f}s")
    print(f"agent default update order (start-first, handover 2 s): median "
          f"{res['median_default_s']:.3f}s = {res['median_default_ratio']:.2f}x compose "
          "(zero-downtime rollout, not the same operation as compose's recreate)")
    print(f"containers recreated per release: agent {res['agent_touched']}, "
          f"compose {res['hand_touched']}")
    write_results("release_overhead", res, args.json)
    return res


if __name__ == "__main__":
    main()
