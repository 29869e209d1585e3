"""Webhook: signed GitHub push → trigger() latency on the real WebhookServer (127.0.0.1),
50 pushes; median and p99 (target ≤ 1 s). The trigger is the daemon's hup() path's entry
point; this measures the HTTP + verification + dispatch part in process.

``--daemon``: the same pushes to a real `gitops-agent run` daemon (interval 1 h, so only
the webhook starts passes) deploying a stack served by `git daemon`: push → the pass
started (its ``agent.fetch.done`` line, i.e. started and fetched) and push → the pass
completed, median and p99.

    .venv/bin/python bench/webhook.py [--pushes 50] [--daemon] [--out PATH]
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
from typing import Any

from common import Bench, Daemon, GitDaemon, log, machine, write_results

from agent.webhook import WebhookServer

SECRET = "bench-webhook-secret"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pushes", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--daemon", action="store_true",
                    help="push to a real daemon: push -> pass started / completed")
    a = ap.parse_args()
    if a.daemon:
        daemon_pushes(a.pushes, a.out)
        return
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


def _quantiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def daemon_pushes(pushes: int, out: Path | None) -> None:
    with Bench("webhook") as b:
        api = b.image("bench/api", "v1", "nohealth")
        secret = b.root / "webhook.secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        st = b.stack("benchhook", {"api": "bench/api"})
        git = GitDaemon(st.repo.root, b.root / "git-daemon.log").start()
        b.cleanups.append(git.stop)
        st.source_url = git.url(st.repo.origin)
        port = _free_port()
        st.extra_agent = (f'\n[webhook]\nlisten = "127.0.0.1:{port}"\n'
                          f'secret_file = "{secret}"\nkind = "github"\n'
                          "rate_limit_per_minute = 10000\n")
        st.write_config()
        st.commit({"api": api})
        st.sync()
        d = Daemon(_Debug(st)).start()  # type: ignore[arg-type]
        d.wait_for("agent.pass.completed", timeout=120)
        body = json.dumps({"ref": "refs/heads/main",
                           "repository": {"clone_url": st.source_url}}).encode()
        sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        started: list[float] = []
        completed: list[float] = []
        for i in range(2, pushes + 2):
            t0 = time.monotonic()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("POST", "/", body=body, headers={"X-GitHub-Event": "push",
                                                      "X-Hub-Signature-256": sig})
            assert c.getresponse().status == 202
            c.close()
            t1, _ = d.wait_for("agent.fetch.done", count=i, timeout=60)
            t2, _ = d.wait_for("agent.pass.completed", count=i, timeout=60)
            started.append(t1 - t0)
            completed.append(t2 - t0)
        d.stop()
    s_med, s_p99 = _quantiles(started)
    c_med, c_p99 = _quantiles(completed)
    log(f"webhook push -> pass started (fetched): n={len(started)} median="
        f"{s_med * 1000:.0f} ms p99={s_p99 * 1000:.0f} ms (target <= 1000 ms); "
        f"-> pass completed: median {c_med * 1000:.0f} ms p99 {c_p99 * 1000:.0f} ms")
    write_results("webhook_daemon", {
        "pushes": len(started), "started_median_seconds": s_med, "started_p99_seconds": s_p99,
        "completed_median_seconds": c_med, "completed_p99_seconds": c_p99,
        "target_seconds": 1.0, "measured": "push -> agent.fetch.done / agent.pass.completed",
        "machine": machine()}, out)


class _Debug:
    """The stack's daemon with debug logs: an idle pass's agent.fetch.done is at debug."""

    def __init__(self, st: Any) -> None:
        self.bench = st.bench
        self._st = st

    def agent_cmd(self, *args: str) -> list[str]:
        return [*self._st.agent_cmd("--log-level", "debug"), *args]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
