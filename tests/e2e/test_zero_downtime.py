"""End-to-end: releases behind a real proxy under ~50 requests/s from loopback.

Two fronts: HAProxy, which checks health itself, and caddy with ``dynamic a`` upstreams,
which follows Docker's DNS for the service's name and checks nothing (nginx with a
``resolver``, a plain round-robin on the name behave alike). start-first must lose no
request and answer none from a failing release behind either: a new container joins the
service's name only once healthy, an old one leaves it before it stops. stop-first is
measured for comparison behind HAProxy. The figures are written to
``.rig/zero-downtime.json``; bench/zero_downtime.py repeats the scenario for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import proxy
import pytest
from harness import Harness

RESULTS = Path(__file__).resolve().parents[2] / ".rig" / "zero-downtime.json"
SLOWEST_OK = 0.5  # seconds: no response slower than this during a start-first release


def _proxied(tmp_path, registry, images, docker_client, compose_cmd, session_dir, front):
    h = Harness.create(tmp_path, registry.host, images, docker_client, compose_cmd,
                       name=f"zd{int(time.time() * 1000) % 10**8}", handover=2.0)
    h.url = proxy.add_proxy(h, session_dir, front=front)
    return h


@pytest.fixture
def proxied(tmp_path, registry, images, docker_client, compose_cmd, session_dir):
    h = _proxied(tmp_path, registry, images, docker_client, compose_cmd, session_dir,
                 "haproxy")
    yield h
    h.teardown()


@pytest.fixture
def caddy_fronted(tmp_path, registry, images, docker_client, compose_cmd, session_dir,
                  caddy_image):
    h = _proxied(tmp_path, registry, images, docker_client, compose_cmd, session_dir,
                 "caddy")
    yield h
    h.teardown()


def _record(case: str, report: proxy.LoadReport) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[case] = {"sent": report.sent, "failed": report.failed,
                  "slowest_ms": round(report.slowest * 1000), "errors": report.errors,
                  "bodies": report.bodies}
    RESULTS.write_text(json.dumps(data, indent=2))


def _good_then_bad(h: Harness, order: str, front: str) -> tuple[proxy.LoadReport, ...]:
    r, _ = proxy.release_under_load(h, h.url, "web-v1", order, rate=1)
    assert r.code == 0
    proxy.wait_serving(h.url, "web v1")

    r, good = proxy.release_under_load(h, h.url, "web-v2", order)  # a good release
    assert r.code == 0, r.summary()
    _record(f"{order} good release ({front})", good)
    assert good.bodies.get("web v2", 0) > 0

    r, bad = proxy.release_under_load(h, h.url, "web-bad", order)  # fails its health check
    assert r.code == 1
    _record(f"{order} bad release ({front})", bad)
    assert h.serve("web") == "web v2"  # rolled back either way
    return good, bad


def _assert_zero_downtime(good: proxy.LoadReport, bad: proxy.LoadReport) -> None:
    assert good.failed == 0, good
    assert bad.failed == 0, bad
    assert bad.bodies.get("web bad", 0) == 0, bad  # the failing release never served
    assert good.slowest < SLOWEST_OK, good
    assert bad.slowest < SLOWEST_OK, bad


def test_start_first_behind_haproxy_loses_no_request_and_never_serves_a_failing_release(
        proxied):
    _assert_zero_downtime(*_good_then_bad(proxied, "start-first", "haproxy"))


def test_start_first_behind_a_dns_only_proxy_loses_no_request_and_never_serves_a_failing_release(  # noqa: E501
        caddy_fronted):
    _assert_zero_downtime(*_good_then_bad(caddy_fronted, "start-first", "caddy"))


def test_stop_first_behind_haproxy_is_measured_and_rolls_back(proxied):
    _good_then_bad(proxied, "stop-first", "haproxy")  # figures recorded, not asserted
