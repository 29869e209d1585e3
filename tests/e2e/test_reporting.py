"""End-to-end reporting on the real rig: commit statuses to a fake GitHub on loopback,
a scrape of /metrics from the real daemon, Apprise json:// messages to a loopback receiver."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import rig
from github_server import FakeGitHub
from harness import DaemonProcess, Harness
from notify_receiver import NotifyReceiver
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "ghs_e2e_status_token"


@dataclass
class Reporting:
    h: Harness
    gh: FakeGitHub
    rx: NotifyReceiver
    metrics_port: int
    textfile: Path

    def release(self, **digests: str) -> str:
        rev = self.h.release(**digests)
        self.gh.known_commit(rev)  # the git commit exists on "GitHub" too
        return rev

    def statuses(self, rev: str) -> list[tuple[str, str]]:
        return [(s["state"], s["description"]) for s in self.gh.statuses_for(rev)]

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return parse(urllib.request.urlopen(url, timeout=5).read().decode())

    def scrape_after_passes(self, n: int, timeout: float = 10
                            ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """A scrape once n passes are counted (the observers run just after the pass's
        'agent.pass.completed' line)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.scrape()
            if s[("gitops_agent_pass_duration_seconds_count", ())] >= n or \
                    time.monotonic() > deadline:
                return s
            time.sleep(0.1)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def releases(s: dict, outcome: str) -> float:  # type: ignore[type-arg]
    return float(s[("gitops_agent_releases_total", (("outcome", outcome),))])


@pytest.fixture
def rep(tmp_path, registry, images, docker_client, compose_cmd) -> Iterator[Reporting]:  # type: ignore[no-untyped-def]
    with FakeGitHub(repo="acme/shop", token=TOKEN) as gh, NotifyReceiver() as rx:
        token = tmp_path / "status-token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        port = rig.free_port()
        textfile = tmp_path / "gitops_agent.prom"
        extra = (
            'host = "prod-1"\n\n'
            "[report.github]\n"
            'repo = "acme/shop"\n'
            f'api_url = "{gh.api_url}"\n'
            f'token_file = "{token}"\n'
            "post_pending = true\n"
            "timeout_seconds = 2\n\n"
            "[metrics]\n"
            f'listen = "127.0.0.1:{port}"\n'
            f'textfile = "{textfile}"\n\n'
            "[notify]\n"
            f'urls = ["{rx.url}"]\n'
        )
        h = Harness.create(tmp_path / "p", registry.host, images, docker_client, compose_cmd,
                           name=f"e2e{uuid.uuid4().hex[:8]}", extra_config=extra)
        try:
            yield Reporting(h, gh, rx, port, textfile)
        finally:
            h.teardown()


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def test_good_release_posts_pending_then_success_and_idle_passes_post_nothing(rep):
    rev = rep.release(web="web-v1", api="api-v1")
    r = rep.h.sync()
    assert r.code == 0, r.logs
    imgs = rep.h.images
    assert rep.statuses(rev) == [
        ("pending", "prod-1: deploying api, web"),
        ("success", f"prod-1 runs api@{short(imgs['api-v1'])}, web@{short(imgs['web-v1'])}"),
    ]
    assert {s["context"] for s in rep.gh.statuses_for(rev)} == {"deploy/prod-1"}
    rep.gh.clear_log()
    for _ in range(3):
        r = rep.h.sync()
        assert r.summary()["outcome"] == "no-op"
    assert rep.gh.count() == 0  # an idle pass makes no request to GitHub
    assert rep.rx.received() == []  # "applied" is not in the default notify.on
    # the textfile is written after each sync pass: 4 passes, 1 release
    s = parse(rep.textfile.read_text())
    assert s[("gitops_agent_passes_total", (("outcome", "no-op"),))] == 3
    assert releases(s, "applied") == 1


def test_rolled_back_release_posts_failure_and_notifies_once(rep):
    rep.release(web="web-v1", api="api-v1")
    assert rep.h.sync().code == 0
    bad = rep.release(web="web-bad", api="api-v1")
    r = rep.h.sync()
    assert r.code == 1 and r.summary()["outcome"] == "rolled-back"
    st = rep.statuses(bad)
    assert [s for s, _ in st] == ["pending", "failure"]  # a rollback is never "deployed"
    assert st[0][1] == "prod-1: deploying web"
    assert st[1][1].startswith("prod-1: rolled back: ") and "unhealthy" in st[1][1]
    assert len(st[1][1]) <= 140
    [msg] = rep.rx.wait_for(1)
    assert msg["title"] == f"prod-1: rolled back {bad[:12]}"
    body = msg["message"]
    assert "outcome: rolled-back" in body and f"revision: {bad[:12]}" in body
    assert (f"services: web {short(rep.h.images['web-v1'])} -> "
            f"{short(rep.h.images['web-bad'])}") in body
    assert "reason: " in body and "unhealthy" in body
    # the failed revision is skipped on later passes: nothing new on the commit or in chat
    for _ in range(2):
        assert rep.h.sync().summary()["outcome"] == "skipped"
    assert len(rep.gh.statuses_for(bad)) == 2
    assert len(rep.rx.received()) == 1


def test_invalid_revision_is_an_error_status_and_one_message_over_repeated_passes(rep):
    rep.release(web="web-v1", api="api-v1")
    assert rep.h.sync().code == 0
    bad = rep.h.commit("services:\n  web:\n    image: nope\n", "broken")
    rep.gh.known_commit(bad)
    for _ in range(4):
        r = rep.h.sync()
        assert r.code == 2 and r.summary()["outcome"] == "invalid"
    [(state, desc)] = rep.statuses(bad)
    assert state == "error" and desc.startswith("prod-1: invalid: ")
    [msg] = rep.rx.wait_for(1)
    assert msg["title"] == f"prod-1: invalid revision {bad[:12]}"
    time.sleep(0.5)
    assert len(rep.rx.received()) == 1  # de-duplicated over the 4 failing passes


def test_github_down_release_completes_and_the_status_arrives_later(rep):
    rev = rep.release(web="web-v1", api="api-v1")
    rep.gh.fail(503)
    r = rep.h.sync()
    assert r.code == 0 and r.summary()["outcome"] == "applied", r.logs
    assert rep.h.running_digest("web") == rep.h.images["web-v1"]
    assert r.find("agent.report.failed") and rep.gh.statuses_for(rev) == []
    attempts = rep.gh.status_counts[503]
    assert 1 <= attempts <= 2  # one try when the release starts, one when it ends (if due)
    rep.gh.clear_failures()
    sent = []
    deadline = time.monotonic() + 15  # backoff: 1 s, then 2 s after the second failure
    while not sent and time.monotonic() < deadline:
        time.sleep(0.5)
        r = rep.h.sync()
        assert r.summary()["outcome"] == "no-op"
        sent = r.find("agent.report.sent")
    assert [s for s, _ in rep.statuses(rev)] == ["pending", "success"]  # in order
    assert len(sent) == 2


def test_daemon_metrics_scraped_during_and_after_releases_survive_a_restart(rep):
    good = rep.release(web="web-v1", api="api-v1")
    d = DaemonProcess(rep.h.project.config_path)
    try:
        d.wait_for("agent.pass.completed", where=lambda e: e["outcome"] == "applied")
        s = rep.scrape_after_passes(1)
        assert releases(s, "applied") == 1 and releases(s, "rolled-back") == 0
        assert s[("gitops_agent_revision_info", (("revision", good), ("state", "applied")))] == 1
        assert s[("gitops_agent_service_info", (("digest", rep.h.images["web-v1"]),
                                                ("service", "web")))] == 1
        assert s[("gitops_agent_service_healthy", (("service", "web"),))] == 1
        assert s[("gitops_agent_failed_revision", ())] == 0
        assert s[("gitops_agent_build_info", (("version", "0.1.0"),))] == 1
        bad = rep.release(web="web-bad", api="api-v1")
        d.wait_for("agent.apply.started", count=2)
        during = rep.scrape()  # the endpoint answers while a release is in flight
        assert releases(during, "rolled-back") == 0
        d.wait_for("agent.pass.completed", timeout=90,
                   where=lambda e: e["outcome"] == "rolled-back")
        n = len(d.events("agent.pass.completed"))
        after = rep.scrape_after_passes(n)
        assert releases(after, "rolled-back") == 1 and releases(after, "applied") == 1
        assert after[("gitops_agent_failed_revision", ())] == 1
        assert after[("gitops_agent_revision_info", (("revision", bad),
                                                     ("state", "desired")))] == 1
        assert after[("gitops_agent_revision_info", (("revision", good),
                                                     ("state", "applied")))] == 1
        assert after[("gitops_agent_service_info", (("digest", rep.h.images["web-v1"]),
                                                    ("service", "web")))] == 1
        assert after[("gitops_agent_last_applied_timestamp_seconds", ())] > 0
    finally:
        assert d.stop() == 0
    d = DaemonProcess(rep.h.project.config_path)  # the counters come back from the journal
    try:
        d.wait_for("agent.daemon.started")
        s = rep.scrape()
        assert releases(s, "applied") == 1 and releases(s, "rolled-back") == 1
        assert s[("gitops_agent_failed_revision", ())] == 1
    finally:
        assert d.stop() == 0
    assert [st for st, _ in rep.statuses(bad)] == ["pending", "failure"]


def test_status_token_readable_by_others_is_refused_before_anything_is_touched(rep, capsys):
    rep.release(web="web-v1", api="api-v1")
    token = rep.h.project.root.parent / "status-token"
    token.chmod(0o644)
    r = rep.h.sync()
    assert r.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report.github.token_file" in err[0] and "chmod 600" in err[0]
    assert TOKEN not in err[0]
    assert rep.h.containers("web") == [] and rep.gh.count() == 0


def test_metrics_after_a_bump_name_the_new_digest_and_the_untouched_service(rep):
    rep.release(web="web-v1", api="api-v1")
    assert rep.h.sync().code == 0
    rep.release(web="web-v2", api="api-v1")
    r = rep.h.sync()
    assert r.code == 0 and r.summary()["outcome"] == "applied", r.logs
    s = parse(rep.textfile.read_text())  # written after the release pass, not the next one
    assert s[("gitops_agent_service_info", (("digest", rep.h.images["web-v2"]),
                                            ("service", "web")))] == 1
    assert s[("gitops_agent_service_info", (("digest", rep.h.images["api-v1"]),
                                            ("service", "api")))] == 1
    assert s[("gitops_agent_service_healthy", (("service", "web"),))] == 1
    assert s[("gitops_agent_service_healthy", (("service", "api"),))] == 1
