"""Git's content addressing (agent.trust) and the fake GitHub's git objects, against git."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from github_server import git_objects

from agent.trust import (
    blob_id,
    commit_tree,
    listing_problem,
    tree_id,
    tree_object,
    trees_holding,
)

# names whose order differs between "sort by name" and git's "a tree sorts as name + '/'"
FILES = {
    "a": b"blob named a\n",
    "a-b": b"dash\n",
    "a.b": b"dot\n",
    "a0": b"zero\n",
    "b/a.b": b"in b\n",
    "b/a/x": b"deeper\n",
    "conf/app.conf": b"x = 1\n",
    "conf/sub/b.conf": b"b\n",
    "desired-state.yml": b"version: 1\n",
    "empty": b"",
}


@dataclass(frozen=True)
class Entry:  # a listing entry, as agent.stack.TreeEntry
    path: str
    mode: str
    kind: str
    oid: str


def git(*args: str, cwd: Path, stdin: bytes | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.test",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.test"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, input=stdin, check=True,
                          capture_output=True).stdout.decode()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    git("init", "--quiet", str(work), cwd=tmp_path)
    for path, content in FILES.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(content)
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "files", cwd=work)
    return work


def listing(work: Path, rev: str = "HEAD") -> list[Entry]:
    """What GitHub's recursive git/trees shows: git ls-tree -r -t (trees as 040000)."""
    out = []
    for line in git("ls-tree", "-r", "-t", "-z", rev, cwd=work).split("\0"):
        if line:
            meta, path = line.split("\t", 1)
            mode, kind, oid = meta.split()
            out.append(Entry(path, mode, kind, oid))
    return out


def test_blob_id_is_gits_object_name(repo):
    for content in FILES.values():
        assert blob_id(content) == git("hash-object", "--stdin", cwd=repo,
                                       stdin=content).strip()


def test_every_tree_rebuilt_from_its_entries_is_gits_tree_in_gits_order(repo):
    entries = listing(repo)
    trees = {"": git("rev-parse", "HEAD^{tree}", cwd=repo).strip()}
    trees.update({e.path: e.oid for e in entries if e.kind == "tree"})
    assert set(trees) == {"", "b", "b/a", "conf", "conf/sub"}
    for d, oid in trees.items():
        rows = [(e.mode, e.path.rsplit("/", 1)[-1], e.oid) for e in entries
                if e.path.rpartition("/")[0] == d]
        rows.reverse()  # the input order does not matter: git's order is rebuilt
        assert tree_id(rows) == oid
        assert tree_object(rows) == subprocess.run(
            ["git", "cat-file", "tree", oid], cwd=repo, check=True, capture_output=True).stdout


def test_an_executable_a_symlink_and_a_tree_mode_with_a_leading_zero(tmp_path, repo):
    (repo / "run.sh").write_bytes(b"#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "link").symlink_to("a")
    git("add", "-A", cwd=repo)
    git("commit", "--quiet", "-m", "modes", cwd=repo)
    entries = listing(repo)
    modes = {e.path: e.mode for e in entries}
    assert (modes["run.sh"], modes["link"], modes["b"]) == ("100755", "120000", "040000")
    root = git("rev-parse", "HEAD^{tree}", cwd=repo).strip()
    assert listing_problem(root, entries, {""}) is None


def test_the_fakes_trees_are_the_trees_git_makes_of_the_same_files(repo):
    root, trees, blobs = git_objects(FILES)
    assert root == git("rev-parse", "HEAD^{tree}", cwd=repo).strip()
    assert set(blobs) == {blob_id(c) for c in FILES.values()}
    honest = {(e.path.rsplit("/", 1)[-1], e.mode, e.oid) for e in listing(repo)}
    assert {(r.name, r.mode, r.sha) for rows in trees.values() for r in rows} == honest


def test_commit_tree_is_the_tree_line_of_the_commit_object(repo):
    raw = git("cat-file", "commit", "HEAD", cwd=repo)
    assert commit_tree(raw) == git("rev-parse", "HEAD^{tree}", cwd=repo).strip()
    assert commit_tree("parent " + "a" * 40 + "\n") is None
    assert commit_tree("tree " + "A" * 40 + "\n") is None
    assert commit_tree("tree " + "a" * 39 + "\n") is None


def test_an_honest_listing_passes_for_every_path_read(repo):
    entries = listing(repo)
    root = git("rev-parse", "HEAD^{tree}", cwd=repo).strip()
    for paths in (["desired-state.yml"], ["conf/"], ["b/a/x", "a"], ["missing/file"]):
        assert listing_problem(root, entries, trees_holding(paths, entries)) is None


def test_trees_holding_a_directory_are_every_tree_above_and_under_it(repo):
    entries = listing(repo)
    assert trees_holding(["desired-state.yml"], entries) == {""}
    assert trees_holding(["conf/"], entries) == {"", "conf", "conf/sub"}
    assert trees_holding(["b/a/x"], entries) == {"", "b", "b/a"}


def _lie(entries: list[Entry], path: str, **change: str) -> list[Entry]:
    return [replace(e, **change) if e.path == path else e for e in entries]


def test_a_listing_that_names_another_blob_is_caught_at_the_tree_holding_it(repo):
    entries = listing(repo)
    root = git("rev-parse", "HEAD^{tree}", cwd=repo).strip()
    evil = blob_id(b"evil\n")
    lied = _lie(entries, "conf/sub/b.conf", oid=evil)
    problem = listing_problem(root, lied, trees_holding(["conf/"], lied))
    assert problem is not None and problem.startswith("'conf/sub' as listed is not the tree")
    # renaming every tree above it to match still ends at the root the signed commit names
    sub = tree_id([("100644", "b.conf", evil)])
    conf = tree_id([(e.mode, e.path.rsplit("/", 1)[-1], sub if e.path == "conf/sub" else e.oid)
                    for e in lied if e.path.rpartition("/")[0] == "conf"])
    lied = _lie(_lie(lied, "conf/sub", oid=sub), "conf", oid=conf)
    problem = listing_problem(root, lied, trees_holding(["conf/"], lied))
    assert problem == f"the root tree as listed is not the tree {root[:12]} the signed commit names"


def test_a_listing_that_leaves_out_adds_or_retypes_an_entry_is_refused(repo):
    entries = listing(repo)
    root = git("rev-parse", "HEAD^{tree}", cwd=repo).strip()
    hidden = [e for e in entries if e.path != "conf/sub/b.conf"]
    assert listing_problem(root, hidden, trees_holding(["conf/"], hidden)) is not None
    added = [*entries, Entry("conf/extra.conf", "100644", "blob", blob_id(b"x"))]
    assert listing_problem(root, added, trees_holding(["conf/"], added)) is not None
    orphan = [*entries, Entry("nowhere/x.conf", "100644", "blob", blob_id(b"x"))]
    assert listing_problem(root, orphan, trees_holding(["nowhere/"], orphan)) == (
        "the listing has entries under 'nowhere' but no tree 'nowhere'")
    retyped = _lie(entries, "conf/app.conf", kind="tree")
    assert "type 'tree' with mode '100644'" in (
        listing_problem(root, retyped, trees_holding(["conf/"], retyped)) or "")


def test_what_no_git_tree_can_hold_is_refused():
    oid = blob_id(b"x")
    for rows in ([("100644", "a/b", oid)], [("100644", "", oid)],
                 [("100644", "a", oid), ("100755", "a", oid)], [("100644", "a", "zz")],
                 [("10064x", "a", oid)]):
        with pytest.raises(ValueError):
            tree_object(rows)
