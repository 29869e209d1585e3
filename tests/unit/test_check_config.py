"""check-config: every problem of the agent config and what it points at, one line each with
its path; exit 0 'config OK' when clean, 2 otherwise; nothing created or touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.check_config import check_config
from agent.cli import main

COMPOSE = "services:\n  web:\n    image: registry.test/web:1\n"


def _project(tmp_path: Path, extra: str = "", compose: str = "compose.yml") -> Path:
    pd = tmp_path / "srv"
    pd.mkdir()
    (pd / compose).write_text(COMPOSE)
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[source]\nrepo = "https://git.test/x.git"\n[compose]\n'
                   f'project_dir = "{pd}"\n[agent]\nstate_dir = "{state}"\n' + extra)
    return cfg


def test_a_clean_config_prints_config_ok_and_exits_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _project(tmp_path)
    assert main(["check-config", "--config", str(cfg)], configure_logging=False) == 0
    assert capsys.readouterr().out.strip() == f"config OK: {cfg}"
    assert not (tmp_path / "state").exists()  # state_dir is checked, never created


def test_every_problem_is_reported_at_once_each_on_one_line_with_its_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    token.chmod(0o644)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[source]\nrepo = "https://git.test/x.git"\nbogus = 1\n'
                   f'token_file = "{token}"\n[compose]\nproject_dir = "/nonexistent/app"\n'
                   f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[trust]\nrequire_signed_commits = true\n'
                   f'allowed_signers_file = "{tmp_path / "signers"}"\n'
                   '[notify]\nurls = ["nosuchscheme://x"]\n')
    assert main(["check-config", "--config", str(cfg)], configure_logging=False) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"{cfg}: source.bogus: unknown key" in err
    assert f"{cfg}: compose.project_dir: /nonexistent/app does not exist" in err
    assert any(line.startswith(f"{cfg}: source.token_file: ") and "readable by group or "
               "others" in line for line in err), err
    assert any(line.startswith(f"{cfg}: trust.allowed_signers_file: ") and "No such file"
               in line for line in err), err
    assert any(line.startswith(f"{cfg}: notify.urls.0: ") for line in err), err
    assert "t0ken" not in "\n".join(err)


def test_a_missing_compose_yml_next_to_a_docker_compose_yml_is_named(tmp_path: Path) -> None:
    cfg = _project(tmp_path, compose="docker-compose.yml")
    [problem] = check_config(cfg)
    pd = tmp_path / "srv"
    assert problem == (f"compose.files: {pd / 'compose.yml'} does not exist, but "
                       f"{pd / 'docker-compose.yml'} does: set [compose] files = "
                       "[\"docker-compose.yml\"]")


def test_a_missing_compose_binary_is_reported(tmp_path: Path) -> None:
    cfg = _project(tmp_path, extra="")
    text = cfg.read_text().replace("[agent]", 'command = ["/nonexistent/compose"]\n[agent]')
    cfg.write_text(text)
    [problem] = check_config(cfg)
    assert problem.startswith("compose.command: '/nonexistent/compose' not found")


def test_a_compose_file_that_does_not_parse_is_reported_by_compose(tmp_path: Path) -> None:
    cfg = _project(tmp_path)
    (tmp_path / "srv" / "compose.yml").write_text("services:\n  web: [\n")
    [problem] = check_config(cfg)
    assert problem.startswith("compose.files: ")


def test_an_unreadable_config_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.toml"
    assert main(["check-config", "--config", str(missing)], configure_logging=False) == 2
    assert capsys.readouterr().err.strip() == \
        f"{missing}: (file): cannot read: No such file or directory"


def test_validate_with_config_after_the_subcommand_checks_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _project(tmp_path)
    assert main(["validate", "--config", str(cfg)], configure_logging=False) == 0
    assert capsys.readouterr().out.strip() == f"config OK: {cfg}"
    (tmp_path / "srv" / "compose.yml").unlink()
    assert main(["validate", "--config", str(cfg)], configure_logging=False) == 2


def test_validate_with_config_and_a_file_checks_both(tmp_path: Path) -> None:
    cfg = _project(tmp_path)
    ds = tmp_path / "desired-state.yml"
    ds.write_text("version: 1\nservices:\n  web:\n    image: registry.test/web\n"
                  "    digest: sha256:" + "a" * 64 + "\n")
    assert main(["validate", str(ds), "--config", str(cfg)], configure_logging=False) == 0
    ds.write_text("version: 2\nservices: {}\n")
    assert main(["validate", str(ds), "--config", str(cfg)], configure_logging=False) == 2
