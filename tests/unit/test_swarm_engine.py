"""The Swarm edge holds a DockerEngine (client, the manager's image store) and is no
DockerEngine: it offers only the base Engine port, and no container operation at all."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from agent.config import parse_config
from agent.edges.docker import DockerEngine
from agent.edges.swarm import SwarmEngine
from agent.errors import ImageNotFound
from agent.ports import ContainerEngine, LocalImage
from agent.wiring import build_engine

REPO = "reg:5000/shop/web"
V1, V2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
CONTAINER_OPS = ("stop_and_remove", "start_container", "ensure_connected", "set_alias")


class _Api:
    """The Engine API calls the Swarm edge makes through its DockerEngine, in memory."""

    def __init__(self) -> None:
        self.images_ = [{"Id": "sha256:aa", "RepoTags": [f"{REPO}:v1"],
                         "RepoDigests": [f"{REPO}@{V1}"]}]
        self.removed: list[str] = []
        self.up = True
        self.manifests = {f"{REPO}@{V1}": V1}

    def ping(self) -> bool:
        if not self.up:
            raise ConnectionError("down")
        return True

    def images(self) -> list[dict[str, Any]]:
        return self.images_

    def containers(self, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002
        return []

    def remove_image(self, ref: str, force: bool = False, noprune: bool = False) -> None:
        assert not force
        self.removed.append(ref)

    def inspect_distribution(self, ref: str, auth_config: Any = None) -> dict[str, Any]:
        return {"Descriptor": {"digest": self.manifests.get(ref, V2)}}


class _Client:
    def __init__(self, api: _Api) -> None:
        self.api = api
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _swarm() -> tuple[SwarmEngine, _Api, _Client]:
    api = _Api()
    client = _Client(api)
    return SwarmEngine(client=client), api, client  # type: ignore[arg-type]


def test_the_swarm_engine_is_not_a_docker_engine_and_offers_no_container_operation():
    engine, _, _ = _swarm()
    assert not issubclass(SwarmEngine, DockerEngine)
    assert not isinstance(engine, DockerEngine)
    assert not isinstance(engine, ContainerEngine)
    for op in CONTAINER_OPS:
        assert not hasattr(engine, op), op
    assert "NotImplementedError" not in inspect.getsource(SwarmEngine)


def test_the_docker_engine_is_the_container_engine():
    assert isinstance(DockerEngine(), ContainerEngine)


def test_the_wiring_builds_swarms_engine_without_container_operations_for_kind_swarm(tmp_path):
    def cfg(kind: str) -> Any:
        return parse_config({
            "source": {"repo": "https://git.test/shop.git"},
            "compose": {"project_dir": str(tmp_path), "project_name": "shop"},
            "engine": {"kind": kind},
            "agent": {"state_dir": str(tmp_path / "state")},
        })

    swarm, compose = build_engine(cfg("swarm")), build_engine(cfg("compose"))
    assert isinstance(swarm, SwarmEngine) and not isinstance(swarm, ContainerEngine)
    assert isinstance(compose, DockerEngine) and isinstance(compose, ContainerEngine)


def test_the_swarm_engine_lists_and_removes_the_managers_images_through_its_docker_engine():
    engine, api, _ = _swarm()
    assert engine.local_images(REPO) == [LocalImage(
        id="sha256:aa", digests=(V1,), references=(f"{REPO}:v1", f"{REPO}@{V1}"),
        in_use=False)]
    engine.remove_reference(f"{REPO}@{V1}")
    assert api.removed == [f"{REPO}@{V1}"]


def test_the_swarm_engine_answers_and_closes_through_its_docker_engine():
    engine, api, client = _swarm()
    assert engine.answers() is True
    api.up = False
    assert engine.answers() is False
    engine.close()
    assert client.closed


def test_the_swarm_engine_checks_the_registry_manifest_instead_of_pulling():
    engine, _, _ = _swarm()
    assert engine.has_image(REPO, V1) is False  # never "local": the nodes pull
    engine.pull(REPO, V1)  # the registry has it
    with pytest.raises(ImageNotFound, match="manifest unknown"):
        engine.pull(REPO, "sha256:" + "3" * 64)
