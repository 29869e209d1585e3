"""Issue 8, bad inputs, at the parser level (pure: no Docker, git or network).

Whatever the bytes, ``parse_desired_state`` raises only DesiredStateError naming the field or
problem, and when it returns, the state is fully valid — never partially.
"""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from agent.desired import (
    MAX_BYTES,
    REPOSITORY_RE,
    DesiredState,
    check_against_compose,
    parse_desired_state,
)
from agent.errors import DesiredStateError

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64

VALID = f"""\
version: 1
services:
  web:
    image: ghcr.io/acme/web
    digest: {D1}
    tag: "1.0"
  api:
    image: ghcr.io/acme/api
    digest: {D2}
""".encode()


def problems_of(data: bytes) -> list[str]:
    with pytest.raises(DesiredStateError) as ei:
        parse_desired_state(data)
    assert ei.value.problems, "a DesiredStateError must carry at least one problem"
    return ei.value.problems


def one(data: bytes) -> str:
    problems = problems_of(data)
    assert len(problems) == 1, problems
    return problems[0]


def svc(body: str) -> bytes:
    return f"version: 1\nservices:\n{body}".encode()


def test_the_valid_baseline_parses():
    assert set(parse_desired_state(VALID).services) == {"web", "api"}


# ------------------------------------------------------------------------- not YAML
@pytest.mark.parametrize("data", [
    b"version: 1\nservices: {web: [\n",
    b"version: 1\n  services:\n bad indent: [",
    b"\tversion: 1\n",
    b"key: 'unterminated\n",
    b"%YAML 9.9\n---\na: 1\n",
    b"{{{{}}}}",
])
def test_text_that_is_not_yaml_is_reported_as_not_valid_yaml(data):
    assert one(data).startswith("not valid YAML:")


def test_binary_garbage_is_reported_as_not_utf8():
    assert one(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe").startswith("not UTF-8 text")


def test_not_yaml_message_is_a_single_line():
    assert "\n" not in one(b"a: [1, 2\nb: }")


# ------------------------------------------------------------------------- YAML bombs
BILLION_LAUGHS = b"""\
version: 1
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
services: *i
"""


def test_billion_laughs_is_rejected_quickly_without_expansion():
    start = time.monotonic()
    p = one(BILLION_LAUGHS)
    assert time.monotonic() - start < 1.0
    assert "aliases" in p and "line 3" in p


def test_wide_alias_bomb_within_the_size_limit_is_rejected_quickly():
    # many anchors each referenced many times: quadratic blow-up if expanded
    lines = ["a0: &a0 [" + ",".join(["x"] * 50) + "]"]
    for i in range(1, 30):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 50) + "]")
    data = ("\n".join(lines) + "\n").encode()
    assert len(data) < MAX_BYTES
    start = time.monotonic()
    assert "aliases" in one(data)
    assert time.monotonic() - start < 2.0


def test_merge_key_alias_is_rejected():
    data = svc(f"  base: &base {{image: a/web, digest: {D1}}}\n  web:\n    <<: *base\n")
    assert "aliases" in one(data)


@pytest.mark.parametrize("nest", [
    lambda n: b"[" * n + b"]" * n,
    lambda n: b"{a: " * n + b"1" + b"}" * n,
    lambda n: b"\n" + b"".join(b" " * (i + 1) + b"a:\n" for i in range(n // 10)) + b"   b",
], ids=["flow-sequences", "flow-mappings", "block-mappings"])
def test_deeply_nested_document_is_rejected_quickly(nest):
    # ruamel's scanner is quadratic in the nesting depth: 10 KB of '[' used to take ~20 s
    data = b"version: 1\nservices: " + nest(5000) + b"\n"
    start = time.monotonic()
    p = one(data)
    assert time.monotonic() - start < 3.0
    assert p.startswith("nested deeper than 32 levels")


def test_nesting_at_the_documents_own_depth_is_fine():
    assert parse_desired_state(b"version: 1\nservices: {web: {image: a/b, digest: "
                               + D1.encode() + b"}}\n").services["web"].digest == D1


# ------------------------------------------------------------------------- size
def test_a_10_mb_file_is_rejected_by_size_before_parsing():
    data = VALID + b"# padding\n" * (1024 * 1024)
    assert len(data) >= 10 * 1024 * 1024
    start = time.monotonic()
    p = one(data)
    assert time.monotonic() - start < 1.0
    assert f"file is {len(data)} bytes; the limit is {MAX_BYTES}" == p


# ------------------------------------------------------------------------- duplicate keys
def test_duplicate_top_level_key_is_rejected():
    p = one(b"version: 1\nservices: {}\nversion: 1\n")
    assert "duplicate key" in p and '"version"' in p


def test_duplicate_service_is_rejected():
    p = one(svc(f"  web: {{image: a/web, digest: {D1}}}\n  web: {{image: a/web, digest: {D2}}}\n"))
    assert "duplicate key" in p and '"web"' in p


def test_duplicate_key_inside_a_service_is_rejected():
    p = one(svc(f"  web:\n    image: a/web\n    digest: {D1}\n    digest: {D2}\n"))
    assert "duplicate key" in p and '"digest"' in p


# ------------------------------------------------------------------------- version
@pytest.mark.parametrize("version", ["0", "2", '"1"', "'1'", "1.0", "true", "-1", "~"])
def test_wrong_version_is_rejected_at_version(version):
    p = one(f"version: {version}\nservices: {{}}\n".encode())
    assert p.startswith("At 'version':")


def test_missing_version_is_reported():
    assert one(b"services: {}\n") == "At 'version': required key is missing"


# ------------------------------------------------------------------------- digests
@pytest.mark.parametrize("digest,expect", [
    ("sha256:" + "a" * 63, "64 lowercase hex"),
    ("sha256:" + "a" * 65, "64 lowercase hex"),
    ("sha256:" + "A" * 64, "64 lowercase hex"),
    ("sha256:" + "aB" * 32, "64 lowercase hex"),
    ("sha256:" + "z" * 64, "64 lowercase hex"),
    ("sha256:", "64 lowercase hex"),
    ("a" * 64, "64 lowercase hex"),
    ("sha512:" + "a" * 128, "'sha512' is not supported"),
    ("md5:" + "a" * 32, "'md5' is not supported"),
    ("SHA256:" + "a" * 64, "'SHA256' is not supported"),
    (" sha256:" + "a" * 64, "' sha256' is not supported"),
    ("sha256:" + "a" * 64 + "\\n", "64 lowercase hex"),
])
def test_bad_digest_is_rejected_at_its_path(digest, expect):
    p = one(svc(f'  web: {{image: a/web, digest: "{digest}"}}\n'))
    assert p.startswith("At 'services.web.digest':")
    assert expect in p


def test_missing_digest_is_reported_at_its_path():
    assert one(svc("  web: {image: a/web}\n")) == \
        "At 'services.web.digest': required key is missing"


# ------------------------------------------------------------------------- images
def test_image_with_a_tag_is_rejected_pointing_at_digest():
    p = one(svc(f"  web: {{image: 'ghcr.io/a/b:1.0', digest: {D1}}}\n"))
    assert p.startswith("At 'services.web.image':")
    assert "carries a tag" in p


def test_image_with_embedded_sha256_is_rejected():
    p = one(svc(f"  web: {{image: 'ghcr.io/a/b@{D1}', digest: {D1}}}\n"))
    assert p.startswith("At 'services.web.image':")
    assert "without a digest" in p


def test_image_with_tag_and_digest_is_rejected():
    p = one(svc(f"  web: {{image: 'ghcr.io/a/b:1.0@{D1}', digest: {D1}}}\n"))
    assert p.startswith("At 'services.web.image':")


@pytest.mark.parametrize("image", ["ghcr.io/аcme/web", "ghcr.io/acme/web\u200d", "ＡＣＭＥ/web"])
def test_image_with_non_ascii_characters_is_rejected(image):
    p = one(svc(f'  web: {{image: "{image}", digest: {D1}}}\n'))
    assert p.startswith("At 'services.web.image':")


# ------------------------------------------------------------------------- keys
@pytest.mark.parametrize("key,shown", [("1", "1"), ("null", "None"), ("[a]", "('a',)"),
                                       ("true", "True"), ("1.5", "1.5")])
def test_non_string_service_keys_are_rejected_naming_the_key(key, shown):
    p = one(svc(f"  {key}: {{image: a/web, digest: {D1}}}\n"))
    assert p.startswith("At 'services': service names must be strings")
    assert shown in p


def test_non_string_top_level_key_is_rejected():
    problems = problems_of(b"version: 1\nservices: {}\n1: x\n")
    assert any(p.startswith("At '1':") for p in problems)


# ------------------------------------------------------------------------- unicode tricks
@pytest.mark.parametrize("name", [
    "w\u0435b",  # Cyrillic small ie, a lookalike of 'e'
    "we\u200db",  # zero-width joiner
    "web\u200b",  # zero-width space
    "\u202eweb",  # right-to-left override
    "\uff57\uff45\uff42",  # fullwidth 'web'
    "we\u0301b",  # combining accent
    "web\n",  # trailing newline
])
def test_unicode_tricks_in_service_names_are_rejected(name):
    escaped = name.encode("unicode_escape").decode()
    p = one(svc(f'  "{escaped}": {{image: a/web, digest: {D1}}}\n'
                f"  web: {{image: a/web, digest: {D2}}}\n"))
    assert p.startswith("At 'services': service names must be")
    assert repr(name) in p  # the offending name is shown, escaped


# ------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("data", [b"", b"\n\n", b"# only a comment\n", b"---\n", b"~\n"])
def test_empty_document_is_rejected_as_not_a_mapping(data):
    assert one(data) == "At '(top level)': expected a mapping, got NoneType"


@pytest.mark.parametrize("data,kind", [
    (b"- version: 1\n- services: {}\n", "list"),
    (b"just a string\n", "str"),
    (b"42\n", "int"),
])
def test_top_level_must_be_a_mapping(data, kind):
    assert one(data) == f"At '(top level)': expected a mapping, got {kind}"


@pytest.mark.parametrize("services", ["[web, api]", "web", "42", "null", "!!set {web}"])
def test_services_must_be_a_mapping(services):
    p = one(f"version: 1\nservices: {services}\n".encode())
    assert p.startswith("At 'services':")


def test_problems_of_several_services_are_all_reported():
    problems = problems_of(svc(
        "  web: {image: 'a/web:1', digest: sha256:1}\n"
        f"  api: {{image: a/api, digest: {D1}, replicas: 3}}\n"
    ))
    assert sorted(p.split(":")[0] for p in problems) == [
        "At 'services.api.replicas'", "At 'services.web.digest'", "At 'services.web.image'"
    ]


# ------------------------------------------------------------------------- compose
def test_check_against_compose_rejects_a_service_missing_from_compose():
    desired = parse_desired_state(VALID)
    with pytest.raises(DesiredStateError) as ei:
        check_against_compose(desired, ["web", "db"], "desired-state.yml")
    assert ei.value.problems == [
        "At 'services.api': no service 'api' in the compose files (they define: db, web)"
    ]


# ------------------------------------------------------------------------- property-based
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def assert_fully_valid(ds: DesiredState) -> None:
    assert isinstance(ds, DesiredState)
    assert type(ds.version) is int and ds.version == 1
    assert isinstance(ds.services, dict)
    for name, spec in ds.services.items():
        assert isinstance(name, str) and NAME.fullmatch(name), name
        assert isinstance(spec.image, str) and REPOSITORY_RE.fullmatch(spec.image), spec.image
        assert "@" not in spec.image and not any(ch.isspace() for ch in spec.image)
        assert isinstance(spec.digest, str) and DIGEST.fullmatch(spec.digest), spec.digest
        assert spec.tag is None or (isinstance(spec.tag, str) and TAG.fullmatch(spec.tag))
        assert type(spec.pinned) is bool
        assert spec.update in (None, "start-first", "stop-first")


def parse_never_raises_anything_else(data: bytes) -> None:
    try:
        ds = parse_desired_state(data)
    except DesiredStateError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        return
    assert_fully_valid(ds)


FAST = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["1", "web", "a/web", D1, D1.upper(), "sha512:ab", "ghcr.io/a/b:1",
                              "start-first", "stop-first", "", "~", "null", "yes", "0x1f",
                              D1 + "\n", "a/web\n", "1.0\n", "ghcr.io/a/b@" + D1]))
keys = st.text(max_size=12) | st.sampled_from(["version", "services", "web", "image", "web\n",
                                               "digest", "tag", "pinned", "update", "w\u0435b"])
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(keys | st.integers(-5, 5) | st.booleans() | st.none(), children,
                      max_size=4),
    max_leaves=25,
)


def dump_yaml(obj: Any) -> bytes:
    buf = io.StringIO()
    YAML(typ="safe", pure=True).dump(obj, buf)
    return buf.getvalue().encode()


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_desired_state_error(data):
    parse_never_raises_anything_else(data)


@FAST
@given(st.text(max_size=400))
def test_arbitrary_text_raises_only_desired_state_error(text):
    parse_never_raises_anything_else(text.encode("utf-8", "surrogatepass"))


@FAST
@given(documents)
@example({"version": 1, "services": {"web\n": {"image": "a/web", "digest": D1}}})
@example({"version": 1, "services": {"web": {"image": "a/web\n", "digest": D1}}})
@example({"version": 1, "services": {"web": {"image": "a/web", "digest": D1 + "\n"}}})
@example({"version": 1, "services": {"web": {"image": "a/web", "digest": D1, "tag": "1\n"}}})
@example({"version": True, "services": {}})
@example({"version": 1.0, "services": {}})
def test_arbitrary_yaml_documents_raise_only_desired_state_error(doc):
    parse_never_raises_anything_else(dump_yaml(doc))


@FAST
@given(documents)
def test_arbitrary_json_documents_raise_only_desired_state_error(doc):
    try:
        data = json.dumps(doc).encode()
    except (TypeError, ValueError):
        return  # non-string keys etc.: covered by the YAML variant
    parse_never_raises_anything_else(data)


def _valid_doc() -> dict[str, Any]:
    return {
        "version": 1,
        "services": {
            "web": {"image": "ghcr.io/acme/web", "digest": D1, "tag": "1.0", "pinned": False},
            "api": {"image": "ghcr.io/acme/api", "digest": D2, "update": "stop-first"},
        },
    }


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    return out


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = _valid_doc()
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        action = draw(st.sampled_from(["drop", "replace", "add", "rename", "nest"]))
        key = path[-1]
        if action == "drop":
            del parent[key]
        elif action == "replace":
            parent[key] = draw(documents)
        elif action == "add":
            parent[draw(keys | st.integers(-3, 3) | st.none())] = draw(scalars)
        elif action == "rename":
            parent[draw(keys | st.integers(-3, 3) | st.none())] = parent.pop(key)
        else:
            parent[key] = {"value": parent[key]}
    return doc


@FAST
@given(mutated_documents())
def test_mutated_valid_documents_are_either_fully_valid_or_rejected(doc):
    parse_never_raises_anything_else(dump_yaml(doc))


@FAST
@given(st.data())
def test_byte_level_mutations_of_a_valid_file_are_either_fully_valid_or_rejected(data):
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "delete" and len(raw) > 1:
            del raw[i]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    parse_never_raises_anything_else(bytes(raw))
