"""compose.from_repo: the ownership record and file operations (agent/stack.py) on a real
directory, the tree read of the git source against real git, and the plan's configuration
hashes."""

from __future__ import annotations

import json
import os

import pytest
import rig

from agent.edges.git import GitSource
from agent.errors import AgentEnvironmentError, StackFilesError, UntrustedRevision
from agent.plan import ObservedContainer, Release, make_plan, previous_digests
from agent.stack import (
    StackJournal,
    StackPlan,
    TreeEntry,
    check_compose_images,
    check_project_dir,
    orphans,
    select_files,
    sha256,
)
from agent.state import ImageDigest

D1 = "sha256:" + "1" * 64


@pytest.fixture
def journal(tmp_path):
    pd = tmp_path / "srv"
    pd.mkdir()
    return StackJournal(tmp_path / "state", pd)


def test_first_revision_writes_every_file_and_records_ownership(journal):
    plan = journal.plan("r1", {"compose.yml": b"a", "conf/x.conf": b"x"})
    assert plan.writes == ["compose.yml", "conf/x.conf"] and not plan.drifted
    journal.write(plan)
    assert (journal.project_dir / "conf" / "x.conf").read_bytes() == b"x"
    assert journal.current().files == {"compose.yml": sha256(b"a"), "conf/x.conf": sha256(b"x")}
    assert journal.current().revision == "r1"
    assert journal.intent() is None
    assert oct(os.stat(journal.project_dir / "compose.yml").st_mode & 0o777) == "0o644"


def test_a_file_the_agent_did_not_write_is_a_clash_named_by_path(journal):
    (journal.project_dir / "compose.yml").write_bytes(b"admin's")
    with pytest.raises(StackFilesError, match="'compose.yml' exists in .* not written by the"):
        journal.plan("r1", {"compose.yml": b"git's", "other.yml": b"o"})
    assert (journal.project_dir / "compose.yml").read_bytes() == b"admin's"
    assert not (journal.project_dir / "other.yml").exists()


def test_an_identical_local_file_is_adopted_not_refused(journal):
    (journal.project_dir / "compose.yml").write_bytes(b"same")
    plan = journal.plan("r1", {"compose.yml": b"same"})
    assert plan.adopted == ["compose.yml"] and not plan.writes
    journal.write(plan)
    assert "compose.yml" in journal.current().files
    # a rollback before any applied revision returns the adopted file as it was
    journal.write(journal.plan("r2", {"compose.yml": b"new"}))
    journal.restore_applied()
    assert (journal.project_dir / "compose.yml").read_bytes() == b"same"


def test_a_directory_behind_a_symlink_leading_outside_is_refused(journal, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (journal.project_dir / "conf").symlink_to(outside)
    with pytest.raises(StackFilesError, match="outside"):
        journal.plan("r1", {"conf/x.conf": b"x"})
    assert list(outside.iterdir()) == []


def test_a_hand_edit_is_drift_and_a_file_git_dropped_is_removed(journal):
    journal.write(journal.plan("r1", {"compose.yml": b"a", "conf/x.conf": b"x"}))
    (journal.project_dir / "compose.yml").write_bytes(b"edited")
    (journal.project_dir / ".env").write_bytes(b"SECRET=1")  # the admin's: never touched
    plan = journal.plan("r2", {"compose.yml": b"a"})
    assert plan.drifted == ["compose.yml"] and plan.deletes == ["conf/x.conf"]
    journal.write(plan)
    assert (journal.project_dir / "compose.yml").read_bytes() == b"a"
    assert not (journal.project_dir / "conf").exists()  # the emptied directory went too
    assert (journal.project_dir / ".env").read_bytes() == b"SECRET=1"


def test_an_idle_plan_touches_nothing(journal):
    journal.write(journal.plan("r1", {"compose.yml": b"a"}))
    before = sorted((p, p.stat().st_mtime_ns) for p in journal.dir.rglob("*"))
    plan = journal.plan("r1", {"compose.yml": b"a"})
    assert not plan.touches and not plan.adopted
    journal.write(plan)
    assert sorted((p, p.stat().st_mtime_ns) for p in journal.dir.rglob("*")) == before


def test_files_of_a_killed_write_stay_the_agents(journal):
    journal.write(journal.plan("r1", {"compose.yml": b"a"}))
    # a write of r2 killed after its intent and its first file
    journal._write("intent.json", {"revision": "r2", "files": {"files": {
        "compose.yml": sha256(b"b"), "conf/new.conf": sha256(b"n")}},
        "previous": journal.current().to_json()})
    (journal.project_dir / "conf").mkdir()
    (journal.project_dir / "conf" / "new.conf").write_bytes(b"n")
    assert journal.owned() == {"compose.yml", "conf/new.conf"}
    plan = journal.plan("r1", {"compose.yml": b"a"})  # the next pass converges back
    assert plan.deletes == ["conf/new.conf"]
    journal.write(plan)
    assert journal.intent() is None and not (journal.project_dir / "conf").exists()


def test_restore_returns_the_last_applied_files(journal):
    p1 = journal.plan("r1", {"compose.yml": b"a", "conf/x.conf": b"x"})
    journal.write(p1)
    journal.record_applied(p1)
    journal.write(journal.plan("r2", {"compose.yml": b"b", "conf/y.conf": b"y"}))
    restored = journal.restore_applied()
    assert restored is not None and restored.revision == "r1"
    assert (journal.project_dir / "compose.yml").read_bytes() == b"a"
    assert (journal.project_dir / "conf" / "x.conf").read_bytes() == b"x"
    assert not (journal.project_dir / "conf" / "y.conf").exists()
    assert journal.current().revision == "r1"


def test_a_damaged_copy_of_the_applied_files_is_never_restored(journal):
    p1 = journal.plan("r1", {"compose.yml": b"a"})
    journal.write(p1)
    journal.record_applied(p1)
    doc = json.loads((journal.dir / "applied.json").read_text())
    (journal.dir / doc["dir"] / "compose.yml").write_bytes(b"tampered")
    journal.write(journal.plan("r2", {"compose.yml": b"b"}))
    assert journal.restore_applied() is None
    assert (journal.project_dir / "compose.yml").read_bytes() == b"b"


def test_every_compose_image_is_checked_against_the_allowlist():
    services = {"web": {"image": "ghcr.io/acme/web:1"}, "miner": {"image": "evil.io/m"},
                "built": {"build": "."}}
    with pytest.raises(UntrustedRevision) as e:
        check_compose_images(services, ["ghcr.io/acme/"], "compose.from_repo@abc")
    assert "services.miner.image" in str(e.value) and "services.built" in str(e.value)
    assert "services.web" not in str(e.value)
    check_compose_images(services, None, "x")  # no allowlist: nothing checked


def test_services_gone_from_the_model_are_orphans():
    assert orphans(["web", "old", "?"], ["web", "api"]) == ["old"]


def _c(service: str, h: str | None, digest: str = D1) -> ObservedContainer:
    return ObservedContainer(service, f"id-{service}-{h}", f"p-{service}-1", f"r/{service}@{digest}",
                             digest, "running", None, config_hash=h)


def test_a_changed_configuration_hash_is_a_change_and_rolls_back_to_the_same_digest():
    target = {"web": ImageDigest(image="r/web", digest=D1),
              "api": ImageDigest(image="r/api", digest=D1)}
    observed = {"web": [_c("web", "old")], "api": [_c("api", "same")]}
    plan = make_plan("rev", target, observed, target, {"web": "new", "api": "same"})
    assert plan.changed_services == ["web"] and plan.config_changed == ["web"]
    assert previous_digests(plan, observed, target) == {"web": target["web"]}
    # without hashes (no from_repo) the configuration is not compared
    assert make_plan("rev", target, observed, target).is_noop
    release = Release(plan, {}, {}, observed, hashes={"web": "new"})
    assert not release.at_target("web", _c("web", "old"))
    assert release.at_target("web", _c("web", "new"))


def test_git_source_reads_a_tree_of_paths_at_the_revision(tmp_path):
    repo = rig.GitRepo(tmp_path / "git").init()
    repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n", "one")
    repo.commit_file("compose.yml", "services: {}\n", "compose")
    repo.commit_file("conf/a.conf", "a\n", "a")
    rev = repo.commit_file("conf/sub/b.conf", "b\n", "b")
    src = GitSource(str(repo.origin), "main", "desired-state.yml", tmp_path / "mirror")
    assert src.fetch().revision == rev
    got = src.read_files(rev, ["compose.yml", "conf/"])
    assert got == {"compose.yml": b"services: {}\n", "conf/a.conf": b"a\n",
                   "conf/sub/b.conf": b"b\n"}
    with pytest.raises(StackFilesError, match="'missing/' is not in the repository"):
        src.read_files(rev, ["compose.yml", "missing/"])


def test_git_source_refuses_a_file_over_the_limit_unread(tmp_path):
    repo = rig.GitRepo(tmp_path / "git").init()
    repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n", "one")
    rev = repo.commit_file("conf/big.bin", "x" * (256 * 1024 + 10), "big")
    src = GitSource(str(repo.origin), "main", "desired-state.yml", tmp_path / "mirror")
    src.fetch()
    with pytest.raises(StackFilesError, match="'conf/big.bin' is larger than the limit"):
        src.read_files(rev, ["conf/"])


def test_git_source_refuses_a_symlink(tmp_path):
    repo = rig.GitRepo(tmp_path / "git").init()
    repo.commit_file("desired-state.yml", "version: 1\nservices: {}\n", "one")
    (repo.work / "conf").mkdir()
    (repo.work / "conf" / "link").symlink_to("/etc/shadow")
    rig.git("add", "conf/link", cwd=repo.work)
    rev = repo.commit_file("conf/a", "a", "with link")
    src = GitSource(str(repo.origin), "main", "desired-state.yml", tmp_path / "mirror")
    src.fetch()
    with pytest.raises(StackFilesError, match="'conf/link' is a symlink"):
        src.read_files(rev, ["conf/"])


# --------------------------------------------------------------------------- the files can't escape
@pytest.mark.parametrize("bad", ["conf/../../etc/passwd", "conf/./x", "conf//x", "conf/x/",
                                 "/etc/passwd", "conf/a\\b", "conf/a\0b", "..", "."])
def test_a_tree_entry_with_dot_dot_dot_empty_absolute_backslash_or_nul_is_refused(bad):
    tree = [TreeEntry("compose.yml", "100644", "blob", "a"),
            TreeEntry("conf/ok", "100644", "blob", "b"), TreeEntry(bad, "100644", "blob", "c")]
    # "/etc/passwd", ".." and "." name nothing under the from_repo entries unless asked for
    paths = ["compose.yml", "conf/", *([bad] if not bad.startswith("conf") else [])]
    with pytest.raises(StackFilesError) as e:
        select_files("compose.from_repo@abc", "abc" * 14, paths, tree, lambda e: 1)
    assert repr(bad) in str(e.value)


def test_tree_entries_outside_the_from_repo_entries_are_not_looked_at():
    tree = [TreeEntry("compose.yml", "100644", "blob", "a"),
            TreeEntry("docs\\odd name", "100644", "blob", "b")]
    got = select_files("w", "abc" * 14, ["compose.yml"], tree, lambda e: 1)
    assert [e.path for e in got] == ["compose.yml"]


def test_a_path_from_a_lying_source_that_is_not_plainly_relative_is_refused_by_the_plan(
        journal, tmp_path):
    with pytest.raises(StackFilesError) as e:
        journal.plan("r1", {"compose.yml": b"a", "../escape": b"x", "/tmp/abs": b"y"})
    assert "'../escape'" in str(e.value) and "'/tmp/abs'" in str(e.value)
    assert not (tmp_path / "escape").exists()
    assert not (journal.project_dir / "compose.yml").exists()


def _outside(tmp_path):
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "x.conf").write_bytes(b"outside's own")
    return outside


def _untouched(outside):
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == {"x.conf": b"outside's own"}


def _swap_for_symlink(directory, target):
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target)


def test_a_directory_swapped_for_a_symlink_between_plan_and_write_is_refused(journal,
                                                                            tmp_path):
    outside = _outside(tmp_path)
    journal.write(journal.plan("r1", {"compose.yml": b"a", "conf/x.conf": b"x"}))
    plan = journal.plan("r2", {"compose.yml": b"a", "conf/x.conf": b"SECRET-CONTENT",
                               "conf/new.conf": b"n"})
    _swap_for_symlink(journal.project_dir / "conf", outside)  # after the plan was checked
    with pytest.raises(StackFilesError) as e:
        journal.write(plan)
    msg = str(e.value)
    assert "'conf'" in msg and "symlink" in msg and str(journal.project_dir) in msg
    assert "SECRET-CONTENT" not in msg
    _untouched(outside)
    assert journal.current().revision == "r1"  # the record still says what is there
    assert journal.owned() >= {"conf/x.conf", "conf/new.conf"}  # the intent is kept


def test_a_deeper_directory_swapped_for_a_symlink_mid_write_is_refused(journal, tmp_path,
                                                                      monkeypatch):
    outside = _outside(tmp_path)
    files = {"a.yml": b"a", "conf/sub/x.conf": b"x", "conf/sub/y.conf": b"y"}
    journal.write(journal.plan("r1", files))
    plan = journal.plan("r2", {p: d + b"2" for p, d in files.items()})
    swapped = []

    def swap_after_the_first_file(name):
        if name == "during-files" and not swapped:
            _swap_for_symlink(journal.project_dir / "conf" / "sub", outside)
            swapped.append(name)

    monkeypatch.setattr("agent.stack.failpoint", swap_after_the_first_file)
    with pytest.raises(StackFilesError, match="'conf/sub' is a symlink"):
        journal.write(plan)
    assert swapped
    _untouched(outside)


def test_a_delete_through_a_directory_swapped_for_a_symlink_is_refused(journal, tmp_path):
    outside = _outside(tmp_path)
    journal.write(journal.plan("r1", {"compose.yml": b"a", "conf/x.conf": b"x"}))
    plan = journal.plan("r2", {"compose.yml": b"a"})
    assert plan.deletes == ["conf/x.conf"]
    _swap_for_symlink(journal.project_dir / "conf", outside)
    with pytest.raises(StackFilesError, match="'conf' is a symlink"):
        journal.write(plan)
    _untouched(outside)  # outside's x.conf (same name as the agent's) is still there
    # and the next plan refuses it as well, naming the path
    with pytest.raises(StackFilesError, match="'conf/x.conf'.*'conf' is a symlink"):
        journal.plan("r2", {"compose.yml": b"a"})


def test_a_symlink_to_a_directory_inside_project_dir_is_refused_too(journal):
    (journal.project_dir / "real").mkdir()
    (journal.project_dir / "conf").symlink_to(journal.project_dir / "real")
    with pytest.raises(StackFilesError, match="'conf' is a symlink"):
        journal.plan("r1", {"conf/x.conf": b"x"})
    assert list((journal.project_dir / "real").iterdir()) == []


def test_a_file_that_is_a_symlink_is_replaced_not_followed(journal, tmp_path):
    outside = _outside(tmp_path)
    journal.write(journal.plan("r1", {"compose.yml": b"a", "conf/x.conf": b"x"}))
    (journal.project_dir / "conf" / "x.conf").unlink()
    (journal.project_dir / "conf" / "x.conf").symlink_to(outside / "x.conf")
    plan = journal.plan("r2", {"compose.yml": b"a", "conf/x.conf": b"x2"})
    assert plan.writes == ["conf/x.conf"]
    journal.write(plan)
    target = journal.project_dir / "conf" / "x.conf"
    assert not target.is_symlink() and target.read_bytes() == b"x2"
    _untouched(outside)


def test_a_file_the_agent_wrote_that_became_a_symlink_is_removed_not_its_target(journal,
                                                                                tmp_path):
    outside = _outside(tmp_path)
    journal.write(journal.plan("r1", {"compose.yml": b"a", "x.conf": b"x"}))
    (journal.project_dir / "x.conf").unlink()
    (journal.project_dir / "x.conf").symlink_to(outside / "x.conf")
    journal.write(journal.plan("r2", {"compose.yml": b"a"}))
    assert not (journal.project_dir / "x.conf").is_symlink()
    _untouched(outside)


def test_a_path_on_which_a_file_sits_where_a_directory_must_be_is_refused(journal):
    (journal.project_dir / "conf").write_bytes(b"admin's")
    with pytest.raises(StackFilesError, match="'conf' is a file in .*, not a directory"):
        journal.plan("r1", {"conf/x.conf": b"x"})


def test_project_dir_group_writable_is_refused(journal):
    journal.project_dir.chmod(0o775)
    with pytest.raises(AgentEnvironmentError, match="writable by group or others") as e:
        check_project_dir(journal.project_dir)
    assert str(journal.project_dir) in str(e.value)
    with pytest.raises(AgentEnvironmentError, match="writable by group or others"):
        journal.plan("r1", {"compose.yml": b"a"})
    with pytest.raises(AgentEnvironmentError, match="writable by group or others"):
        journal.write(StackPlan("r1", {"compose.yml": b"a"}, ["compose.yml"], [], [], []))
    assert not (journal.project_dir / "compose.yml").exists()


def test_project_dir_owned_by_another_user_is_refused(journal, monkeypatch):
    if os.geteuid() == 0:
        os.chown(journal.project_dir, 4242, 4242)
    else:  # the directory's owner (us) is then "another user"
        monkeypatch.setattr("agent.safefs.os.geteuid", lambda: os.getuid() + 4242)
    with pytest.raises(AgentEnvironmentError, match="owned by uid") as e:
        check_project_dir(journal.project_dir)
    assert str(journal.project_dir) in str(e.value)
    with pytest.raises(AgentEnvironmentError, match="owned by uid"):
        journal.plan("r1", {"compose.yml": b"a"})


def test_project_dir_that_is_a_symlink_is_refused(journal, tmp_path):
    real = tmp_path / "real-srv"
    real.mkdir()
    link = tmp_path / "link-srv"
    link.symlink_to(real)
    with pytest.raises(AgentEnvironmentError, match="is a symlink"):
        check_project_dir(link)
    with pytest.raises(AgentEnvironmentError, match="is a symlink"):
        StackJournal(tmp_path / "state", link).plan("r1", {"compose.yml": b"a"})
    assert list(real.iterdir()) == []


def test_a_missing_project_dir_is_made_0755_by_the_write(tmp_path):
    pd = tmp_path / "new" / "srv"
    journal = StackJournal(tmp_path / "state", pd)
    check_project_dir(pd)  # missing is fine: the write makes it
    plan = journal.plan("r1", {"compose.yml": b"a", "conf/x.conf": b"x"})
    old = os.umask(0o077)
    try:
        journal.write(plan)
    finally:
        os.umask(old)
    assert oct(pd.stat().st_mode & 0o777) == "0o755"
    assert (pd / "conf" / "x.conf").read_bytes() == b"x"
    check_project_dir(pd)
