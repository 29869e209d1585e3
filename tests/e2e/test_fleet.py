"""A fleet on one machine: three agents (canary-1, prod-1, prod-2), each with its own compose
project and state_dir, polling one git repository, posting and reading commit statuses on a
fake GitHub on loopback. Passes are driven with ``sync`` so the order is deterministic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import rig
from github_server import FakeGitHub
from harness import Harness

TOKEN = "ghs_e2e_fleet_token"
SOAK = 3
ROLLOUT = f"""rollout:
  - name: canary
    hosts: [canary-1]
    soak_seconds: {SOAK}
  - name: prod
    hosts: ["prod-*"]
    min_hosts: 1
"""


@dataclass
class Fleet:
    repo: rig.GitRepo
    gh: FakeGitHub
    hosts: dict[str, Harness]

    def release(self, rollout: bool = True, **digests: str) -> str:
        h = self.hosts["canary-1"]
        services = {svc: (h.image(svc), h.images[key]) for svc, key in digests.items()}
        text = rig.desired_yaml(services) + (ROLLOUT if rollout else "")
        rev = self.repo.commit_file("desired-state.yml", text, "release")
        self.gh.known_commit(rev)
        return rev

    def contexts(self, rev: str) -> list[tuple[str, str]]:
        return [(s["context"], s["state"]) for s in self.gh.statuses_for(rev)]


@pytest.fixture
def fleet(tmp_path, registry, images, docker_client, compose_cmd) -> Iterator[Fleet]:  # type: ignore[no-untyped-def]
    with FakeGitHub(repo="acme/shop", token=TOKEN) as gh:
        token = tmp_path / "token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        repo = rig.GitRepo(tmp_path / "git").init()
        hosts: dict[str, Harness] = {}
        run = uuid.uuid4().hex[:6]
        try:
            for name in ("canary-1", "prod-1", "prod-2"):
                extra = (f'host = "{name}"\n\n[report.github]\nrepo = "acme/shop"\n'
                         f'api_url = "{gh.api_url}"\ntoken_file = "{token}"\n'
                         "post_pending = true\ntimeout_seconds = 2\n")
                project = rig.Project(name=f"e2e{run}{name.replace('-', '')}",
                                      root=tmp_path / name, registry=registry.host, repo=repo,
                                      extra_config=extra)
                project.write(side_ref=f"{registry.host}/e2e/side@{images['side']}")
                hosts[name] = Harness(project, images, docker_client, compose_cmd)
            yield Fleet(repo, gh, hosts)
        finally:
            for h in hosts.values():
                h.teardown()


def outcome(h: Harness) -> tuple[str, str]:
    r = h.sync()
    s = r.summary()
    assert r.code in (0, 1), r.logs
    return s["outcome"], s["reason"] or ""


def status_text(h: Harness, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert h.cli("status").code == 0
    return capsys.readouterr().out


def test_a_good_release_reaches_the_canary_first_then_prod_after_the_soak_and_a_bad_one_never_leaves_the_canary(  # noqa: E501
        fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    canary, p1, p2 = (fleet.hosts[n] for n in ("canary-1", "prod-1", "prod-2"))
    v1 = canary.images["web-v1"]
    good = fleet.release(web="web-v1", api="api-v1")
    # prod first: the canary has not reported, so prod is held and touches nothing
    for h in (p1, p2):
        assert outcome(h) == ("held", f"waiting for wave canary: canary-1 has not reported "
                                      f"success on {good[:12]}")
        assert h.running_digest("web") is None
    out = status_text(p1, capsys)
    assert "rollout wave: prod-1 in prod (wave 2 of 2)" in out
    assert "held" in out and "waiting for wave canary" in out
    assert outcome(canary)[0] == "applied"
    assert canary.running_digest("web") == v1
    assert fleet.contexts(good) == [("deploy/canary-1", "pending"),
                                    ("deploy/canary-1", "success")]  # held hosts post nothing
    success_at = time.monotonic()
    # soaking: still held, the reason says until when
    o, reason = outcome(p1)
    assert o == "held" and reason.startswith("waiting for wave canary to soak until ")
    assert p1.running_digest("web") is None
    time.sleep(max(0.0, success_at + SOAK + 1.2 - time.monotonic()))
    for h in (p1, p2):
        assert outcome(h)[0] == "applied"
        assert h.running_digest("web") == v1
    assert {c for c, st in fleet.contexts(good) if st == "success"} == {
        "deploy/canary-1", "deploy/prod-1", "deploy/prod-2"}
    history = p1.state()["history"]
    assert [r["outcome"] for r in history] == ["applied", "held", "held"]
    assert history[2]["repeats"] == 1  # the reason changed: not-yet-reported, then soaking

    # a bad release: rolled back on the canary, never reaches prod
    bad = fleet.release(web="web-bad", api="api-v1")
    assert outcome(canary)[0] == "rolled-back"
    assert canary.running_digest("web") == v1
    for h in (p1, p2):
        for _ in range(2):
            o, reason = outcome(h)
            assert o == "held"
            assert reason == (f"rollout of {bad[:12]} stopped: canary-1 (wave canary) "
                              "reported failure; this host keeps what it runs")
        assert h.running_digest("web") == v1 and h.serve("web") == "web v1"
    assert {c for c, _ in fleet.contexts(bad)} == {"deploy/canary-1"}
    assert p1.state()["history"][0]["repeats"] == 2  # held passes fold like idle ones
    out = status_text(p2, capsys)
    assert "canary-1 (wave canary) reported failure" in out


def test_without_rollout_every_host_applies_in_the_same_interval(fleet: Fleet) -> None:
    rev = fleet.release(rollout=False, web="web-v1", api="api-v1")
    for h in fleet.hosts.values():
        assert outcome(h)[0] == "applied"
        assert h.running_digest("web") == h.images["web-v1"]
    assert len([st for _, st in fleet.contexts(rev) if st == "success"]) == 3
    assert fleet.gh.count("status") == 0  # nobody read statuses
