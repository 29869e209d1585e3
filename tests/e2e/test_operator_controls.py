"""End-to-end: the operator's brake on the real rig — freeze with a reason (the daemon
running), deploy windows, an emergency rollback with the git source unreachable and the
registry stopped, and image retention over six releases."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import pytest
import rig
from harness import DaemonProcess

from agent.windows import DAYS


def _wait_state(h, pred, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = h.state()
            if pred(st):
                return st
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"state never matched; last: {h.state().get('last_attempted')}")


def _web_digests_on_disk(h) -> set[str]:
    repo = h.image("web")
    out = set()
    for img in h.client.images.list():
        for ref in img.attrs.get("RepoDigests") or []:
            if ref.startswith(repo + "@"):
                out.add(ref.split("@", 1)[1])
    return out


# ------------------------------------------------------------------ freeze
def test_freeze_stops_a_new_commit_while_the_daemon_runs_and_unfreeze_applies_it(
        harness, capsys):
    h = harness
    h.release(web="web-v1", api="api-v1")
    d = DaemonProcess(h.project.config_path)
    try:
        d.wait_for("agent.pass.completed", where=lambda e: e["outcome"] == "applied")
        assert h.cli("freeze", "--reason", "incident 7: payments down").code == 0
        out = capsys.readouterr().out
        assert "frozen by" in out and "incident 7: payments down" in out
        rev = h.release(web="web-v2", api="api-v1")
        frozen = d.wait_for("agent.pass.completed", timeout=60,
                            where=lambda e: e["outcome"] == "frozen" and e["revision"] == rev)
        assert "incident 7: payments down" in frozen["reason"]
        assert h.running_digest("web") == h.images["web-v1"]
        assert h.cli("status").code == 0
        status = capsys.readouterr().out
        assert "FROZEN: frozen by" in status and "incident 7: payments down" in status
        assert h.cli("history").code == 0
        assert "frozen" in capsys.readouterr().out
        assert h.cli("unfreeze").code == 0
        assert "unfrozen" in capsys.readouterr().out
        d.wait_for("agent.pass.completed", timeout=60,
                   where=lambda e: e["outcome"] == "applied" and e["revision"] == rev)
        assert h.running_digest("web") == h.images["web-v2"]
        assert h.serve("web") == "web v2"
    finally:
        assert d.stop() == 0


# ------------------------------------------------------------------ windows
def _with_window(h, window: str) -> None:
    cfg = h.project.config_path
    cfg.write_text(cfg.read_text() + f'windows = ["{window}"]\ntimezone = "UTC"\n')


def test_outside_the_deploy_window_a_new_revision_waits_and_names_the_next_opening(
        harness):
    h = harness
    tomorrow = DAYS[(datetime.now(UTC) + timedelta(days=1)).weekday()]
    _with_window(h, f"{tomorrow} 00:00-24:00")  # a window that is not open today
    h.release(web="web-v1", api="api-v1")
    r = h.sync()
    assert r.code == 0, r.logs
    s = r.summary()
    assert s["outcome"] == "waiting"
    assert f"the next opens {tomorrow} " in s["reason"] and "00:00 UTC" in s["reason"]
    assert h.containers("web") == []
    assert h.state()["last_attempted"]["outcome"] == "waiting"
    r = h.sync("--force")  # --force ignores windows
    assert r.code == 0 and r.summary()["outcome"] == "applied"
    assert h.running_digest("web") == h.images["web-v1"]


def test_inside_the_deploy_window_a_new_revision_is_applied(harness):
    h = harness
    today = DAYS[datetime.now(UTC).weekday()]
    _with_window(h, f"{today} 00:00-24:00")
    if datetime.now(UTC).hour == 23 and datetime.now(UTC).minute == 59:
        time.sleep(61)  # never straddle midnight
        return test_inside_the_deploy_window_a_new_revision_is_applied(harness)
    h.release(web="web-v1", api="api-v1")
    r = h.sync()
    assert r.code == 0 and r.summary()["outcome"] == "applied", r.logs
    assert h.running_digest("web") == h.images["web-v1"]


# ------------------------------------------------------------------ rollback
def test_rollback_with_git_unreachable_and_registry_stopped_restores_and_freezes(
        harness, registry, capsys):
    h = harness
    good = h.release(web="web-v1", api="api-v1")
    assert h.sync().code == 0
    bad = h.release(web="web-v2", api="api-v2")  # healthy, but bad for the business
    assert h.sync().code == 0
    assert h.serve("web") == "web v2"
    cfg = h.project.config_path
    dead = f"http://127.0.0.1:{rig.free_port()}/shop.git"  # nothing listens there
    cfg.write_text(cfg.read_text().replace(f'repo = "{h.project.repo.origin}"',
                                           f'repo = "{dead}"'))
    registry.stop()
    try:
        r = h.cli("rollback")
        out = capsys.readouterr().out
        assert r.code == 0, (out, r.logs)
        assert "all images were local" in out
        assert f"rolled back to {good[:12]}: applied, healthy" in out
        assert "agent.pull.started" not in r.events()
        assert "agent.fetch.done" not in r.events()
        assert h.running_digest("web") == h.images["web-v1"]
        assert h.running_digest("api") == h.images["api-v1"]
        assert h.serve("web") == "web v1"
        st = h.state()
        assert st["last_applied"]["revision"] == good
        assert bad in st["failed_revisions"]
        freeze = (h.project.state_dir / "freeze.json").read_text()
        assert f"rollback to {good[:12]} by " in freeze
        # the next pass (git back, registry back) does not re-apply the bad revision
    finally:
        registry.start()
    cfg.write_text(cfg.read_text().replace(f'repo = "{dead}"',
                                           f'repo = "{h.project.repo.origin}"'))
    r = h.sync()
    assert r.code == 0 and r.summary()["outcome"] == "frozen"
    assert h.running_digest("web") == h.images["web-v1"]


def test_rollback_while_the_daemon_runs_is_performed_by_the_daemon(harness):
    h = harness
    good = h.release(web="web-v1", api="api-v1")
    d = DaemonProcess(h.project.config_path)
    try:
        d.wait_for("agent.pass.completed", where=lambda e: e["outcome"] == "applied")
        rev = h.release(web="web-v2", api="api-v1")
        d.wait_for("agent.pass.completed", timeout=60,
                   where=lambda e: e["outcome"] == "applied" and e["revision"] == rev)
        p = h.cli_subprocess("rollback", timeout=180)
        assert p.returncode == 0, p.stderr + p.stdout
        assert "asking it to roll back" in p.stdout
        assert f"rolled back to {good[:12]}: applied, healthy" in p.stdout
        d.wait_for("agent.rollback.finished", timeout=10)
        assert h.running_digest("web") == h.images["web-v1"]
        _wait_state(h, lambda st: st["history"][0]["outcome"] == "frozen", timeout=30)
        assert h.running_digest("web") == h.images["web-v1"]
    finally:
        assert d.stop() == 0


# ------------------------------------------------------------------ retention
@pytest.fixture(scope="module")
def more_web_images(registry, docker_client, session_dir: Path) -> dict[str, str]:
    out = {}
    for tag in ("r4", "r5", "r6"):
        out[f"web-{tag}"] = rig.build_and_push(docker_client, registry.host, "e2e/web", tag,
                                               "healthy", f"web {tag}", session_dir / "ctx")
        rig.remove_local_image(docker_client, f"{registry.host}/e2e/web:{tag}")
    return out


@pytest.fixture
def unrelated_image(docker_client, tmp_path: Path):
    ctx = rig.build_context(tmp_path / "unrelated", "exit0", "unrelated")
    img, _ = docker_client.images.build(path=str(ctx), tag="gitops-e2e-unrelated:keep",
                                        rm=True, forcerm=True)
    yield img.id
    rig.remove_local_image(docker_client, "gitops-e2e-unrelated:keep")


def test_six_releases_keep_the_running_digest_and_three_earlier_and_nothing_else(
        harness, more_web_images, unrelated_image, capsys):
    h = harness
    h.images.update(more_web_images)
    cfg = h.project.config_path
    cfg.write_text(cfg.read_text() + "keep_releases = 3\n")
    order = ["web-v1", "web-v2", "web-v3", "web-r4", "web-r5", "web-r6"]
    revs = []
    for key in order:
        revs.append(h.release(web=key, api="api-v1"))
        r = h.sync()
        assert r.code == 0 and r.summary()["outcome"] == "applied", r.logs
    assert h.running_digest("web") == h.images["web-r6"]
    assert _web_digests_on_disk(h) == {h.images[k] for k in order[2:]}
    assert h.client.images.get(unrelated_image).id == unrelated_image  # untouched
    assert h.cli("status", "--json").code == 0
    import json

    view = json.loads(capsys.readouterr().out)
    assert [t["revision"] for t in view["rollback_targets"]] == [revs[4], revs[3], revs[2]]
    with pytest.raises(docker.errors.ImageNotFound):
        h.client.images.get(f"{h.image('web')}@{h.images['web-v1']}")
