"""Faults on the host: the git remote unreachable or force-pushed backwards, state_dir
read-only or full, two agents on one state_dir, a compose file broken by hand."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import rig
from faultkit import AgentProc, assert_marker, assert_released_set, digests, one_line

# --------------------------------------------------------------------------- git remote


def test_git_remote_unreachable_exits_3_and_touches_nothing(deployed):
    h, marker = deployed
    h.release(web="web-v2", api="api-v2")
    before = h.container_ids()
    cfg = h.project.config_path
    good = cfg.read_text()
    dead = f"http://127.0.0.1:{rig.free_port()}/shop.git"  # nothing listens there
    cfg.write_text(good.replace(f'repo = "{h.project.repo.origin}"', f'repo = "{dead}"'))
    p = h.cli_subprocess("sync")
    assert p.returncode == 3, p.stderr
    line = one_line(p.stderr.strip().splitlines()[-1])
    assert f"git fetch of {dead}@main:desired-state.yml failed" in line, p.stderr
    assert h.container_ids() == before
    assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
    assert h.state()["last_attempted"]["outcome"] == "error"
    cfg.write_text(good)  # the remote is back: the next pass releases
    r = h.sync()
    assert r.code == 0, r.summary()
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)


def test_history_force_pushed_to_an_older_revision_is_followed(deployed):
    h, marker = deployed
    old = h.project.repo.commit_file("desired-state.yml",
                                     (h.project.repo.work / "desired-state.yml").read_text(),
                                     "same again")
    assert h.sync().code == 0
    h.release(web="web-v2", api="api-v2")
    assert h.sync().code == 0
    rig.git("reset", "--quiet", "--hard", old, cwd=h.project.repo.work)
    rig.git("push", "--quiet", "--force", "origin", "HEAD:main", cwd=h.project.repo.work)
    r = h.sync()
    assert r.code == 0, r.summary()
    back = r.find("agent.fetch.revision_went_backwards")
    assert len(back) == 1 and back[0]["revision"] == old
    assert r.summary()["revision"] == old and r.summary()["outcome"] == "applied"
    assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
    assert_marker(h, marker)


# --------------------------------------------------------------------------- state_dir


@contextlib.contextmanager
def _mounted(*setup: list[str], target: Path) -> Iterator[None]:
    for cmd in setup:
        subprocess.run(cmd, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=False, capture_output=True)


def test_state_dir_read_only_refuses_to_act_exit_4(deployed):
    h, marker = deployed
    sd = h.project.state_dir
    h.release(web="web-v2", api="api-v2")
    before = h.container_ids()
    with _mounted(["mount", "--bind", str(sd), str(sd)],
                  ["mount", "-o", "remount,ro,bind", str(sd)], target=sd):
        with pytest.raises(OSError):
            (sd / "probe").write_text("x")  # really read-only, even for root
        p = h.cli_subprocess("sync")
    assert p.returncode == 4, p.stderr
    line = one_line(p.stderr.strip().splitlines()[-1])
    assert str(sd) in line and "refuses to act without a record" in line, p.stderr
    assert h.container_ids() == before
    r = h.sync()  # writable again: the release lands
    assert r.code == 0, r.summary()
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)


def test_state_dir_full_refuses_to_act_exit_4(harness):
    h = harness
    sd = h.project.state_dir
    sd.mkdir(parents=True)
    with _mounted(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0750", "tmpfs", str(sd)], target=sd):
        h.release(web="web-v1", api="api-v1")
        assert h.sync().code == 0
        from faultkit import write_marker
        marker = write_marker(h)
        h.release(web="web-v2", api="api-v2")
        before = h.container_ids()
        subprocess.run(["dd", "if=/dev/zero", f"of={sd}/filler", "bs=64k"],
                       capture_output=True, check=False)  # until ENOSPC
        p = h.cli_subprocess("sync")
        assert p.returncode == 4, p.stderr
        line = one_line(p.stderr.strip().splitlines()[-1])
        assert "No space left on device" in line and "full" in line, p.stderr
        assert "refuses to act without a record" in line, p.stderr
        assert '"event": "agent.pass.completed"' in p.stderr
        assert "git fetch" not in p.stderr  # the cause, not a symptom
        assert h.container_ids() == before
        assert_released_set(h, digests(h, web="web-v1", api="api-v1"))
        (sd / "filler").unlink()  # space again: the release lands
        r = h.sync()
        assert r.code == 0, r.summary()
        assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
        assert_marker(h, marker)


def test_two_agents_on_one_state_dir_the_second_refuses_exit_4(deployed):
    h, marker = deployed
    first = AgentProc(h, "run")
    try:
        first.wait_event("agent.pass.completed")
        h.release(web="web-v2", api="api-v2")
        for args in (("sync",), ("run",)):
            p = h.cli_subprocess(*args, timeout=60)
            assert p.returncode == 4, p.stderr
            line = one_line(p.stderr.strip().splitlines()[-1])
            assert f"another gitops-agent holds {h.project.state_dir}/agent.lock" in line
            assert f"(pid {first.proc.pid})" in line
    finally:
        first.proc.terminate()
        assert first.wait(60) == 0
    r = h.sync()
    assert r.code == 0, r.summary()
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)


# --------------------------------------------------------------------------- compose file


def test_compose_file_broken_by_hand_exits_2_names_the_file_touches_nothing(deployed):
    h, marker = deployed
    compose = h.project.project_dir / "compose.yml"
    good = compose.read_text()
    compose.write_text(good.replace("    volumes:\n      - webdata:/data",
                                    "    volumes:\n      - webdata:/data\n     oops: [", 1))
    h.release(web="web-v2", api="api-v2")
    before = h.container_ids()
    p = h.cli_subprocess("sync")
    assert p.returncode == 2, p.stderr
    line = one_line(p.stderr.strip().splitlines()[-1])
    assert str(compose) in p.stderr, p.stderr
    assert h.container_ids() == before
    assert h.state()["last_attempted"]["outcome"] == "invalid"
    assert line
    compose.write_text(good)  # fixed: the release lands
    r = h.sync()
    assert r.code == 0, r.summary()
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)


# --------------------------------------------------------------------------- compose binary


def test_compose_binary_missing_exits_4_names_it_touches_nothing(deployed):
    h, marker = deployed
    h.release(web="web-v2", api="api-v2")
    before = h.container_ids()
    missing = h.project.root / "no-such-dir" / "docker-compose"
    p = h.cli_subprocess("sync", env={"GITOPS_AGENT_COMPOSE": str(missing)})
    assert p.returncode == 4, p.stderr
    line = one_line(p.stderr.strip().splitlines()[-1])
    assert f"the compose command '{missing}' cannot be run (command not found)" in line
    assert "invalid" not in line
    assert h.container_ids() == before
    assert h.state()["failed_revisions"] == {}  # the host's fault: the revision is not failed
    r = h.sync()  # compose is back: the release lands
    assert r.code == 0, r.summary()
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)


# --------------------------------------------------------------------------- hostile state_dir


def test_lock_file_symlinked_elsewhere_refuses_exit_4_and_leaves_the_target_alone(deployed):
    h, marker = deployed
    h.release(web="web-v2", api="api-v2")
    before = h.container_ids()
    victim = h.project.root / "victim"
    victim.write_text("precious\n")
    lock = h.project.state_dir / "agent.lock"
    lock.unlink()
    lock.symlink_to(victim)
    p = h.cli_subprocess("sync")
    assert p.returncode == 4, p.stderr
    line = one_line(p.stderr.strip().splitlines()[-1])
    assert f"lock file {lock} is a symlink" in line
    assert victim.read_text() == "precious\n"
    assert h.container_ids() == before
    lock.unlink()
    r = h.sync()
    assert r.code == 0, r.summary()
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)


def test_compose_override_symlinked_elsewhere_is_replaced_never_written_through(deployed):
    h, marker = deployed
    override = h.project.state_dir / "compose.override.gitops-agent.json"
    assert override.is_file()
    victim = h.project.root / "victim.yml"
    victim.write_text("precious\n")
    override.unlink()
    override.symlink_to(victim)
    h.release(web="web-v2", api="api-v2")
    r = h.sync()
    assert r.code == 0, r.summary()
    assert victim.read_text() == "precious\n"
    assert not override.is_symlink() and digests(h, web="web-v2")["web"] in override.read_text()
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)


@pytest.mark.parametrize("hostile", ["group-writable", "owned-by-nobody"])
def test_state_dir_others_could_change_refuses_exit_4_touches_nothing(deployed, hostile):
    import os

    h, marker = deployed
    h.release(web="web-v2", api="api-v2")
    before = h.container_ids()
    d = h.project.state_dir
    if hostile == "group-writable":
        d.chmod(0o770)
        expected = f"state_dir {d} is writable by group or others (mode 0770)"
    else:
        os.chown(d, 65534, 65534)
        expected = f"state_dir {d} is owned by uid 65534, not by the agent's user"
    try:
        p = h.cli_subprocess("sync")
        assert p.returncode == 4, p.stderr
        line = one_line(p.stderr.strip().splitlines()[-1])
        assert expected in line, p.stderr
        assert h.container_ids() == before
    finally:
        d.chmod(0o750)
        os.chown(d, os.geteuid(), os.getegid())
    r = h.sync()
    assert r.code == 0, r.summary()
    assert_released_set(h, digests(h, web="web-v2", api="api-v2"))
    assert_marker(h, marker)
