"""The engine port in two: ``Engine`` (what every platform's engine offers) and
``ContainerEngine`` (the container operations only the compose platform uses). mypy strict
is what keeps Swarm's code off container operations; these tests prove it refuses one."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api as mypy_api

from agent.ports import ContainerEngine, Engine

ROOT = Path(__file__).resolve().parents[2]
CONTAINER_OPS = ("stop_and_remove", "start_container", "ensure_connected", "set_alias")
BASE_OPS = ("observe", "has_image", "pull", "local_images", "remove_reference", "answers",
            "close")


def _members(proto: type) -> set[str]:
    return {n for n in vars(proto) if not n.startswith("_")}


def test_the_base_engine_has_no_container_operation_and_the_container_engine_adds_them():
    assert _members(Engine) == set(BASE_OPS)
    assert Engine in ContainerEngine.__mro__
    assert _members(ContainerEngine) == set(CONTAINER_OPS)


def _mypy(tmp_path: Path, code: str) -> str:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent(code))
    out, err, _ = mypy_api.run(["--config-file", str(ROOT / "pyproject.toml"), "--strict",
                                "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
                                str(snippet)])
    return out + err


def test_mypy_refuses_a_container_operation_on_swarms_toolkit_and_a_swarm_engine_as_container_engine(
        tmp_path):
    out = _mypy(tmp_path, """
        from agent.edges.swarm import SwarmEngine
        from agent.ports import ContainerEngine, Engine
        from agent.strategies import ContainerToolkit, Toolkit
        from agent.swarm import SwarmUpdate


        def swarm_kit(kit: Toolkit) -> None:
            kit.engine.stop_and_remove("c1")


        def swarm_strategy(s: SwarmUpdate) -> None:
            s.kit.engine.set_alias("c1", "web", present=False)


        def compose_kit(kit: ContainerToolkit) -> None:
            kit.engine.stop_and_remove("c1")  # the compose platform may


        as_base: Engine = SwarmEngine()
        as_container: ContainerEngine = SwarmEngine()
    """)
    lines = [ln for ln in out.splitlines() if "snippet.py" in ln]
    assert len(lines) == 3, out
    assert ':9: error: "Engine" has no attribute "stop_and_remove"' in out
    assert ':13: error: "Engine" has no attribute "set_alias"' in out
    assert ":21: error: Incompatible types in assignment" in out and "SwarmEngine" in out
