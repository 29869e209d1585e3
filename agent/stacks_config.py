"""``[[stack]]`` tables: the config file of many stacks, parsed and checked up front.

A config without ``[[stack]]`` tables is the one implicit stack (:func:`single`); with them,
:func:`parse_agent_file` reads each stack's table (its source or the shared ``[[repo]]`` it
names, its folder, compose settings, the ``[agent]`` keys a stack may set, trust) into a
one-stack :class:`agent.config.AgentConfig` whose state_dir is ``state_dir/stacks/<name>/``,
and checks the stacks together (unique names and project dirs, ``depends_on`` known and
acyclic); every problem at once. The runtime (one fetch per repo, the rounds, the dependency
gate) is agent/stacks.py.

Pure: imports nothing that touches Docker, git or the network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.config import (
    AgentConfig,
    AgentSection,
    parse_config,
    read_toml,
    resolve_project_dir,
)
from agent.config_report import MetricsConfig, WebhookConfig
from agent.errors import ConfigError

NAME_PATTERN = "[a-z0-9][a-z0-9_-]{0,62}"
DEFAULT_STACK_CONTEXT = "deploy/{host}/{stack}"
# the [agent] settings a [[stack]] may set for itself; the rest (interval, state_dir, host,
# ...) are the agent's
STACK_AGENT_KEYS = (
    "health_timeout_seconds", "settle_seconds", "handover_seconds", "windows", "timezone",
    "keep_releases", "history_limit", "pull_stall_timeout_seconds", "pull_concurrency",
)
STACK_KEYS = ("name", "repo", "source", "dir", "path", "compose", "depends_on", "trust",
              *STACK_AGENT_KEYS)


@dataclass(frozen=True)
class StackSpec:
    """One stack: its name, its config as a one-stack AgentConfig (state_dir its own), the
    stacks it waits for, and the key of the repo it reads (stacks with one key share a
    fetch)."""

    name: str
    cfg: AgentConfig
    depends_on: tuple[str, ...] = ()
    repo_key: str = "default"
    implicit: bool = True
    # the stack's folder in the repo (a monorepo): compose.from_repo paths are relative to
    # it and land in project_dir without it
    repo_dir: str | None = None


@dataclass(frozen=True)
class AgentFile:
    """The whole config file: its stacks and the settings the agent has once (the lock and
    schedule in ``agent``, the webhook and metrics listeners)."""

    specs: tuple[StackSpec, ...]
    agent: AgentSection
    webhook: WebhookConfig | None
    metrics: MetricsConfig
    multi: bool = False

    @property
    def state_dir(self) -> Path:
        return self.agent.state_dir

    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def select(self, name: str | None) -> list[StackSpec]:
        """All stacks, or the one named (``--stack NAME``); ConfigError for an unknown name."""
        if name is None:
            return list(self.specs)
        for s in self.specs:
            if s.name == name:
                return [s]
        known = ", ".join(self.names())
        raise ConfigError("--stack", [f"no stack named {name!r} in the config "
                                      f"(stacks: {known})"])


def load_agent_file(path: Path) -> AgentFile:
    """Read and validate the config file, either form; every problem at once."""
    return parse_agent_file(read_toml(path), str(path), base=path.parent)


def single(cfg: AgentConfig) -> AgentFile:
    """A config without [[stack]] tables as the one implicit stack."""
    spec = StackSpec(cfg.compose.name, cfg)
    return AgentFile((spec,), cfg.agent, cfg.webhook, cfg.metrics)


def parse_agent_file(data: dict[str, Any], source: str = "config",
                     base: Path | None = None) -> AgentFile:
    if "stack" not in data and "repo" not in data:
        cfg = parse_config(data, source)
        return single(resolve_project_dir(cfg, base) if base is not None else cfg)
    problems: list[str] = []
    for key in ("source", "compose"):
        if key in data:
            problems.append(f"{key}: with [[stack]] tables each stack has its own "
                            f"[stack.{key}]; move the top-level [{key}] into a [[stack]]")
    repos = _repos(data.get("repo", []), problems)
    stacks_raw = data.get("stack")
    if not isinstance(stacks_raw, list) or not stacks_raw or \
            not all(isinstance(s, dict) for s in stacks_raw):
        problems.append("stack: at least one [[stack]] table is needed")
        stacks_raw = []
    shared = {k: v for k, v in data.items() if k not in ("stack", "repo", "source", "compose")}
    agent_raw = shared.get("agent")
    top_agent: dict[str, Any] = agent_raw if isinstance(agent_raw, dict) else {}
    state_dir = Path(os.path.expanduser(str(
        top_agent.get("state_dir", AgentSection().state_dir))))
    specs: list[StackSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(stacks_raw):
        spec = _stack(i, raw, shared, repos, state_dir, seen, problems, source)
        if spec is not None:
            specs.append(spec if base is None
                         else replace(spec, cfg=resolve_project_dir(spec.cfg, base)))
    top = None
    try:
        top = parse_config({**shared, "source": {"repo": "-"},
                            "compose": {"project_dir": "/"}}, source)
    except ConfigError as e:
        problems += [p for p in e.problems if not p.startswith(("source", "compose"))]
    problems += _dependency_checks(stacks_raw)
    problems += _cross_checks(specs)
    if problems or top is None:
        raise ConfigError(source, list(dict.fromkeys(problems)))
    return AgentFile(tuple(specs), top.agent, top.webhook, top.metrics, multi=True)


def _repos(raw: Any, problems: list[str]) -> dict[str, dict[str, Any]]:
    import re

    repos: dict[str, dict[str, Any]] = {}
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        problems.append("repo: must be [[repo]] tables")
        return repos
    for i, r in enumerate(raw):
        name = r.get("name")
        where = f"repo.{name}" if isinstance(name, str) else f"repo[{i}]"
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            problems.append(f"{where}.name: required, lower-case letters, digits, - and _")
            continue
        if name in repos:
            problems.append(f"{where}: a second [[repo]] named {name!r}")
            continue
        if "path" in r:
            problems.append(f"{where}.path: the desired-state path is each stack's: set "
                            "path in the [[stack]] tables that name this repo")
        repos[name] = {k: v for k, v in r.items() if k not in ("name", "path")}
    return repos


def _stack(i: int, raw: dict[str, Any], shared: dict[str, Any],
           repos: Mapping[str, dict[str, Any]], state_dir: Path, seen: set[str],
           problems: list[str], source: str) -> StackSpec | None:
    import re

    name = raw.get("name")
    where = f"stack.{name}" if isinstance(name, str) else f"stack[{i}]"
    ok = True
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        problems.append(f"{where}.name: required, lower-case letters, digits, - and _ "
                        "(it names the stack's directory under state_dir/stacks)")
        return None
    if name in seen:
        problems.append(f"{where}: a second [[stack]] named {name!r}")
        return None
    seen.add(name)
    for k in raw:
        if k not in STACK_KEYS:
            problems.append(f"{where}.{k}: unknown key (a stack takes: {', '.join(STACK_KEYS)})")
            ok = False
    repo, inline = raw.get("repo"), raw.get("source")
    if (repo is None) == (inline is None):
        problems.append(f"{where}: set exactly one of repo = \"<a [[repo]] name>\" and "
                        "[stack.source]")
        return None
    if repo is not None:
        if repo not in repos:
            known = ", ".join(repos) or "none"
            problems.append(f"{where}.repo: no [[repo]] named {repo!r} (repos: {known})")
            return None
        src, key = dict(repos[repo]), f"repo:{repo}"
    elif isinstance(inline, dict):
        src, key = dict(inline), f"stack:{name}"
    else:
        problems.append(f"{where}.source: must be a table")
        return None
    repo_dir = raw.get("dir")
    if repo_dir is not None:
        parts = str(repo_dir).strip("/").split("/")
        if not isinstance(repo_dir, str) or any(p in ("", ".", "..") for p in parts):
            problems.append(f"{where}.dir: must be a folder of the repository (relative, no "
                            "'..')")
            return None
        repo_dir = "/".join(parts)
        src["path"] = f"{repo_dir}/desired-state.yml"
    if "path" in raw:
        src["path"] = raw["path"]
    if "compose" not in raw:
        problems.append(f"{where}.compose: required ([stack.compose] with project_dir)")
        return None
    depends = raw.get("depends_on", [])
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
        problems.append(f"{where}.depends_on: must be a list of stack names")
        depends = []
    agent = dict(shared.get("agent") or {})
    agent.update({k: raw[k] for k in STACK_AGENT_KEYS if k in raw})
    agent["state_dir"] = str(state_dir / "stacks" / name)
    agent.pop("stack_concurrency", None)
    derived: dict[str, Any] = {**shared, "source": src, "compose": raw["compose"],
                               "agent": agent, "stack_name": name}
    if "trust" in raw:
        derived["trust"] = raw["trust"]
    report = derived.get("report")
    if isinstance(report, dict) and isinstance(report.get("github"), dict):
        gh = dict(report["github"])
        gh.setdefault("context", DEFAULT_STACK_CONTEXT)
        derived["report"] = {**report, "github": gh}
    try:
        cfg = parse_config(derived, source)
    except ConfigError as e:
        problems += [_where(p, where, raw) for p in e.problems]
        return None
    if not ok:
        return None
    return StackSpec(name, cfg, tuple(depends), key, implicit=False, repo_dir=repo_dir)


def _where(problem: str, where: str, raw: Mapping[str, Any]) -> str:
    """A one-stack config's problem (``At 'loc': what`` or ``loc: what``), at its path in
    the file: the stack's source, compose, trust and own settings under ``where``."""
    import re

    m = re.fullmatch(r"At '([^']*)': (.*)", problem, re.S)
    loc, rest = (m.group(1), m.group(2)) if m else (problem, "")

    def moved(loc: str) -> str:
        head = loc.split(".", 1)[0].split(":", 1)[0].split(" ", 1)[0]
        if head == "source" and "repo" in raw:
            return f"repo.{raw['repo']}{loc.removeprefix('source')}"
        if head in ("source", "compose", "trust"):
            return f"{where}.{loc}"
        key = loc.removeprefix("agent.").split(".", 1)[0].split(":", 1)[0]
        if loc.startswith("agent.") and key in raw:
            return f"{where}.{loc.removeprefix('agent.')}"
        return loc

    return f"At '{moved(loc)}': {rest}" if m else moved(loc)


def _dependency_checks(stacks_raw: Sequence[Any]) -> list[str]:
    """depends_on names stacks of the file, never itself, without a cycle (checked on
    every stack table, a stack with other problems included)."""
    deps: dict[str, list[str]] = {}
    for raw in stacks_raw:
        name, d = raw.get("name"), raw.get("depends_on", [])
        if isinstance(name, str) and isinstance(d, list):
            deps.setdefault(name, [x for x in d if isinstance(x, str)])
    problems: list[str] = []
    for name, ds in deps.items():
        for d in ds:
            if d == name:
                problems.append(f"stack.{name}.depends_on: a stack cannot depend on itself")
            elif d not in deps:
                problems.append(f"stack.{name}.depends_on: no stack named {d!r}")
    cycle = _cycle({n: [d for d in ds if d in deps and d != n] for n, ds in deps.items()})
    if cycle:
        problems.append("stack.depends_on: a cycle: " + " -> ".join(cycle))
    return problems


def _cross_checks(specs: Sequence[StackSpec]) -> list[str]:
    problems: list[str] = []
    by_project: dict[str, str] = {}
    by_dir: dict[Path, str] = {}
    for s in specs:
        project = s.cfg.compose.name
        if project in by_project:
            problems.append(f"stack.{s.name}.compose: compose project {project!r} is stack "
                            f"{by_project[project]}'s too; set compose.project_name")
        by_project.setdefault(project, s.name)
        pdir = s.cfg.compose.project_dir
        if pdir in by_dir:
            problems.append(f"stack.{s.name}.compose.project_dir: {pdir} is stack "
                            f"{by_dir[pdir]}'s too; each stack has its own project_dir")
        by_dir.setdefault(pdir, s.name)
    first: dict[str, StackSpec] = {}
    for s in specs:
        f = first.setdefault(s.repo_key, s)
        a, b = f.cfg.trust, s.cfg.trust
        if (a.require_signed_commits, a.allowed_signers_file) != \
                (b.require_signed_commits, b.allowed_signers_file):
            problems.append(f"stack.{s.name}.trust: the stacks of one repo read one fetch: "
                            f"require_signed_commits and allowed_signers_file must be "
                            f"stack {f.name}'s")
    return problems


def _cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in graph:
        if n not in state and (found := visit(n)):
            return found
    return None


__all__ = ["AgentFile", "StackSpec", "load_agent_file", "parse_agent_file", "single"]
