"""Secret and trust files (tokens, registry passwords, allowed signers): opened without
following symlinks, checked on the open file, never logged."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.log import register_secret

MAX_FILE_BYTES = 1024 * 1024  # a token, a password or an allowed-signers list


def check_trusted_file(path: Path, what: str, *, secret: bool) -> bytes:
    """Open ``path`` without following a symlink, check the *open* file (no window between
    check and read) and return its content.

    Refused (ConfigError naming ``what``): a symlink, anything but a regular file, a file
    owned by someone other than root or the agent's user, group/other-writable; and for a
    ``secret`` (token, password) any group/other permission at all (readable included).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(what, [
                f"{path} is a symlink; the agent does not follow symlinks for {what}: "
                "point the config at the file itself"
            ]) from None
        raise ConfigError(what, [f"cannot read {path}: {e.strerror}"]) from None
    try:
        st = os.fstat(fd)
        problem = _unsafe(path, st, secret)
        if problem:
            raise ConfigError(what, [problem])
        data = b""
        while len(data) <= MAX_FILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(what, [f"{path} is larger than {MAX_FILE_BYTES} bytes"])
        return data
    except OSError as e:
        raise ConfigError(what, [f"cannot read {path}: {e.strerror}"]) from None
    finally:
        os.close(fd)


def _unsafe(path: Path, st: os.stat_result, secret: bool) -> str | None:
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid not in (0, os.geteuid()):
        return (f"{path} is owned by uid {st.st_uid}, not by root or the agent's user "
                f"(uid {os.geteuid()}); run 'chown {os.geteuid()} {path}'")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"{path} is writable by group or others (mode {mode:04o}); "
                f"run 'chmod go-w {path}'")
    if secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"{path} is readable by group or others (mode {mode:04o}); "
                f"run 'chmod 600 {path}'")
    return None


def trusted_copy(path: Path, what: str, dest: Path) -> Path:
    """Check ``path`` as :func:`check_trusted_file` (not a secret) and copy its content to
    ``dest`` (in state_dir, mode 0600, replaced atomically). Give ``dest`` to a tool that
    opens the file by name itself (``git -c gpg.ssh.allowedSignersFile=``): what it reads is
    then what was checked, whatever happens to ``path`` meanwhile."""
    from agent.state import write_atomic

    write_atomic(dest, check_trusted_file(path, what, secret=False), mode=0o600)
    return dest


def read_secret_file(path: Path, what: str) -> str:
    try:
        value = check_trusted_file(path, what, secret=True).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(what, [f"{path} is not UTF-8 text"]) from None
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


__all__ = [
    "check_trusted_file", "read_secret_file", "registry_auth", "token_from_file",
    "trusted_copy",
]
