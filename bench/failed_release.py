"""Issue 7, item 5 — failed release cost: from the start of a broken release to the old
release healthy again, and how long the service answered no requests.

``web`` (healthy busybox httpd, 500 ms HEALTHCHECK) publishes its port on 127.0.0.1; a probe
thread GETs it every 50 ms during the whole pass. Broken releases:

* ``unhealthy``: starts and serves, but its HEALTHCHECK fails (Docker marks it unhealthy
  after one failed check) — the agent rolls back;
* ``crash``: exits at once with code 3 — the agent rolls back.

The broken image is removed from the engine before each run, so the time includes its pull.
Time = `gitops-agent sync` start to exit (it exits after the rollback is verified healthy);
the probe then confirms the old version answers.

    .venv/bin/python bench/failed_release.py [--quick] [--reps N]
"""

from __future__ import annotations

import http.client
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import Bench, Rounds, base_args, log, median, remove_images, write_results


class Probe:
    def __init__(self, port: int, period: float = 0.05) -> None:
        self.port, self.period = port, period
        self.samples: list[tuple[float, str | None]] = []  # (t, body or None on failure)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _get(self) -> str | None:
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.25)
            c.request("GET", "/")
            r = c.getresponse()
            body = r.read().decode(errors="replace").strip()
            c.close()
            return body if r.status == 200 else None
        except (OSError, http.client.HTTPException):
            return None

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            t = time.monotonic()
            self.samples.append((t, self._get()))
            nxt += self.period
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    def start(self) -> Probe:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


def outage(samples: list[tuple[float, str | None]], good: str, period: float
           ) -> dict[str, float]:
    """No-answer time (the time from each failed probe to the next probe), the longest no-answer gap, and the
    time answered by something other than the good version."""
    failed = other = 0.0
    for (t, body), (t_next, _) in zip(samples, samples[1:], strict=False):
        if body is None:
            failed += t_next - t
        elif body != good:
            other += t_next - t
    longest, start = 0.0, None
    for t, body in samples:
        if body is None:
            start = t if start is None else start
        elif start is not None:
            longest, start = max(longest, t - start), None
    if start is not None:
        longest = max(longest, samples[-1][0] - start)
    return {"no_answer_s": failed, "longest_gap_s": longest, "answered_by_bad_s": other}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__ or "")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 5)
    period = 0.05

    res: dict[str, Any] = {"probe_period_s": period}
    with Bench("failed") as b:
        log("building images")
        good = b.image("bench/web", "v1", "healthy", "web good")
        bad = {"unhealthy": b.image("bench/web", "bad", "unhealthy", "web bad"),
               "crash": b.image("bench/web", "crash", "crash", "web crash")}
        port = common.rig.free_port()
        st = b.stack("benchfail", {"web": "bench/web"}, ports={"web": port}, settle=1.0,
                     health_timeout=60)
        st.commit({"web": good})
        st.sync()
        for variant, digest in bad.items():
            rows = []
            rounds = Rounds(b.client)

            def one(i: int, variant: str = variant, digest: str = digest) -> dict[str, Any]:
                remove_images(b.client, [st.ref("web", digest)])
                st.commit({"web": digest}, f"broken {variant} {i}")
                probe = Probe(port, period).start()
                time.sleep(0.5)  # a baseline of good answers
                t0 = time.monotonic()
                t, rec = st.sync(check=False)
                t1 = time.monotonic()
                # until the old version answers again (normally at once)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if probe.samples and probe.samples[-1][1] == "web good":
                        break
                    time.sleep(period)
                t2 = time.monotonic()
                time.sleep(0.3)
                probe.stop()
                if rec.get("outcome") != "rolled-back" or not st.all_healthy({"web": good}):
                    raise RuntimeError(f"{variant}: expected a rollback, got {rec}")
                during = [s for s in probe.samples if s[0] >= t0 - period]
                o = outage(during, "web good", period)
                row = {"exit": t.code, "to_old_healthy_s": t1 - t0,
                       "to_old_answering_s": t2 - t0, "pass_s": rec["duration_seconds"],
                       "phases": rec.get("phases", {}), **o}
                log(f"{variant} {i}: old healthy after {row['to_old_healthy_s']:.2f}s, "
                    f"no answer {o['no_answer_s']:.2f}s (longest gap {o['longest_gap_s']:.2f}s),"
                    f" bad version answered {o['answered_by_bad_s']:.2f}s; "
                    f"phases {row['phases']}")
                return row

            for i in range(reps):
                rows.append(rounds.run(one, i))
            res[variant] = {
                "discarded_rounds": rounds.discarded,
                "runs": rows,
                **{k: median(r[k] for r in rows) for k in (
                    "to_old_healthy_s", "to_old_answering_s", "no_answer_s", "longest_gap_s",
                    "answered_by_bad_s")},
                "phases_s": {p: median(r["phases"].get(p, 0.0) for r in rows)
                             for p in ("fetch", "validate", "observe", "pull", "apply",
                                       "health", "rollback")},
            }

    print("\n== failed release cost (item 5): broken release -> old release healthy again ==")
    for variant in bad:
        r = res[variant]
        print(f"{variant:9s}: {r['to_old_healthy_s']:.2f}s to old healthy (sync exit 1); no answer "
              f"{r['no_answer_s']:.2f}s (longest gap {r['longest_gap_s']:.2f}s); "
              f"answered by the bad release {r['answered_by_bad_s']:.2f}s")
        print("           phases (median s): " + ", ".join(
            f"{p} {v:.2f}" for p, v in r["phases_s"].items()))
    write_results("failed_release", res, args.json)
    return res


if __name__ == "__main__":
    main()
