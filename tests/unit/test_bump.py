"""`gitops-agent bump`: edits desired-state.yml in place, keeping its layout; refuses what
it must; idempotent; never writes a file `validate` would reject."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bump import BumpRefused, BumpUsageError, DigestBump, bump_text
from agent.bump_cli import bump_file, changes_from_items
from agent.cli import main
from agent.desired import parse_desired_state
from agent.errors import DesiredStateError

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64

ORIGINAL = f"""\
# Desired state of the shop.
# CI writes the digests.
version: 1

services:
  # the public API
  api:
    image: "ghcr.io/acme/shop/api"   # quoted on purpose
    digest: {A}  # written by CI
    tag: sha-1111111
    update: start-first

  web:
    image: ghcr.io/acme/shop/web
    digest: {A}
    pinned: true   # hold: incident 42

  worker: {{image: ghcr.io/acme/shop/worker, digest: {A}}}
# end of file
"""


def _write(tmp_path: Path, text: str = ORIGINAL) -> Path:
    p = tmp_path / "desired-state.yml"
    p.write_text(text)
    return p


def _run_cli(*argv: str) -> int:
    return main(["bump", *argv], configure_logging=False)


# --------------------------------------------------------------------------- editing
def test_bump_changes_only_the_digest_line_and_keeps_comments_order_quotes() -> None:
    new, messages = bump_text(ORIGINAL, [DigestBump("api", B, tag="sha-2222222")])
    expected = ORIGINAL.replace(
        f"digest: {A}  # written by CI", f"digest: {B}  # written by CI"
    ).replace("tag: sha-1111111", "tag: sha-2222222")
    assert new == expected
    assert messages == [
        "api: sha256:aaaaaaaaaaaa -> sha256:bbbbbbbbbbbb, tag sha-1111111 -> sha-2222222"
    ]


def test_bump_keeps_a_four_space_indent_and_document_start() -> None:
    text = f"---\n# c\nversion: 1\nservices:\n    web:\n        image: r.example/web\n        digest: {A}\n"
    new, _ = bump_text(text, [DigestBump("web", B)])
    assert new == text.replace(A, B)


def test_bump_without_tag_removes_the_stale_tag_but_keeps_following_comments() -> None:
    text = f"""\
version: 1
services:
  api:
    image: r.example/api
    digest: {A}
    tag: sha-1111111  # CI

  # the web front
  web:
    image: r.example/web
    digest: {A}
"""
    new, messages = bump_text(text, [DigestBump("api", B)])
    assert new == text.replace(f"digest: {A}\n    tag: sha-1111111  # CI\n", f"digest: {B}\n")
    assert "tag sha-1111111 removed" in messages[0]
    assert parse_desired_state(new.encode()).services["api"].tag is None


def test_bump_adds_a_tag_right_after_the_digest_when_there_was_none() -> None:
    text = f"version: 1\nservices:\n  web:\n    image: r.example/web\n    digest: {A}\n    update: stop-first\n"
    new, _ = bump_text(text, [DigestBump("web", B, tag="v2")])
    assert new == (
        f"version: 1\nservices:\n  web:\n    image: r.example/web\n    digest: {B}\n"
        "    tag: v2\n    update: stop-first\n"
    )


def test_bump_edits_a_flow_style_service_in_place() -> None:
    new, _ = bump_text(ORIGINAL, [DigestBump("worker", B)])
    assert f"  worker: {{image: ghcr.io/acme/shop/worker, digest: {B}}}\n" in new
    assert new.replace(B, A) == ORIGINAL


def test_bump_of_several_services_in_one_call_applies_all() -> None:
    new, messages = bump_text(ORIGINAL, [DigestBump("api", B), DigestBump("worker", C)])
    state = parse_desired_state(new.encode())
    assert state.services["api"].digest == B
    assert state.services["worker"].digest == C
    assert state.services["web"].digest == A
    assert len(messages) == 2


def test_unknown_service_with_image_is_appended_in_block_style() -> None:
    new, messages = bump_text(
        ORIGINAL, [DigestBump("billing", C, tag="v1", image="ghcr.io/acme/shop/billing")]
    )
    assert new.startswith(ORIGINAL.removesuffix("# end of file\n"))
    assert new.endswith(
        f"  billing:\n    image: ghcr.io/acme/shop/billing\n    digest: {C}\n    tag: v1\n"
        "# end of file\n"
    )
    assert messages == [f"billing: added ghcr.io/acme/shop/billing@{C}"]


def test_image_for_a_known_service_changes_its_repository() -> None:
    new, messages = bump_text(ORIGINAL, [DigestBump("api", B, image="ghcr.io/other/shop/api")])
    spec = parse_desired_state(new.encode()).services["api"]
    assert (spec.image, spec.digest) == ("ghcr.io/other/shop/api", B)
    assert "image ghcr.io/acme/shop/api -> ghcr.io/other/shop/api" in messages[0]


# --------------------------------------------------------------------------- idempotence
def test_bump_to_the_digest_already_there_changes_nothing_and_says_so() -> None:
    new, messages = bump_text(ORIGINAL, [DigestBump("api", A)])
    assert new == ORIGINAL
    assert messages == ["api: already at sha256:aaaaaaaaaaaa; unchanged"]


def test_bump_twice_is_the_same_as_once() -> None:
    once, _ = bump_text(ORIGINAL, [DigestBump("api", B, tag="t2"), DigestBump("n", C, image="r.example/n")])
    twice, _ = bump_text(once, [DigestBump("api", B, tag="t2"), DigestBump("n", C, image="r.example/n")])
    assert twice == once


def test_bump_of_a_pinned_service_to_its_own_digest_is_a_no_op_not_a_refusal() -> None:
    new, messages = bump_text(ORIGINAL, [DigestBump("web", A)])
    assert new == ORIGINAL
    assert "unchanged" in messages[0]


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("digest", [
    "sha256:" + "A" * 64,            # uppercase
    "sha256:" + "a" * 63,            # short
    "sha512:" + "a" * 128,           # other algorithm
    "a" * 64,                        # no algorithm
    f"ghcr.io/acme/shop/api@{A}",    # a reference, not a digest
    "",
])
def test_malformed_digest_is_refused(digest: str) -> None:
    with pytest.raises(DesiredStateError, match="malformed digest"):
        bump_text(ORIGINAL, [DigestBump("api", digest)])


def test_unknown_service_without_image_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(DesiredStateError) as e:
        bump_text(ORIGINAL, [DigestBump("billing", B)])
    assert "unknown service" in str(e.value) and "api, web, worker" in str(e.value)
    assert "--image" in str(e.value)


def test_pinned_service_is_refused_without_force() -> None:
    with pytest.raises(BumpRefused, match="web is pinned"):
        bump_text(ORIGINAL, [DigestBump("web", B)])


def test_pinned_service_is_bumped_with_force_and_stays_pinned() -> None:
    new, messages = bump_text(ORIGINAL, [DigestBump("web", B)], force=True)
    spec = parse_desired_state(new.encode()).services["web"]
    assert (spec.digest, spec.pinned) == (B, True)
    assert "pinned: true   # hold: incident 42" in new
    assert "--force" in messages[0]


def test_skip_pinned_bumps_the_others_and_leaves_the_pinned_one() -> None:
    new, messages = bump_text(ORIGINAL, [DigestBump("web", B), DigestBump("api", B)], skip_pinned=True)
    state = parse_desired_state(new.encode())
    assert state.services["web"].digest == A
    assert state.services["api"].digest == B
    assert any("web: pinned" in m and "skipped" in m for m in messages)


def test_one_refused_service_refuses_the_whole_call() -> None:
    with pytest.raises(DesiredStateError):
        bump_text(ORIGINAL, [DigestBump("api", B), DigestBump("ghost", B)])


def test_invalid_tag_image_and_service_name_are_refused() -> None:
    with pytest.raises(DesiredStateError) as e:
        bump_text(ORIGINAL, [DigestBump("-api", B), DigestBump("x", B, tag="bad tag", image="Bad:1")])
    text = str(e.value)
    assert "not a valid service name" in text
    assert "not a valid tag" in text
    assert "not a valid image repository" in text


def test_same_service_twice_in_one_call_is_refused() -> None:
    with pytest.raises(DesiredStateError, match="more than once"):
        bump_text(ORIGINAL, [DigestBump("api", B), DigestBump("api", C)])


def test_an_invalid_file_is_reported_not_bumped() -> None:
    with pytest.raises(DesiredStateError, match="version"):
        bump_text(ORIGINAL.replace("version: 1", "version: 2"), [DigestBump("api", B)])


# --------------------------------------------------------------------------- the file
def test_bump_file_writes_atomically_and_keeps_the_file_mode(tmp_path: Path) -> None:
    p = _write(tmp_path)
    p.chmod(0o664)
    changed, _ = bump_file(p, [DigestBump("api", B)])
    assert changed
    assert parse_desired_state(p.read_bytes()).services["api"].digest == B
    assert p.stat().st_mode & 0o777 == 0o664
    assert [f.name for f in tmp_path.iterdir()] == ["desired-state.yml"]  # no temp left


def test_no_op_bump_does_not_rewrite_the_file(tmp_path: Path) -> None:
    p = _write(tmp_path)
    os.utime(p, (1_000_000, 1_000_000))
    changed, _ = bump_file(p, [DigestBump("api", A)])
    assert not changed
    assert p.stat().st_mtime == 1_000_000


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    p = _write(tmp_path)
    changed, _ = bump_file(p, [DigestBump("api", B)], dry_run=True)
    assert changed
    assert p.read_text() == ORIGINAL


def test_bump_through_a_symlink_edits_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    target = _write(tmp_path)
    link = tmp_path / "link.yml"
    link.symlink_to(target.name)
    bump_file(link, [DigestBump("api", B)])
    assert link.is_symlink()
    assert B in target.read_text()


# --------------------------------------------------------------------------- command line
def test_cli_single_service_bumps_and_result_passes_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _write(tmp_path)
    assert _run_cli(str(p), "--service", "api", "--digest", B, "--tag", "sha-2") == 0
    assert "api: sha256:aaaaaaaaaaaa -> sha256:bbbbbbbbbbbb" in capsys.readouterr().out
    assert main(["validate", str(p)], configure_logging=False) == 0


def test_cli_repeated_groups_bump_several_services(tmp_path: Path) -> None:
    p = _write(tmp_path)
    code = _run_cli(str(p), "--service", "api", "--digest", B,
                    "--service", "new", "--digest", C, "--image", "r.example/new", "--tag", "v1")
    assert code == 0
    state = parse_desired_state(p.read_bytes())
    assert state.services["api"].digest == B
    assert (state.services["new"].image, state.services["new"].tag) == ("r.example/new", "v1")


def test_cli_no_op_exits_zero_and_says_nothing_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _write(tmp_path)
    assert _run_cli(str(p), "--service", "api", "--digest", A) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert p.read_text() == ORIGINAL


@pytest.mark.parametrize(("argv", "code"), [
    (["--service", "api", "--digest", "sha256:nope"], 2),      # malformed digest
    (["--service", "ghost", "--digest", B], 2),                 # unknown service
    (["--service", "web", "--digest", B], 1),                   # pinned
    (["--service", "api"], 2),                                  # no digest
    (["--digest", B], 2),                                       # no service
    ([], 2),                                                    # nothing at all
])
def test_cli_refusals_exit_non_zero_and_leave_the_file_untouched(
    tmp_path: Path, argv: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _write(tmp_path)
    assert _run_cli(str(p), *argv) == code
    assert p.read_text() == ORIGINAL
    assert capsys.readouterr().err.startswith("gitops-agent: ")


def test_cli_force_bumps_a_pinned_service(tmp_path: Path) -> None:
    p = _write(tmp_path)
    assert _run_cli(str(p), "--service", "web", "--digest", B, "--force") == 0
    assert parse_desired_state(p.read_bytes()).services["web"].digest == B


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    assert _run_cli(str(tmp_path / "nope.yml"), "--service", "api", "--digest", B) == 2


# A child whose file-size limit is 0: the kernel refuses every byte it writes to a file
# (EFBIG; Python ignores SIGXFSZ), for root as for anyone, with no privilege or mount.
_NO_FILE_WRITES = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from agent.cli import main
sys.exit(main(["bump", *sys.argv[1:]], configure_logging=False))
"""


def test_cli_unwritable_target_exits_1_with_one_line_and_keeps_the_file(tmp_path: Path) -> None:
    p = _write(tmp_path)
    before = sorted(os.listdir(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", _NO_FILE_WRITES, str(p), "--service", "api", "--digest", B],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"gitops-agent: cannot write {p}: File too large")
    assert done.stderr.rstrip().endswith(f"{p} is unchanged")
    assert p.read_text() == ORIGINAL
    assert sorted(os.listdir(tmp_path)) == before  # no temporary file left behind


def test_options_before_the_first_service_belong_to_it() -> None:
    assert changes_from_items([("digest", B), ("service", "api")]) == [DigestBump("api", B)]


def test_an_option_given_twice_in_one_group_is_a_usage_error() -> None:
    with pytest.raises(BumpUsageError, match="--digest given twice"):
        changes_from_items([("service", "api"), ("digest", B), ("digest", C)])


def test_bump_is_reachable_as_the_installed_command(tmp_path: Path) -> None:
    p = _write(tmp_path)
    exe = Path(sys.executable).with_name("gitops-agent")
    if not exe.exists():
        pytest.skip("gitops-agent is not installed next to this python")
    out = subprocess.run([str(exe), "bump", "--help"], capture_output=True, text=True, check=True)
    assert "--service" in out.stdout and "--skip-pinned" in out.stdout
    done = subprocess.run([str(exe), "bump", str(p), "--service", "api", "--digest", B],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- property
def test_every_bump_result_parses_and_says_exactly_what_was_asked() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    hexdigest = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
    names = st.sampled_from(["api", "worker", "new-one", "n2"])
    tags = st.none() | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(names, hexdigest, tags), min_size=1, max_size=4,
                    unique_by=lambda t: t[0]))
    def check(items: list[tuple[str, str, str | None]]) -> None:
        changes = [DigestBump(n, f"sha256:{h}", t, f"r.example/{n}") for n, h, t in items]
        new, _ = bump_text(ORIGINAL, changes)
        state = parse_desired_state(new.encode())
        for c in changes:
            spec = state.services[c.service]
            assert (spec.image, spec.digest) == (c.image, c.digest)
            if c.tag is not None:
                assert spec.tag == c.tag
        assert state.services["web"].digest == A  # untouched
        assert "# Desired state of the shop." in new and "# hold: incident 42" in new

    check()
