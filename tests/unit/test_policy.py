"""Host policy for compose files from git (agent/policy.py): everything beyond an ordinary
container is refused unless [compose.allow] allows it; every problem at once, each naming
its key, paths but never contents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config_allow import ComposeAllow
from agent.errors import InvalidInput, UntrustedRevision
from agent.policy import (
    check_host_policy,
    check_raw_references,
    host_policy_problems,
    raw_reference_problems,
)

PD = Path("/srv/app")
DENY = ComposeAllow()


def _model(**svc: Any) -> dict[str, Any]:
    return {"name": "app", "services": {"web": {"image": "ghcr.io/acme/web:1", **svc}}}


def _problems(model: dict[str, Any], allow: ComposeAllow = DENY) -> list[str]:
    return host_policy_problems(model, PD, allow)


def _bind(source: str) -> dict[str, Any]:
    return {"type": "bind", "source": source, "target": "/x", "bind": {"create_host_path": True}}


# ------------------------------------------------------------------ the resolved model
def test_an_ordinary_service_passes():
    check_host_policy(_model(volumes=[_bind("/srv/app/data"),
                                      {"type": "volume", "source": "db", "target": "/db"}],
                             security_opt=["no-new-privileges:true"], cap_drop=["ALL"]),
                      PD, DENY, source="rev")


def test_privileged_is_refused_naming_service_and_key():
    assert _problems(_model(privileged=True)) == [
        "At 'services.web.privileged': a privileged container is not allowed "
        "([compose.allow] privileged)"]


@pytest.mark.parametrize("key", ["pid", "network_mode", "ipc", "userns_mode", "uts", "cgroup"])
def test_each_host_namespace_is_refused(key: str):
    (p,) = _problems(_model(**{key: "host"}))
    assert p.startswith(f"At 'services.web.{key}': the host's namespace ({key}: host)")
    assert "[compose.allow] host_namespaces" in p


def test_a_namespace_that_is_not_the_hosts_passes():
    assert _problems(_model(network_mode="service:db", pid="container:x", ipc="private")) == []


def test_cap_add_is_refused_listing_the_capabilities():
    assert _problems(_model(cap_add=["NET_ADMIN", "SYS_ADMIN"])) == [
        "At 'services.web.cap_add': adding NET_ADMIN, SYS_ADMIN is not allowed "
        "([compose.allow] cap_add)"]


def test_empty_cap_add_passes():
    assert _problems(_model(cap_add=[])) == []


def test_devices_and_device_rules_are_refused():
    problems = _problems(_model(
        devices=[{"source": "/dev/fuse", "target": "/dev/fuse", "permissions": "rwm"}],
        device_cgroup_rules=["c 1:3 mr"]))
    assert problems == [
        "At 'services.web.devices': host devices (/dev/fuse) are not allowed "
        "([compose.allow] devices)",
        "At 'services.web.device_cgroup_rules': device access rules are not allowed "
        "([compose.allow] devices)"]


@pytest.mark.parametrize("opt", ["seccomp=unconfined", "seccomp:unconfined",
                                 "apparmor=unconfined", "apparmor:unconfined",
                                 "systempaths=unconfined", "label=disable"])
def test_security_opt_that_turns_confinement_off_is_refused(opt: str):
    assert _problems(_model(security_opt=["no-new-privileges:true", opt])) == [
        f"At 'services.web.security_opt[1]': {opt} is not allowed "
        "([compose.allow] security_opt)"]


@pytest.mark.parametrize("source", ["/", "/etc", "/var/run/docker.sock", "/srv",
                                    "/srv/app/../other", "/srv/application"])
def test_bind_mount_outside_project_dir_is_refused(source: str):
    import posixpath

    (p,) = _problems(_model(volumes=[_bind(source)]))
    assert p == (f"At 'services.web.volumes[0].source': bind mount of "
                 f"{posixpath.normpath(source)} outside project_dir /srv/app is not allowed "
                 "([compose.allow] bind_sources)")


def test_bind_mount_of_project_dir_or_below_passes():
    assert _problems(_model(volumes=[_bind("/srv/app"), _bind("/srv/app/conf/x.yml"),
                                     _bind("/srv/app/a/../b")])) == []


def test_short_syntax_bind_outside_project_dir_is_refused():
    (p,) = _problems(_model(volumes=["/etc:/host-etc:ro", "data:/data"]))
    assert p.startswith("At 'services.web.volumes[0]': bind mount of /etc outside")


def test_a_local_volume_bound_to_a_host_path_is_refused_at_the_service_using_it():
    model = _model(volumes=[{"type": "volume", "source": "root", "target": "/h"}])
    model["volumes"] = {"root": {"name": "app_root", "driver": "local",
                                 "driver_opts": {"type": "none", "o": "bind", "device": "/"}},
                        "nfs": {"driver_opts": {"type": "nfs", "o": "addr=10.0.0.1",
                                                "device": ":/export"}}}
    assert _problems(model) == [
        "At 'services.web.volumes[0].source': volume root is bound to / outside project_dir "
        "/srv/app, which is not allowed ([compose.allow] bind_sources)"]


def test_a_config_or_secret_file_outside_project_dir_is_refused_at_each_service_using_it():
    model = _model(configs=[{"source": "cfg"}], secrets=[{"source": "ok"}, {"source": "key"}])
    model["services"]["api"] = {"image": "x:1", "secrets": ["key"]}
    model["configs"] = {"cfg": {"name": "app_cfg", "file": "/etc/hostname"}}
    model["secrets"] = {"key": {"file": "/root/.ssh/id_ed25519"},
                        "ok": {"file": "/srv/app/secrets/ok"}}
    assert _problems(model) == [
        "At 'services.api.secrets[0]': secret key reads /root/.ssh/id_ed25519 outside "
        "project_dir /srv/app, which is not allowed ([compose.allow] bind_sources)",
        "At 'services.web.configs[0]': config cfg reads /etc/hostname outside project_dir "
        "/srv/app, which is not allowed ([compose.allow] bind_sources)",
        "At 'services.web.secrets[1]': secret key reads /root/.ssh/id_ed25519 outside "
        "project_dir /srv/app, which is not allowed ([compose.allow] bind_sources)"]


def test_an_unused_config_file_outside_project_dir_is_refused_at_its_own_key():
    model = _model()
    model["configs"] = {"cfg": {"file": "/etc/shadow"}, "inline": {"content": "x"}}
    assert _problems(model) == [
        "At 'configs.cfg.file': /etc/shadow outside project_dir /srv/app is not allowed "
        "([compose.allow] bind_sources)"]


def test_env_file_in_the_model_outside_project_dir_is_refused():
    problems = _problems(_model(env_file=["/srv/app/.env", {"path": "/etc/app.env"}]))
    assert problems == [
        "At 'services.web.env_file[1]': env file /etc/app.env outside project_dir /srv/app "
        "is not allowed ([compose.allow] bind_sources)"]


def test_every_problem_is_reported_at_once_across_services():
    model = _model(privileged=True, pid="host", volumes=[_bind("/"), _bind("/etc")])
    model["services"]["proxy"] = {"image": "traefik:v3", "cap_add": ["NET_ADMIN"],
                                  "volumes": [_bind("/var/run/docker.sock")]}
    with pytest.raises(UntrustedRevision) as ei:
        check_host_policy(model, PD, DENY, source="compose.from_repo@abc")
    assert isinstance(ei.value, InvalidInput)
    assert ei.value.source == "compose.from_repo@abc"
    assert [p.split(":", 1)[0] for p in ei.value.problems] == [
        "At 'services.proxy.cap_add'",
        "At 'services.proxy.volumes[0].source'",
        "At 'services.web.privileged'",
        "At 'services.web.pid'",
        "At 'services.web.volumes[0].source'",
        "At 'services.web.volumes[1].source'",
    ]


def test_contents_never_appear_in_a_problem_only_paths_and_keys():
    secret = "hunter2-s3cr3t-token"
    model = _model(environment={"API_TOKEN": secret}, labels={"x": secret},
                   volumes=[_bind("/etc")])
    model["configs"] = {"c": {"file": "/etc/passwd", "content": secret}}
    with pytest.raises(UntrustedRevision) as ei:
        check_host_policy(model, PD, DENY, source="rev")
    text = str(ei.value)
    assert secret not in text
    assert "/etc" in text and "/etc/passwd" in text


def test_a_model_of_odd_shapes_does_not_crash():
    assert host_policy_problems({"services": None}, PD, DENY) == []
    assert host_policy_problems({"services": {"a": None, "b": {"volumes": [3, None]}},
                                 "configs": [], "volumes": None}, PD, DENY) == []


# ------------------------------------------------------------------ [compose.allow]
def test_each_refusal_is_lifted_by_its_allow_key_for_the_named_service():
    model = _model(privileged=True, pid="host", network_mode="host", cap_add=["NET_ADMIN"],
                   devices=["/dev/fuse:/dev/fuse"], security_opt=["seccomp=unconfined"])
    allow = ComposeAllow(privileged=["web"], host_namespaces=["web"], cap_add={"web": ["*"]},
                         devices=["web"], security_opt=["web"])
    assert _problems(model, allow) == []


def test_an_allow_list_for_another_service_lifts_nothing():
    model = _model(privileged=True)
    assert len(_problems(model, ComposeAllow(privileged=["api"]))) == 1


def test_star_in_a_service_list_means_every_service():
    model = _model(privileged=True)
    model["services"]["api"] = {"image": "x:1", "privileged": True, "uts": "host"}
    assert _problems(model, ComposeAllow(privileged=["*"], host_namespaces=["*"])) == []


def test_cap_add_table_allows_only_the_capabilities_it_names():
    model = _model(cap_add=["CAP_NET_BIND_SERVICE", "SYS_ADMIN"])
    allow = ComposeAllow.model_validate({"cap_add": {"web": ["net_bind_service"]}})
    assert _problems(model, allow) == [
        "At 'services.web.cap_add': adding SYS_ADMIN is not allowed ([compose.allow] cap_add)"]


def test_cap_add_all_must_itself_be_allowed():
    assert len(_problems(_model(cap_add=["ALL"]),
                         ComposeAllow.model_validate({"cap_add": {"web": ["SYS_ADMIN"]}}))) == 1
    assert _problems(_model(cap_add=["ALL"]),
                     ComposeAllow.model_validate({"cap_add": {"web": ["ALL"]}})) == []


def test_cap_add_as_a_list_of_services_allows_any_capability_for_them():
    allow = ComposeAllow.model_validate({"cap_add": ["web"]})
    assert _problems(_model(cap_add=["SYS_ADMIN", "NET_ADMIN"]), allow) == []


def test_bind_sources_allows_an_exact_path_only():
    allow = ComposeAllow(bind_sources=["/var/run/docker.sock", "/etc/localtime"])
    assert _problems(_model(volumes=[_bind("/var/run/docker.sock"),
                                     _bind("/etc/localtime")]), allow) == []
    (p,) = _problems(_model(volumes=[_bind("/var/run/docker.sock/../../../etc")]), allow)
    assert "bind mount of /etc outside" in p
    assert len(_problems(_model(volumes=[_bind("/var/run")]), allow)) == 1


def test_bind_sources_entry_ending_in_slash_allows_that_directory_and_below():
    allow = ComposeAllow(bind_sources=["/srv/shared/"])
    assert _problems(_model(volumes=[_bind("/srv/shared"), _bind("/srv/shared/a/b")]),
                     allow) == []
    assert len(_problems(_model(volumes=[_bind("/srv/sharedx")]), allow)) == 1


def test_bind_sources_also_covers_config_secret_env_file_and_volume_devices():
    model = _model(configs=[{"source": "c"}], env_file=["/etc/app/app.env"],
                   volumes=[{"type": "volume", "source": "v", "target": "/v"}])
    model["configs"] = {"c": {"file": "/etc/app/c.yml"}}
    model["volumes"] = {"v": {"driver_opts": {"type": "none", "o": "bind",
                                              "device": "/etc/app/data"}}}
    assert len(_problems(model)) == 3
    assert _problems(model, ComposeAllow(bind_sources=["/etc/app/"])) == []


# ------------------------------------------------------------------ the raw files
def _raw(files: dict[str, str], allow: ComposeAllow = DENY,
         compose_files: tuple[str, ...] = ("compose.yml",)) -> list[str]:
    return raw_reference_problems({k: v.encode() for k, v in files.items()}, PD, allow,
                                  compose_files=list(compose_files))


def test_raw_files_naming_only_repository_files_pass():
    check_raw_references(
        {"compose.yml": b"include:\n  - sub/inc.yml\n"
                        b"services:\n  web:\n    image: x:1\n    env_file: .env\n"
                        b"    extends: {file: base.yml, service: b}\n",
         "sub/inc.yml": b"services:\n  api:\n    image: x:1\n    env_file: [api.env]\n",
         "base.yml": b"services:\n  b:\n    image: x:1\n"},
        PD, DENY, compose_files=["compose.yml"], source="rev")


@pytest.mark.parametrize("env_file", ["/etc/app.env", "../app.env", "[/etc/a.env]",
                                      "[{path: /etc/a.env, required: false}]"])
def test_raw_env_file_outside_project_dir_is_refused(env_file: str):
    (p,) = _raw({"compose.yml": f"services:\n  web:\n    image: x\n    env_file: {env_file}\n"})
    assert p.startswith("At 'services.web.env_file[0]' (compose.yml): env file /")
    assert "outside project_dir /srv/app is not allowed ([compose.allow] bind_sources)" in p


def test_raw_env_file_allowed_by_bind_sources_passes():
    assert _raw({"compose.yml": "services:\n  web:\n    env_file: /etc/app.env\n"},
                ComposeAllow(bind_sources=["/etc/app.env"])) == []


def test_raw_label_file_outside_project_dir_is_refused():
    (p,) = _raw({"compose.yml": "services:\n  web:\n    label_file: /etc/l\n"})
    assert p.startswith("At 'services.web.label_file[0]' (compose.yml): label file /etc/l")


@pytest.mark.parametrize("include, key, where", [
    ("- ../shared/x.yml", "include[0].path", "/srv/shared/x.yml is outside project_dir"),
    ("- /etc/x.yml", "include[0].path", "/etc/x.yml is outside project_dir"),
    ("- local.yml", "include[0].path", "/srv/app/local.yml is not a file of the repository"),
    ("- path: [inc.yml, /etc/x.yml]", "include[0].path[1]", "/etc/x.yml is outside"),
    ("- https://token@example.com/x.yml", "include[0].path", "a remote resource"),
])
def test_raw_include_of_a_file_outside_the_repository_is_refused(include: str, key: str,
                                                                  where: str):
    (p,) = _raw({"compose.yml": f"include:\n  {include}\n", "inc.yml": "services: {}\n"})
    assert p.startswith(f"At '{key}' (compose.yml): ")
    assert where in p
    assert "([compose.allow] include_outside)" in p
    assert "token" not in p


def test_raw_extends_file_outside_the_repository_is_refused():
    (p,) = _raw({"compose.yml": "services:\n  web:\n    extends:\n"
                                "      file: ../shared/base.yml\n      service: b\n"})
    assert p.startswith("At 'services.web.extends.file' (compose.yml): /srv/shared/base.yml "
                        "is outside project_dir /srv/app")


def test_raw_include_outside_lifts_the_include_and_extends_refusals_only():
    files = {"compose.yml": "include: [/etc/x.yml]\nservices:\n  web:\n"
                            "    extends: {file: /etc/b.yml, service: b}\n"
                            "    env_file: /etc/e.env\n"}
    (p,) = _raw(files, ComposeAllow(include_outside=True))
    assert p.startswith("At 'services.web.env_file[0]'")


def test_raw_include_project_directory_and_env_file_outside_project_dir_are_refused():
    problems = _raw({"compose.yml": "include:\n  - path: inc.yml\n"
                                    "    project_directory: /etc\n    env_file: /root/.env\n",
                     "inc.yml": "services: {}\n"})
    assert [p.split(" (", 1)[0] for p in problems] == [
        "At 'include[0].project_directory'", "At 'include[0].env_file[0]'"]


def test_raw_references_in_an_included_file_resolve_against_its_directory():
    files = {"compose.yml": "include: [sub/inc.yml]\n",
             "sub/inc.yml": "services:\n  api:\n    env_file: [api.env, ../../../etc/x.env]\n"
                            "    extends: {file: ../../shared.yml, service: b}\n"}
    assert _raw(files) == [
        "At 'services.api.env_file[1]' (sub/inc.yml): env file /etc/x.env outside project_dir "
        "/srv/app is not allowed ([compose.allow] bind_sources)",
        "At 'services.api.extends.file' (sub/inc.yml): /srv/shared.yml is outside project_dir "
        "/srv/app; included and extended compose files must come from the repository "
        "([compose.allow] include_outside)"]


def test_raw_main_file_in_a_subdirectory_resolves_against_project_dir():
    # compose runs with --project-directory project_dir: the main files' relative paths
    # resolve there, not in the file's own directory
    files = {"deploy/compose.yml": "include: [deploy/inc.yml]\n"
                                   "services:\n  web:\n    env_file: ../x.env\n",
             "deploy/inc.yml": "services: {}\n"}
    (p,) = _raw(files, compose_files=("deploy/compose.yml",))
    assert "env file /srv/x.env outside" in p


def test_raw_files_are_followed_transitively_and_cycles_end():
    files = {"compose.yml": "include: [a.yml]\n",
             "a.yml": "include: [b.yml]\n",
             "b.yml": "include: [a.yml]\nservices:\n  x:\n    env_file: /etc/b.env\n"}
    (p,) = _raw(files)
    assert p.startswith("At 'services.x.env_file[0]' (b.yml)")


def test_raw_multi_document_files_and_compose_tags_are_read():
    files = {"compose.yml": "services:\n  web:\n    env_file: !reset []\n---\n"
                            "services:\n  web:\n    env_file: !override [/etc/x.env]\n"}
    (p,) = _raw(files)
    assert p.startswith("At 'services.web.env_file[0]' (compose.yml): env file /etc/x.env")


def test_raw_interpolated_paths_are_refused():
    problems = _raw({"compose.yml": "include: [\"${DIR}/x.yml\"]\n"
                                    "services:\n  web:\n    env_file: $HOME/.env\n"})
    assert len(problems) == 2
    assert all("uses variable interpolation" in p for p in problems)


def test_raw_invalid_yaml_is_refused_without_its_contents():
    secret = "hunter2-s3cr3t-token"
    problems = _raw({"compose.yml": f"services:\n  web:\n    environment: [{secret}\n"})
    assert len(problems) == 1
    assert problems[0].startswith("At '(top level)' (compose.yml): not valid YAML at line")
    assert secret not in problems[0]


def test_raw_non_utf8_is_refused():
    problems = raw_reference_problems({"compose.yml": b"\xff\xfe"}, PD, DENY,
                                      compose_files=["compose.yml"])
    assert problems == ["At '(top level)' (compose.yml): not UTF-8 text (byte 0); its "
                        "references cannot be checked"]


def test_raw_compose_files_not_in_the_revision_are_the_servers_and_skipped():
    assert _raw({"other.yml": "services:\n  web:\n    env_file: /etc/x\n"},
                compose_files=("compose.yml",)) == []


def test_raw_every_problem_is_reported_at_once_and_contents_never_appear():
    secret = "hunter2-s3cr3t-token"
    files = {"compose.yml": "include: [../a.yml, /etc/b.yml]\n"
                            f"services:\n  web:\n    environment: {{T: {secret}}}\n"
                            "    env_file: [/etc/a.env, /etc/b.env]\n"}
    with pytest.raises(UntrustedRevision) as ei:
        check_raw_references({k: v.encode() for k, v in files.items()}, PD, DENY,
                             compose_files=["compose.yml"], source="rev")
    assert len(ei.value.problems) == 4
    assert secret not in str(ei.value)
