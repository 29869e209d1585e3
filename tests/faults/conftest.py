"""Fixtures of the fault suite; the helpers live in faultkit.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faultkit import write_marker
from harness import Harness


@pytest.fixture
def deployed(harness: Harness) -> Iterator[tuple[Harness, str]]:
    """The project at web-v1/api-v1, healthy, with a marker in the web volume."""
    harness.release(web="web-v1", api="api-v1")
    r = harness.sync()
    assert r.code == 0, r.logs
    yield harness, write_marker(harness)
