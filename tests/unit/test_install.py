from pathlib import Path

import pytest

from agent import install
from agent.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_unit_printed_is_the_shipped_unit_with_the_usr_local_bin_exec_start():
    text = install.unit_text()
    assert text == (REPO_ROOT / "agent/data/gitops-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/gitops-agent " in text
    assert "ProtectSystem=strict" in text


def test_example_config_points_at_check_config_not_sync():
    text = install.example_config_text()
    assert "gitops-agent check-config" in text
    assert "`gitops-agent sync`" not in text


def test_drop_in_opens_the_configs_project_dir_for_writing(tmp_path, capsys):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(install.example_config_text())
    assert install.main(["drop-in", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ReadWritePaths for compose.project_dir")
    assert '[Service]\nReadWritePaths="/srv/shop"\n' in out


def test_drop_in_resolves_a_relative_project_dir_against_the_config(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(install.example_config_text().replace('"/srv/shop"', '"stack"'))
    assert f'ReadWritePaths="{tmp_path / "stack"}"' in install.drop_in_for_config(cfg)


def test_drop_in_for_an_invalid_config_exits_2_with_one_line(tmp_path, capsys):
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[compose\n")
    assert install.main(["drop-in", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) in err[0]


def test_project_dir_with_a_quote_is_refused_not_written_into_the_unit():
    with pytest.raises(ConfigError):
        install.drop_in_text(Path('/srv/a"b'))
