"""End-to-end: many stacks in one agent (``[[stack]]``) on the real engine, registry, compose
and git. One monorepo holds three stacks: ``infra`` (compose from git with an env_file and a
bind-mounted config), ``app`` (compose from git, ``depends_on = ["infra"]``) and ``tools``
(the server's own compose file). One fetch per round serves them all; a commit to one
stack's folder touches nothing elsewhere; a stack that rolls back holds its dependents and
spares the others; each stack keeps its own state and is addressed with ``--stack``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import rig
from harness import DaemonProcess, SyncResult
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from agent.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[2]
STACKS = ("infra", "app", "tools")


@dataclass
class Monorepo:
    root: Path
    reg: str
    images: dict[str, str]
    client: docker.DockerClient
    compose_cmd: list[str]
    repo: rig.GitRepo
    prefix: str

    @property
    def config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def project(self, stack: str) -> str:
        return f"{self.prefix}{stack}"

    def project_dir(self, stack: str) -> Path:
        return self.root / "srv" / stack

    def desired(self, stack: str, **digests: str) -> str:
        services = {svc: (f"{self.reg}/e2e/{key.split('-')[0]}", self.images[key])
                    for svc, key in digests.items()}
        return self.repo.commit_file(f"{stack}/desired-state.yml", rig.desired_yaml(services),
                                     f"{stack}: release")

    def cli(self, *args: str) -> SyncResult:
        # the stack each event belongs to is bound as a context variable
        with capture_logs(processors=[merge_contextvars]) as logs:
            code = cli_main(["--config", str(self.config), *args], configure_logging=False)
        return SyncResult(code, logs)

    def state(self, stack: str) -> dict[str, Any]:
        path = self.state_dir / "stacks" / stack / "state.json"
        return dict(json.loads(path.read_text()))

    def containers(self, stack: str, service: str) -> list[Any]:
        return self.client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project(stack)}",
            f"com.docker.compose.service={service}"]})

    def running_digest(self, stack: str, service: str) -> str | None:
        cs = [c for c in self.containers(stack, service) if c.status == "running"]
        if len(cs) != 1:
            return None
        ref = cs[0].attrs["Config"]["Image"]
        return ref.split("@", 1)[1] if "@" in ref else None

    def ids(self) -> dict[str, list[str]]:
        return {f"{st}/{svc}": sorted(c.id for c in self.containers(st, svc))
                for st, svc in (("infra", "web"), ("app", "api"), ("tools", "api"))}

    def down(self) -> None:
        for st in STACKS:
            subprocess.run([*self.compose_cmd, "--project-name", self.project(st), "down",
                            "--volumes", "--timeout", "1", "--remove-orphans"],
                           capture_output=True, check=False, timeout=120)


def write_monorepo(m: Monorepo) -> None:
    web, api = f"{m.reg}/e2e/web:latest", f"{m.reg}/e2e/api:latest"
    m.repo.commit_file("infra/compose.yml", textwrap.dedent(f"""\
        services:
          web:
            image: {web}
            restart: unless-stopped
            stop_grace_period: 1s
            env_file: [web.env]
            volumes:
              - ./conf/app.conf:/etc/app.conf:ro
        """), "infra compose")
    m.repo.commit_file("infra/web.env", "ROLE=proxy\n", "infra env")
    m.repo.commit_file("infra/conf/app.conf", "level=info\n", "infra conf")
    m.repo.commit_file("app/compose.yml", textwrap.dedent(f"""\
        services:
          api:
            image: {api}
            restart: unless-stopped
            stop_grace_period: 1s
        """), "app compose")
    for st in STACKS:
        m.project_dir(st).mkdir(parents=True)
    (m.project_dir("tools") / "compose.yml").write_text(textwrap.dedent(f"""\
        services:
          api:
            image: {api}
            restart: unless-stopped
            stop_grace_period: 1s
        """))
    m.config.write_text(textwrap.dedent(f"""\
        [agent]
        interval_seconds = 2
        jitter_seconds = 0
        health_timeout_seconds = 15
        settle_seconds = 1
        state_dir = "{m.state_dir}"
        stack_concurrency = 2

        [[repo]]
        name = "mono"
        repo = "{m.repo.origin}"
        branch = "main"

        [[stack]]
        name = "infra"
        repo = "mono"
        dir = "infra"  # infra/desired-state.yml; from_repo relative to infra/
        [stack.compose]
        project_dir = "{m.project_dir('infra')}"
        project_name = "{m.project('infra')}"
        from_repo = ["compose.yml", "web.env", "conf"]

        [[stack]]
        name = "app"
        repo = "mono"
        dir = "app"
        depends_on = ["infra"]
        health_timeout_seconds = 10
        [stack.compose]
        project_dir = "{m.project_dir('app')}"
        project_name = "{m.project('app')}"
        from_repo = ["compose.yml"]

        [[stack]]
        name = "tools"
        repo = "mono"
        path = "tools/desired-state.yml"
        [stack.compose]
        project_dir = "{m.project_dir('tools')}"
        project_name = "{m.project('tools')}"
        """))


@pytest.fixture
def mono(tmp_path: Path, registry: Any, images: dict[str, str],
         docker_client: docker.DockerClient, compose_cmd: list[str]) -> Iterator[Monorepo]:
    m = Monorepo(tmp_path, registry.host, images, docker_client, compose_cmd,
                 rig.GitRepo(tmp_path / "git").init(), f"ms{uuid.uuid4().hex[:6]}")
    write_monorepo(m)
    yield m
    m.down()


def first_release(m: Monorepo) -> str:
    m.desired("infra", web="web-v1")
    m.desired("app", api="api-v1")
    rev = m.desired("tools", api="api-v1")
    r = m.cli("sync")
    assert r.code == 0, "\n".join(map(str, r.logs))
    return rev


def test_three_stacks_from_one_repo_deploy_with_one_fetch_each_keeping_their_own_state(
        mono: Monorepo) -> None:
    rev = mono.desired("infra", web="web-v1")
    mono.desired("app", api="api-v1")
    rev = mono.desired("tools", api="api-v1")
    r = mono.cli("sync")
    assert r.code == 0, "\n".join(map(str, r.logs))
    assert len(r.find("agent.repo.fetched")) == 1  # one fetch for three stacks
    completed = {e["stack"]: e["outcome"] for e in r.find("agent.pass.completed")}
    assert completed == {"infra": "applied", "app": "applied", "tools": "applied"}
    assert mono.running_digest("infra", "web") == mono.images["web-v1"]
    assert mono.running_digest("app", "api") == mono.images["api-v1"]
    assert mono.running_digest("tools", "api") == mono.images["api-v1"]
    # each stack's own state, history and files; the env_file and bind-mounted config
    # written from git into infra's project_dir
    for st in STACKS:
        assert mono.state(st)["last_applied"]["revision"] == rev
    assert (mono.project_dir("infra") / "web.env").read_text() == "ROLE=proxy\n"
    web = [c for c in mono.containers("infra", "web") if c.status == "running"][0]
    assert "ROLE=proxy" in web.attrs["Config"]["Env"]
    code, out = web.exec_run(["cat", "/etc/app.conf"])
    assert (code, out.decode()) == (0, "level=info\n")
    assert not (mono.state_dir / "state.json").exists()  # nothing at the top but the lock
    assert (mono.state_dir / "repos" / "mono" / "source.git").is_dir()


def test_a_commit_to_one_stack_folder_recreates_and_revalidates_nothing_elsewhere(
        mono: Monorepo) -> None:
    first = first_release(mono)
    before = mono.ids()
    bumped = mono.desired("app", api="api-v2")
    r = mono.cli("sync")
    assert r.code == 0, "\n".join(map(str, r.logs))
    completed = {e["stack"]: e["outcome"] for e in r.find("agent.pass.completed")}
    assert completed == {"infra": "no-op", "app": "applied", "tools": "no-op"}
    after = mono.ids()
    assert after["infra/web"] == before["infra/web"]
    assert after["tools/api"] == before["tools/api"]
    assert after["app/api"] != before["app/api"]
    assert mono.running_digest("app", "api") == mono.images["api-v2"]
    # the untouched stacks' applied revision stays the last commit that changed their paths
    assert mono.state("infra")["last_attempted"]["revision"] == first
    assert mono.state("tools")["last_attempted"]["revision"] == first
    assert mono.state("app")["last_applied"]["revision"] == bumped
    assert {e["stack"] for e in r.find("agent.stack.unchanged")} == {"infra", "tools"}
    # infra's compose files were not re-read through compose (no validation of its files)
    assert not [e for e in r.find("agent.stack.files_written") if e.get("stack") == "infra"]


def test_a_stack_that_rolls_back_holds_its_dependents_and_spares_the_others(
        mono: Monorepo) -> None:
    first_release(mono)
    mono.desired("app", api="api-v2")
    mono.desired("tools", api="api-v2")
    bad = mono.desired("infra", web="web-bad")
    r = mono.cli("sync")
    assert r.code == 1, "\n".join(map(str, r.logs))
    completed = {e["stack"]: e for e in r.find("agent.pass.completed")}
    assert completed["infra"]["outcome"] == "rolled-back"
    assert completed["tools"]["outcome"] == "applied"
    assert completed["app"]["outcome"] == "waiting"
    assert mono.running_digest("infra", "web") == mono.images["web-v1"]  # reverted
    assert mono.running_digest("tools", "api") == mono.images["api-v2"]  # not delayed
    assert mono.running_digest("app", "api") == mono.images["api-v1"]  # held, says why
    reason = mono.state("app")["last_attempted"]["reason"]
    assert reason.startswith("waiting for stack infra: its last pass ended rolled-back at "
                             + bad[:12]), reason
    st = mono.cli("status", "--stack", "app")
    assert st.code in (0, 1)
    # infra fixed: infra applies, then app follows in the same round
    mono.desired("infra", web="web-v2")
    r = mono.cli("sync")
    assert r.code == 0, "\n".join(map(str, r.logs))
    completed = {e["stack"]: e["outcome"] for e in r.find("agent.pass.completed")}
    assert completed == {"infra": "applied", "app": "applied", "tools": "no-op"}
    assert mono.running_digest("app", "api") == mono.images["api-v2"]


def test_commands_take_stack_and_an_unknown_stack_is_a_config_error(
        mono: Monorepo, capsys: pytest.CaptureFixture[str]) -> None:
    first_release(mono)
    capsys.readouterr()
    r = mono.cli("status", "--json")
    doc = json.loads(capsys.readouterr().out)
    assert r.code == 0 and doc["kind"] == "stacks" and doc["exit_code"] == 0
    assert [s["stack"] for s in doc["stacks"]] == list(STACKS)
    assert all(s["kind"] == "status" for s in doc["stacks"])
    r = mono.cli("history", "--stack", "tools")
    out = capsys.readouterr().out
    assert r.code == 0 and "applied" in out and "== stack" not in out
    r = mono.cli("status")
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("== stack")] == [
        "== stack infra ==", "== stack app ==", "== stack tools =="]
    r = mono.cli("status", "--stack", "nope")
    err = capsys.readouterr().err
    assert r.code == 2
    assert err.strip() == ("gitops-agent: --stack: no stack named 'nope' in the config "
                           "(stacks: infra, app, tools)")
    r = mono.cli("rollback")
    assert r.code == 2 and "name it with --stack NAME" in capsys.readouterr().err
    # freeze one stack: only that stack holds a new release
    assert mono.cli("freeze", "--stack", "tools", "--reason", "audit").code == 0
    mono.desired("tools", api="api-v2")
    mono.desired("app", api="api-v2")
    r = mono.cli("sync")
    completed = {e["stack"]: e["outcome"] for e in r.find("agent.pass.completed")}
    assert completed["tools"] == "frozen" and completed["app"] == "applied"
    assert mono.running_digest("tools", "api") == mono.images["api-v1"]


def test_the_daemon_runs_every_stack_under_one_lock(mono: Monorepo) -> None:
    mono.desired("infra", web="web-v1")
    mono.desired("app", api="api-v1")
    mono.desired("tools", api="api-v1")
    d = DaemonProcess(mono.config)
    try:
        for st in STACKS:
            d.wait_for("agent.pass.completed", timeout=120,
                       where=lambda e, st=st: e.get("stack") == st
                       and e.get("outcome") == "applied")
        # one lock for the agent: a one-off sync refuses while the daemon runs
        r = mono.cli("sync", "--stack", "tools")
        assert r.code == 4
        # the next rounds: one fetch each, every stack idle
        n = len(d.events("agent.repo.fetched"))
        d.wait_for("agent.repo.fetched", timeout=30, count=n + 2)
        rounds = d.events("agent.repo.fetched")[n:n + 2]
        assert len({e["round"] for e in rounds}) == 2
    finally:
        assert d.stop() == 0
    assert mono.running_digest("app", "api") == mono.images["api-v1"]


# ------------------------------------------------------------------ reporting, webhook
def test_each_stack_reports_under_its_own_status_context_metrics_label_and_name(
        mono: Monorepo) -> None:
    from github_server import FakeGitHub
    from notify_receiver import NotifyReceiver
    from prometheus_client.parser import text_string_to_metric_families

    token = mono.root / "status-token"
    token.write_text("ghs_stacks_token\n")
    token.chmod(0o600)
    textfile = mono.root / "agent.prom"
    with FakeGitHub(repo="acme/ops", token="ghs_stacks_token") as gh, NotifyReceiver() as rx:
        cfg = mono.config.read_text().replace(
            "stack_concurrency = 2\n", 'stack_concurrency = 2\nhost = "prod-1"\n', 1)
        mono.config.write_text(cfg + textwrap.dedent(f"""\

            [report.github]
            repo = "acme/ops"
            api_url = "{gh.api_url}"
            token_file = "{token}"
            timeout_seconds = 2

            [metrics]
            textfile = "{textfile}"

            [notify]
            urls = ["{rx.url}"]
            on = ["rolled-back"]
            """))
        first = first_release(mono)
        mono.desired("tools", api="api-v2")
        bad = mono.desired("infra", web="web-bad")
        gh.known_commit(first)
        gh.known_commit(bad)
        r = mono.cli("sync")
        assert r.code == 1, "\n".join(map(str, r.logs))
        by_context = {s["context"]: s["state"] for s in gh.statuses_for(bad)}
        assert by_context == {"deploy/prod-1/infra": "failure",
                              "deploy/prod-1/tools": "success"}
        [msg] = rx.wait_for(1)
        assert msg["title"] == f"prod-1/infra: rolled back {bad[:12]}"
        assert "stack: infra" in msg["message"]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(textfile.read_text())
               for s in fam.samples}
    assert samples[("gitops_agent_releases_total",
                    (("outcome", "rolled-back"), ("stack", "infra")))] == 1
    assert samples[("gitops_agent_releases_total",
                    (("outcome", "rolled-back"), ("stack", "tools")))] == 0
    assert samples[("gitops_agent_releases_total",  # the first release and this one
                    (("outcome", "applied"), ("stack", "tools")))] == 2


def test_rollback_of_one_stack_is_asked_of_the_running_daemon(mono: Monorepo) -> None:
    first_release(mono)
    mono.desired("app", api="api-v2")
    d = DaemonProcess(mono.config)
    try:
        d.wait_for("agent.pass.completed", timeout=120,
                   where=lambda e: e.get("stack") == "app" and e.get("outcome") == "applied")
        assert mono.running_digest("app", "api") == mono.images["api-v2"]
        p = subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(mono.config), "rollback",
             "--stack", "app"], capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "asking it to roll back" in p.stdout
        assert mono.running_digest("app", "api") == mono.images["api-v1"]
        assert mono.running_digest("infra", "web") == mono.images["web-v1"]  # untouched
        # that stack is frozen after its rollback, the others are not
        assert (mono.state_dir / "stacks" / "app" / "freeze.json").exists()
        assert not (mono.state_dir / "stacks" / "infra" / "freeze.json").exists()
    finally:
        assert d.stop() == 0


def test_a_signed_push_to_either_repository_starts_a_round(mono: Monorepo) -> None:
    import hashlib
    import hmac
    import http.client

    secret = mono.root / "webhook.secret"
    secret.write_text("stacks-webhook-secret\n")
    secret.chmod(0o600)
    other = rig.GitRepo(mono.root / "git2").init()
    port = rig.free_port()
    cfg = mono.config.read_text().replace("interval_seconds = 2", "interval_seconds = 3600")
    # tools moves to a repository of its own
    cfg = cfg.replace('name = "tools"\nrepo = "mono"\npath = "tools/desired-state.yml"\n',
                      f'name = "tools"\npath = "tools/desired-state.yml"\n'
                      f'[stack.source]\nrepo = "{other.origin}"\n')
    mono.config.write_text(cfg + f'\n[webhook]\nlisten = "127.0.0.1:{port}"\n'
                           f'secret_file = "{secret}"\nkind = "github"\n')
    mono.desired("infra", web="web-v1")
    mono.desired("app", api="api-v1")
    other.commit_file("tools/desired-state.yml", rig.desired_yaml(
        {"api": (f"{mono.reg}/e2e/api", mono.images["api-v1"])}), "tools v1")
    d = DaemonProcess(mono.config)
    try:
        d.wait_for("agent.pass.completed", timeout=120, count=3)
        d.wait_for("agent.webhook.listening")
        rev = other.commit_file("tools/desired-state.yml", rig.desired_yaml(
            {"api": (f"{mono.reg}/e2e/api", mono.images["api-v2"])}), "tools v2")
        body = json.dumps({"ref": "refs/heads/main",
                           "repository": {"clone_url": str(other.origin)}}).encode()
        sig = "sha256=" + hmac.new(b"stacks-webhook-secret", body, hashlib.sha256).hexdigest()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/", body=body, headers={"X-GitHub-Event": "push",
                                                  "X-Hub-Signature-256": sig})
        assert c.getresponse().status == 202
        c.close()
        d.wait_for("agent.pass.completed", timeout=60,
                   where=lambda e: e.get("stack") == "tools" and e.get("revision") == rev
                   and e.get("outcome") == "applied")
        assert mono.running_digest("tools", "api") == mono.images["api-v2"]
    finally:
        assert d.stop() == 0
