"""End-to-end: releases behind a real proxy under ~50 requests/s from loopback.

start-first must lose no request, for a good release and for a bad one, and a bad release
must never serve. stop-first is measured for comparison. The figures are written to
``.rig/zero-downtime.json`` and reported in BENCHMARKS.md (bench/zero_downtime.py prints
them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import proxy
import pytest
import rig
from harness import Harness

RESULTS = Path(__file__).resolve().parents[2] / ".rig" / "zero-downtime.json"


@pytest.fixture
def proxied(tmp_path, registry, images, docker_client, compose_cmd, session_dir):
    proxy.build_proxy_image(docker_client, session_dir)
    h = Harness.create(tmp_path, registry.host, images, docker_client, compose_cmd,
                       name=f"zd{int(time.time() * 1000) % 10**8}", handover=2.0)
    port = rig.free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(proxy.HAPROXY_CFG.format(service="web"))
    compose = h.project.project_dir / "compose.yml"
    text = compose.read_text().replace("volumes:\n  webdata:",
                                       proxy.proxy_service_yaml(port, cfg) + "volumes:\n  webdata:")
    compose.write_text(text)
    h.url = f"http://127.0.0.1:{port}/"
    yield h
    h.teardown()


def _release(h, web, order):
    return h.commit(rig.desired_yaml(
        {"web": (h.image("web"), h.images[web]), "api": (h.image("api"), h.images["api-v1"])},
        {"web": {"update": order}}))


def _record(case: str, report: proxy.LoadReport) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[case] = {"sent": report.sent, "failed": report.failed,
                  "slowest_ms": round(report.slowest * 1000), "errors": report.errors,
                  "bodies": report.bodies}
    RESULTS.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("order", ["start-first", "stop-first"])
def test_release_behind_the_proxy_under_load(proxied, order):
    h = proxied
    _release(h, "web-v1", order)
    assert h.sync().code == 0
    proxy.wait_serving(h.url, "web v1")

    # a good release
    _release(h, "web-v2", order)
    with proxy.LoadClient(h.url) as load:
        time.sleep(0.5)
        r = h.sync()
        time.sleep(2)  # the proxy's view settles; requests keep flowing
    assert r.code == 0, r.summary()
    good = load.report
    _record(f"{order} good release", good)
    assert good.bodies.get("web v2", 0) > 0

    # a bad release: fails its health check
    _release(h, "web-bad", order)
    with proxy.LoadClient(h.url) as load:
        time.sleep(0.5)
        r = h.sync()
        time.sleep(2)
    assert r.code == 1
    bad = load.report
    _record(f"{order} bad release", bad)
    assert "web bad" not in bad.bodies  # a bad release never serves
    assert h.serve("web") == "web v2"

    if order == "start-first":
        assert good.failed == 0, good
        assert bad.failed == 0, bad
