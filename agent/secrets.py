"""Secret files (tokens, registry passwords): strict permissions, never logged."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.log import register_secret


def read_secret_file(path: Path, what: str) -> str:
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(what, [f"cannot read {path}: {e.strerror}"]) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            what,
            [f"{path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
             f"run 'chmod 600 {path}'"],
        )
    try:
        value = path.read_text().strip()
    except OSError as e:
        raise ConfigError(what, [f"cannot read {path}: {e.strerror}"]) from None
    if not value:
        raise ConfigError(what, [f"{path} is empty"])
    register_secret(value)
    return value


def registry_auth(cfg: AgentConfig) -> dict[str, dict[str, str]]:
    """``{registry: {"username", "password"}}`` from ``[registry."host"]`` sections."""
    out = {}
    for host, creds in cfg.registry.items():
        password = read_secret_file(creds.password_file, f"registry.\"{host}\".password_file")
        out[host] = {"username": creds.username, "password": password}
    return out


def token_from_file(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    return read_secret_file(path, what)


__all__ = ["read_secret_file", "registry_auth", "token_from_file"]
