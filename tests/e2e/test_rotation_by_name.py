"""End-to-end, real engine and compose: start-first rotation by name. While a new container
is running but not yet healthy, Docker's DNS answers the service's name with the old
container only; after the release the name points at the new one, whose other aliases
and non-default networks are as compose made them; a failing release never touches the
old container's names."""

from __future__ import annotations

import re
import threading
import time
import uuid

import pytest
import rig
from harness import Harness

NETWORKS = """\
    networks:
      default: {}
      back:
        aliases: [web-alt]
"""


@pytest.fixture
def two_networks(tmp_path, registry, images, docker_client, compose_cmd):
    h = Harness.create(tmp_path, registry.host, images, docker_client, compose_cmd,
                       name=f"rot{uuid.uuid4().hex[:8]}", handover=0.5)
    compose = h.project.project_dir / "compose.yml"
    text = compose.read_text()
    text = text.replace("    volumes:\n      - webdata:/data\n",
                        "    volumes:\n      - webdata:/data\n" + NETWORKS, 1)
    compose.write_text(text + "networks:\n  back: {}\n")
    yield h
    h.teardown()


def _release(h: Harness, web: str) -> None:
    h.commit(rig.desired_yaml(
        {"web": (h.image("web"), h.images[web]), "api": (h.image("api"), h.images["api-v1"])},
        {"web": {"update": "start-first"}}))


def _endpoints(h: Harness, c) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    c.reload()
    nets = c.attrs["NetworkSettings"]["Networks"]
    return {n.removeprefix(f"{h.project.name}_"): ep for n, ep in nets.items()}


def _resolve(h: Harness, name: str) -> set[str]:
    """What Docker's DNS answers for ``name`` on the default network, asked from api."""
    (api,) = [c for c in h.containers("api") if c.status == "running"]
    _, out = api.exec_run(["nslookup", name])
    found = set(re.findall(r"Address(?: \d+)?:\s*(\d+\.\d+\.\d+\.\d+)\b(?!:)", out.decode()))
    return found - {"127.0.0.11"}


def test_a_new_container_is_resolvable_by_the_service_name_only_once_healthy(two_networks):
    h = two_networks
    _release(h, "web-v1")
    assert h.sync().code == 0
    (old,) = h.containers("web")
    old_ip = _endpoints(h, old)["default"]["IPAddress"]
    assert _resolve(h, "web") == {old_ip}

    _release(h, "web-slow")  # healthy 3 s after it starts
    done = threading.Event()
    result = {}

    def sync() -> None:
        result["r"] = h.sync()
        done.set()

    t = threading.Thread(target=sync)
    t.start()
    samples = []  # (new container's IP, its health, what "web" resolved to)
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        new = [c for c in h.containers("web") if c.id != old.id and c.status == "running"]
        resolved = _resolve(h, "web")
        if new:
            eps = _endpoints(h, new[0])
            health = new[0].attrs["State"].get("Health", {}).get("Status")
            samples.append((eps.get("default", {}).get("IPAddress"), health, resolved))
        time.sleep(0.1)
    t.join(30)
    assert result["r"].code == 0, result["r"].summary()

    starting = [s for s in samples if s[1] == "starting"]
    assert starting, samples  # the new container was seen running and not yet healthy
    for ip, _, resolved in starting:
        assert ip not in resolved and resolved <= {old_ip}, samples

    (new,) = h.containers("web")
    eps = _endpoints(h, new)
    assert {"web", new.name} <= set(eps["default"]["Aliases"])
    assert {"web", "web-alt", new.name} <= set(eps["back"]["Aliases"])
    assert _resolve(h, "web") == {eps["default"]["IPAddress"]}

    _release(h, "web-bad")  # fails its check: removed, the running one keeps its names
    assert h.sync().code == 1
    (kept,) = h.containers("web")
    assert kept.id == new.id
    eps = _endpoints(h, kept)
    assert {"web", new.name} <= set(eps["default"]["Aliases"])
    assert {"web", "web-alt", new.name} <= set(eps["back"]["Aliases"])
    assert _resolve(h, "web") == {eps["default"]["IPAddress"]}


def test_killed_mid_reconnect_the_next_pass_puts_the_container_back_on_its_network(
        two_networks):
    """Docker cannot edit aliases in place; a pass killed between a network disconnect and
    its connect leaves the new container off that network. The next pass connects it again
    with the aliases compose declares, and admits it."""
    import signal

    h = two_networks
    _release(h, "web-v1")
    assert h.sync().code == 0
    _release(h, "web-v2")
    p = h.cli_subprocess("sync", env={"GITOPS_AGENT_FAILPOINTS": "during-health"})
    assert p.returncode == -signal.SIGKILL
    (new,) = [c for c in h.containers("web") if "@" + h.images["web-v2"] in
              c.attrs["Config"]["Image"]]
    h.client.networks.get(f"{h.project.name}_back").disconnect(new.id)  # the kill's leftover
    assert "back" not in _endpoints(h, new)

    r = h.sync()
    assert r.code == 0, r.summary()
    (only,) = h.containers("web")
    assert only.id == new.id
    eps = _endpoints(h, only)
    assert {"web", "web-alt", only.name} <= set(eps["back"]["Aliases"])
    assert "web" in eps["default"]["Aliases"]
    assert r.find("agent.apply.network_reconnected")
