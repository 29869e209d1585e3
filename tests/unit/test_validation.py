"""`gitops-agent validate --compose`: compose's own model decides which services exist, and
the verdict agrees with compose on every documented compose feature. Runs the real compose
binary (`docker compose config` needs no Docker engine)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from compose_cases import CASES, IDS, Case, compose_verdict, desired_text

from agent.cli import main
from agent.edges.compose import find_compose_command
from agent.errors import ComposeFileError, DesiredStateError
from agent.validation import validate

DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def compose_cmd() -> list[str]:
    return find_compose_command()


def _project(case: Case, tmp_path: Path) -> Path:
    root = tmp_path / case.name
    shutil.copytree(case.dir, root)
    (root / "desired-state.yml").write_text(desired_text(case, "e2e/app", DIGEST))
    return root


def _argv(case: Case, root: Path) -> list[str]:
    argv = ["validate", str(root / "desired-state.yml")]
    for f in case.files:
        argv += ["--compose", str(root / f)]
    for p in case.profiles:
        argv += ["--profile", p]
    return argv


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_validate_gives_compose_s_verdict_on_each_compose_feature(
    case: Case, tmp_path: Path, compose_cmd: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    monkeypatch.delenv("GITOPS_TEST_UNSET_IMAGE", raising=False)
    root = _project(case, tmp_path)
    assert compose_verdict(compose_cmd, case, root) is case.valid  # the fixture is right
    code = main(_argv(case, root), configure_logging=False)
    out, err = capsys.readouterr()
    if case.valid:
        assert code == 0, err
        assert f"valid ({len(case.services)} services), checked against" in out
    else:
        assert code == 2, out
        assert case.message in err
        assert "compose.yml" in err  # names the compose file
        assert len(err.strip().splitlines()) == 1, err  # one line: what and where


def test_inactive_profile_service_names_the_profile_and_the_compose_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    case = next(c for c in CASES if c.name == "profiles" and not c.valid)
    root = _project(case, tmp_path)
    with pytest.raises(DesiredStateError) as e:
        validate(root / "desired-state.yml", [root / "compose.yml"])
    (problem,) = e.value.problems
    assert problem.startswith("At 'services.tools': service 'tools' is in ")
    assert "profile 'debug', which is not active" in problem
    assert "[compose] profiles" in problem


def test_profiles_from_the_project_env_file_count_as_compose_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    case = next(c for c in CASES if c.name == "profiles" and not c.valid)
    root = _project(case, tmp_path)
    (root / ".env").write_text("COMPOSE_PROFILES=debug\n")
    verdict = validate(root / "desired-state.yml", [root / "compose.yml"])
    assert verdict.complete and verdict.compose_files == (root / "compose.yml",)


def test_required_variable_message_names_the_compose_file_and_compose_s_own_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITOPS_TEST_UNSET_IMAGE", raising=False)
    case = next(c for c in CASES if c.name == "var-required")
    root = _project(case, tmp_path)
    with pytest.raises(ComposeFileError) as e:
        validate(root / "desired-state.yml", [root / "compose.yml"])
    assert e.value.source == str(root / "compose.yml")
    assert "GITOPS_TEST_UNSET_IMAGE" in e.value.problems[0]
    # set in the project's .env, as on the server: valid
    (root / ".env").write_text("GITOPS_TEST_UNSET_IMAGE=e2e/app\n")
    assert validate(root / "desired-state.yml", [root / "compose.yml"]).complete


def test_start_first_refused_where_compose_publishes_a_port_as_the_pass_refuses_it(
    tmp_path: Path,
) -> None:
    case = next(c for c in CASES if c.name == "reset")
    root = _project(case, tmp_path)
    # without the override's !reset the port is published: start-first cannot work
    with pytest.raises(DesiredStateError) as e:
        validate(root / "desired-state.yml", [root / "compose.yml"])
    assert "At 'services.app.update': start-first needs" in str(e.value)


def test_without_compose_binary_validate_checks_only_desired_state_and_exits_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = next(c for c in CASES if c.name == "include")
    root = _project(case, tmp_path)
    monkeypatch.setenv("GITOPS_AGENT_COMPOSE", str(tmp_path / "no-such-compose"))
    code = main(_argv(case, root), configure_logging=False)
    out, err = capsys.readouterr()
    assert code == 4
    assert out == ""  # nothing claims success on stdout
    assert "valid (2 services); the desired-state file only" in err
    assert "compose files NOT checked" in err and "no-such-compose" in err


def test_without_compose_binary_an_invalid_desired_state_still_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = next(c for c in CASES if c.name == "include")
    root = _project(case, tmp_path)
    (root / "desired-state.yml").write_text("version: 2\nservices: {}\n")
    monkeypatch.setenv("GITOPS_AGENT_COMPOSE", str(tmp_path / "no-such-compose"))
    assert main(_argv(case, root), configure_logging=False) == 2
    assert "At 'version'" in capsys.readouterr().err


def test_compose_that_fails_to_run_is_not_taken_for_missing_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "broken-compose"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write('no plugin\\n')\n"
                    "sys.exit(1)\n")
    fake.chmod(0o755)
    case = next(c for c in CASES if c.name == "include")
    root = _project(case, tmp_path)
    monkeypatch.setenv("GITOPS_AGENT_COMPOSE", str(fake))
    assert main(_argv(case, root), configure_logging=False) == 4
    assert "no plugin" in capsys.readouterr().err


def test_without_compose_flag_validate_says_it_checked_the_desired_state_file_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = next(c for c in CASES if c.name == "uppercase")
    root = _project(case, tmp_path)
    assert main(["validate", str(root / "desired-state.yml")], configure_logging=False) == 0
    assert "the desired-state file only (no --compose)" in capsys.readouterr().out


def test_a_missing_compose_file_is_named_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = next(c for c in CASES if c.name == "uppercase")
    root = _project(case, tmp_path)
    code = main(["validate", str(root / "desired-state.yml"), "--compose",
                 str(root / "nope.yml")], configure_logging=False)
    assert code == 2
    assert f"compose file not found: {root / 'nope.yml'}" in capsys.readouterr().err
