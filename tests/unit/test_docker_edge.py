"""Pure parts of the Docker edge: references, registry names, list-summary parsing,
pull error classification."""

from __future__ import annotations

import pytest

from agent.edges.docker import _from_summary, classify_pull_error, registry_of, split_ref
from agent.errors import ImageNotFound, RegistryAuthError, RegistryUnavailable

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("ref,want", [
    (f"ghcr.io/acme/web@{D}", ("ghcr.io/acme/web", D)),
    (f"127.0.0.1:5000/e2e/web:v1@{D}", ("127.0.0.1:5000/e2e/web", D)),
    ("127.0.0.1:5000/e2e/web:v1", ("127.0.0.1:5000/e2e/web", None)),
    ("traefik", ("traefik", None)),
])
def test_split_ref_separates_repository_and_digest_dropping_a_tag(ref, want):
    assert split_ref(ref) == want


@pytest.mark.parametrize("image,registry", [
    ("ghcr.io/acme/web", "ghcr.io"), ("127.0.0.1:5000/x", "127.0.0.1:5000"),
    ("localhost/x", "localhost"), ("traefik", "docker.io"), ("library/traefik", "docker.io"),
])
def test_registry_of_names_the_host_or_docker_hub(image, registry):
    assert registry_of(image) == registry


def _summary(status: str, state: str = "running", image: str = f"r/web@{D}") -> dict:
    return {"Id": "c1", "Names": ["/p-web-1"], "Image": image, "State": state, "Status": status}


@pytest.mark.parametrize("status,health", [
    ("Up 3 seconds (healthy)", "healthy"), ("Up 1 second (unhealthy)", "unhealthy"),
    ("Up 1 second (health: starting)", "starting"), ("Up 2 minutes", None),
])
def test_list_summary_gives_digest_state_and_health_without_an_inspect(status, health):
    c = _from_summary("web", _summary(status))
    assert (c.digest, c.status, c.health, c.name) == (D, "running", health, "p-web-1")


def test_list_summary_of_an_exited_container_carries_its_exit_code():
    c = _from_summary("web", _summary("Exited (3) 2 seconds ago", state="exited"))
    assert c.status == "exited" and c.exit_code == 3


@pytest.mark.parametrize("message,kind", [
    ("unauthorized: authentication required", RegistryAuthError),
    ("denied: requested access to the resource is denied", RegistryAuthError),
    ("manifest unknown: manifest unknown", ImageNotFound),
    ('Get "http://127.0.0.1:5401/v2/": dial tcp 127.0.0.1:5401: connect: connection refused',
     RegistryUnavailable),
    ("received unexpected HTTP status: 500 Internal Server Error", RegistryUnavailable),
    ("Get http://127.0.0.1:4031/v2/: EOF", RegistryUnavailable),  # '403' inside a port
])
def test_pull_errors_are_sorted_by_kind(message, kind):
    assert isinstance(classify_pull_error("r", "r/x@d", message), kind)
