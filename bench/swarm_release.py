"""Docker Swarm: the agent's release time vs a plain ``docker stack deploy --detach=false``
of the same change, same run.

A single-node swarm (``docker swarm init`` when the engine is not in one; left as found). Two
stacks from the same compose file (``web``: 2 replicas, healthy busybox httpd with a 500 ms
HEALTHCHECK, ``update_config`` start-first, parallelism 1, monitor 3 s). Each round moves
``web`` of both stacks to the other of two digests, arms alternating which goes first:

  (a) agent: commit desired-state.yml, then ``gitops-agent sync`` (a fresh process) with
      ``[engine] kind = "swarm"`` — manifest check, deploy, wait for Swarm's verdict;
  (b) by hand: pin the digest in an override, ``docker stack deploy --detach=false``.

    .venv/bin/python bench/swarm_release.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import rig  # noqa: E402

COMPOSE = """\
services:
  web:
    image: {reg}/bench/web:latest
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      update_config: {{order: start-first, failure_action: rollback, parallelism: 1,
                      delay: 0s, monitor: 3s}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    client = rig.docker_client()
    made = client.info()["Swarm"]["LocalNodeState"] == "inactive"
    tmp = Path(tempfile.mkdtemp(prefix="bench-swarm-"))
    reg = rig.Registry(port=rig.free_port(), workdir=tmp / "reg").start()
    stacks = [f"bsa{uuid.uuid4().hex[:6]}", f"bsb{uuid.uuid4().hex[:6]}"]
    try:
        if made:
            subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
                           check=True, capture_output=True)
        digests = [rig.build_and_push(client, reg.host, "bench/web", t, "healthy", f"web {t}",
                                      tmp / "ctx") for t in ("v1", "v2")]
        image = f"{reg.host}/bench/web"
        srv = tmp / "srv"
        srv.mkdir()
        (srv / "compose.yml").write_text(COMPOSE.format(reg=reg.host))
        repo = rig.GitRepo(tmp / "git").init()
        cfg = tmp / "agent.toml"
        cfg.write_text(rig.agent_toml(repo=str(repo.origin), project_dir=srv,
                                      project_name=stacks[0], state_dir=tmp / "state",
                                      health_timeout=120)
                       + '\n[engine]\nkind = "swarm"\n')
        override = tmp / "pin.json"

        def agent(d: str) -> float:
            repo.commit_file("desired-state.yml", rig.desired_yaml({"web": (image, d)}))
            t0 = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "sync"],
                               cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, "GITOPS_AGENT_LOG_FORMAT": "json"})
            dt = time.monotonic() - t0
            assert p.returncode == 0, p.stderr[-2000:]
            return dt

        def plain(d: str) -> float:
            override.write_text(json.dumps({"services": {"web": {"image": f"{image}@{d}"}}}))
            t0 = time.monotonic()
            subprocess.run(["docker", "stack", "deploy", "--detach=false", "--with-registry-auth",
                            "--resolve-image", "never", "-c", str(srv / "compose.yml"),
                            "-c", str(override), stacks[1]], check=True, capture_output=True)
            return time.monotonic() - t0

        agent(digests[0])
        plain(digests[0])
        rows = []
        for i in range(args.rounds):
            d = digests[(i + 1) % 2]
            if i % 2 == 0:
                a, b = agent(d), plain(d)
            else:
                b, a = plain(d), agent(d)
            rows.append({"agent_s": round(a, 2), "stack_deploy_s": round(b, 2),
                         "ratio": round(a / b, 3)})
            print(f"round {i + 1}: agent {a:.2f}s  docker stack deploy --detach=false {b:.2f}s"
                  f"  ratio {a / b:.2f}", flush=True)
        out = {"rounds": rows,
               "median_agent_s": statistics.median(r["agent_s"] for r in rows),
               "median_stack_deploy_s": statistics.median(r["stack_deploy_s"] for r in rows),
               "median_ratio": statistics.median(r["ratio"] for r in rows)}
        print(json.dumps(out, indent=2))
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        (ROOT / "bench" / "results" / "swarm_release.json").write_text(json.dumps(out, indent=2))
    finally:
        for s in stacks:
            subprocess.run(["docker", "stack", "rm", s], capture_output=True, check=False)
        if made:
            time.sleep(3)
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True,
                           check=False)
        reg.stop()


if __name__ == "__main__":
    main()
