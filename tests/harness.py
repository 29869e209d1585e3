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

    def commit(self, text: str, message: str = "update", signing_key: Path | None = None) -> str:
        return self.project.repo.commit_file("desired-state.yml", text, message, signing_key)

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


class AgentProcess:
    """The agent as a real subprocess (``run`` by default, or e.g. ``sync``) with JSON logs
    on stderr, collected while it runs; killable from outside."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        import threading

        self.proc = subprocess.Popen(
            # debug: tests follow every pass, the idle ones too (logged at debug)
            [sys.executable, "-m", "agent", "--config", str(config), "--log-format", "json",
             "--log-level", "debug", *(args or ("run",))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
            env={**os.environ, "GITOPS_AGENT_FAST_RETRY": "1", **(env or {})},
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.raw.append(line)
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass
                self._cond.notify_all()

    @property
    def stderr(self) -> str:
        return "".join(self.raw)

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.lines if e.get("event") == name]

    def wait_for(self, name: str, timeout: float = 60, count: int = 1,
                 where: Any = None) -> dict[str, Any]:
        import time

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [e for e in self.lines if e.get("event") == name
                        and (where is None or where(e))]
                if len(hits) >= count:
                    return hits[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no {name} (x{count}) within {timeout}s; log:\n" + "".join(self.raw[-40:]))
                self._cond.wait(min(left, 0.5))

    wait_event = wait_for

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)

    def kill(self) -> int:
        import signal as _signal

        self.proc.send_signal(_signal.SIGKILL)
        return self.wait()

    def stop(self, timeout: float = 60) -> int:
        import signal as _signal

        if self.proc.poll() is None:
            self.proc.send_signal(_signal.SIGTERM)
        return self.wait(timeout)


class DaemonProcess(AgentProcess):
    """`gitops-agent run`."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(config, "run", env=env)
