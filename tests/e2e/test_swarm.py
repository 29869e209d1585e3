"""End-to-end: [engine] kind = "swarm" on a single-node swarm this module makes itself.

The swarm exists only while this module runs: ``docker swarm init`` when the engine is not in
a swarm, ``docker swarm leave --force`` afterwards (an engine found in a swarm is left so).
The ingress routing mesh does not answer on published ports on this machine, so the client
that counts failed requests runs in a container on the stack's attachable overlay network
and reaches the service by its name (Swarm's VIP), the way a sidecar proxy would.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rig
from harness import Harness

from agent.edges.swarm import STACK_LABEL

USER = "swarm-bot"
SECRET = "sw4rm-s3cret-do-not-log"


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          timeout=120)


def _swarm_state(client) -> str:  # type: ignore[no-untyped-def]
    return str(client.info()["Swarm"]["LocalNodeState"])


def _compose(registry: str, repo: str = "e2e/web", failure_action: str = "rollback",
             endpoint_mode: str = "dnsrr") -> str:
    return f"""\
services:
  web:
    image: {registry}/{repo}:latest
    deploy:
      replicas: 2
      endpoint_mode: {endpoint_mode}
      update_config:
        order: start-first
        failure_action: {failure_action}
        parallelism: 1
        delay: 0s
        monitor: 3s
      rollback_config:
        order: start-first
        parallelism: 0
        monitor: 1s
    networks: [front]
networks:
  front:
    driver: overlay
    attachable: true
"""


def _make(tmp_path: Path, registry, images, docker_client, compose_cmd,  # type: ignore[no-untyped-def]
          **kw: Any) -> Harness:
    text = kw.pop("compose_text", None) or _compose(registry.host, **kw)
    return Harness.create(tmp_path, registry.host, images, docker_client, compose_cmd,
                          name=f"sw{uuid.uuid4().hex[:8]}", compose_text=text,
                          health_timeout=60, extra_config='\n[engine]\nkind = "swarm"\n')


def _remove_stack(h: Harness) -> None:
    _docker("stack", "rm", h.project.name, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        nets = h.client.networks.list(filters={"label": f"{STACK_LABEL}={h.project.name}"})
        if not nets and not h.client.containers.list(
                all=True, filters={"label": f"{STACK_LABEL}={h.project.name}"}):
            return
        time.sleep(0.5)


def test_outside_a_swarm_the_agent_refuses_with_exit_4(tmp_path, registry, images,
                                                       docker_client, compose_cmd):
    # runs before the module's swarm exists (it is the first test and asks for no swarm)
    assert _swarm_state(docker_client) == "inactive", "the engine is already in a swarm"
    h = _make(tmp_path, registry, images, docker_client, compose_cmd)
    h.release(web="web-v1")
    r = h.sync()
    assert r.code == 4
    reason = r.summary()["reason"]
    assert "not in a swarm" in reason and "manager" in reason


@pytest.fixture(scope="module")
def swarm(docker_client) -> Iterator[None]:  # type: ignore[no-untyped-def]
    made = _swarm_state(docker_client) == "inactive"
    if made:
        _docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        yield
    finally:
        if made:
            _docker("swarm", "leave", "--force", check=False)


@pytest.fixture
def stack(swarm, tmp_path, registry, images, docker_client, compose_cmd):  # type: ignore[no-untyped-def]
    made: list[Harness] = []

    def make(**kw: Any) -> Harness:
        h = _make(tmp_path / f"s{len(made)}", registry, images, docker_client, compose_cmd,
                  **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        _remove_stack(h)


def _service(h: Harness) -> dict[str, Any]:
    return dict(h.client.api.inspect_service(f"{h.project.name}_web"))


def _spec_digest(h: Harness) -> str:
    return str(_service(h)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]).split("@")[1]


def _running_task_digests(h: Harness) -> list[str]:
    tasks = h.client.api.tasks(filters={"service": f"{h.project.name}_web",
                                        "desired-state": "running"})
    return sorted(t["Spec"]["ContainerSpec"]["Image"].split("@")[1] for t in tasks
                  if t["Status"]["State"] == "running")


CLIENT = r"""
ok=0; fail=0
while [ ! -e /tmp/stop ]; do
  r=$(timeout 2 bash -c 'exec 3<>/dev/tcp/web/8080 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>/dev/null)
  if [[ $r == *"200 OK"* && $r == *"web v"* ]]; then ok=$((ok+1)); else fail=$((fail+1)); fi
  echo "$ok $fail" > /tmp/count.new && mv /tmp/count.new /tmp/count
  sleep 0.05
done
echo done > /tmp/finished
sleep 600
"""


PROBE = r"""exec 3<>/dev/tcp/web/8080 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && cat <&3"""


def _counts(c) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    code, out = c.exec_run(["cat", "/tmp/count"])
    assert code == 0, out
    ok, fail = out.decode().split()
    return int(ok), int(fail)


def test_v1_to_v2_start_first_with_zero_failed_requests(stack, debian_base_image):
    h = stack()
    h.release(web="web-v1")
    r = h.sync()
    assert r.code == 0, r.summary()
    assert _running_task_digests(h) == [h.images["web-v1"]] * 2
    client = h.client.containers.run(debian_base_image, ["bash", "-c", CLIENT], detach=True,
                                     network=f"{h.project.name}_front", remove=False)
    try:
        deadline = time.monotonic() + 30
        while _counts_or_zero(client)[0] < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = _counts(client)
        probe = client.exec_run(["bash", "-c", PROBE])
        assert before[0] >= 20, f"the client never reached the service: {before} {probe}"
        h.release(web="web-v2")
        r = h.sync()
        assert r.code == 0, r.summary()
        time.sleep(1)
        client.exec_run(["touch", "/tmp/stop"])
        while client.exec_run(["test", "-e", "/tmp/finished"]).exit_code != 0:
            time.sleep(0.1)
        ok, fail = _counts(client)
    finally:
        client.remove(force=True)
    assert r.find("agent.swarm.deploy")[0]["services"] == ["web"]
    assert "agent.swarm.update_completed" in r.events()
    assert _service(h)["UpdateStatus"]["State"] == "completed"
    assert _running_task_digests(h) == [h.images["web-v2"]] * 2
    assert ok > before[0] + 20, (ok, before)
    assert fail == 0, f"{fail} failed requests of {ok + fail}"
    st = h.state()
    assert st["known_good"]["web"]["digest"] == h.images["web-v2"]


def _counts_or_zero(c) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    code, out = c.exec_run(["cat", "/tmp/count"])
    return (0, 0) if code != 0 else tuple(int(x) for x in out.decode().split())  # type: ignore[return-value]


def test_unhealthy_release_swarm_rolls_back_and_the_revision_is_failed(stack):
    h = stack()
    h.release(web="web-v1")
    assert h.sync().code == 0
    bad = h.release(web="web-bad")
    r = h.sync()
    assert r.code == 1
    s = r.summary()
    assert s["outcome"] == "rolled-back"
    assert "rollback_" in s["reason"] or "rolled the update back" in s["reason"], s["reason"]
    assert "agent.rollback.swarm_rolled_back" in r.events()
    assert "agent.swarm.deploy" not in r.events()[r.events().index("agent.release.failed"):]
    assert _spec_digest(h) == h.images["web-v1"]
    assert _running_task_digests(h) == [h.images["web-v1"]] * 2
    st = h.state()
    assert bad in st["failed_revisions"]
    assert st["known_good"]["web"]["digest"] == h.images["web-v1"]
    # not retried until a new commit
    again = h.sync()
    assert again.code == 1 and again.summary()["outcome"] == "skipped"
    assert _spec_digest(h) == h.images["web-v1"]


def test_unhealthy_release_with_failure_action_pause_is_rolled_back_by_the_agent(stack):
    h = stack(failure_action="pause")
    h.release(web="web-v1")
    assert h.sync().code == 0
    bad = h.release(web="web-bad")
    r = h.sync()
    assert r.code == 1
    s = r.summary()
    assert s["outcome"] == "rolled-back"
    assert "paused" in s["reason"], s["reason"]
    assert "agent.rollback.swarm_rolled_back" not in r.events()
    assert r.find("agent.rollback.started")[0]["services"] == {"web": h.images["web-v1"]}
    assert _spec_digest(h) == h.images["web-v1"]
    assert _running_task_digests(h) == [h.images["web-v1"]] * 2
    assert bad in h.state()["failed_revisions"]


def test_a_missing_digest_fails_before_the_stack_is_touched(stack):
    h = stack()
    h.release(web="web-v1")
    assert h.sync().code == 0
    version = _service(h)["Version"]["Index"]
    missing = "sha256:" + "0" * 64
    rev = h.commit(rig.desired_yaml({"web": (h.image("web"), missing)}))
    r = h.sync()
    assert r.code == 1
    assert r.summary()["outcome"] == "failed"
    assert "agent.pull.not_found" in r.events()
    assert "agent.swarm.deploy" not in r.events()
    assert _service(h)["Version"]["Index"] == version  # the service was never updated
    assert _spec_digest(h) == h.images["web-v1"]
    assert rev in h.state()["failed_revisions"]


@pytest.fixture
def auth_registry(tmp_path, docker_client):  # type: ignore[no-untyped-def]
    htpasswd = tmp_path / "htpasswd"
    rig.make_htpasswd(htpasswd, USER, SECRET)
    reg = rig.Registry(port=rig.free_port(), workdir=tmp_path / "authreg",
                       htpasswd=htpasswd).start()
    docker_client.login(username=USER, password=SECRET, registry=reg.host, reauth=True)
    digest = rig.build_and_push(docker_client, reg.host, "private/web", "v1", "healthy",
                                "web v1 private", tmp_path / "ctx")
    rig.remove_local_image(docker_client, f"{reg.host}/private/web:v1")
    yield reg, digest
    reg.stop()


def test_a_private_registry_works_through_with_registry_auth(stack, auth_registry, tmp_path):
    reg, digest = auth_registry
    h = stack(compose_text=_compose(reg.host, repo="private/web"))
    pw = tmp_path / "registry-password"
    pw.write_text(SECRET + "\n")
    pw.chmod(0o600)
    with h.project.config_path.open("a") as f:
        f.write(f'\n[registry."{reg.host}"]\nusername = "{USER}"\npassword_file = "{pw}"\n')
    h.commit(rig.desired_yaml({"web": (f"{reg.host}/private/web", digest)}))
    r = h.sync()
    assert r.code == 0, r.summary()
    assert _running_task_digests(h) == [digest] * 2
    assert SECRET not in repr(r.logs)
    # the same with a wrong password: refused at the manifest check, the stack untouched
    version = _service(h)["Version"]["Index"]
    pw.write_text("wrong-password\n")
    h.commit(rig.desired_yaml({"web": (f"{reg.host}/private/web", "sha256:" + "1" * 64)}))
    r = h.sync()
    assert r.code == 1
    assert "agent.pull.unauthorized" in r.events(), r.events()
    assert _service(h)["Version"]["Index"] == version
    status = h.cli("status", "--json")
    assert status.code == 1  # not at the desired revision: the last pass failed
