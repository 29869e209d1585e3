"""desired-state.yml parsing and validation: pure, every problem at once, each with its path."""

from __future__ import annotations

import pytest

from agent.desired import (
    MAX_BYTES,
    MAX_SERVICES,
    DesiredState,
    check_against_compose,
    check_allowed_images,
    parse_desired_state,
)
from agent.errors import DesiredStateError, InvalidInput

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _doc(services: str, version: str = "1") -> bytes:
    return f"version: {version}\nservices:\n{services}".encode()


def _problems(data: bytes) -> list[str]:
    with pytest.raises(DesiredStateError) as ei:
        parse_desired_state(data)
    return ei.value.problems


# ------------------------------------------------------------------------- valid documents
def test_valid_document_parses_into_services_with_image_and_digest():
    ds = parse_desired_state(
        _doc(
            f"  web:\n    image: ghcr.io/acme/web\n    digest: {D1}\n    tag: '1.2.3'\n"
            f"  api:\n    image: localhost:5000/acme/api\n    digest: {D2}\n"
            "    pinned: true\n    update: stop-first\n"
        )
    )
    assert isinstance(ds, DesiredState)
    assert ds.version == 1
    assert ds.services["web"].image == "ghcr.io/acme/web"
    assert ds.services["web"].tag == "1.2.3"
    assert ds.services["web"].pinned is False
    assert ds.services["web"].update is None
    assert ds.services["api"].pinned is True
    assert ds.services["api"].update == "stop-first"
    assert ds.digests() == {"web": D1, "api": D2}


def test_reference_joins_repository_and_digest():
    ds = parse_desired_state(_doc(f"  web: {{image: ghcr.io/acme/web, digest: {D1}}}\n"))
    assert ds.services["web"].reference == f"ghcr.io/acme/web@{D1}"


def test_empty_services_mapping_is_valid():
    assert parse_desired_state(b"version: 1\nservices: {}\n").services == {}


def test_parsed_state_is_immutable():
    ds = parse_desired_state(_doc(f"  web: {{image: a/web, digest: {D1}}}\n"))
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        ds.services["web"].digest = D2  # type: ignore[misc]


def test_desired_state_error_is_invalid_input_with_the_source_name():
    with pytest.raises(DesiredStateError) as ei:
        parse_desired_state(b"version: 2\nservices: {}\n", source="repo@main:desired-state.yml")
    assert isinstance(ei.value, InvalidInput)
    assert ei.value.source == "repo@main:desired-state.yml"
    assert str(ei.value).startswith("repo@main:desired-state.yml: ")


# ------------------------------------------------------------------------- every problem at once
def test_every_problem_is_reported_at_once_each_with_its_path():
    problems = _problems(
        _doc(
            "  web:\n    image: ghcr.io/acme/web:1.0\n    digest: sha256:abc\n"
            f"  api:\n    image: acme/api\n    digest: {D1}\n    colour: blue\n"
            f"  db:\n    digest: {D2}\n",
            version="2",
        )
    )
    text = "\n".join(problems)
    assert len(problems) == 5, problems
    assert "At 'version':" in text
    assert "At 'services.web.image':" in text
    assert "At 'services.web.digest':" in text
    assert "At 'services.api.colour': unknown key" in text
    assert "At 'services.db.image': required key is missing" in text


def test_multiple_problems_render_as_a_count_and_one_line_each():
    with pytest.raises(DesiredStateError) as ei:
        parse_desired_state(b"version: 3\nextra: 1\n")
    rendered = str(ei.value)
    assert rendered.splitlines()[0] == "desired-state.yml: 3 problems"
    assert "  At 'version':" in rendered
    assert "  At 'extra': unknown key" in rendered
    assert "  At 'services': required key is missing" in rendered


def test_missing_version_and_services_are_both_reported():
    problems = _problems(b"{}\n")
    assert problems == [
        "At 'version': required key is missing",
        "At 'services': required key is missing",
    ]


def test_unknown_top_level_key_is_rejected():
    assert "At 'servics': unknown key" in _problems(b"version: 1\nservices: {}\nservics: {}\n")


# ------------------------------------------------------------------------- fields
@pytest.mark.parametrize("version", ["0", "2", "'1'", "true", "1.0", "null"])
def test_version_other_than_the_integer_1_is_rejected(version):
    problems = _problems(f"version: {version}\nservices: {{}}\n".encode())
    assert problems and all(p.startswith("At 'version':") for p in problems)


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "a" * 64,
        "",
        "sha256:" + "a" * 64 + "\n",
    ],
)
def test_malformed_sha256_digest_is_rejected_at_its_path(digest):
    escaped = digest.encode("unicode_escape").decode()
    problems = _problems(_doc(f'  web: {{image: a/web, digest: "{escaped}"}}\n'))
    assert len(problems) == 1
    assert problems[0].startswith("At 'services.web.digest': must be 'sha256:'")


@pytest.mark.parametrize("algo", ["sha512", "md5", "sha1"])
def test_digest_with_another_algorithm_names_the_algorithm(algo):
    (p,) = _problems(_doc(f"  web: {{image: a/web, digest: '{algo}:{'a' * 64}'}}\n"))
    assert p.startswith("At 'services.web.digest':")
    assert f"digest algorithm {algo!r} is not supported" in p


def test_digest_must_be_a_string_not_a_number():
    (p,) = _problems(_doc("  web: {image: a/web, digest: 123}\n"))
    assert p.startswith("At 'services.web.digest':")


def test_image_with_tag_is_rejected_with_a_hint_to_pin_by_digest():
    (p,) = _problems(_doc(f"  web: {{image: 'ghcr.io/a/b:1.0', digest: {D1}}}\n"))
    assert p.startswith("At 'services.web.image':")
    assert "carries a tag" in p and "digest" in p


def test_image_with_embedded_digest_is_rejected():
    (p,) = _problems(_doc(f"  web: {{image: 'ghcr.io/a/b@{D1}', digest: {D1}}}\n"))
    assert p.startswith("At 'services.web.image':")
    assert "without a digest" in p


def test_registry_with_port_is_not_mistaken_for_a_tag():
    ds = parse_desired_state(_doc(f"  web: {{image: 'registry.local:5000/a/b', digest: {D1}}}\n"))
    assert ds.services["web"].image == "registry.local:5000/a/b"


@pytest.mark.parametrize("image", ["Acme/Web", "a//b", "/a/b", "a/b/", "a b", "-a/b", "a/b\n"])
def test_invalid_repository_names_are_rejected(image):
    escaped = image.encode("unicode_escape").decode()
    (p,) = _problems(_doc(f'  web: {{image: "{escaped}", digest: {D1}}}\n'))
    assert p.startswith("At 'services.web.image':")


def test_repository_longer_than_255_characters_is_rejected():
    image = "a/" + "b" * 260
    (p,) = _problems(_doc(f"  web: {{image: {image}, digest: {D1}}}\n"))
    assert "longer than 255" in p


@pytest.mark.parametrize("tag", ["-bad", "has space", "x" * 129, ".dot"])
def test_invalid_tag_is_rejected(tag):
    (p,) = _problems(_doc(f"  web: {{image: a/web, digest: {D1}, tag: '{tag}'}}\n"))
    assert p.startswith("At 'services.web.tag':")


def test_update_order_must_be_start_first_or_stop_first():
    (p,) = _problems(_doc(f"  web: {{image: a/web, digest: {D1}, update: rolling}}\n"))
    assert p.startswith("At 'services.web.update':")


def test_pinned_must_be_a_boolean_not_a_string():
    (p,) = _problems(_doc(f"  web: {{image: a/web, digest: {D1}, pinned: 'yes'}}\n"))
    assert p.startswith("At 'services.web.pinned':")


@pytest.mark.parametrize(
    "name", ["-web", "--project-name", "web app", "wеb", "web\\n", "web/x", "w" * 256, ""])
def test_invalid_service_names_are_rejected_at_services(name):
    (p,) = _problems(_doc(f'  "{name}": {{image: a/web, digest: {D1}}}\n'))
    assert p.startswith("At 'services': service names must be")


def test_service_value_must_be_a_mapping():
    (p,) = _problems(_doc("  web: ghcr.io/a/web\n"))
    assert p.startswith("At 'services.web':")


def test_more_than_max_services_is_rejected():
    body = "".join(f"  s{i}: {{image: a/web, digest: {D1}}}\n" for i in range(MAX_SERVICES + 1))
    problems = _problems(_doc(body))
    assert any(p.startswith("At 'services':") for p in problems)


def test_file_larger_than_the_limit_is_rejected_before_parsing():
    (p,) = _problems(b"#" * (MAX_BYTES + 1))
    assert "limit" in p and str(MAX_BYTES) in p


def test_non_utf8_bytes_are_rejected():
    (p,) = _problems(b"version: 1\nservices: {\xff}\n")
    assert "not UTF-8" in p


def test_yaml_aliases_are_refused():
    (p,) = _problems(
        f"version: 1\nservices:\n  web: &w {{image: a/web, digest: {D1}}}\n  api: *w\n".encode()
    )
    assert "aliases" in p and "line 4" in p


def test_top_level_must_be_a_mapping():
    (p,) = _problems(b"- version: 1\n")
    assert p == "At '(top level)': expected a mapping, got list"


# ------------------------------------------------------------------------- compose / allowlist
def _state(**images: str) -> DesiredState:
    body = "".join(f"  {n}: {{image: {img}, digest: {D1}}}\n" for n, img in images.items())
    return parse_desired_state(_doc(body))


def test_check_against_compose_accepts_services_compose_defines():
    check_against_compose(_state(web="a/web"), ["web", "db"], "desired-state.yml")


def test_check_against_compose_reports_every_missing_service_with_its_path():
    with pytest.raises(DesiredStateError) as ei:
        check_against_compose(_state(web="a/web", api="a/api", db="a/db"), ["db"], "ds.yml")
    assert ei.value.source == "ds.yml"
    assert sorted(ei.value.problems) == [
        "At 'services.api': no service 'api' in the compose files (they define: db)",
        "At 'services.web': no service 'web' in the compose files (they define: db)",
    ]


def test_check_against_compose_with_empty_compose_says_nothing_is_defined():
    with pytest.raises(DesiredStateError) as ei:
        check_against_compose(_state(web="a/web"), [], "ds.yml")
    assert "they define: nothing" in ei.value.problems[0]


def test_allowlist_none_allows_everything():
    check_allowed_images(_state(web="evil.example/x"), None, "ds.yml")


def test_allowlist_prefix_matches_whole_path_components_only():
    check_allowed_images(_state(web="ghcr.io/acme/web"), ["ghcr.io/acme"], "ds.yml")
    check_allowed_images(_state(web="ghcr.io/acme"), ["ghcr.io/acme"], "ds.yml")
    with pytest.raises(DesiredStateError) as ei:
        check_allowed_images(_state(web="ghcr.io/acmeevil/web"), ["ghcr.io/acme"], "ds.yml")
    assert ei.value.problems[0].startswith("At 'services.web.image':")
    assert "allowlist" in ei.value.problems[0]


def test_allowlist_entry_with_trailing_slash_is_a_plain_prefix():
    check_allowed_images(_state(web="ghcr.io/acme/web"), ["ghcr.io/acme/"], "ds.yml")
    with pytest.raises(DesiredStateError):
        check_allowed_images(_state(web="ghcr.io/acme"), ["ghcr.io/acme/"], "ds.yml")


def test_allowlist_reports_every_service_outside_it():
    with pytest.raises(DesiredStateError) as ei:
        check_allowed_images(
            _state(web="docker.io/x/web", api="ghcr.io/acme/api", db="quay.io/y/db"),
            ["ghcr.io/acme"],
            "ds.yml",
        )
    assert len(ei.value.problems) == 2


def test_tagged_image_is_allowed_by_its_repository_entry():
    from agent.desired import _image_allowed

    assert _image_allowed("ghcr.io/acme/web:1.2", "ghcr.io/acme/web")
    assert _image_allowed("ghcr.io/acme/web:1.2@sha256:" + "a" * 64, "ghcr.io/acme/web")
    assert _image_allowed("ghcr.io/acme/web@sha256:" + "a" * 64, "ghcr.io/acme/web")
    assert _image_allowed("ghcr.io/acme/web:1.2", "ghcr.io/acme/")
    assert _image_allowed("traefik:v3.1", "traefik")


def test_tagged_image_is_not_allowed_by_a_longer_repository_sharing_its_prefix():
    from agent.desired import _image_allowed

    assert not _image_allowed("ghcr.io/acme/web:1.2", "ghcr.io/acme/webx")
    assert not _image_allowed("ghcr.io/acme/webx:1.2", "ghcr.io/acme/web")


def test_registry_port_is_not_taken_for_a_tag():
    from agent.desired import _image_allowed, repository_of

    assert repository_of("localhost:5000/x/y:tag") == "localhost:5000/x/y"
    assert repository_of("localhost:5000/x/y") == "localhost:5000/x/y"
    assert _image_allowed("localhost:5000/x/y:tag", "localhost:5000/x/y")
    assert _image_allowed("localhost:5000/x/y:tag", "localhost:5000/x/")
    assert not _image_allowed("localhost:5001/x/y:tag", "localhost:5000/x/")


def test_normalize_repository_drops_tag_and_digest():
    from agent.desired import normalize_repository

    assert normalize_repository("ghcr.io/acme/web:1.2@sha256:" + "a" * 64) == (
        "ghcr.io", "acme/web")
    assert normalize_repository("traefik:v3") == ("docker.io", "library/traefik")


def test_allowlist_entry_naming_a_tag_allows_nothing():
    from agent.desired import _image_allowed

    assert not _image_allowed("ghcr.io/acme/web:1.2", "ghcr.io/acme/web:1.2")
    assert not _image_allowed("ghcr.io/acme/web", "ghcr.io/acme/web:1.2")
