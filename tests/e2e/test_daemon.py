"""End-to-end: `gitops-agent run`, the daemon, against the real rig."""

from __future__ import annotations

import signal
import socket
import time

import pytest
from harness import DaemonProcess


@pytest.fixture
def daemon_factory(harness):
    procs: list[DaemonProcess] = []

    def start(env=None):
        d = DaemonProcess(harness.project.config_path, env)
        procs.append(d)
        return d

    yield start
    for d in procs:
        d.stop()


def set_interval(harness, seconds: float) -> None:
    cfg = harness.project.config_path
    text = cfg.read_text().replace("interval_seconds = 2", f"interval_seconds = {seconds}")
    cfg.write_text(text)


def test_daemon_rolls_out_a_commit_without_any_other_action(harness, daemon_factory):
    harness.release(web="web-v1", api="api-v1")
    d = daemon_factory()
    d.wait_for("agent.pass.completed", where=lambda e: e["outcome"] == "applied")
    rev = harness.release(web="web-v2", api="api-v1")
    done = d.wait_for("agent.pass.completed", timeout=60,
                      where=lambda e: e["outcome"] == "applied" and e["revision"] == rev)
    assert done["changed"][0].startswith("web:")
    assert harness.serve("web") == "web v2"
    assert d.stop() == 0


def test_sighup_triggers_an_immediate_pass(harness, daemon_factory):
    set_interval(harness, 3600)
    harness.release(web="web-v1", api="api-v1")
    d = daemon_factory()
    d.wait_for("agent.pass.completed")
    rev = harness.release(web="web-v2", api="api-v1")
    t0 = time.monotonic()
    d.signal(signal.SIGHUP)
    d.wait_for("agent.pass.completed", timeout=60, where=lambda e: e["revision"] == rev)
    assert time.monotonic() - t0 < 60  # not the 1 h interval
    assert d.events("agent.daemon.reload")
    assert harness.serve("web") == "web v2"


def test_sigterm_during_rollout_finishes_it_and_exits_0(harness, daemon_factory):
    harness.release(web="web-v1", api="api-v1")
    d = daemon_factory()
    d.wait_for("agent.pass.completed")
    rev = harness.release(web="web-slow", api="api-v2")  # healthy only after ~3 s
    d.wait_for("agent.health.waiting", where=lambda e: e.get("revision") == rev[:12])
    d.signal(signal.SIGTERM)
    assert d.stop(timeout=90) == 0
    summary = [e for e in d.events("agent.pass.completed") if e["revision"] == rev]
    assert summary and summary[-1]["outcome"] == "applied"
    assert harness.running_digest("web") == harness.images["web-slow"]
    assert harness.running_digest("api") == harness.images["api-v2"]
    assert harness.state()["in_flight"] is None


def test_second_daemon_on_the_same_state_dir_is_refused(harness, daemon_factory):
    harness.release(web="web-v1", api="api-v1")
    d = daemon_factory()
    d.wait_for("agent.daemon.started")
    p = harness.cli_subprocess("run", timeout=30)
    assert p.returncode == 4
    assert "another gitops-agent holds" in p.stderr
    assert d.proc.poll() is None


def test_notify_messages_arrive_in_order(harness, daemon_factory, tmp_path):
    harness.release(web="web-v1", api="api-v1")
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    d = daemon_factory(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    got: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msg = sock.recv(4096).decode()
        got.append(msg)
        if any(m.startswith("STATUS=applied") for m in got) and \
                sum(m == "WATCHDOG=1" for m in got) >= 2:
            break
    assert d.stop() == 0
    sock.settimeout(2)
    try:
        while True:
            got.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    sock.close()
    kinds = [m.split("=", 1)[0] for m in got]
    assert kinds[0] == "READY", got
    assert "MAINPID=" in got[0]
    status = next(m for m in got if m.startswith("STATUS=applied"))
    assert harness.state()["last_applied"]["revision"][:12] in status
    assert "WATCHDOG" in kinds
    assert got[-1].startswith("STOPPING=1"), got[-3:]


def test_many_fast_passes_do_not_grow_memory(harness, daemon_factory):
    set_interval(harness, 0.05)
    harness.release(web="web-v1", api="api-v1")
    d = daemon_factory()
    d.wait_for("agent.pass.completed", count=30, timeout=120)
    rss_early = _rss_kib(d.proc.pid)
    d.wait_for("agent.pass.completed", count=230, timeout=300)
    rss_late = _rss_kib(d.proc.pid)
    # 200 more passes: allow allocator noise, not growth per pass
    assert rss_late - rss_early < 3 * 1024, (rss_early, rss_late)
    passes = d.events("agent.pass.completed")
    assert len(passes) >= 230
    assert d.events("agent.daemon.pass_crashed") == []
    outcomes = {e["outcome"] for e in passes[1:]}
    assert "no-op" in outcomes and outcomes <= {"no-op", "error"}, outcomes
    # folded history: runs of idle passes are one record each, not one per pass
    hist = harness.state()["history"]
    assert sum(h["repeats"] for h in hist) >= 230
    assert len(hist) < 50


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
