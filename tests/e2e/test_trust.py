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
