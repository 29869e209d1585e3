"""End-to-end: the GitHub REST source through the real reconcile pass."""

from __future__ import annotations

import re

import rig
from github_server import FakeGitHub


def _use_github(harness, gh: FakeGitHub, token_file=None) -> None:
    cfg = harness.project.config_path
    text = cfg.read_text()
    token = f'token_file = "{token_file}"\n' if token_file else ""
    text = re.sub(r"\[source\]\n(.*\n)*?\n",
                  f'[source]\nkind = "github"\nrepo = "acme/shop"\nbranch = "main"\n'
                  f'path = "desired-state.yml"\napi_url = "{gh.api_url}"\n{token}\n', text, count=1)
    cfg.write_text(text)


def _desired(h, web):
    return rig.desired_yaml({"web": (h.image("web"), h.images[web]),
                             "api": (h.image("api"), h.images["api-v1"])})


def test_github_source_releases_and_an_idle_poll_is_one_conditional_request(harness, tmp_path):
    token = "ghp_e2eTokenThatMustNeverBeLogged0123"
    tf = tmp_path / "token"
    tf.write_text(token)
    tf.chmod(0o600)
    with FakeGitHub(token=token) as gh:
        sha1 = gh.commit({"desired-state.yml": _desired(harness, "web-v1")})
        _use_github(harness, gh, tf)
        r = harness.sync()
        assert r.code == 0, r.summary()
        assert r.summary()["revision"] == sha1
        assert harness.serve("web") == "web v1"

        gh.clear_log()
        r = harness.sync()
        assert r.code == 0 and r.summary()["outcome"] == "no-op"
        assert gh.request_count == 1
        (req,) = gh.logged()
        assert req.status == 304
        assert req.header("authorization") == f"Bearer {token}"

        sha2 = gh.commit({"desired-state.yml": _desired(harness, "web-v2")})
        r = harness.sync()
        assert r.code == 0 and r.summary()["revision"] == sha2
        assert harness.serve("web") == "web v2"
        assert token not in repr(r.logs)
        for p in harness.project.state_dir.rglob("*"):
            if p.is_file():
                assert token.encode() not in p.read_bytes(), p


def test_github_outage_exits_3_and_touches_nothing(harness):
    with FakeGitHub() as gh:
        gh.commit({"desired-state.yml": _desired(harness, "web-v1")})
        _use_github(harness, gh)
        assert harness.sync().code == 0
        before = harness.container_ids()
        gh.commit({"desired-state.yml": _desired(harness, "web-v2")})
        gh.fail(503)
        r = harness.sync()
        assert r.code == 3
        assert r.summary()["outcome"] == "error"
        assert r.find("agent.fetch.retry_scheduled")
        assert harness.container_ids() == before
