"""End-to-end on real stacks: eight docker/awesome-compose projects (tests/data/public-stacks,
see its README) deployed with ``compose.from_repo`` from a git repo, with stand-in images,
on the real engine, registry, compose and git. Per project, each step one ``sync``:

1. the first release — one revision brings compose.yaml, its env_file and its config files;
2. a config file changes (a bind mount, a secret, a config): exactly its readers recreated;
3. the env_file changes: exactly its services recreated, with the new environment;
4. a new service: created, the others untouched;
5. an unhealthy release (a bad image and a changed file): rolled back, files and containers.

The steps of a project share one deployment (a module-scoped fixture per project); a step
whose first release did not deploy is skipped, naming it.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rig
from harness import Harness
from public_stacks import (
    STACKS,
    PublicStack,
    add_service,
    build_standins,
    image_repo,
    repo_files,
    services_of,
    standin_repos,
)

from agent.edges.compose import find_compose_command

CONFIG_HASH = "com.docker.compose.config-hash"


@pytest.fixture(scope="module")
def standins(registry, docker_client, tmp_path_factory) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    """Per stand-in repository, the digest of its good and bad image (built once)."""
    return build_standins(docker_client, registry.host, tmp_path_factory.mktemp("standins"),
                          standin_repos(registry.host))


class Deployment:
    """One public project: its git repo, agent config and what the steps found."""

    def __init__(self, stack: PublicStack, root: Path, registry: str,
                 standins: dict[str, dict[str, str]], client: Any, compose_cmd: list[str]) -> None:
        self.stack = stack
        self.registry = registry
        self.standins = standins
        self.client = client
        self.compose_cmd = compose_cmd
        self.root = root
        self.name = f"pub-{stack.name[:20]}-{uuid.uuid4().hex[:6]}"
        self.repo = rig.GitRepo(root / "git").init()
        self.project = rig.Project(name=self.name, root=root, registry=registry, repo=self.repo)
        self.files = repo_files(stack, registry)  # what git holds now
        self.digests = {svc: "good" for svc in self.services()}
        self.deployed = False
        self.revisions: list[str] = []

    # ------------------------------------------------------------------ git
    @property
    def project_dir(self) -> Path:
        return self.project.project_dir

    def compose_text(self) -> str:
        return self.files[self.stack.compose_file]

    def services(self) -> dict[str, dict[str, Any]]:
        return services_of(self.compose_text())

    def desired(self) -> str:
        services = {}
        for svc, spec in self.services().items():
            repo = image_repo(spec["image"])
            services[svc] = (repo, self.standins[repo][self.digests[svc]])
        return rig.desired_yaml(services)

    def commit(self, message: str, **changed: str) -> str:
        """Commit the project's files (``changed`` replacing some) and desired-state.yml,
        as one revision."""
        self.files.update(changed)
        for rel, text in {**self.files, "desired-state.yml": self.desired()}.items():
            p = self.repo.work / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        rig.git("add", "-A", cwd=self.repo.work)
        rig.git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.repo.work)
        rig.git("push", "--quiet", "--force", "origin", f"HEAD:{self.repo.branch}",
                cwd=self.repo.work)
        rev = rig.git("rev-parse", "HEAD", cwd=self.repo.work)
        self.revisions.append(rev)
        return rev

    def write_config(self) -> None:
        text = rig.agent_toml(repo=str(self.repo.origin), branch=self.repo.branch,
                              project_dir=self.project_dir, project_name=self.name,
                              state_dir=self.project.state_dir, health_timeout=30, settle=1,
                              handover=0)
        from_repo = ", ".join(f'"{p}"' for p in self.stack.from_repo)
        text = text.replace('files = ["compose.yml"]',
                            f'files = ["{self.stack.compose_file}"]\nfrom_repo = [{from_repo}]')
        if self.stack.bind_sources:
            binds = ", ".join(f'"{p}"' for p in self.stack.bind_sources)
            text += f"\n[compose.allow]\nbind_sources = [{binds}]\n"
        self.project.config_path.write_text(text)

    # ------------------------------------------------------------------ the agent
    def sync(self) -> Any:
        h = Harness(self.project, {}, self.client, self.compose_cmd)
        return h.sync()

    # ------------------------------------------------------------------ observation
    def containers(self, service: str) -> list[Any]:
        return self.client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.name}",
            f"com.docker.compose.service={service}"]})

    def running(self, service: str) -> Any:
        cs = self.containers(service)
        assert len(cs) == 1 and cs[0].status == "running", (
            f"{service}: {[(c.name, c.status) for c in cs]}")
        return cs[0]

    def ids(self) -> dict[str, list[str]]:
        return {s: sorted(c.id for c in self.containers(s)) for s in self.services()}

    def hashes(self) -> dict[str, list[str]]:
        return {s: sorted(c.labels.get(CONFIG_HASH, "") for c in self.containers(s))
                for s in self.services()}

    def env(self, service: str) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.running(service).attrs["Config"]["Env"])

    def cat(self, service: str, path: str) -> str:
        code, out = self.running(service).exec_run(["cat", path])
        assert code == 0, f"{service}: cat {path}: {out!r}"
        return str(out.decode())

    def digest(self, service: str) -> str:
        ref = self.running(service).attrs["Config"]["Image"]
        assert "@" in ref, ref
        return str(ref.split("@", 1)[1])

    def files_in_project_dir(self) -> dict[str, str]:
        return {str(p.relative_to(self.project_dir)): p.read_text()
                for p in sorted(self.project_dir.rglob("*")) if p.is_file()}

    def teardown(self) -> None:
        # by project name, from a directory without compose files (project_dir may hold none)
        subprocess.run([*self.compose_cmd, "--project-name", self.name, "down", "--volumes",
                        "--timeout", "1", "--remove-orphans"],
                       capture_output=True, check=False, timeout=120, cwd=self.root)


def _clear_leftovers(client: Any, stack: PublicStack, compose_text: str) -> None:
    """A fixed container_name left by an earlier run of this file (killed before its
    teardown) would make the first release fail for the wrong reason."""
    for spec in services_of(compose_text).values():
        name = spec.get("container_name")
        for c in client.containers.list(all=True, filters={"name": f"^/{name}$"}) if name else []:
            project = c.labels.get("com.docker.compose.project", "")
            assert project.startswith("pub-"), (
                f"{stack.name}: a container named {name!r} exists outside this test ({project!r})")
            c.remove(force=True, v=True)


@pytest.fixture(scope="module", params=STACKS, ids=[s.name for s in STACKS])
def deployment(request, registry, docker_client, standins, tmp_path_factory) -> Iterator[Deployment]:  # type: ignore[no-untyped-def]
    stack: PublicStack = request.param
    d = Deployment(stack, tmp_path_factory.mktemp(stack.name), registry.host, standins,
                   docker_client, find_compose_command())
    _clear_leftovers(docker_client, stack, d.compose_text())
    d.write_config()
    yield d
    d.teardown()


def _applied(r: Any, step: str) -> None:
    assert r.code == 0, f"{step}: exit {r.code}: " + "\n".join(map(str, r.logs[-30:]))
    assert r.summary()["outcome"] == "applied", r.summary()


def _require(d: Deployment) -> None:
    if not d.deployed:
        pytest.skip(f"{d.stack.name}: step 1 (first release) did not deploy")


def _env_has(d: Deployment, services: tuple[str, ...], want: dict[str, str], step: str) -> None:
    for svc in services:
        env = d.env(svc)
        got = {k: env.get(k) for k in want}
        assert got == want, f"{step}: {svc} runs with {got}, not {want}"


# --------------------------------------------------------------------------- step 1
def test_1_first_release_brings_compose_env_file_and_config_files(deployment):
    d = deployment
    s = d.stack
    d.commit("the project as upstream wrote it, stand-in images")
    r = d.sync()
    _applied(r, "first release")
    assert d.files_in_project_dir() == d.files  # every file of the revision, exactly
    for svc in d.services():
        assert d.digest(svc) == d.standins[image_repo(d.services()[svc]["image"])]["good"]
        health = d.running(svc).attrs["State"].get("Health")
        assert health is None or health["Status"] == "healthy", (svc, health)
    _env_has(d, s.env.readers, s.env.env_before, "first release (env_file)")
    for svc, want in s.env_at_start.items():
        _env_has(d, (svc,), want, "first release")
    for change in (s.config, s.rollback):
        if change.target:
            for svc in change.readers:
                assert d.cat(svc, change.target) == d.files[change.path], (svc, change.target)
    for svc, labels in s.labels.items():
        got = d.running(svc).labels
        assert {k: got.get(k) for k in labels} == labels, (svc, got)
    # a second pass finds the project as git says: nothing recreated
    ids = d.ids()
    idle = d.sync()
    assert idle.code == 0 and idle.summary()["outcome"] == "no-op", idle.summary()
    assert d.ids() == ids
    d.deployed = True


# --------------------------------------------------------------------------- step 2
def test_2_a_changed_config_file_recreates_exactly_its_readers(deployment):
    d = deployment
    _require(d)
    c = d.stack.config
    before = d.ids()
    d.commit(f"change {c.path}", **{c.path: c.apply(d.files[c.path])})
    r = d.sync()
    _applied(r, f"config change ({c.path})")
    after = d.ids()
    for svc in d.services():
        if svc in c.readers:
            assert after[svc] != before[svc], f"{svc} reads {c.path} and was not recreated"
            if c.target:
                assert d.cat(svc, c.target) == d.files[c.path]
        else:
            assert after[svc] == before[svc], f"{svc} does not read {c.path}, yet recreated"
    assert (d.project_dir / c.path).read_text() == d.files[c.path]
    assert sorted(r.find("agent.diff")[0]["config_changed"]) == sorted(c.readers)


# --------------------------------------------------------------------------- step 3
def test_3_a_changed_env_file_recreates_its_services_with_the_new_environment(deployment):
    d = deployment
    _require(d)
    c = d.stack.env
    before = d.ids()
    d.commit(f"change {c.path}", **{c.path: c.apply(d.files[c.path])})
    r = d.sync()
    _applied(r, f"env_file change ({c.path})")
    after = d.ids()
    for svc in d.services():
        if svc in c.readers:
            assert after[svc] != before[svc], f"{svc} reads {c.path} and was not recreated"
        else:
            assert after[svc] == before[svc], f"{svc} does not read {c.path}, yet recreated"
    _env_has(d, c.readers, c.env_after, "env_file change")


# --------------------------------------------------------------------------- step 4
def test_4_a_new_service_is_created_and_the_others_untouched(deployment):
    d = deployment
    _require(d)
    block = d.stack.new_service.replace("127.0.0.1:5000/standin/", f"{d.registry}/standin/")
    new = next(iter(services_of("services:\n" + block)))
    before = d.ids()
    text = add_service(d.compose_text(), block)
    assert set(services_of(text)) == {*before, new}
    d.digests[new] = "good"
    d.commit(f"add {new}", **{d.stack.compose_file: text})
    r = d.sync()
    _applied(r, f"new service {new}")
    d.running(new)
    after = d.ids()
    assert {s: after[s] for s in before} == before


# --------------------------------------------------------------------------- step 5
def test_5_an_unhealthy_release_rolls_back_files_and_containers(deployment):
    d = deployment
    _require(d)
    c, broken = d.stack.rollback, d.stack.broken
    files, ids, hashes = d.files_in_project_dir(), d.ids(), d.hashes()
    good_text = d.files[c.path]
    applied = d.revisions[-1]
    good_digest = d.digest(broken)
    d.digests[broken] = "bad"
    bad = d.commit(f"{broken} on a bad image, {c.path} changed",
                   **{c.path: c.apply(d.files[c.path])})
    r = d.sync()
    assert r.code == 1, f"exit {r.code}: {r.summary()}"
    assert r.summary()["outcome"] == "rolled-back", r.summary()
    assert d.files_in_project_dir() == files  # the applied revision's files, exactly
    assert d.digest(broken) == good_digest
    assert d.hashes() == hashes  # every service runs its previous configuration
    touched = {broken, *c.readers}
    after = d.ids()
    for svc in d.services():
        d.running(svc)
        if svc not in touched:
            assert after[svc] == ids[svc], f"{svc} was not in the release, yet recreated"
    for svc in c.readers:
        if c.target:
            assert d.cat(svc, c.target) == good_text
    _env_has(d, c.readers, c.env_before, "rollback")
    state = Harness(d.project, {}, d.client, d.compose_cmd).state()
    assert state["last_applied"]["revision"] == applied
    assert bad in state["failed_revisions"]
