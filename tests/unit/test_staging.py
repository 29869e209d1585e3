"""The revision as it will run: the staging mirror of project_dir, the model's paths named
in project_dir, which git files each service reads, and the label that carries them."""

from __future__ import annotations

from pathlib import Path

from agent.edges.compose import cut_quoted, render_override
from agent.staging import (
    FILES_LABEL,
    build_mirror,
    changed_files,
    env_files,
    file_labels,
    file_refs,
    rewrite,
)


def test_the_mirror_holds_the_revision_and_links_every_local_entry(tmp_path: Path) -> None:
    pd, mirror = tmp_path / "srv", tmp_path / "state" / "staging"
    (pd / "conf").mkdir(parents=True)
    (pd / ".env").write_text("GREETING=local\n")
    (pd / "conf" / "local.pem").write_text("admin's\n")
    (pd / "conf" / "old.conf").write_text("the agent's, gone in the revision\n")
    (pd / "data").mkdir()
    (pd / "data" / "big").write_text("x")
    build_mirror(mirror, pd, {"compose.yml": b"services: {}\n", "conf/app.env": b"A=1\n"},
                 absent=["conf/old.conf"])
    assert (mirror / "compose.yml").read_bytes() == b"services: {}\n"
    assert (mirror / "conf" / "app.env").read_bytes() == b"A=1\n"
    assert (mirror / ".env").is_symlink() and (mirror / ".env").read_text() == "GREETING=local\n"
    assert (mirror / "conf" / "local.pem").is_symlink()
    assert not (mirror / "conf").is_symlink()  # walked: it holds a revision file
    assert (mirror / "data").is_symlink()  # linked whole, never walked
    assert not (mirror / "conf" / "old.conf").exists()
    # project_dir itself is untouched
    assert sorted(p.name for p in pd.rglob("*")) == [".env", "big", "conf", "data",
                                                      "local.pem", "old.conf"]


def test_rebuilding_the_mirror_never_follows_its_links(tmp_path: Path) -> None:
    pd, mirror = tmp_path / "srv", tmp_path / "staging"
    (pd / "data").mkdir(parents=True)
    (pd / "data" / "keep").write_text("precious")
    build_mirror(mirror, pd, {"compose.yml": b"a"})
    build_mirror(mirror, pd, {"compose.yml": b"b"})
    assert (pd / "data" / "keep").read_text() == "precious"
    assert (mirror / "compose.yml").read_bytes() == b"b"


def test_the_models_mirror_paths_are_named_in_project_dir() -> None:
    model = {"services": {"web": {"volumes": [{"type": "bind",
                                               "source": "/st/staging/conf/a.conf"}],
                                  "working_dir": "/st/staging"}},
             "configs": {"c": {"file": "/st/staging/c.txt"}}}
    out = rewrite(model, Path("/st/staging"), Path("/srv/app"))
    assert out["services"]["web"]["volumes"][0]["source"] == "/srv/app/conf/a.conf"
    assert out["services"]["web"]["working_dir"] == "/srv/app"
    assert out["configs"]["c"]["file"] == "/srv/app/c.txt"
    assert rewrite("open /st/staging/x.yml: bad", Path("/st/staging"),
                   Path("/srv/app")) == "open /srv/app/x.yml: bad"


def test_each_service_reads_the_git_files_it_binds_names_as_configs_or_env_files() -> None:
    pd = Path("/srv/app")
    model = {
        "services": {
            "proxy": {"volumes": [{"type": "bind", "source": "/srv/app/traefik"},
                                  {"type": "bind", "source": "/var/run/docker.sock"},
                                  {"type": "volume", "source": "certs"}]},
            "app": {"configs": [{"source": "appcfg"}], "secrets": ["token"]},
            "db": {"volumes": [{"type": "bind", "source": "/srv/app/data"}]},
        },
        "configs": {"appcfg": {"file": "/srv/app/conf/app.yml"}},
        "secrets": {"token": {"file": "/srv/app/secrets/token"}},
    }
    files = ["compose.yml", "traefik/traefik.yml", "traefik/dynamic/tls.yml",
             "conf/app.yml", "conf/app.env", "secrets/token"]
    refs = file_refs(model, pd, files, {"app": ["conf/app.env"]})
    assert refs == {"proxy": ["traefik/dynamic/tls.yml", "traefik/traefik.yml"],
                    "app": ["conf/app.env", "conf/app.yml", "secrets/token"]}
    assert "db" not in refs  # a data directory with no git file in it: no label


def test_the_label_changes_with_the_content_of_exactly_the_files_a_service_reads() -> None:
    refs = {"proxy": ["traefik/traefik.yml"], "app": ["conf/app.env"]}
    one = file_labels(refs, {"traefik/traefik.yml": "a", "conf/app.env": "b"})
    two = file_labels(refs, {"traefik/traefik.yml": "a", "conf/app.env": "c"})
    assert one["proxy"] == two["proxy"]
    assert one["app"][FILES_LABEL] != two["app"][FILES_LABEL]
    assert changed_files(refs, refs, {"conf/app.env": "b"}, {"conf/app.env": "c"},
                         "app") == ["conf/app.env"]
    assert changed_files(refs, refs, {"conf/app.env": "b"}, {"conf/app.env": "c"},
                         "proxy") == []


def test_env_files_are_read_from_the_compose_files_text_in_every_form() -> None:
    text = b"""
services:
  a: {image: x, env_file: conf/a.env}
  b:
    image: x
    env_file: [conf/b.env, {path: conf/opt.env, required: false}]
  c: {image: x}
"""
    assert env_files([text, b": not yaml ["]) == {
        "a": ["conf/a.env"], "b": ["conf/b.env", "conf/opt.env"]}


def test_the_override_pins_and_labels_services() -> None:
    doc = render_override({"web": "r/web@sha256:1"}, {"web": {FILES_LABEL: "x"},
                                                       "proxy": {FILES_LABEL: "y"}})
    assert b'"proxy": {\n      "labels"' in doc and b'"image": "r/web@sha256:1"' in doc


def test_compose_errors_are_cut_after_the_file_and_line_they_name() -> None:
    reason = ('failed to read /etc/shadow: line 1: unexpected character ":" in variable '
              'name "root:$6$secrethash"')
    cut = cut_quoted(reason)
    assert "/etc/shadow" in cut and "line 1" in cut
    assert "secrethash" not in cut
