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


def _sign_with_git(harness, tmp_path):
    """Real SSH-signed commits made by git, served the way GitHub's verification does."""
    import subprocess

    from github_server import signed_from_git

    key = tmp_path / "allowed"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"ci@example.test {(tmp_path / 'allowed.pub').read_text().strip()}\n")
    with harness.project.config_path.open("a") as f:
        f.write(f'\n[trust]\nrequire_signed_commits = true\nallowed_signers_file = "{signers}"\n')
    repo = rig.GitRepo(tmp_path / "signing").init()

    def commit(gh, text, **kw):
        repo.commit_file("desired-state.yml", text, "deploy", key)
        sha, sig, payload = signed_from_git(repo.work)
        return gh.commit({"desired-state.yml": text}, sha=sha, signature=sig, payload=payload,
                         **kw)

    return commit


def test_github_rewind_to_an_older_signed_commit_is_refused_via_the_compare_api(harness,
                                                                             tmp_path):
    commit = _sign_with_git(harness, tmp_path)
    with FakeGitHub() as gh:
        _use_github(harness, gh)
        one = commit(gh, _desired(harness, "web-v1"))
        assert harness.sync().code == 0
        two = commit(gh, _desired(harness, "web-v2"))
        assert harness.sync().code == 0
        before = harness.container_ids()
        gh.set_head(one)
        gh.clear_log()
        r = harness.sync()
        assert r.code == 2, r.summary()
        assert one in r.summary()["reason"] and two in r.summary()["reason"]
        assert harness.container_ids() == before and harness.serve("web") == "web v2"
        assert any(q.path == f"/repos/acme/shop/compare/{two}...{one}" for q in gh.logged())
        assert harness.sync("--force").code == 0
        assert harness.serve("web") == "web v1"


def test_github_bad_token_is_a_config_error_exit_2_not_retried(harness, tmp_path):
    tf = tmp_path / "token"
    tf.write_text("ghp_wrongTokenWrongTokenWrong")
    tf.chmod(0o600)
    with FakeGitHub(token="ghp_theRightOne") as gh:
        gh.commit({"desired-state.yml": _desired(harness, "web-v1")})
        _use_github(harness, gh, tf)
        r = harness.sync()
        assert r.code == 2
        assert "source.token_file" in r.summary()["reason"]
        assert not r.find("agent.fetch.retry_scheduled")
        assert gh.request_count == 1
        assert harness.containers("web") == []


def test_github_rate_limit_is_waited_out_once_without_retry_noise(harness):
    with FakeGitHub() as gh:
        gh.commit({"desired-state.yml": _desired(harness, "web-v1")})
        _use_github(harness, gh)
        gh.rate_limit(status=429, seconds=600)
        r = harness.sync()
        assert r.code == 3
        assert len(r.find("agent.source.rate_limited")) == 1
        assert not r.find("agent.fetch.retry_scheduled")
        r = harness.sync()  # still waiting: nothing is sent
        assert r.code == 3 and gh.request_count == 1


def test_github_source_with_from_repo_ships_a_config_change_and_idles_on_one_request(harness):
    compose = (harness.project.project_dir / "compose.yml").read_text()
    (harness.project.project_dir / "compose.yml").unlink()
    changed = compose.replace("    volumes:\n      - webdata:/data\n",
                              "    environment:\n      VERSION_TEXT: web from github\n"
                              "    volumes:\n      - webdata:/data\n", 1)
    assert changed != compose
    with FakeGitHub() as gh:
        gh.commit({"desired-state.yml": _desired(harness, "web-v1"), "compose.yml": compose})
        _use_github(harness, gh)
        cfg = harness.project.config_path
        line = f'project_name = "{harness.project.name}"'
        cfg.write_text(cfg.read_text().replace(line, f'{line}\nfrom_repo = ["compose.yml"]'))
        r = harness.sync()
        assert r.code == 0, r.logs
        assert (harness.project.project_dir / "compose.yml").read_text() == compose
        before = harness.container_ids()
        gh.clear_log()
        r = harness.sync()
        assert r.code == 0 and r.summary()["outcome"] == "no-op", r.logs
        assert gh.request_count == 1  # the conditional poll; no tree, no blob
        sha = gh.commit({"desired-state.yml": _desired(harness, "web-v1"),
                         "compose.yml": changed})
        r = harness.sync()
        assert r.code == 0 and r.summary()["revision"] == sha, r.logs
        assert harness.serve("web") == "web from github"
        after = harness.container_ids()
        assert after["web"] != before["web"] and after["api"] == before["api"]
