"""The agent's TOML configuration: validated up front, every error at once, each with its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config, parse_config
from agent.errors import ConfigError, InvalidInput

MINIMAL = {"source": {"repo": "https://git.example/acme/deploy.git"},
           "compose": {"project_dir": "/srv/app"}}


def _problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "agent.toml")
    return ei.value.problems


def test_minimal_config_fills_in_defaults():
    cfg = parse_config(MINIMAL)
    assert isinstance(cfg, AgentConfig)
    assert cfg.source.kind == "git"
    assert cfg.source.branch == "main"
    assert cfg.source.path == "desired-state.yml"
    assert cfg.compose.project_dir == Path("/srv/app")
    assert cfg.compose.files == ["compose.yml"]
    assert cfg.agent.interval_seconds == 60
    assert cfg.agent.state_dir == Path("/var/lib/gitops-agent")
    assert cfg.registry == {}
    assert cfg.trust.allowed_images is None


def test_path_keys_given_as_strings_become_paths_with_home_expanded():
    cfg = parse_config({
        "source": {"repo": "git@host:a/b.git", "ssh_key_file": "~/.ssh/deploy"},
        "compose": {"project_dir": "/srv/app"},
        "agent": {"state_dir": "/tmp/state"},
        "registry": {"ghcr.io": {"username": "bot", "password_file": "/etc/pw"}},
    })
    assert cfg.source.ssh_key_file == Path.home() / ".ssh/deploy"
    assert cfg.agent.state_dir == Path("/tmp/state")
    assert cfg.registry["ghcr.io"].password_file == Path("/etc/pw")


def test_missing_sections_are_both_reported():
    assert _problems({}) == [
        "At 'source': required key is missing",
        "At 'compose': required key is missing",
    ]


def test_every_problem_is_reported_at_once_each_with_its_path():
    problems = _problems({
        "source": {"repo": "", "path": "/abs/desired.yml", "colour": "blue"},
        "compose": {"project_dir": "/srv/app", "project_name": "Has Space"},
        "agent": {"interval_seconds": -1, "pull_concurrency": 100, "jitter_seconds": "10"},
    })
    text = "\n".join(problems)
    assert len(problems) == 7, problems
    for path in ("source.repo", "source.path", "source.colour", "compose.project_name",
                 "agent.interval_seconds", "agent.pull_concurrency", "agent.jitter_seconds"):
        assert f"At '{path}':" in text
    assert "At 'source.colour': unknown key" in text
    assert "At 'source.path': must be a path relative to the repository root" in text


def test_config_error_is_invalid_input_naming_the_file():
    with pytest.raises(ConfigError) as ei:
        parse_config({}, "/etc/gitops-agent/agent.toml")
    assert isinstance(ei.value, InvalidInput)
    assert str(ei.value).startswith("/etc/gitops-agent/agent.toml: 2 problems")


def test_value_error_prefix_is_stripped_from_messages():
    (p,) = _problems({**MINIMAL, "source": {"kind": "github", "repo": "x"}})
    assert "Value error" not in p
    assert p == 'At \'source\': with kind = "github", repo must be "owner/name"'


def test_signed_commits_from_a_git_source_need_an_allowed_signers_file():
    (p,) = _problems({**MINIMAL, "trust": {"require_signed_commits": True}})
    assert "require_signed_commits" in p and "allowed_signers_file" in p
    cfg = parse_config({**MINIMAL, "trust": {"require_signed_commits": True,
                                             "allowed_signers_file": "/etc/signers"}})
    assert cfg.trust.allowed_signers_file == Path("/etc/signers")


@pytest.mark.parametrize("path", ["../desired.yml", "a/../../b.yml", "/etc/passwd"])
def test_source_path_must_stay_inside_the_repository(path):
    (p,) = _problems({**MINIMAL, "source": {"repo": "r", "path": path}})
    assert p.startswith("At 'source.path':")


def test_github_kind_needs_owner_slash_name():
    (p,) = _problems({**MINIMAL, "source": {"kind": "github", "repo": "just-a-name"}})
    assert p.startswith("At 'source':") and "owner/name" in p
    cfg = parse_config({**MINIMAL, "source": {"kind": "github", "repo": "acme/deploy"}})
    assert cfg.source.kind == "github"


def test_unknown_source_kind_is_rejected():
    (p,) = _problems({**MINIMAL, "source": {"kind": "svn", "repo": "r"}})
    assert p.startswith("At 'source.kind':")


def test_strict_types_refuse_booleans_for_numbers():
    (p,) = _problems({**MINIMAL, "agent": {"interval_seconds": True}})
    assert p.startswith("At 'agent.interval_seconds':")


def test_registry_credentials_need_a_password_file_at_the_hosts_path():
    (p,) = _problems({**MINIMAL, "registry": {"ghcr.io": {"username": "bot"}}})
    assert p == "At 'registry.ghcr.io.password_file': required key is missing"


def test_compose_files_must_not_be_empty():
    (p,) = _problems({**MINIMAL, "compose": {"project_dir": "/srv", "files": []}})
    assert p.startswith("At 'compose.files':")


def test_compose_project_name_defaults_to_sanitised_directory_name():
    cfg = parse_config({**MINIMAL, "compose": {"project_dir": "/srv/My App!"}})
    assert cfg.compose.name == "myapp"
    cfg = parse_config({**MINIMAL, "compose": {"project_dir": "/srv/x", "project_name": "prod"}})
    assert cfg.compose.name == "prod"


def test_load_config_resolves_relative_project_dir_against_the_config_file(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text('[source]\nrepo = "r"\n[compose]\nproject_dir = "app"\n')
    cfg = load_config(p)
    assert cfg.compose.project_dir == (tmp_path / "app").resolve()


def test_load_config_reports_invalid_toml_with_the_file_path(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text("[source\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.source == str(p)
    assert ei.value.problems[0].startswith("not valid TOML:")


def test_load_config_reports_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "missing.toml")
    assert ei.value.problems == ["cannot read: No such file or directory"]


def test_load_config_reports_non_utf8_file(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_bytes(b'[source]\nrepo = "\xff"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.problems[0].startswith("not valid TOML:")


def test_load_config_reports_schema_problems_with_paths(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text('[source]\nrepo = "r"\nbranch = ""\n[compose]\nproject_dir = "/srv"\n'
                 "[agent]\nhistory_limit = 0\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert [q.split(":")[0] for q in ei.value.problems] == [
        "At 'source.branch'", "At 'agent.history_limit'"
    ]


# ------------------------------------------------------------------ [compose] from_repo
def _with_compose(**compose: object) -> dict[str, object]:
    return {**MINIMAL, "compose": {"project_dir": "/srv/app", **compose}}


def test_from_repo_with_a_swarm_engine_is_refused_in_one_line_at_compose_from_repo():
    problems = _problems({**_with_compose(from_repo=["compose.yml"]),
                          "engine": {"kind": "swarm"}})
    assert len(problems) == 1
    assert problems[0].startswith("At 'compose.from_repo': ")
    assert 'only for [engine] kind = "compose"' in problems[0]


def test_from_repo_with_the_compose_engine_and_swarm_without_from_repo_are_accepted():
    parse_config({**_with_compose(from_repo=["compose.yml"]), "engine": {"kind": "compose"}})
    parse_config({**MINIMAL, "engine": {"kind": "swarm"}})


def test_swarm_refusal_is_reported_with_the_other_config_problems():
    problems = _problems({**_with_compose(from_repo=["compose.yml"]),
                          "engine": {"kind": "swarm"},
                          "trust": {"allow_rewind": True}})
    assert [p.split(":", 1)[0] for p in problems] == [
        "At 'compose.from_repo'", "At 'trust.allow_rewind'"]


def test_compose_allow_defaults_refuse_everything_beyond_an_ordinary_container():
    allow = parse_config(MINIMAL).compose.allow
    assert allow.privileged == [] and allow.host_namespaces == [] and allow.devices == []
    assert allow.security_opt == [] and allow.bind_sources == [] and allow.cap_add == {}
    assert allow.include_outside is False
    assert not allow.allows("privileged", "web")
    assert allow.capabilities("web") == set()


def test_compose_allow_table_parses_from_toml(tmp_path: Path):
    path = tmp_path / "agent.toml"
    path.write_text(
        '[source]\nrepo = "https://git.example/a.git"\n'
        '[compose]\nproject_dir = "/srv/app"\nfrom_repo = ["compose.yml"]\n'
        '[compose.allow]\nprivileged = ["cadvisor"]\nhost_namespaces = ["*"]\n'
        'cap_add = { traefik = ["NET_BIND_SERVICE"], "*" = ["cap_chown"] }\n'
        'devices = ["fuse"]\nsecurity_opt = ["cadvisor"]\n'
        'bind_sources = ["/var/run/docker.sock", "/srv/shared/"]\ninclude_outside = true\n')
    allow = load_config(path).compose.allow
    assert allow.allows("privileged", "cadvisor") and not allow.allows("privileged", "web")
    assert allow.allows("host_namespaces", "anything")
    assert allow.capabilities("traefik") == {"NET_BIND_SERVICE", "CHOWN"}
    assert allow.capabilities("web") == {"CHOWN"}
    assert allow.bind_sources == ["/var/run/docker.sock", "/srv/shared/"]
    assert allow.include_outside is True


def test_compose_allow_cap_add_as_a_list_of_services_allows_any_capability():
    allow = parse_config(_with_compose(allow={"cap_add": ["traefik"]})).compose.allow
    assert allow.capabilities("traefik") == {"*"}
    assert allow.capabilities("web") == set()


def test_compose_allow_rejects_unknown_keys_and_bad_values_each_with_its_path():
    problems = _problems(_with_compose(allow={
        "priviledged": ["web"],
        "host_namespaces": ["bad name"],
        "cap_add": {"web": ["NET ADMIN"]},
        "bind_sources": ["etc/", "/srv/../etc"],
        "include_outside": "yes",
    }))
    text = "\n".join(problems)
    assert "At 'compose.allow.priviledged': unknown key" in text
    assert "At 'compose.allow.host_namespaces.0': 'bad name' is not a compose service name" in text
    assert "At 'compose.allow.cap_add.web.0': 'NET ADMIN' is not a capability name" in text
    assert "At 'compose.allow.bind_sources': 'etc/' must be an absolute host path" in text
    assert "At 'compose.allow.include_outside':" in text
    assert len(problems) == 5, problems


def test_compose_allow_cap_add_of_the_wrong_shape_is_one_clear_problem():
    for bad in ("traefik", ["traefik", 1]):
        (p,) = _problems(_with_compose(allow={"cap_add": bad}))
        assert p.startswith("At 'compose.allow.cap_add': must be a list of services, or a table")
