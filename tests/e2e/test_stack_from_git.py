"""End-to-end: the compose project itself from git (``compose.from_repo``), on the real
engine, registry, compose and git: files and digests of one revision, only what changed is
touched, the admin's files are never lost, a failed release returns files and containers."""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Harness

FROM_REPO = 'from_repo = ["compose.yml", "conf/"]'


def compose_text(h: Harness, *, web_env: str = "web from git", extra_services: str = "",
                 api_image: str | None = None) -> str:
    side = f"{h.reg}/e2e/side@{h.images['side']}"
    return textwrap.dedent(f"""\
        services:
          web:
            image: {h.reg}/e2e/web:latest
            restart: unless-stopped
            stop_grace_period: 1s
            environment:
              VERSION_TEXT: "{web_env}"
              LOCAL_GREETING: "${{GREETING:-unset}}"
            volumes:
              - ./data:/data
              - webdata:/named
          api:
            image: {api_image or f"{h.reg}/e2e/api:latest"}
            restart: unless-stopped
            stop_grace_period: 1s
          side:
            image: {side}
            restart: unless-stopped
            stop_grace_period: 1s
        volumes:
          webdata:
        """).replace("\nvolumes:", "\n" + textwrap.indent(extra_services, "  ") + "volumes:")


@pytest.fixture
def stack(harness: Harness) -> Iterator[Harness]:
    """The harness's project with compose.yml from git, the server's copy gone. Torn down
    by project name (project_dir may hold no compose.yml if a test stopped early)."""
    cfg = harness.project.config_path.read_text()
    line = f'project_name = "{harness.project.name}"'
    harness.project.config_path.write_text(cfg.replace(line, f"{line}\n{FROM_REPO}", 1))
    (harness.project.project_dir / "compose.yml").unlink()
    harness.project.repo.commit_file("compose.yml", compose_text(harness), "compose")
    harness.project.repo.commit_file("conf/app.conf", "level=info\n", "conf")
    yield harness
    subprocess.run([*harness.compose_cmd, "--project-name", harness.project.name, "down",
                    "--volumes", "--timeout", "1", "--remove-orphans"],
                   capture_output=True, check=False, timeout=120)


def commit_compose(h: Harness, text: str, message: str = "compose change") -> str:
    return h.project.repo.commit_file("compose.yml", text, message)


def env_of(h: Harness, service: str) -> dict[str, str]:
    cs = [c for c in h.containers(service) if c.status == "running"]
    assert len(cs) == 1, cs
    return dict(e.split("=", 1) for e in cs[0].attrs["Config"]["Env"])


def first_deploy(h: Harness) -> str:
    rev = h.release(web="web-v1", api="api-v1")
    r = h.sync()
    assert r.code == 0, "\n".join(map(str, r.logs))
    assert r.summary()["outcome"] == "applied"
    return rev


def files_of(project_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(project_dir)): p.read_text()
            for p in sorted(project_dir.rglob("*")) if p.is_file()}


def test_first_revision_writes_files_from_git_and_runs_them(stack):
    rev = first_deploy(stack)
    pd = stack.project.project_dir
    assert (pd / "compose.yml").read_text() == compose_text(stack)
    assert (pd / "conf" / "app.conf").read_text() == "level=info\n"
    assert stack.serve("web") == "web from git"
    assert len(stack.containers("side")) == 1
    written = stack.project.state_dir / "stack" / "current.json"
    assert rev in written.read_text() and "conf/app.conf" in written.read_text()


def test_env_change_recreates_only_its_service_and_idle_pass_writes_nothing(stack):
    first_deploy(stack)
    pd = stack.project.project_dir
    (pd / "data").mkdir(exist_ok=True)
    web = [c for c in stack.containers("web") if c.status == "running"][0]
    assert web.exec_run(["sh", "-c", "echo kept > /data/mark"])[0] == 0
    before = stack.container_ids()
    commit_compose(stack, compose_text(stack, web_env="web blue"))
    r = stack.sync()
    assert r.code == 0, r.logs
    assert r.summary()["outcome"] == "applied"
    assert r.find("agent.diff")[0]["config_changed"] == ["web"]
    after = stack.container_ids()
    assert after["web"] != before["web"], r.logs
    assert after["api"] == before["api"] and after["side"] == before["side"]
    assert stack.serve("web") == "web blue"
    # a relative bind mount resolves in project_dir: its data is there across revisions
    web = [c for c in stack.containers("web") if c.status == "running"][0]
    assert web.exec_run(["cat", "/data/mark"])[1].decode().strip() == "kept"
    assert (pd / "data" / "mark").read_text().strip() == "kept"
    # idle: nothing recreated, no file in project_dir or state_dir/stack rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in [*pd.rglob("*"),
                                                 *(stack.project.state_dir / "stack").rglob("*")]}
    r = stack.sync()
    assert r.code == 0 and r.summary()["outcome"] == "no-op", r.logs
    assert stack.container_ids() == after
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert "agent.stack.written" not in r.events()


def test_local_env_file_survives_and_is_used(stack):
    pd = stack.project.project_dir
    pd.mkdir(parents=True, exist_ok=True)
    (pd / ".env").write_text("GREETING=hello-local\n")
    first_deploy(stack)
    assert env_of(stack, "web")["LOCAL_GREETING"] == "hello-local"
    commit_compose(stack, compose_text(stack, web_env="web blue"))
    assert stack.sync().code == 0
    assert (pd / ".env").read_text() == "GREETING=hello-local\n"
    assert env_of(stack, "web")["LOCAL_GREETING"] == "hello-local"


def test_new_service_starts_and_removed_service_goes_with_its_volume_kept(stack):
    first_deploy(stack)
    extra = textwrap.dedent(f"""\
        worker:
          image: {stack.reg}/e2e/api:latest
          restart: unless-stopped
          stop_grace_period: 1s
          volumes:
            - workerdata:/w
        """)
    text = compose_text(stack, extra_services=extra).replace(
        "volumes:\n  webdata:\n", "volumes:\n  webdata:\n  workerdata:\n")
    commit_compose(stack, text)
    before = stack.container_ids()
    stack.commit(stack.project.repo.work.joinpath("desired-state.yml").read_text()
                 + f"  worker:\n    image: {stack.image('api')}\n"
                   f"    digest: {stack.images['api-v2']}\n")
    r = stack.sync()
    assert r.code == 0, r.logs
    assert [c for c in stack.containers("worker") if c.status == "running"]
    assert stack.container_ids() == before  # web, api, side untouched
    volume = f"{stack.project.name}_workerdata"
    assert stack.client.volumes.get(volume)
    # the worker goes from compose and desired-state: stopped, removed, its volume kept
    commit_compose(stack, compose_text(stack))
    first = stack.project.repo.work.joinpath("desired-state.yml").read_text()
    stack.commit(first.split("  worker:")[0])
    r = stack.sync()
    assert r.code == 0, r.logs
    assert r.find("agent.stack.removing")[0]["services"] == ["worker"]
    assert stack.containers("worker") == []
    assert stack.client.volumes.get(volume)
    assert stack.container_ids() == before


def test_bad_config_change_rolls_back_files_and_containers(stack):
    first_deploy(stack)
    pd = stack.project.project_dir
    good = files_of(pd)
    before = stack.container_ids()
    bad_text = compose_text(stack, web_env="web broken").replace(
        'LOCAL_GREETING:', 'NO_HEALTH: "1"\n      LOCAL_GREETING:')
    bad = commit_compose(stack, bad_text, "break health")
    stack.project.repo.commit_file("conf/extra.conf", "x=1\n", "extra conf")
    r = stack.sync()
    assert r.code == 1, r.logs
    assert r.summary()["outcome"] == "rolled-back"
    assert files_of(pd) == good  # compose.yml back, conf/extra.conf gone again
    assert stack.serve("web") == "web from git"
    after = stack.container_ids()
    assert after["api"] == before["api"] and after["side"] == before["side"]
    head = stack.state()["last_attempted"]["revision"]
    assert head in stack.state()["failed_revisions"]
    assert bad != head  # the conf commit came after: the head failed, marked as such
    # the failed revision is not retried: files and containers stay where they are
    ids = stack.container_ids()
    r = stack.sync()
    assert r.summary()["outcome"] == "skipped", r.logs
    assert files_of(pd) == good and stack.container_ids() == ids


def test_clash_with_a_local_file_is_refused_and_nothing_touched(stack):
    first_deploy(stack)
    pd = stack.project.project_dir
    (pd / "conf" / "local.conf").write_text("admin's own\n")
    stack.project.repo.commit_file("conf/local.conf", "from git\n", "clash")
    commit_compose(stack, compose_text(stack, web_env="web blue"))
    before, files = stack.container_ids(), files_of(pd)
    r = stack.sync()
    assert r.code == 2, r.logs
    assert "conf/local.conf" in r.summary()["reason"]
    assert files_of(pd) == files and stack.container_ids() == before


def test_invalid_compose_in_git_is_refused_and_nothing_touched(stack):
    first_deploy(stack)
    pd = stack.project.project_dir
    before, files = stack.container_ids(), files_of(pd)
    commit_compose(stack, "services:\n  web:\n    image: [not, a, string\n")
    r = stack.sync()
    assert r.code == 2, r.logs
    assert r.summary()["outcome"] == "invalid"
    assert files_of(pd) == files and stack.container_ids() == before
    assert not any("staging" in str(p) for p in pd.rglob("*"))


def test_image_outside_the_allowlist_in_the_compose_files_is_refused(stack):
    cfg = stack.project.config_path.read_text()
    stack.project.config_path.write_text(
        cfg + f'\n[trust]\nallowed_images = ["{stack.reg}/e2e/"]\n')
    first_deploy(stack)
    pd = stack.project.project_dir
    before, files = stack.container_ids(), files_of(pd)
    commit_compose(stack, compose_text(stack, extra_services=(
        "miner:\n  image: evil.example/miner:latest\n")))
    r = stack.sync()
    assert r.code == 2, r.logs
    assert "evil.example/miner" in r.summary()["reason"]
    assert files_of(pd) == files and stack.container_ids() == before


def test_hand_edit_of_an_agent_written_file_is_corrected(stack):
    first_deploy(stack)
    pd = stack.project.project_dir
    before = stack.container_ids()
    (pd / "compose.yml").write_text(compose_text(stack, web_env="edited on the server"))
    (pd / "conf" / "app.conf").write_text("level=debug\n")
    r = stack.sync()
    assert r.code == 0, r.logs
    assert sorted(r.find("agent.drift.corrected")[0]["files"]) == ["compose.yml",
                                                                  "conf/app.conf"]
    assert (pd / "compose.yml").read_text() == compose_text(stack)
    assert (pd / "conf" / "app.conf").read_text() == "level=info\n"
    assert stack.container_ids() == before  # the running config was git's all along
    assert stack.serve("web") == "web from git"


@pytest.mark.parametrize("point", ["during-files", "after-files", "during-apply",
                                   "during-health", "after-rollback-files"])
def test_kill_at_each_phase_converges_on_one_revision(stack, point):
    first_deploy(stack)
    pd = stack.project.project_dir
    good = files_of(pd)
    stack.project.repo.commit_file("conf/app.conf", "level=warn\n", "conf")
    bad = point == "after-rollback-files"
    text = compose_text(stack, web_env="web blue")
    if bad:
        text = text.replace('LOCAL_GREETING:', 'NO_HEALTH: "1"\n      LOCAL_GREETING:')
    commit_compose(stack, text)
    p = stack.cli_subprocess("sync", env={"GITOPS_AGENT_FAILPOINTS": point})
    assert p.returncode == -9, p.stderr[-2000:]
    r = stack.sync()
    if bad:
        assert r.code in (0, 1), r.logs
        assert files_of(pd) == good
        assert stack.serve("web") == "web from git"
    else:
        assert r.code == 0, r.logs
        assert r.summary()["outcome"] == "applied"
        assert (pd / "conf" / "app.conf").read_text() == "level=warn\n"
        assert (pd / "compose.yml").read_text() == text
        assert stack.serve("web") == "web blue"
    assert stack.state()["in_flight"] is None
    assert not (stack.project.state_dir / "stack" / "intent.json").exists()
    again = stack.sync()
    assert again.summary()["outcome"] in ("no-op", "skipped"), again.logs


def test_diff_lists_config_keys_and_status_shows_the_files_revision(stack, capsys):
    rev = first_deploy(stack)
    capsys.readouterr()
    text = compose_text(stack, web_env="web blue").replace(
        "    restart: unless-stopped\n    stop_grace_period: 1s\n  side:",
        "    restart: unless-stopped\n    stop_grace_period: 1s\n"
        "    labels:\n      tier: backend\n  side:")
    commit_compose(stack, text)
    before = files_of(stack.project.project_dir)
    r = stack.cli("diff")
    assert r.code == 0, r.logs
    out = capsys.readouterr().out
    assert "~ web: config: environment" in out
    assert "~ api: config: labels" in out
    assert "> compose.yml: written from git" in out
    assert files_of(stack.project.project_dir) == before  # diff changes nothing
    assert stack.cli("status", "--json").code == 0
    view = json.loads(capsys.readouterr().out)
    assert view["files_revision"] == rev
    assert {s["service"]: s["config_matches"] for s in view["services"]} == {
        "web": True, "api": True}


def test_a_new_service_of_a_failed_release_is_removed_with_its_files(stack):
    first_deploy(stack)
    pd = stack.project.project_dir
    good = files_of(pd)
    extra = (f"worker:\n  image: {stack.reg}/e2e/web:latest\n"
             "  environment:\n    NO_HEALTH: \"1\"\n")
    commit_compose(stack, compose_text(stack, extra_services=extra))
    stack.commit(stack.project.repo.work.joinpath("desired-state.yml").read_text()
                 + f"  worker:\n    image: {stack.image('web')}\n"
                   f"    digest: {stack.images['web-v1']}\n")
    r = stack.sync()
    assert r.code == 1 and r.summary()["outcome"] == "rolled-back", r.logs
    assert stack.containers("worker") == []
    assert files_of(pd) == good
    assert stack.serve("web") == "web from git"


def test_a_hand_edit_rolled_out_by_hand_is_corrected_and_its_service_recreated(stack):
    first_deploy(stack)
    pd = stack.project.project_dir
    before = stack.container_ids()
    (pd / "compose.yml").write_text(compose_text(stack, web_env="edited on the server"))
    # someone ran compose by hand with the edit (the agent's pins in the override)
    override = stack.project.state_dir / "compose.override.gitops-agent.json"
    subprocess.run([*stack.compose_cmd, "--project-name", stack.project.name,
                    "--project-directory", str(pd), "--file", str(pd / "compose.yml"),
                    "--file", str(override), "up", "-d", "--no-deps", "--", "web"],
                   check=True, capture_output=True, timeout=120)
    assert stack.serve("web") == "edited on the server"
    r = stack.sync()
    assert r.code == 0, r.logs
    assert r.find("agent.drift.corrected")[0]["files"] == ["compose.yml"]
    assert r.find("agent.diff")[0]["config_changed"] == ["web"]
    assert stack.serve("web") == "web from git"
    after = stack.container_ids()
    assert after["api"] == before["api"] and after["side"] == before["side"]


# ---------------------------------------------------------------- real stacks' file kinds
def with_env_file_and_config(text: str) -> str:
    """web reads an env_file and a bind-mounted config file from git; api and side read
    neither."""
    return text.replace(
        "    volumes:\n      - ./data:/data\n",
        "    env_file: [conf/app.env]\n"
        "    volumes:\n      - ./data:/data\n      - ./conf/app.conf:/etc/app.conf:ro\n", 1)


def running(h: Harness, service: str):
    cs = [c for c in h.containers(service) if c.status == "running"]
    assert len(cs) == 1, cs
    return cs[0]


def test_first_release_with_an_env_file_and_config_from_the_same_revision_runs_them(stack):
    commit_compose(stack, with_env_file_and_config(compose_text(stack)))
    stack.project.repo.commit_file("conf/app.env", "APP_MODE=from-env-file\n", "env")
    first_deploy(stack)
    assert env_of(stack, "web")["APP_MODE"] == "from-env-file"
    assert running(stack, "web").exec_run(["cat", "/etc/app.conf"])[1] == b"level=info\n"
    # the next revisions validate too (it failed for every later revision)
    commit_compose(stack, with_env_file_and_config(compose_text(stack, web_env="web blue")))
    r = stack.sync()
    assert r.code == 0 and r.summary()["outcome"] == "applied", r.logs
    assert stack.serve("web") == "web blue"


def test_a_changed_env_file_recreates_exactly_its_services_and_diff_names_it(stack, capsys):
    commit_compose(stack, with_env_file_and_config(compose_text(stack)))
    stack.project.repo.commit_file("conf/app.env", "APP_MODE=one\n", "env")
    first_deploy(stack)
    before = stack.container_ids()
    stack.project.repo.commit_file("conf/app.env", "APP_MODE=two\n", "env two")
    capsys.readouterr()
    assert stack.cli("diff").code == 0
    assert "~ web: config: conf/app.env" in capsys.readouterr().out
    r = stack.sync()
    assert r.code == 0 and r.summary()["outcome"] == "applied", r.logs
    assert r.find("agent.diff")[0]["config_changed"] == ["web"]
    assert "conf/app.env" in r.find("agent.diff")[0]["because"]["web"]
    after = stack.container_ids()
    assert after["web"] != before["web"]
    assert after["api"] == before["api"] and after["side"] == before["side"]
    assert env_of(stack, "web")["APP_MODE"] == "two"
    capsys.readouterr()
    assert stack.cli("status").code == 0
    assert "last release changed: web: config (conf/app.env" in capsys.readouterr().out
    assert stack.sync().summary()["outcome"] == "no-op"
    assert stack.container_ids() == after


def test_a_changed_bind_mounted_config_file_recreates_exactly_its_service(stack):
    commit_compose(stack, with_env_file_and_config(compose_text(stack)))
    stack.project.repo.commit_file("conf/app.env", "APP_MODE=one\n", "env")
    first_deploy(stack)
    before = stack.container_ids()
    stack.project.repo.commit_file("conf/app.conf", "level=debug\n", "debug logs")
    r = stack.sync()
    assert r.code == 0 and r.summary()["outcome"] == "applied", r.logs
    assert r.find("agent.diff")[0]["because"] == {"web": ["conf/app.conf"]}
    after = stack.container_ids()
    assert after["web"] != before["web"], r.logs
    assert after["api"] == before["api"] and after["side"] == before["side"]
    assert running(stack, "web").exec_run(["cat", "/etc/app.conf"])[1] == b"level=debug\n"
    idle = stack.sync()
    assert idle.summary()["outcome"] == "no-op", idle.logs
    assert stack.container_ids() == after


def test_an_unhealthy_config_file_change_rolls_back_the_file_and_the_container(stack):
    commit_compose(stack, with_env_file_and_config(compose_text(stack)))
    stack.project.repo.commit_file("conf/app.env", "APP_MODE=one\n", "env")
    first_deploy(stack)
    pd = stack.project.project_dir
    good = files_of(pd)
    stack.project.repo.commit_file("conf/app.env", "APP_MODE=one\nNO_HEALTH=1\n", "bad env")
    r = stack.sync()
    assert r.code == 1 and r.summary()["outcome"] == "rolled-back", r.logs
    assert files_of(pd) == good
    assert "NO_HEALTH" not in env_of(stack, "web")
    assert stack.serve("web") == "web from git"


def test_an_included_file_new_in_the_revision_is_checked_against_the_allowlist(stack):
    cfg = stack.project.config_path.read_text()
    stack.project.config_path.write_text(
        cfg + f'\n[trust]\nallowed_images = ["{stack.reg}/e2e/"]\n')
    first_deploy(stack)
    pd = stack.project.project_dir
    before, files = stack.container_ids(), files_of(pd)
    stack.project.repo.commit_file(
        "conf/extra.yml", "services:\n  miner:\n    image: evil.example/miner:latest\n",
        "an included file")
    commit_compose(stack, "include:\n  - conf/extra.yml\n" + compose_text(stack))
    r = stack.sync()
    assert r.code == 2, r.logs
    assert "evil.example/miner" in r.summary()["reason"]
    assert files_of(pd) == files and stack.container_ids() == before


def test_the_rollback_command_restores_the_releases_files_as_well_as_its_digests(stack):
    commit_compose(stack, with_env_file_and_config(compose_text(stack)))
    stack.project.repo.commit_file("conf/app.env", "APP_MODE=one\n", "env")
    good = first_deploy(stack)
    pd = stack.project.project_dir
    good_files = files_of(pd)
    stack.project.repo.commit_file("conf/app.conf", "level=debug\n", "debug")
    stack.project.repo.commit_file("conf/app.env", "APP_MODE=two\n", "env two")
    stack.release(web="web-v2", api="api-v1")
    r = stack.sync()
    assert r.code == 0 and r.summary()["outcome"] == "applied", r.logs
    assert env_of(stack, "web")["APP_MODE"] == "two"
    r = stack.cli("rollback")
    assert r.code == 0, r.logs
    assert files_of(pd) == good_files
    assert stack.running_digest("web") == stack.images["web-v1"]
    assert env_of(stack, "web")["APP_MODE"] == "one"
    assert running(stack, "web").exec_run(["cat", "/etc/app.conf"])[1] == b"level=info\n"
    assert stack.state()["last_applied"]["revision"] == good


# ---------------------------------------------------------------- the host's policy
def test_a_docker_socket_bind_from_git_is_refused_until_the_host_allows_it(stack):
    first_deploy(stack)
    pd = stack.project.project_dir
    before, files = stack.container_ids(), files_of(pd)
    proxy = (f"proxy:\n  image: {stack.reg}/e2e/side@{stack.images['side']}\n"
             "  stop_grace_period: 1s\n"
             "  volumes:\n    - /var/run/docker.sock:/var/run/docker.sock:ro\n"
             "  labels:\n    traefik.enable: \"true\"\n")
    commit_compose(stack, compose_text(stack, extra_services=proxy))
    r = stack.sync()
    assert r.code == 2, r.logs
    reason = r.summary()["reason"]
    assert "services.proxy.volumes" in reason and "/var/run/docker.sock" in reason
    assert "[compose.allow]" in reason
    assert files_of(pd) == files and stack.container_ids() == before
    cfg = stack.project.config_path.read_text()
    stack.project.config_path.write_text(
        cfg + '\n[compose.allow]\nbind_sources = ["/var/run/docker.sock"]\n')
    r = stack.sync()  # the same revision, judged again under the host's new policy
    assert r.code == 0, r.logs
    assert "/var/run/docker.sock" in (pd / "compose.yml").read_text(), r.logs
    assert len([c for c in stack.containers("proxy") if c.status == "running"]) == 1, r.logs


def test_privileged_from_git_is_refused_naming_service_and_key(stack):
    first_deploy(stack)
    before = stack.container_ids()
    commit_compose(stack, compose_text(stack, extra_services=(
        f"miner:\n  image: {stack.reg}/e2e/web:latest\n  privileged: true\n"
        "  pid: host\n")))
    r = stack.sync()
    assert r.code == 2, r.logs
    reason = r.summary()["reason"]
    assert "services.miner.privileged" in reason and "services.miner.pid" in reason
    assert stack.container_ids() == before


def test_an_env_file_outside_project_dir_is_refused_and_its_content_never_shown(stack):
    first_deploy(stack)
    pd = stack.project.project_dir
    host_file = stack.project.root / "host-secrets.env"
    host_file.write_text("DB_PASSWORD=hunter2-do-not-leak\n")
    before, files = stack.container_ids(), files_of(pd)
    commit_compose(stack, compose_text(stack).replace(
        "    volumes:\n      - ./data:/data\n",
        f"    env_file: [{host_file}]\n    volumes:\n      - ./data:/data\n", 1))
    r = stack.sync()
    assert r.code == 2, r.logs
    assert str(host_file) in r.summary()["reason"]
    assert "hunter2" not in json.dumps(r.logs)
    assert "hunter2" not in (stack.project.state_dir / "state.json").read_text()
    assert files_of(pd) == files and stack.container_ids() == before
