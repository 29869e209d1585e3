#!/usr/bin/env python3
"""`make demo`: the whole release lifecycle of gitops-agent, on this machine.

An embedded default, no GitHub and no internet registry: a local git repo plays the GitHub
repo, a registry runs on 127.0.0.1, and a small compose stack (a `hello` web service, an
`api` service and an HAProxy front proxy) runs on the local Docker engine. The agent runs
as the real daemon (`gitops-agent run`) in the background; the demo only makes commits —
through scripts/release-local, as the release workflow would — and waits for the agent.

Everything is cleaned up on exit, Ctrl-C included, so it can run twice in a row.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import proxy  # noqa: E402
import rig  # noqa: E402
from github_server import FakeGitHub  # noqa: E402
from harness import DaemonProcess  # noqa: E402

BOLD = "\033[1m" if sys.stdout.isatty() else ""
DIM = "\033[2m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""
T0 = time.monotonic()

SHOWN_EVENTS = {
    "agent.diff", "agent.pull.started", "agent.pull.done", "agent.apply.started",
    "agent.apply.start_first", "agent.apply.retiring", "agent.apply.handover",
    "agent.health.healthy", "agent.health.failed", "agent.health.timeout",
    "agent.release.failed", "agent.rollback.start_first", "agent.rollback.started",
    "agent.rollback.done", "agent.pass.completed", "agent.fetch.revision_went_backwards",
    "agent.stack.written", "agent.drift.corrected",
}


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, title: str) -> None:
    say()
    say(f"{BOLD}[{time.monotonic() - T0:5.1f}s] Step {n}: {title}{RESET}")


def short(d: str | None) -> str:
    return "none" if not d else d.removeprefix("sha256:")[:12]


def describe(e: dict[str, Any]) -> str:
    name = e["event"].removeprefix("agent.")
    keep = []
    for k in ("service", "services", "changes", "config_changed", "written", "outcome", "revision", "reason", "container",
              "scale", "seconds", "digest", "changed", "duration_seconds"):
        if k in e and e[k] not in (None, [], {}):
            v = e[k]
            if k in ("digest", "revision") and isinstance(v, str):
                v = short(v)
            keep.append(f"{k}={v}")
    return f"  {DIM}agent ▸{RESET} {name:<22} {' '.join(keep)}"


class Demo:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gitops-demo-"))
        self.client = rig.docker_client()
        self.compose_cmd = self._compose_cmd()
        self.registry: rig.Registry | None = None
        self.daemon: DaemonProcess | None = None
        self.project = f"gitopsdemo{os.getpid()}"
        self.seen = 0
        self.contexts: dict[str, Path] = {}
        self.github: FakeGitHub | None = None

    @staticmethod
    def _compose_cmd() -> list[str]:
        from agent.edges.compose import find_compose_command

        return find_compose_command()

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        say(f"{BOLD}gitops-agent demo{RESET}  (work dir {self.root})")
        self.registry = rig.Registry(port=rig.free_port(), workdir=self.root / "registry").start()
        say(f"  registry       http://{self.registry.host}  (plays ghcr.io)")
        self.repo = rig.GitRepo(self.root / "git").init()
        self.initial = self.repo.commit_file("desired-state.yml", textwrap.dedent("""\
            # desired-state.yml — what the servers run. Written by the release workflow
            # (scripts/release-local here); edit by hand to pin.
            version: 1
            services: {}
            """), "initial desired state")
        say(f"  git repo       {self.repo.work}  (plays the GitHub repo)")
        ctx = self.root / "ctx"
        self.contexts = {
            "hello-v1": rig.build_context(ctx / "hello-v1", "healthy", "hello from v1"),
            "hello-v2": rig.build_context(ctx / "hello-v2", "healthy", "hello from v2"),
            "hello-v3": rig.build_context(ctx / "hello-v3", "unhealthy", "hello from v3 (broken)"),
            "api-v1": rig.build_context(ctx / "api-v1", "nohealth", "api v1"),
        }
        proxy.build_proxy_image(self.client, self.root)
        self.port = rig.free_port()
        srv = self.root / "srv"
        srv.mkdir()
        (srv / "haproxy.cfg").write_text(proxy.HAPROXY_CFG.format(service="hello"))
        prefix = f"{self.registry.host}/gitops-demo"
        # compose.yml lives in git too (compose.from_repo): the agent writes it into srv at
        # each revision; haproxy.cfg stays the server's own (never touched by the agent)
        self.initial = self.repo.commit_file("compose.yml", textwrap.dedent(f"""\
            services:
              hello:                      # managed: start-first (runs twice during a release)
                image: {prefix}/hello:latest
                restart: unless-stopped
                stop_grace_period: 3s
              api:                        # managed
                image: {prefix}/api:latest
                restart: unless-stopped
                stop_grace_period: 3s
            """) + proxy.proxy_service_yaml(self.port, srv / "haproxy.cfg"), "compose.yml")
        # a fake GitHub API on 127.0.0.1 receives the commit statuses
        self.github = FakeGitHub(repo="acme/shop").start()
        token = self.root / "status-token"
        token.write_text("demo-status-token\n")
        token.chmod(0o600)
        self.metrics_port = rig.free_port()
        self.config = self.root / "agent.toml"
        self.config.write_text(rig.agent_toml(
            repo=str(self.repo.work), project_dir=srv, project_name=self.project,
            state_dir=self.root / "state", interval=2, jitter=0.5, health_timeout=15,
            settle=1, handover=2).replace(
                f'project_name = "{self.project}"',
                f'project_name = "{self.project}"\nfrom_repo = ["compose.yml"]', 1)
            + textwrap.dedent(f"""\
            host = "demo-1"

            [report.github]
            repo = "acme/shop"
            api_url = "{self.github.api_url}"
            token_file = "{token}"

            [metrics]
            listen = "127.0.0.1:{self.metrics_port}"
            """))
        self.known(self.initial)
        say(f"  fake GitHub    {self.github.api_url}  (receives commit statuses)")
        say(f"  compose stack  hello + api + proxy on http://127.0.0.1:{self.port}/ "
            f"(project {self.project})")
        self.daemon = DaemonProcess(self.config)
        self.daemon.wait_for("agent.daemon.started", timeout=30)
        say(f"  agent          `gitops-agent run` started (pid {self.daemon.proc.pid}), "
            "polling every 2 s")

    # ------------------------------------------------------------------ helpers
    def release(self, tag: str, **services: str) -> str:
        assert self.registry is not None
        args = [sys.executable, str(ROOT / "scripts" / "release-local"),
                "--registry", self.registry.host, "--repo-dir", str(self.repo.work),
                "--tag", tag, "--gitops-agent", str(Path(sys.executable).parent / "gitops-agent")]
        for name, key in services.items():
            args += ["--service", f"{name}={self.contexts[key]}"]
        say(f"  $ scripts/release-local --tag {tag} "
            + " ".join(f"--service {n}=<{k}>" for n, k in services.items()))
        p = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"release-local failed: {p.stderr.strip().splitlines()[-1:]}")
        lines = p.stdout.strip().splitlines()
        for line in lines[:-1]:
            name, ref = line.split(" ", 1)
            say(f"    built + pushed {name}: {ref.split('@')[0]}@{short(ref.split('@')[1])}")
        commit = lines[-1].strip()
        self.known(commit)
        say(f"    bumped desired-state.yml, committed {commit[:12]}")
        return commit

    def known(self, revision: str) -> None:
        """The commit exists on "GitHub" too (the demo's repository lives on disk)."""
        if self.github is not None:
            self.github.known_commit(revision)

    def wait_pass(self, revision: str, timeout: float = 60) -> dict[str, Any]:
        """Narrate the agent's events until it finishes a pass at ``revision``."""
        assert self.daemon is not None
        deadline = time.monotonic() + timeout
        last_note = time.monotonic()
        start = time.monotonic()
        while time.monotonic() < deadline:
            lines = self.daemon.lines
            while self.seen < len(lines):
                e = lines[self.seen]
                self.seen += 1
                if e.get("event") not in SHOWN_EVENTS:
                    continue
                if e["event"] == "agent.diff" and not e.get("changes"):
                    continue
                if e["event"] == "agent.pass.completed" and e.get("outcome") == "no-op" \
                        and e.get("revision") != revision:
                    continue
                say(describe(e))
                if e["event"] == "agent.pass.completed" and e.get("revision") == revision \
                        and e.get("outcome") != "error":
                    return e
            if time.monotonic() - last_note > 4:
                say(f"  {DIM}… waiting for the agent ({time.monotonic() - start:.0f}s){RESET}")
                last_note = time.monotonic()
            time.sleep(0.2)
        raise RuntimeError(f"the agent did not finish a pass at {revision[:12]} in {timeout}s")

    def curl(self, label: str) -> str:
        import requests

        r = requests.get(f"http://127.0.0.1:{self.port}/", timeout=5)
        body = r.text.strip()
        say(f"  $ curl http://127.0.0.1:{self.port}/   ({label})")
        say(f"    {r.status_code} {body}")
        return body

    def container_ids(self, service: str) -> list[str]:
        return sorted(c.short_id for c in self.client.containers.list(filters={"label": [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={service}"]}))

    def agent_cli(self, *args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "agent", "--config", str(self.config), *args],
                           capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
        return p.stdout + (p.stderr if p.returncode else "")

    # ------------------------------------------------------------------ the story
    def run(self) -> None:
        self.setup()

        step(1, "release v1 — build, push, bump desired-state.yml, commit; the agent deploys it")
        rev = self.release("v1", hello="hello-v1", api="api-v1")
        done = self.wait_pass(rev)
        assert done["outcome"] == "applied", done
        proxy.wait_serving(f"http://127.0.0.1:{self.port}/", "hello from v1")
        self.curl("v1 serving")

        step(2, "release v2 of hello only — the agent rolls it out; api is not recreated")
        api_before = self.container_ids("api")
        self.curl("before")
        rev = self.release("v2", hello="hello-v2")
        with proxy.LoadClient(f"http://127.0.0.1:{self.port}/", rate=20) as load:
            done = self.wait_pass(rev)
            time.sleep(1)
        assert done["outcome"] == "applied", done
        self.curl("after")
        api_after = self.container_ids("api")
        say(f"  api container before {api_before} after {api_after}: "
            + ("untouched" if api_before == api_after else "RECREATED"))
        say(f"  during the rollout: {load.report.sent} requests through the proxy, "
            f"{load.report.failed} failed")
        assert api_before == api_after

        step(3, "a config-only change — an environment variable for api, merged as a PR "
                "would be; only api is recreated")
        hello_before = self.container_ids("hello")
        api_before = self.container_ids("api")
        text = (self.repo.work / "compose.yml").read_text().replace(
            "  api:                        # managed\n",
            "  api:                        # managed\n    environment:\n"
            "      LOG_LEVEL: debug\n", 1)
        rev = self.repo.commit_file("compose.yml", text, "api: LOG_LEVEL=debug")
        self.known(rev)
        say(f"  committed {rev[:12]}: compose.yml api.environment LOG_LEVEL=debug")
        done = self.wait_pass(rev)
        assert done["outcome"] == "applied", done
        hello_after, api_after = self.container_ids("hello"), self.container_ids("api")
        say(f"  hello container before {hello_before} after {hello_after}: "
            + ("untouched" if hello_before == hello_after else "RECREATED"))
        say(f"  api container before {api_before} after {api_after}: "
            + ("recreated" if api_before != api_after else "NOT recreated"))
        assert hello_before == hello_after and api_before != api_after
        env = self.client.containers.get(api_after[0]).attrs["Config"]["Env"]
        say(f"  api runs with LOG_LEVEL={'debug' if 'LOG_LEVEL=debug' in env else '?'}")
        assert "LOG_LEVEL=debug" in env

        step(4, "a broken v3 (fails its health check) — the agent rolls back on its own")
        rev = self.release("v3", hello="hello-v3")
        with proxy.LoadClient(f"http://127.0.0.1:{self.port}/", rate=20) as load:
            done = self.wait_pass(rev)
            time.sleep(1)
        assert done["outcome"] == "rolled-back", done
        body = self.curl("after the failed release")
        say(f"  during the failed release: {load.report.sent} requests, "
            f"{load.report.failed} failed, "
            f"{load.report.bodies.get('hello from v3 (broken)', 0)} served by the broken v3")
        assert body == "hello from v2"

        step(5, "pin hello to v1 by editing desired-state.yml by hand")
        path = self.repo.work / "desired-state.yml"
        text = path.read_text()
        v1 = self.first_digest_of("hello", "v1")
        text = re.sub(r"(  hello:\n(?:    .*\n)*?    digest: )sha256:[0-9a-f]{64}",
                      lambda m: m.group(1) + v1, text)
        text = re.sub(r"(  hello:\n)", r"\1    pinned: true   # held at v1 by hand\n", text)
        text = re.sub(r"(  hello:\n(?:    .*\n)*?    tag: )\S+", r"\1v1", text)
        rev = self.repo.commit_file("desired-state.yml", text, "pin hello to v1")
        self.known(rev)
        say(f"  committed {rev[:12]}: hello digest -> {short(v1)}, pinned: true")
        done = self.wait_pass(rev)
        assert done["outcome"] == "applied", done
        self.curl("pinned to v1")
        say("  the next release leaves the pinned service alone:")
        assert self.registry is not None
        p = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "release-local"), "--registry",
             self.registry.host, "--repo-dir", str(self.repo.work), "--tag", "v4",
             "--no-commit", "--gitops-agent", str(Path(sys.executable).parent / "gitops-agent"),
             "--service", f"hello={self.contexts['hello-v2']}"],
            capture_output=True, text=True, timeout=300, check=False)
        refusal = [ln for ln in p.stderr.splitlines() if "pinned" in ln]
        say(f"    release-local exit {p.returncode}: {refusal[-1].strip() if refusal else ''}")

        step(6, "what the agent did: `gitops-agent status` and `gitops-agent history`")
        say("  $ gitops-agent status")
        say(textwrap.indent(self.agent_cli("status").rstrip(), "    "))
        say("  $ gitops-agent history -n 6")
        say(textwrap.indent(self.agent_cli("history", "-n", "6").rstrip(), "    "))

        step(7, "what it reported: commit statuses on GitHub, and Prometheus metrics")
        self.show_reports()
        say()
        say(f"{BOLD}Demo finished in {time.monotonic() - T0:.0f}s.{RESET}")

    def show_reports(self) -> None:
        import requests

        assert self.github is not None
        time.sleep(1)  # the last pass's reports are sent just after it is logged
        say("  commit statuses posted (context deploy/demo-1), oldest first:")
        for s in self.github.statuses_for():
            say(f"    {s['sha'][:12]}  {s['state']:<8} {s['description']}")
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        say(f"  $ curl -s {url} | grep ^gitops_agent_   (trimmed)")
        text = requests.get(url, timeout=5).text
        shown = ("gitops_agent_passes_total", "gitops_agent_releases_total",
                 "gitops_agent_revision_info", "gitops_agent_failed_revision",
                 "gitops_agent_service_info", "gitops_agent_service_healthy",
                 "gitops_agent_pass_duration_seconds_count")
        for line in text.splitlines():
            if line.startswith(shown) and not line.endswith(" 0.0"):
                say(f"    {line}")

    def first_digest_of(self, service: str, tag: str) -> str:
        assert self.registry is not None
        import requests

        r = requests.head(
            f"http://{self.registry.host}/v2/gitops-demo/{service}/manifests/{tag}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            timeout=5)
        return r.headers["Docker-Content-Digest"]

    # ------------------------------------------------------------------ clean-up
    def cleanup(self) -> None:
        say(f"{DIM}cleaning up: agent, containers, registry, temp repo{RESET}")
        if self.daemon is not None:
            with contextlib.suppress(Exception):
                self.daemon.stop(timeout=60)
        with contextlib.suppress(Exception):
            subprocess.run([*self.compose_cmd, "--project-name", self.project, "down",
                            "--volumes", "--timeout", "1", "--remove-orphans"],
                           capture_output=True, timeout=120, check=False)
        if self.registry is not None:
            with contextlib.suppress(Exception):
                for img in self.client.images.list(name=f"{self.registry.host}/gitops-demo/*"):
                    self.client.images.remove(img.id, force=True)
            self.registry.stop()
        if self.github is not None:
            with contextlib.suppress(Exception):
                self.github.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> int:
    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C cleans up even when started from a non-interactive shell's background job,
    # which starts its children with SIGINT ignored (and Python then installs no handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    demo = Demo()
    try:
        demo.run()
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    except Exception as e:  # noqa: BLE001
        say(f"\ndemo failed: {e}")
        return 1
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
