"""The compose edge: argument lists, typed errors, and the cached compose model."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from agent.edges.compose import Compose
from agent.errors import ComposeError, ComposeFileError

FAKE = """\
import json, sys, pathlib
log = pathlib.Path(sys.argv[0]).with_suffix(".calls")
with log.open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if "config" in sys.argv:
    print(json.dumps({"services": {"web": {"image": "x"}}}))
if "up" in sys.argv and "fail" in sys.argv:
    sys.stderr.write("boom: no such image\\n")
    sys.exit(17)
"""


@pytest.fixture
def fake_compose(tmp_path):
    script = tmp_path / "fake_compose.py"
    script.write_text(FAKE)
    (tmp_path / "compose.yml").write_text("services: {web: {image: x}}\n")
    compose = Compose([sys.executable, str(script)], tmp_path, ["compose.yml"], "proj")
    calls = script.with_suffix(".calls")

    def n_calls() -> list[list[str]]:
        return [json.loads(ln) for ln in calls.read_text().splitlines()] if calls.exists() else []

    return compose, n_calls, tmp_path


def test_compose_model_is_cached_until_a_compose_file_changes(fake_compose):
    compose, calls, root = fake_compose
    assert set(compose.services()) == {"web"}
    assert set(compose.services()) == {"web"}
    assert len(calls()) == 1
    time.sleep(0.01)
    (root / "compose.yml").write_text("services: {web: {image: y}}\n")
    compose.services()
    assert len(calls()) == 2
    (root / ".env").write_text("X=1\n")  # the project's .env changes interpolation
    compose.services()
    assert len(calls()) == 3


def test_up_passes_scale_and_no_recreate_as_arguments_never_a_shell_string(fake_compose):
    compose, calls, root = fake_compose
    compose.up(["web"], pull="never", scale={"web": 2}, no_recreate=True)
    (args,) = calls()
    assert args[:4] == ["--project-name", "proj", "--project-directory", str(root)]
    i = args.index("up")
    assert args[i:] == ["up", "--detach", "--no-deps", "--no-build", "--pull", "never",
                        "--no-recreate", "--scale", "web=2", "--", "web"]


def test_failed_compose_command_raises_with_command_exit_code_and_stderr(fake_compose):
    compose, _, _ = fake_compose
    with pytest.raises(ComposeError) as e:
        compose.up(["web", "fail"])
    assert e.value.returncode == 17
    assert "boom: no such image" in e.value.stderr
    assert "up" in e.value.command
    assert "exited 17: boom: no such image" in str(e.value)


def test_missing_compose_file_is_invalid_input(tmp_path):
    compose = Compose(["docker", "compose"], tmp_path, ["nope.yml"], "proj")
    with pytest.raises(ComposeFileError) as e:
        compose.services()
    assert "compose file not found" in str(e.value)
    assert not os.path.exists(tmp_path / "nope.yml")


def test_service_names_follow_a_double_dash_so_none_can_become_an_option(fake_compose):
    compose, calls, _ = fake_compose
    compose.up(["--help", "web"])
    compose.remove(["-v", "web"])
    up, rm = calls()[-2:]
    assert up[up.index("--"):] == ["--", "--help", "web"] and "up" in up[:up.index("--")]
    assert rm[rm.index("--"):] == ["--", "-v", "web"] and "rm" in rm[:rm.index("--")]


def test_pins_still_reach_compose_when_state_dir_refuses_every_write(fake_compose):
    """A full or broken state_dir after the intent: the rollback's pins go to a private
    temp file compose reads, so the containers are still undone; back to state_dir after."""
    compose, calls, root = fake_compose
    compose.override = root / "state" / "override.json"
    compose.override.parent.mkdir()
    compose.pin({"web": "reg/web@sha256:" + "1" * 64})
    compose.override.unlink()
    compose.override.mkdir()  # the rename onto it fails, as on a full disk (root or not)
    compose.pin({"web": "reg/web@sha256:" + "2" * 64})
    spare = compose.override_in_use
    assert spare is not None and spare != compose.override
    assert "2" * 64 in spare.read_text() and spare.stat().st_mode & 0o077 == 0
    compose.up(["web"], pull="never")
    assert ["--file", str(spare)] == calls()[-1][6:8]
    compose.override.rmdir()  # state_dir takes writes again
    compose.pin({"web": "reg/web@sha256:" + "3" * 64})
    assert compose.override_in_use == compose.override and not spare.exists()
    assert "3" * 64 in compose.override.read_text()
