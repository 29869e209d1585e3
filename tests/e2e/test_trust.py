"""End-to-end: the trust policy — SSH-signed commits from allowed signers, image allowlist."""

from __future__ import annotations

import subprocess

import pytest
import rig


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
                   check=True)
    return path


@pytest.fixture
def signed_harness(harness):
    root = harness.project.root
    allowed = _keygen(root / "allowed_key")
    other = _keygen(root / "other_key")
    signers = root / "allowed_signers"
    signers.write_text(f"ci@example.test {(root / 'allowed_key.pub').read_text().strip()}\n")
    with harness.project.config_path.open("a") as f:
        f.write(f'\n[trust]\nrequire_signed_commits = true\nallowed_signers_file = "{signers}"\n')
    harness.allowed_key, harness.other_key = allowed, other
    return harness


def _desired(h, web):
    return rig.desired_yaml({"web": (h.image("web"), h.images[web]),
                             "api": (h.image("api"), h.images["api-v1"])})


def test_commit_signed_by_an_allowed_key_is_applied(signed_harness):
    h = signed_harness
    h.commit(_desired(h, "web-v1"), signing_key=h.allowed_key)
    r = h.sync()
    assert r.code == 0, r.summary()
    assert h.serve("web") == "web v1"


def test_unsigned_commit_is_refused_and_nothing_is_touched(signed_harness):
    h = signed_harness
    h.commit(_desired(h, "web-v1"), signing_key=h.allowed_key)
    assert h.sync().code == 0
    before = h.container_ids()
    h.commit(_desired(h, "web-v2"))  # unsigned
    r = h.sync()
    assert r.code == 2
    assert "is not signed" in r.summary()["reason"]
    assert h.container_ids() == before
    p = h.cli_subprocess("status")
    assert "not signed" in p.stdout


def test_commit_signed_by_another_key_is_refused(signed_harness):
    h = signed_harness
    h.commit(_desired(h, "web-v1"), signing_key=h.other_key)
    r = h.sync()
    assert r.code == 2
    assert "no valid signature from an allowed signer" in r.summary()["reason"]
    assert h.containers("web") == []


def test_image_outside_the_allowlist_is_refused(harness):
    with harness.project.config_path.open("a") as f:
        f.write('\n[trust]\nallowed_images = ["ghcr.io/acme/"]\n')
    harness.release(web="web-v1", api="api-v1")
    r = harness.sync()
    assert r.code == 2
    assert "At 'services.web.image'" in r.summary()["reason"]
    assert "outside the allowlist" in r.summary()["reason"]
    assert harness.containers("web") == []


# ---------------------------------------------------------------------------- no replay
def _force_push(h, rev):
    rig.git("push", "--quiet", "--force", "origin", f"{rev}:main", cwd=h.project.repo.work)


def _two_signed_releases(h):
    one = h.commit(_desired(h, "web-v1"), signing_key=h.allowed_key)
    assert h.sync().code == 0
    two = h.commit(_desired(h, "web-v2"), signing_key=h.allowed_key)
    assert h.sync().code == 0
    assert h.serve("web") == "web v2"
    return one, two


def _assert_refused(h, r, rev, last, how):
    assert r.code == 2, r.summary()
    s = r.summary()
    assert s["outcome"] == "invalid" and s["revision"] == rev
    assert rev in s["reason"] and last in s["reason"] and how in s["reason"]
    newest = h.state()["history"][0]
    assert newest["outcome"] == "invalid" and how in newest["reason"]
    assert h.state()["last_applied"]["revision"] == last
    p = h.cli_subprocess("status")
    assert how in p.stdout, p.stdout


def test_branch_moved_back_to_an_older_signed_commit_is_refused_until_forced(signed_harness):
    h = signed_harness
    one, two = _two_signed_releases(h)
    before = h.container_ids()
    _force_push(h, one)  # a replay: validly signed, but older than what runs
    r = h.sync()
    _assert_refused(h, r, one, two, "moved back")
    assert h.container_ids() == before and h.serve("web") == "web v2"

    r = h.sync("--force")
    assert r.code == 0, r.summary()
    (e,) = r.find("agent.trust.rewind_accepted")
    assert (e["revision"], e["last_applied"], e["why"]) == (one, two, "sync --force")
    assert h.serve("web") == "web v1"


def test_branch_moved_sideways_to_a_never_merged_signed_commit_is_refused(signed_harness):
    h = signed_harness
    one, two = _two_signed_releases(h)
    before = h.container_ids()
    work = h.project.repo.work
    rig.git("checkout", "--quiet", "-b", "unreviewed", one, cwd=work)
    side = h.commit(_desired(h, "web-v1"), "never merged", signing_key=h.allowed_key)
    r = h.sync()  # commit pushed it to main: the branch moved sideways
    _assert_refused(h, r, side, two, "moved sideways")
    assert h.container_ids() == before


def test_allow_rewind_accepts_a_rewind_and_logs_it(signed_harness):
    h = signed_harness
    with h.project.config_path.open("a") as f:
        f.write("allow_rewind = true\n")
    one, two = _two_signed_releases(h)
    _force_push(h, one)
    r = h.sync()
    assert r.code == 0, r.summary()
    (e,) = r.find("agent.trust.rewind_accepted")
    assert e["why"] == "trust.allow_rewind" and e["backwards"] is True
    assert h.serve("web") == "web v1"


def test_without_signed_commits_a_force_push_is_still_followed_and_logged(harness):
    h = harness
    one = h.release(web="web-v1", api="api-v1")
    assert h.sync().code == 0
    h.release(web="web-v2", api="api-v1")
    assert h.sync().code == 0
    _force_push(h, one)
    r = h.sync()
    assert r.code == 0, r.summary()
    assert r.find("agent.fetch.revision_went_backwards")
    assert h.serve("web") == "web v1"


def test_desired_state_over_the_size_limit_is_refused_and_nothing_is_touched(harness):
    from agent.desired import MAX_BYTES

    h = harness
    h.release(web="web-v1", api="api-v1")
    assert h.sync().code == 0
    before = h.container_ids()
    cache = h.project.state_dir / "desired-state.cache.yml"
    cached = cache.read_bytes()
    h.commit(_desired(h, "web-v2") + "#" * MAX_BYTES)
    r = h.sync()
    assert r.code == 2 and "larger than the limit" in r.summary()["reason"]
    assert h.container_ids() == before
    assert cache.read_bytes() == cached
