"""State: atomic writes, the state_dir lock, bounded history with folded repeats."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import state as state_mod
from agent.errors import AgentEnvironmentError, LockHeld, StateWriteError
from agent.state import (
    MAX_FAILED_REVISIONS,
    AgentState,
    Change,
    ImageDigest,
    PassRecord,
    RevisionRecord,
    StateLock,
    StateStore,
    write_atomic,
)

ROOT = Path(__file__).resolve().parents[2]
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _rec(outcome: str = "no-op", revision: str | None = "r1", reason: str | None = None,
         duration: float = 1.0, changes: list[Change] | None = None) -> PassRecord:
    return PassRecord(started_at=T0, duration_seconds=duration, revision=revision,
                      outcome=outcome, reason=reason, changes=changes or [])  # type: ignore[arg-type]


def _full_state() -> AgentState:
    st = AgentState(
        last_attempted=RevisionRecord(revision="r2", at=T0, outcome="applied"),
        last_applied=RevisionRecord(revision="r2", at=T0, outcome="applied"),
        known_good={"web": ImageDigest(image="a/web", digest=D2)},
    )
    st.mark_failed("r1", "web unhealthy")
    st.record_pass(_rec("applied", "r2", changes=[
        Change(service="web", image="a/web", old=D1, new=D2)]), limit=10)
    return st


# ------------------------------------------------------------------------- store
def test_missing_state_file_loads_as_a_fresh_state(tmp_path):
    st = StateStore(tmp_path).load()
    assert st == AgentState()
    assert st.known_good == {} and st.history == [] and st.in_flight is None


def test_saved_state_loads_back_equal(tmp_path):
    store = StateStore(tmp_path)
    store.save(_full_state())
    assert store.load() == _full_state()


def test_saved_state_is_pretty_json_with_version_1(tmp_path):
    StateStore(tmp_path).save(AgentState())
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["version"] == 1


def test_corrupt_state_file_is_an_environment_error_naming_the_file(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(AgentEnvironmentError, match="not a valid state file"):
        StateStore(tmp_path).load()


def test_state_file_of_the_wrong_shape_is_an_environment_error(tmp_path):
    (tmp_path / "state.json").write_text('{"version": 99}')
    with pytest.raises(AgentEnvironmentError, match="move it aside"):
        StateStore(tmp_path).load()


def test_unknown_keys_in_state_file_are_ignored_for_forward_compatibility(tmp_path):
    (tmp_path / "state.json").write_text('{"version": 1, "future": true}')
    assert StateStore(tmp_path).load() == AgentState()


def test_atomic_write_on_a_full_disk_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.save(_full_state())
    before = (tmp_path / "state.json").read_bytes()

    def enospc(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state_mod.os, "write", enospc)
    with pytest.raises(StateWriteError, match=r"state_dir full"):
        store.save(AgentState())
    monkeypatch.undo()
    assert (tmp_path / "state.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_write_survives_short_writes(tmp_path, monkeypatch):
    real_write = os.write

    def short(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(state_mod.os, "write", short)
    write_atomic(tmp_path / "f", b"0123456789" * 10)
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"0123456789" * 10


def test_atomic_write_failing_at_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def eio(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(state_mod.os, "replace", eio)
    with pytest.raises(StateWriteError, match="not writable"):
        write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_write_into_a_missing_directory_is_a_state_write_error(tmp_path):
    with pytest.raises(StateWriteError, match="refuses to act without a record"):
        write_atomic(tmp_path / "nope" / "state.json", b"x")


def test_atomic_write_sets_the_file_mode(tmp_path):
    write_atomic(tmp_path / "f", b"x", mode=0o600)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o600


def test_probe_writable_fails_early_on_a_full_disk(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.probe_writable()
    assert list(tmp_path.iterdir()) == []

    def enospc(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_mod.os, "write", enospc)
    with pytest.raises(StateWriteError, match="No space left on device"):
        store.probe_writable()


def test_ensure_dir_creates_the_state_dir(tmp_path):
    store = StateStore(tmp_path / "a" / "b")
    store.ensure_dir()
    assert (tmp_path / "a" / "b").is_dir()


def test_ensure_dir_where_a_file_is_in_the_way_is_a_state_write_error(tmp_path):
    (tmp_path / "blocker").write_text("")
    with pytest.raises(StateWriteError, match="cannot be created"):
        StateStore(tmp_path / "blocker" / "state").ensure_dir()


def test_ensure_dir_refuses_a_directory_it_cannot_write(tmp_path, monkeypatch):
    monkeypatch.setattr(state_mod.os, "access", lambda path, mode: False)
    with pytest.raises(StateWriteError, match="not writable"):
        StateStore(tmp_path).ensure_dir()


# ------------------------------------------------------------------------- lock
def test_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    with StateLock(tmp_path):
        with pytest.raises(LockHeld) as ei:
            StateLock(tmp_path).acquire()
    assert f"(pid {os.getpid()})" in str(ei.value)
    assert "only one agent" in str(ei.value)


def test_lock_refuses_a_holder_in_another_process(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from agent.state import StateLock
        from agent.errors import LockHeld
        try:
            StateLock(Path({str(tmp_path)!r})).acquire()
        except LockHeld as e:
            print(e)
            sys.exit(7)
        sys.exit(0)
    """)
    with StateLock(tmp_path):
        held = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert held.returncode == 7, held.stderr
    assert f"pid {os.getpid()}" in held.stdout
    free = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert free.returncode == 0, free.stdout + free.stderr


def test_lock_can_be_taken_again_after_release(tmp_path):
    lock = StateLock(tmp_path)
    lock.acquire()
    lock.release()
    lock.release()  # idempotent
    with StateLock(tmp_path):
        pass


def test_lock_file_records_the_holders_pid(tmp_path):
    with StateLock(tmp_path):
        assert (tmp_path / "agent.lock").read_text() == f"{os.getpid()}\n"


def test_lock_in_a_missing_directory_is_a_state_write_error(tmp_path):
    with pytest.raises(StateWriteError, match="cannot open lock file"):
        StateLock(tmp_path / "missing").acquire()


# ------------------------------------------------------------------------- history
def test_history_is_newest_first_and_bounded_by_the_limit():
    st = AgentState()
    for i in range(10):
        st.record_pass(_rec("applied", f"r{i}"), limit=3)
    assert [h.revision for h in st.history] == ["r9", "r8", "r7"]


@pytest.mark.parametrize("outcome", ["no-op", "skipped", "error", "invalid"])
def test_identical_repeated_passes_fold_into_one_record(outcome):
    st = AgentState()
    for d in (1.0, 2.0, 3.0):
        st.record_pass(_rec(outcome, reason="same", duration=d), limit=10)
    assert len(st.history) == 1
    assert st.history[0].repeats == 3
    assert st.history[0].duration_seconds == 3.0


def test_repeats_fold_only_while_revision_and_reason_stay_the_same():
    st = AgentState()
    st.record_pass(_rec("error", "r1", reason="registry down"), limit=10)
    st.record_pass(_rec("error", "r1", reason="docker down"), limit=10)
    st.record_pass(_rec("error", "r2", reason="docker down"), limit=10)
    st.record_pass(_rec("no-op", "r2", reason="docker down"), limit=10)
    assert len(st.history) == 4
    assert all(h.repeats == 1 for h in st.history)


@pytest.mark.parametrize("outcome", ["applied", "rolled-back", "failed", "degraded"])
def test_passes_that_did_something_are_never_folded(outcome):
    st = AgentState()
    st.record_pass(_rec(outcome), limit=10)
    st.record_pass(_rec(outcome), limit=10)
    assert len(st.history) == 2


def test_folding_keeps_the_history_from_filling_with_no_ops():
    st = AgentState()
    st.record_pass(_rec("applied", "r1"), limit=5)
    for _ in range(1000):
        st.record_pass(_rec("no-op", "r1"), limit=5)
    assert [(h.outcome, h.repeats) for h in st.history] == [("no-op", 1000), ("applied", 1)]


def test_failed_revisions_are_bounded_dropping_the_oldest():
    st = AgentState()
    for i in range(MAX_FAILED_REVISIONS + 5):
        st.mark_failed(f"r{i}", "bad")
    assert len(st.failed_revisions) == MAX_FAILED_REVISIONS
    assert "r0" not in st.failed_revisions and "r4" not in st.failed_revisions
    assert f"r{MAX_FAILED_REVISIONS + 4}" in st.failed_revisions


def test_marking_a_revision_failed_again_makes_it_the_newest():
    st = AgentState()
    st.mark_failed("old", "x")
    for i in range(MAX_FAILED_REVISIONS - 1):
        st.mark_failed(f"r{i}", "bad")
    st.mark_failed("old", "again")
    st.mark_failed("newest", "bad")
    assert st.failed_revisions["old"] == "again"
    assert "r0" not in st.failed_revisions
