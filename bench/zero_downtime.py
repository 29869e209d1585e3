"""Issue 9 — zero-downtime releases: failed requests, responses served by the failing
release and the slowest response through a real proxy while a loopback client sends ~50
requests/s, for a good and a bad release, under start-first and stop-first.

``--front haproxy``: HAProxy with active health checks, over Docker's DNS.
``--front caddy``: Debian's caddy 2.6, ``dynamic a`` upstreams — follows Docker's DNS for
the service's name and checks nothing (a DNS-only proxy).

The scenario is the end-to-end test's (tests/e2e/test_zero_downtime.py, via
tests/proxy.py), repeated ``--reps`` times per update order. To measure another version of
the agent with the same scenario, put its ``agent`` package first on ``PYTHONPATH``.

    .venv/bin/python bench/zero_downtime.py [--quick] [--reps N] [--front caddy]
        [--orders start-first]
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxy  # noqa: E402
import rig  # noqa: E402
from common import base_args, log, median, write_results  # noqa: E402
from harness import Harness  # noqa: E402

from agent import retry  # noqa: E402
from agent.edges.compose import find_compose_command  # noqa: E402

IMAGES = {
    "web-v1": ("e2e/web", "v1", "healthy", "web v1"),
    "web-v2": ("e2e/web", "v2", "healthy", "web v2"),
    "web-bad": ("e2e/web", "bad", "unhealthy", "web bad"),
    "api-v1": ("e2e/api", "v1", "nohealth", "api v1"),
    "side": ("e2e/side", "v1", "nohealth", "side"),
}


def main() -> int:
    ap = base_args(__doc__ or "")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--front", choices=("haproxy", "caddy"), default="haproxy")
    ap.add_argument("--orders", default="start-first,stop-first")
    ap.add_argument("--stop-old-in-name", action="store_true",
                    help="start-first: stop the old container without first taking it out "
                         "of the service's name (to compare the two retirement orders)")
    args = ap.parse_args()
    if args.stop_old_in_name:
        from agent import strategies

        strategies.StartFirst.withhold_old = False
    orders = [o for o in args.orders.split(",") if o]
    reps = 1 if args.quick else args.reps
    retry.set_fast(True)
    client = rig.docker_client()
    compose_cmd = find_compose_command()
    results: dict[str, list[dict[str, Any]]] = {}
    import agent

    log(f"agent package: {Path(agent.__file__).parent}; front: {args.front}")
    with rig.temp_root("gitops-bench-zd-") as root:
        if args.front == "caddy":
            proxy.build_caddy_image(client, root, proxy.debian_base_image())
        reg = rig.Registry(port=rig.free_port(), workdir=root / "registry").start()
        try:
            images = {k: rig.build_and_push(client, reg.host, *spec, workdir=root / "ctx")
                      for k, spec in IMAGES.items()}
            for rep in range(reps):
                for order in orders:
                    log(f"round {rep + 1}/{reps}: {order}")
                    h = Harness.create(root / f"p{rep}-{order}", reg.host, images, client,
                                       compose_cmd, name=f"zdb{uuid.uuid4().hex[:8]}",
                                       handover=2.0)
                    try:
                        url = proxy.add_proxy(h, root, front=args.front)
                        r, _ = proxy.release_under_load(h, url, "web-v1", order, rate=1)
                        assert r.code == 0, r.summary()
                        proxy.wait_serving(url, "web v1")
                        for case, key, want in (("good", "web-v2", 0), ("bad", "web-bad", 1)):
                            t0 = time.monotonic()
                            r, rep_ = proxy.release_under_load(h, url, key, order)
                            assert r.code == want, r.summary()
                            results.setdefault(f"{order} {case}", []).append({
                                "sent": rep_.sent, "failed": rep_.failed,
                                "slowest_ms": round(rep_.slowest * 1000),
                                "errors": rep_.errors, "seconds": round(time.monotonic() - t0, 2),
                                "served_by_bad": rep_.bodies.get("web bad", 0),
                                "slow": rep_.slow,
                            })
                    finally:
                        h.teardown()
        finally:
            reg.stop()
    print(f"\n== zero-downtime releases (issue 9): ~50 req/s through {args.front} ==")
    print(f"{'case':<22} {'runs':>4} {'sent':>6} {'failed (median/max)':>20} "
          f"{'slowest ms (median/max)':>24} {'served by bad (median/max)':>27} "
          f"{'> 250 ms (median/max)':>22}")
    summary = {}
    for case, runs in results.items():
        failed = [r["failed"] for r in runs]
        slow = [r["slowest_ms"] for r in runs]
        by_bad = [r["served_by_bad"] for r in runs]
        slow_n = [r["slow"] for r in runs]
        row = {"runs": len(runs), "sent_median": median([r["sent"] for r in runs]),
               "failed_median": median(failed), "failed_max": max(failed),
               "slowest_ms_median": median(slow), "slowest_ms_max": max(slow),
               "served_by_bad": sum(by_bad), "served_by_bad_median": median(by_bad),
               "served_by_bad_max": max(by_bad), "slow_median": median(slow_n),
               "slow_max": max(slow_n)}
        summary[case] = row
        print(f"{case:<22} {row['runs']:>4} {row['sent_median']:>6.0f} "
              f"{row['failed_median']:>12.0f} / {row['failed_max']:<5} "
              f"{row['slowest_ms_median']:>15.0f} / {row['slowest_ms_max']:<6} "
              f"{row['served_by_bad_median']:>18.0f} / {row['served_by_bad_max']:<6} "
              f"{row['slow_median']:>13.0f} / {row['slow_max']:<6}")
    ok = all(summary[c]["failed_max"] == 0 for c in ("start-first good", "start-first bad")
             if c in summary)
    print(f"target (start-first: 0 failed requests, good and bad): {'met' if ok else 'MISSED'}")
    name = "zero_downtime" if args.front == "haproxy" else "zero_downtime_caddy"
    write_results(name, {"summary": summary, "runs": results,
                         "agent": str(Path(agent.__file__).parent)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
