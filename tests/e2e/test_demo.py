"""The README's first command, `make demo`, run end to end so it cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[2]


def _run_demo() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "demo" / "demo.py")], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def test_demo_walks_the_whole_lifecycle_and_cleans_up_after_itself(docker_client):
    p = _run_demo()
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-2000:]
    during = "\n".join(ln for ln in out.splitlines() if "during the" in ln)
    # 1. v1 deployed by the daemon
    assert "200 hello from v1" in out
    # 2. v2 rolled out, api untouched, no request lost
    assert "200 hello from v2" in out
    assert re.search(r"api container before \[.*\] after \[.*\]: untouched", out)
    assert re.search(r"during the rollout: \d+ requests through the proxy, 0 failed", out), during
    # a config-only change (compose.yml from git): only api recreated, with the variable
    assert "config_changed=['api']" in out
    assert re.search(r"hello container before \['\w+'\] after \['\w+'\]: untouched", out)
    assert re.search(r"api container before \['\w+'\] after \['\w+'\]: recreated", out)
    assert "api runs with LOG_LEVEL=debug" in out
    # 3. broken v3 rolled back by the agent on its own, v2 keeps serving
    assert "outcome=rolled-back" in out
    assert re.search(r"during the failed release: \d+ requests, 0 failed, \d+ served by the broken v3",
                     out), during
    # 4. pinned by hand, and the next release leaves it alone
    assert "(pinned to v1)\n    200 hello from v1" in out
    assert "hello is pinned at" in out
    # 5. status and history
    assert "gitops-agent status" in out and "pinned" in out
    assert "failed and rolled back" in out
    # step 6: the commit statuses it posted and a scrape of /metrics
    assert not re.search(r"pending  demo-1", out)  # post_pending is off by default
    assert re.search(r"failure  demo-1: rolled back: hello: .*unhealthy", out)
    assert re.search(r"success  demo-1 runs api@[0-9a-f]{12}, hello@[0-9a-f]{12}", out)
    assert 'gitops_agent_releases_total{outcome="rolled-back"} 1.0' in out
    assert "Demo finished" in out
    # cleaned up: no containers of the demo, work dir gone
    work = re.search(r"work dir (\S+)\)", out).group(1)
    assert not Path(work).exists()
    project = re.search(r"project (gitopsdemo\d+)", out).group(1)
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"})
    assert leftovers == []


def test_demo_cleans_up_on_ctrl_c(docker_client):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, str(ROOT / "demo" / "demo.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "Step 2:" in line:
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-2000:]
    assert "interrupted" in out and "cleaning up" in out
    work = re.search(r"work dir (\S+)\)", out).group(1)
    assert not Path(work).exists()
    project = re.search(r"project (gitopsdemo\d+)", out)
    name = project.group(1) if project else None
    if name:
        assert docker_client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={name}"}) == []
    assert isinstance(docker_client, docker.DockerClient)
