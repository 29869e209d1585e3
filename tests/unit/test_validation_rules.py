"""The rules behind `validate` and the pass's compose check: service names as compose
accepts them, YAML problems in the user's terms, profiles in the config and the compose
edge, and services gated by inactive profiles."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.desired import check_against_compose, parse_desired_state
from agent.edges.compose import Compose
from agent.errors import ConfigError, DesiredStateError

D = "sha256:" + "b" * 64


def _problems(text: str) -> list[str]:
    with pytest.raises(DesiredStateError) as e:
        parse_desired_state(text.encode(), "ds.yml")
    return e.value.problems


@pytest.mark.parametrize("name", ["serviceB", "Web", "_web", ".web", "a.b-c_D", "w" * 255])
def test_every_service_name_compose_accepts_is_accepted(name: str) -> None:
    state = parse_desired_state(
        f'version: 1\nservices:\n  "{name}": {{image: a/web, digest: "{D}"}}\n'.encode())
    assert list(state.services) == [name]


@pytest.mark.parametrize("name", ["-web", "--profile", "web\\n", "wеb", "web x", "w/x"])
def test_names_that_could_become_options_or_smuggle_characters_are_refused(name: str) -> None:
    (p,) = _problems(f'version: 1\nservices:\n  "{name}": {{image: a/web, digest: "{D}"}}\n')
    assert p.startswith("At 'services': service names must be strings of ASCII letters")
    assert "not starting with '-'" in p


def test_duplicate_key_is_named_with_its_lines_and_without_the_library_s_hint() -> None:
    (p,) = _problems(f"version: 1\nservices:\n  web: {{image: a, digest: '{D}'}}\n"
                     f"  web: {{image: b, digest: '{D}'}}\n")
    assert p == 'not valid YAML: duplicate key "web" at line 4 (the mapping starts at line 3)'


def test_compose_tags_in_desired_state_are_named_as_such() -> None:
    (p,) = _problems("version: 1\nservices: !reset {}\n")
    assert p.startswith("not valid YAML: the tag '!reset' at line 2, column 11 is not allowed")
    assert "<unicode string>" not in p


def test_a_second_yaml_document_in_desired_state_is_named_with_its_line() -> None:
    (p,) = _problems("version: 1\nservices: {}\n---\nversion: 1\n")
    assert p == ("not valid YAML: a second document starts at line 3 ('---'); "
                 "desired-state is a single document")


def test_syntax_error_says_line_and_column_without_stream_names() -> None:
    (p,) = _problems("version: 1\nservices:\n  web: {image: a\n")
    assert p.startswith("not valid YAML: line 4, column 1: expected ',' or '}'")
    assert "<file>" not in p and "<unicode string>" not in p


def _state(*names: str):  # type: ignore[no-untyped-def]
    body = "".join(f"  {n}: {{image: a/{n.lower()}, digest: '{D}'}}\n" for n in names)
    return parse_desired_state(f"version: 1\nservices:\n{body}".encode())


def test_service_only_under_inactive_profiles_names_every_profile() -> None:
    with pytest.raises(DesiredStateError) as e:
        check_against_compose(_state("web", "ops"), ["web"], "ds.yml",
                              inactive={"ops": ["tools", "debug"]}, compose_files="compose.yml")
    (p,) = e.value.problems
    assert p.startswith("At 'services.ops': service 'ops' is in the compose files compose.yml "
                        "but only under "
                        "profiles 'tools', 'debug', none of them active")


def test_service_absent_even_under_every_profile_is_missing_and_names_the_files() -> None:
    with pytest.raises(DesiredStateError) as e:
        check_against_compose(_state("ghost"), ["web"], "ds.yml", inactive={"dbg": ["debug"]},
                              compose_files="a.yml, b.yml")
    assert e.value.problems == [
        "At 'services.ghost': no service 'ghost' in the compose files a.yml, b.yml "
        "(they define: dbg, web)"]


def test_config_compose_profiles_default_empty_and_refuse_option_like_names() -> None:
    base = {"source": {"repo": "/r"}, "compose": {"project_dir": "/srv"}}
    assert parse_config(base).compose.profiles == []
    ok = parse_config({**base, "compose": {"project_dir": "/srv", "profiles": ["debug"]}})
    assert ok.compose.profiles == ["debug"]
    for bad in ("-x", "*", "a b", ""):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "compose": {"project_dir": "/srv", "profiles": [bad]}})
        assert "At 'compose.profiles.0'" in str(e.value)


FAKE = """\
import json, sys, pathlib
log = pathlib.Path(sys.argv[0]).with_suffix(".calls")
with log.open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
every = "*" in sys.argv
services = {"web": {"image": "x"}}
if every:
    services["dbg"] = {"image": "x", "profiles": ["debug"]}
print(json.dumps({"services": services}))
"""


@pytest.fixture
def fake(tmp_path: Path):  # type: ignore[no-untyped-def]
    script = tmp_path / "fake_compose.py"
    script.write_text(FAKE)
    (tmp_path / "compose.yml").write_text("services: {web: {image: x}}\n")
    calls = script.with_suffix(".calls")

    def made(profiles: list[str]) -> Compose:
        return Compose([sys.executable, str(script)], tmp_path, ["compose.yml"], "p",
                       profiles=profiles)

    def n_calls() -> list[list[str]]:
        return [json.loads(ln) for ln in calls.read_text().splitlines()] if calls.exists() else []

    return made, n_calls, tmp_path


def test_configured_profiles_go_to_every_compose_command_as_arguments(fake) -> None:  # type: ignore[no-untyped-def]
    made, calls, _ = fake
    compose = made(["debug", "ops"])
    compose.services()
    compose.up(["web"])
    for args in calls():
        i = args.index("--profile")
        assert args[i:i + 4] == ["--profile", "debug", "--profile", "ops"]


def test_no_profiles_configured_leaves_compose_to_decide(fake) -> None:  # type: ignore[no-untyped-def]
    made, calls, _ = fake
    made([]).services()
    assert "--profile" not in calls()[0]


def test_inactive_services_asks_compose_with_every_profile_and_caches_it(fake) -> None:  # type: ignore[no-untyped-def]
    made, calls, _ = fake
    compose = made([])
    assert compose.inactive_services() == {"dbg": ["debug"]}
    assert compose.inactive_services() == {"dbg": ["debug"]}
    every = [a for a in calls() if "*" in a]
    assert len(every) == 1 and every[0][every[0].index("*") - 1] == "--profile"
    assert len(calls()) == 2  # one model with the active profiles, one with all


def test_model_is_not_cached_when_a_compose_file_includes_other_files(fake) -> None:  # type: ignore[no-untyped-def]
    made, calls, root = fake
    (root / "compose.yml").write_text("include:\n  - other.yml\nservices: {web: {image: x}}\n")
    compose = made([])
    compose.services()
    compose.services()
    assert len(calls()) == 2  # an included file could change unseen: asked each time
