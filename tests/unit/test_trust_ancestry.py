"""The trust policy across revisions (no replay, no sideways move) against a real git mirror,
and the [trust] combinations that would silently do nothing."""

from __future__ import annotations

import pytest
import rig
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.edges.git import GitSource
from agent.errors import ConfigError, UntrustedRevision
from agent.trust import check_ancestry

BASE = "version: 1\nservices: {}\n"


@pytest.fixture
def history(tmp_path):
    """one -> two on main, and side: a commit off one that was never merged."""
    repo = rig.GitRepo(tmp_path / "git").init()
    one = repo.commit_file("desired-state.yml", BASE, "one")
    two = repo.commit_file("desired-state.yml", BASE + "# two\n", "two")
    rig.git("checkout", "--quiet", "-b", "side", one, cwd=repo.work)
    side = repo.commit_file("desired-state.yml", BASE + "# side\n", "side")  # pushed to main
    rig.git("push", "--quiet", "--force", "origin", f"{two}:main", cwd=repo.work)
    src = GitSource(str(repo.origin), "main", "desired-state.yml", tmp_path / "mirror")
    src.fetch()
    rig.git("push", "--quiet", "--force", "origin", f"{side}:main", cwd=repo.work)
    src.fetch()  # the mirror now holds all three
    return src, one, two, side


def _check(src, last, rev, **kw):
    opts = {"require_signed": True, "allow_rewind": False, "force": False, **kw}
    check_ancestry(src, last, rev, **opts)


def test_a_descendant_of_the_last_applied_revision_is_accepted(history):
    src, one, two, _ = history
    _check(src, one, two)
    _check(src, two, two)
    _check(src, None, one)  # nothing applied yet


def test_moving_back_to_an_older_signed_commit_is_refused_naming_both(history):
    src, one, two, _ = history
    with pytest.raises(UntrustedRevision) as e:
        _check(src, two, one)
    msg = str(e.value)
    assert one in msg and two in msg and "moved back" in msg


def test_moving_sideways_to_a_never_merged_commit_is_refused(history):
    src, _, two, side = history
    with pytest.raises(UntrustedRevision) as e:
        _check(src, two, side)
    assert side in str(e.value) and two in str(e.value) and "sideways" in str(e.value)


@pytest.mark.parametrize("how", ["force", "allow_rewind"])
def test_force_or_allow_rewind_accepts_a_rewind_and_logs_it(history, how):
    src, one, two, _ = history
    with capture_logs() as logs:
        _check(src, two, one, **{how: True})
    (e,) = [x for x in logs if x["event"] == "agent.trust.rewind_accepted"]
    assert e["revision"] == one and e["last_applied"] == two and e["backwards"] is True
    assert e["why"] == ("sync --force" if how == "force" else "trust.allow_rewind")


def test_without_signed_commits_a_rewind_is_not_checked(history):
    src, one, two, _ = history
    _check(src, two, one, require_signed=False)


# ---------------------------------------------------------------------------- config
GIT = {"source": {"repo": "https://git.example/acme/deploy.git"},
       "compose": {"project_dir": "/srv/app"}}
GITHUB = {"source": {"kind": "github", "repo": "acme/deploy"},
          "compose": {"project_dir": "/srv/app"}}


def _problems(data):
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "agent.toml")
    return ei.value.problems


def test_signers_file_and_allow_rewind_without_signed_commits_are_both_reported():
    problems = _problems({**GITHUB, "trust": {"allowed_signers_file": "/etc/s",
                                              "allow_rewind": True}})
    assert problems == [
        "At 'trust.allowed_signers_file': has no effect without "
        "trust.require_signed_commits = true",
        "At 'trust.allow_rewind': has no effect without trust.require_signed_commits = true "
        "(without signed commits a force-push is always followed)",
    ]


def test_signed_commits_on_git_without_a_signers_file_is_a_config_error():
    (p,) = _problems({**GIT, "trust": {"require_signed_commits": True}})
    assert p.startswith("At 'trust.require_signed_commits':")
    cfg = parse_config({**GIT, "trust": {"require_signed_commits": True, "allow_rewind": True,
                                         "allowed_signers_file": "/etc/s"}})
    assert cfg.trust.allow_rewind
