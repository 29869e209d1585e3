"""The command line's common options: --version, and --config before or after the
subcommand or from GITOPS_AGENT_CONFIG."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import build_parser, config_path, main
from agent.config import DEFAULT_CONFIG_PATH


def test_version_prints_the_version_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"], configure_logging=False)
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("gitops-agent 0.")


@pytest.mark.parametrize("argv", [["--config", "/etc/x.toml", "status"],
                                  ["status", "--config", "/etc/x.toml"]])
def test_config_is_accepted_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert config_path(build_parser().parse_args(argv)) == Path("/etc/x.toml")


def test_config_after_the_subcommand_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["--config", "/a.toml", "diff", "--config", "/b.toml"])
    assert config_path(args) == Path("/b.toml")


def test_config_comes_from_the_environment_else_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITOPS_AGENT_CONFIG", raising=False)
    assert config_path(build_parser().parse_args(["status"])) == DEFAULT_CONFIG_PATH
    monkeypatch.setenv("GITOPS_AGENT_CONFIG", "/srv/agent.toml")
    assert config_path(build_parser().parse_args(["status"])) == Path("/srv/agent.toml")
    assert config_path(build_parser().parse_args(["status", "--config", "/x.toml"])) == \
        Path("/x.toml")


def test_a_missing_config_named_after_the_subcommand_is_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["status", "--config", str(tmp_path / "none.toml")],
                configure_logging=False) == 2
    assert "none.toml" in capsys.readouterr().err
