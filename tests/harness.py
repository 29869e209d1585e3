"""A per-test compose project on the real rig, driven through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import rig
from structlog.testing import capture_logs

from agent.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SyncResult:
    code: int
    logs: list[dict[str, Any]]

    def events(self) -> list[str]:
        return [e["event"] for e in self.logs]

    def find(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["event"] == event]

    def summary(self) -> dict[str, Any]:
        s = self.find("agent.pass.completed")
        assert len(s) == 1, self.events()
        return s[0]


class Harness:
    def __init__(self, project: rig.Project, images: dict[str, str], client: docker.DockerClient,
                 compose_cmd: list[str]) -> None:
        self.project = project
        self.images = images
        self.client = client
        self.compose_cmd = compose_cmd
        self.reg = project.registry

    @classmethod
    def create(cls, root: Path, registry: str, images: dict[str, str],
               client: docker.DockerClient, compose_cmd: list[str], *, name: str,
               **project_kw: Any) -> Harness:
        repo = rig.GitRepo(root / "git").init()
        project = rig.Project(name=name, root=root, registry=registry, repo=repo, **project_kw)
        project.write(side_ref=f"{registry}/e2e/side@{images['side']}")
        return cls(project, images, client, compose_cmd)

    def teardown(self) -> None:
        self.project.down(self.compose_cmd)

    # ------------------------------------------------------------------ desired state
    def image(self, service: str) -> str:
        return f"{self.reg}/e2e/{service}"

    def release(self, message: str = "release", **digests: str) -> str:
        """Commit a desired-state pinning services to the named test images
        (e.g. ``web="web-v1"``) and return the revision."""
        services = {svc: (self.image(svc), self.images[key]) for svc, key in digests.items()}
        return self.commit(rig.desired_yaml(services), message)

    def commit(self, text: str, message: str = "update") -> str:
        return self.project.repo.commit_file("desired-state.yml", text, message)

    # ------------------------------------------------------------------ the agent
    def cli(self, *args: str) -> SyncResult:
        with capture_logs() as logs:
            code = cli_main(["--config", str(self.project.config_path), *args],
                            configure_logging=False)
        return SyncResult(code, logs)

    def sync(self, *args: str) -> SyncResult:
        return self.cli("sync", *args)

    def cli_subprocess(self, *args: str, env: dict[str, str] | None = None,
                       timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(self.project.config_path), *args],
            capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
            env={**os.environ, "GITOPS_AGENT_FAST_RETRY": "1", **(env or {})},
        )

    def state(self) -> dict[str, Any]:
        return json.loads((self.project.state_dir / "state.json").read_text())

    # ------------------------------------------------------------------ observation
    def containers(self, service: str) -> list[Any]:
        return self.client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project.name}",
            f"com.docker.compose.service={service}",
        ]})

    def container_ids(self) -> dict[str, list[str]]:
        return {s: sorted(c.id for c in self.containers(s)) for s in ("web", "api", "side")}

    def running_digest(self, service: str) -> str | None:
        cs = [c for c in self.containers(service) if c.status == "running"]
        if len(cs) != 1:
            return None
        ref = cs[0].attrs["Config"]["Image"]
        return ref.split("@", 1)[1] if "@" in ref else None

    def serve(self, service: str = "web") -> str:
        """What the service answers on its port, asked from inside its container."""
        cs = [c for c in self.containers(service) if c.status == "running"]
        assert len(cs) == 1, f"{service}: {[(c.name, c.status) for c in cs]}"
        code, out = cs[0].exec_run(["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"])
        assert code == 0, out
        return str(out.decode().strip())
