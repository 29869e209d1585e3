"""Fault: the Docker daemon restarts in the middle of a pass (the health wait of a release).
The agent does not crash; the pass ends with a one-line cause; the next pass converges.

This is the one test that stops the shared dockerd. It restarts it the way scripts/rig-up
starts it (a plain background ``dockerd``) and waits for ``docker info`` — in a finally,
so the engine is left running whatever happens."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from faultkit import AgentProc, assert_marker, assert_released_set, digests, one_line

DOCKERD_LOG = "/tmp/dockerd.log"


def _dockerd_pid() -> int | None:
    out = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) <= 1, pids
    return pids[0] if pids else None


def _docker_info_ok() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def _start_dockerd() -> None:
    if _dockerd_pid() is None:
        with open(DOCKERD_LOG, "ab") as log:
            subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while not _docker_info_ok():
        assert time.monotonic() < deadline, "dockerd did not come back"
        time.sleep(0.5)


def _restart_dockerd() -> None:
    pid = _dockerd_pid()
    assert pid is not None
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while os.path.exists(f"/proc/{pid}"):
            assert time.monotonic() < deadline, "dockerd did not stop"
            time.sleep(0.2)
    finally:
        _start_dockerd()


def test_docker_daemon_restarted_during_the_health_wait_is_transient_then_converges(deployed):
    """The engine going away mid-release is the host's weather, not the release's fault: the
    pass ends "error" (exit 3), the revision is not marked failed, the intent stays, and the
    next pass converges on the new release, healthy, with the data."""
    h, marker = deployed
    rev = h.release(web="web-slow", api="api-v2")
    agent = AgentProc(h, "sync")
    try:
        agent.wait_event("agent.health.waiting")
        _restart_dockerd()
        code = agent.wait(240)
    finally:
        _start_dockerd()
    assert "Traceback" not in agent.stderr, agent.stderr
    assert "agent.pass.crashed" not in agent.stderr
    done = agent.events("agent.pass.completed")
    assert len(done) == 1, agent.stderr
    # the release turned healthy once the engine was back (applied), or the pass stopped
    # as transient (error, exit 3) — never judged failed, never rolled back
    assert (code, done[0]["outcome"]) in ((0, "applied"), (3, "error")), done[0]
    st = h.state()
    assert rev not in st["failed_revisions"]
    if code == 3:
        one_line(done[0]["reason"])
        assert st["in_flight"] is not None and st["in_flight"]["revision"] == rev
        r = h.sync()
        assert "agent.recover.in_flight" in r.events()
        assert (r.code, r.summary()["outcome"]) == (0, "applied"), r.summary()
    assert_released_set(h, digests(h, web="web-slow", api="api-v2"))
    assert_marker(h, marker)
    r = h.sync()
    assert r.summary()["outcome"] == "no-op", r.summary()
