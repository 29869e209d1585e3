"""``gitops-agent check-config``: everything an agent config points at, checked at once.

Each problem is one line ``CONFIG: key.path: what`` (``agent.toml: compose.project_dir:
/srv/app does not exist``). The schema errors are agent/config.py's; then, from the raw TOML
(so a schema error elsewhere does not hide them): secret, token and signers files (exist,
readable, safe modes, as the agent itself checks them when it opens them), Apprise URLs
(parsed, nothing sent), compose.project_dir and its compose files, and the compose v2
binary (``compose version``; with the files present, ``compose config`` parses them).
Read-only: nothing deployed, no container touched, state_dir neither created nor written.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.errors import AgentError, ConfigError, InvalidInput

COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
_AT_RE = re.compile(r"^At '([^']*)': (.*)\Z", re.S)


def _key_line(problem: str, default_key: str) -> str:
    """``At 'a.b': msg`` -> ``a.b: msg``; anything else under ``default_key``."""
    m = _AT_RE.match(problem)
    if m:
        return f"{m.group(1)}: {m.group(2)}"
    return f"{default_key}: {problem}"


def _get(data: dict[str, Any], *keys: str) -> Any:
    cur: Any = data
    for k in keys:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return cur


def check_config(path: Path) -> list[str]:
    """Every problem of the agent config at ``path``, each ``key.path: what`` (without the
    config path: :func:`render` adds it). Empty: clean."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        return [f"(file): cannot read: {e.strerror}"]
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return [f"(file): not valid TOML: {e}"]
    if "stack" in data or "repo" in data:
        return _check_stacks(data, path)
    problems = _schema(data, path)
    base = path.parent
    problems += _files(data, base)
    problems += _notify(data)
    problems += _compose(data, base)
    problems += _state_dir(data, base)
    return problems


def _check_stacks(data: dict[str, Any], path: Path) -> list[str]:
    """A config of [[stack]] tables: the schema of the whole file, the agent's own files,
    then each stack's source, trust and compose files, at ``stack.<name>.``."""
    from agent.stacks_config import parse_agent_file

    problems: list[str] = []
    try:
        parse_agent_file(data, str(path), base=path.parent)
    except ConfigError as e:
        problems += [_key_line(p, "(top level)") for p in e.problems]
    shared = {k: v for k, v in data.items() if k not in ("stack", "repo", "source", "compose")}
    problems += _files(shared, path.parent) + _notify(shared) + _state_dir(shared, path.parent)
    repos = {r.get("name"): r for r in data.get("repo") or [] if isinstance(r, dict)}
    stacks = data.get("stack") if isinstance(data.get("stack"), list) else []
    for st in stacks or []:
        if not isinstance(st, dict) or not isinstance(st.get("name"), str):
            continue
        src = repos.get(st.get("repo")) if "repo" in st else st.get("source")
        own = {"source": src if isinstance(src, dict) else {}, "compose": st.get("compose"),
               "trust": st.get("trust")}
        problems += [f"stack.{st['name']}.{p}"
                     for p in _files(own, path.parent) + _compose(own, path.parent)]
    return list(dict.fromkeys(problems))


def render(path: Path, problems: Sequence[str]) -> list[str]:
    return [f"{path}: {p}" for p in problems]


def _schema(data: dict[str, Any], path: Path) -> list[str]:
    from agent.config import parse_config

    try:
        parse_config(data, str(path))
    except ConfigError as e:
        return [_key_line(p, "(top level)") for p in e.problems]
    return []


def _as_path(v: Any, base: Path) -> Path | None:
    if not isinstance(v, str) or not v:
        return None
    p = Path(os.path.expanduser(v))
    return p if p.is_absolute() else base / p


def _files(data: dict[str, Any], base: Path) -> list[str]:
    """Secret and trust files, as the agent opens them (agent/secrets.py)."""
    from agent.secrets import check_trusted_file, read_secret_file

    wanted: list[tuple[str, Any, str]] = [
        ("source.token_file", _get(data, "source", "token_file"), "token"),
        ("source.ssh_key_file", _get(data, "source", "ssh_key_file"), "key"),
        ("report.github.token_file", _get(data, "report", "github", "token_file"), "token"),
        ("trust.allowed_signers_file", _get(data, "trust", "allowed_signers_file"), "trust"),
    ]
    reg = data.get("registry")
    if isinstance(reg, dict):
        for host, creds in reg.items():
            wanted.append((f'registry."{host}".password_file',
                           _get(creds, "password_file") if isinstance(creds, dict) else None,
                           "token"))
    out = []
    for key, value, kind in wanted:
        p = _as_path(value, Path.cwd())  # the agent opens them as given (cwd-relative)
        if p is None:
            continue
        try:
            if kind == "token":
                read_secret_file(p, key)
            else:
                check_trusted_file(p, key, secret=kind == "key")
        except InvalidInput as e:
            out += [f"{key}: {m}" for m in e.problems]
    return out


def _notify(data: dict[str, Any]) -> list[str]:
    urls = _get(data, "notify", "urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        return []
    from agent.report.notify import apprise_sender

    try:
        apprise_sender(urls)  # parses each URL with Apprise; sends nothing
    except ConfigError as e:
        return [_key_line(p, "notify.urls") for p in e.problems]
    return []


def _compose(data: dict[str, Any], base: Path) -> list[str]:
    compose = data.get("compose")
    if not isinstance(compose, dict):
        return []
    out: list[str] = []
    project_dir = _as_path(compose.get("project_dir"), base)
    files = compose.get("files", ["compose.yml"])
    files = [f for f in files if isinstance(f, str)] if isinstance(files, list) else []
    from_repo = compose.get("from_repo")
    from_git = [r.rstrip("/") for r in from_repo if isinstance(r, str)] \
        if isinstance(from_repo, list) else []
    all_present = project_dir is not None
    if project_dir is not None:
        if not project_dir.exists():
            out.append(f"compose.project_dir: {project_dir} does not exist")
            all_present = False
        elif not project_dir.is_dir():
            out.append(f"compose.project_dir: {project_dir} is not a directory")
            all_present = False
        else:
            for f in files:
                fp = project_dir / f
                if fp.is_file():
                    continue
                all_present = False
                if any(f == r or f.startswith(r + "/") for r in from_git):
                    continue  # written from git at each revision
                out.append(f"compose.files: {_missing_file(fp, f)}")
    command = compose.get("command")
    cmd = _compose_command(command if isinstance(command, list)
                           and all(isinstance(c, str) for c in command) else None)
    problem = _compose_version(cmd)
    if problem:
        out.append(f"compose.command: {problem}")
    elif all_present and project_dir is not None and files:
        out += _compose_model(cmd, project_dir, files, compose)
    return out


def _missing_file(fp: Path, name: str) -> str:
    others = [n for n in COMPOSE_NAMES if n != fp.name and (fp.parent / n).is_file()]
    if fp.name in COMPOSE_NAMES and others:
        return (f"{fp} does not exist, but {fp.parent / others[0]} does: set "
                f"[compose] files = [\"{others[0]}\"]")
    return f"{fp} does not exist"


def _compose_command(configured: list[str] | None) -> list[str]:
    from agent.edges.compose import find_compose_command

    return find_compose_command(configured)


def _compose_version(cmd: list[str]) -> str | None:
    """Why the compose v2 command cannot run, or None."""
    from agent.log import redact_text

    try:
        p = subprocess.run([*cmd, "version"], capture_output=True, timeout=30, check=False)
    except FileNotFoundError:
        return (f"{cmd[0]!r} not found: install docker compose v2 or set [compose] command")
    except PermissionError:
        return f"{cmd[0]!r} is not executable by this user"
    except subprocess.TimeoutExpired:
        return f"'{' '.join(cmd)} version' did not answer within 30s"
    text = (p.stdout + p.stderr).decode(errors="replace").strip()
    if p.returncode != 0:
        last = text.splitlines()[-1] if text else f"exit {p.returncode}"
        return (f"'{' '.join(cmd)} version' failed: {redact_text(last)} (install docker "
                "compose v2 or set [compose] command)")
    m = re.search(r"version v?(\d+)\.", text)
    if m and int(m.group(1)) < 2:
        return f"'{' '.join(cmd)}' is compose v{m.group(1)}; the agent needs compose v2"
    return None


def _compose_model(cmd: list[str], project_dir: Path, files: list[str],
                   compose: dict[str, Any]) -> list[str]:
    """compose's own model of the files (parses, interpolates; touches no container)."""
    from agent.config import default_project_name
    from agent.edges.compose import Compose

    name = compose.get("project_name")
    profiles = compose.get("profiles")
    c = Compose(cmd, project_dir, files,
                name if isinstance(name, str) and name else default_project_name(project_dir),
                profiles=[p for p in profiles if isinstance(p, str)]
                if isinstance(profiles, list) else ())
    try:
        c.config()
    except InvalidInput as e:
        return [f"compose.files: {p}" for p in e.problems]
    except AgentError as e:
        return [f"compose.command: {e}"]
    return []


def _state_dir(data: dict[str, Any], base: Path) -> list[str]:
    """state_dir as the agent will find it (checked, never created)."""
    from agent.state import check_state_dir_safe

    value = _get(data, "agent", "state_dir")
    p = _as_path(value, Path.cwd()) if value is not None else Path("/var/lib/gitops-agent")
    if p is None:
        return []
    if p.exists():
        try:
            check_state_dir_safe(p)
        except AgentError as e:
            return [f"agent.state_dir: {e}"]
        if not os.access(p, os.W_OK | os.X_OK):
            return [f"agent.state_dir: {p} is not writable by this user"]
        return []
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"agent.state_dir: {p} does not exist and {parent} is not writable "
                "(the agent creates it on its first pass)"]
    return []
