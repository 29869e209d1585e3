"""Webhook: signed GitHub push → trigger() latency on the real WebhookServer (127.0.0.1),
50 pushes; median and p99 (target ≤ 1 s). The trigger is the daemon's hup() path's entry
point; this measures the HTTP + verification + dispatch part in process.

    .venv/bin/python bench/webhook.py [--pushes 50] [--out PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import threading
import time
from pathlib import Path

from common import machine, write_results

from agent.webhook import WebhookServer

SECRET = "bench-webhook-secret"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pushes", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    fired = threading.Event()
    srv = WebhookServer("127.0.0.1", 0, secret=SECRET, kind="github", source_kind="git",
                        source_repo="https://git.example.com/ops/stack.git", branch="main",
                        rate_limit_per_minute=10_000, trigger=fired.set)
    body = json.dumps({"ref": "refs/heads/main", "repository": {
        "clone_url": "https://git.example.com/ops/stack.git"}}).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    lat: list[float] = []
    try:
        for _ in range(a.pushes):
            fired.clear()
            t0 = time.perf_counter()
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            c.request("POST", "/", body=body, headers={"X-GitHub-Event": "push",
                                                      "X-Hub-Signature-256": sig})
            assert fired.wait(10)
            lat.append(time.perf_counter() - t0)
            assert c.getresponse().status == 202
            c.close()
    finally:
        srv.close()
    lat.sort()
    med = lat[len(lat) // 2]
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    print(f"webhook push -> trigger: n={len(lat)} median={med * 1000:.2f} ms "
          f"p99={p99 * 1000:.2f} ms (target <= 1000 ms)")
    write_results("webhook", {"pushes": len(lat), "median_seconds": med, "p99_seconds": p99,
                              "target_seconds": 1.0, "measured": "push -> trigger()",
                              "machine": machine()}, a.out)


if __name__ == "__main__":
    main()
