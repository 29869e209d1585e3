"""Host policy for compose files from git (``compose.from_repo``): what a revision may ask
of this host beyond an ordinary container. Pure: no Docker, git or network.

With ``from_repo``, whoever can push to the branch writes the compose files, and a compose
file is root on the host (``privileged: true``, a bind of ``/`` or of the Docker socket,
``pid: host``). So everything beyond an ordinary container is refused unless the admin
allows it in ``[compose.allow]`` of agent.toml (:class:`agent.config.ComposeAllow`);
nothing in git can loosen it. Two checks, each reporting every problem at once, one line
each naming the key (``At 'services.traefik.volumes[0].source': ...``), paths but never a
file's contents or an environment value:

* :func:`check_host_policy` — on compose's fully resolved model (``docker compose config
  --format json``, every profile), its paths under the real project_dir: privileged, host
  namespaces, added capabilities, devices, confinement turned off, bind mounts (and local
  volumes bound to a host path), the ``file:`` of configs and secrets outside project_dir.
* :func:`check_raw_references` — on the raw YAML of the revision's compose files, before
  compose reads anything: compose's model no longer has ``env_file`` (merged into
  ``environment``), ``include`` or ``extends``, so the files they name are checked here —
  an env or label file outside project_dir, an included or extended file that is not a
  file of the repository.

Paths are compared lexically (``os.path.normpath``): a path is inside project_dir when it
is project_dir or below it. Relative paths resolve as compose resolves them with
``--project-directory project_dir``: in the compose files themselves against project_dir;
in an included file against the include's ``project_directory`` (else the included file's
directory); in an extended file against that file's directory.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from agent.config_allow import ComposeAllow, normalize_capability
from agent.errors import UntrustedRevision

# service keys whose value "host" joins a host namespace
HOST_NAMESPACE_KEYS = ("pid", "ipc", "uts", "userns_mode", "cgroup", "network_mode")
# security_opt values that turn a confinement off (key=value or key:value)
_UNCONFINED = {("seccomp", "unconfined"), ("apparmor", "unconfined"),
               ("systempaths", "unconfined"), ("label", "disable")}
# local-driver volume types whose device is remote, not a host path
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb", "smb3"}

_BIND_HINT = "([compose.allow] bind_sources)"
_INCLUDE_HINT = "([compose.allow] include_outside)"


# ------------------------------------------------------------------------ paths
def _norm(path: str) -> str:
    return posixpath.normpath(path)


def _resolve(path: str, base: str) -> str:
    """``path`` (absolute, ``~``, or relative to ``base``), normalised lexically."""
    if path.startswith("~"):
        path = os.path.expanduser(path)
    return _norm(posixpath.join(base, path))


def _inside(path: str, root: str) -> bool:
    root = _norm(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _bind_allowed(path: str, allow: ComposeAllow) -> bool:
    """``path`` is named by ``bind_sources``: exactly, or below an entry ending in '/'."""
    for entry in allow.bind_sources:
        if entry.endswith("/"):
            if _inside(path, entry):
                return True
        elif path == _norm(entry):
            return True
    return False


def _host_path_refused(path: str, project_dir: str, allow: ComposeAllow) -> bool:
    return not _inside(path, project_dir) and not _bind_allowed(path, allow)


# ------------------------------------------------------------------------ the resolved model
def check_host_policy(model: Mapping[str, Any], project_dir: Path, allow: ComposeAllow, *,
                      source: str) -> None:
    """Refuse a revision whose resolved compose model asks more of the host than
    ``allow`` (``[compose.allow]``) permits.

    ``model`` is the JSON of ``docker compose config --format json`` (every profile), with
    every path already under the real ``project_dir`` (absolute). Raises
    :class:`~agent.errors.UntrustedRevision` (``source``, one line per problem, all of
    them) or returns None.
    """
    problems = host_policy_problems(model, project_dir, allow)
    if problems:
        raise UntrustedRevision(source, problems)


def host_policy_problems(model: Mapping[str, Any], project_dir: Path,
                         allow: ComposeAllow) -> list[str]:
    """The problems :func:`check_host_policy` raises, as a list (empty: allowed)."""
    pd = _norm(str(project_dir))
    services = _mapping(model.get("services"))
    problems: list[str] = []
    used: dict[tuple[str, str], bool] = {}  # (configs|secrets|volumes, name) -> referenced
    for name in sorted(services):
        svc = _mapping(services[name])
        problems += _service_problems(name, svc, model, pd, allow, used)
    for kind in ("configs", "secrets"):
        for key, spec in sorted(_mapping(model.get(kind)).items()):
            path = _file_of(spec, pd)
            if path and not used.get((kind, key)) and _host_path_refused(path, pd, allow):
                problems.append(f"At '{kind}.{key}.file': {path} outside project_dir {pd} "
                                f"is not allowed {_BIND_HINT}")
    for key, spec in sorted(_mapping(model.get("volumes")).items()):
        device = _bound_device(spec, pd)
        if device and not used.get(("volumes", key)) and \
                _host_path_refused(device, pd, allow):
            problems.append(f"At 'volumes.{key}.driver_opts.device': a volume bound to "
                            f"{device} outside project_dir {pd} is not allowed {_BIND_HINT}")
    return problems


def _service_problems(name: str, svc: Mapping[str, Any], model: Mapping[str, Any], pd: str,
                      allow: ComposeAllow, used: dict[tuple[str, str], bool]) -> list[str]:
    at = f"services.{name}"
    out: list[str] = []
    if svc.get("privileged") in (True, "true") and not allow.allows("privileged", name):
        out.append(f"At '{at}.privileged': a privileged container is not allowed "
                   "([compose.allow] privileged)")
    for key in HOST_NAMESPACE_KEYS:
        if svc.get(key) == "host" and not allow.allows("host_namespaces", name):
            out.append(f"At '{at}.{key}': the host's namespace ({key}: host) is not allowed "
                       "([compose.allow] host_namespaces)")
    caps = [str(c) for c in _list(svc.get("cap_add"))]
    permitted = allow.capabilities(name)
    refused = [c for c in caps if "*" not in permitted and
               normalize_capability(c) not in permitted]
    if refused:
        out.append(f"At '{at}.cap_add': adding {', '.join(refused)} is not allowed "
                   "([compose.allow] cap_add)")
    if not allow.allows("devices", name):
        devices = [_device_source(d) for d in _list(svc.get("devices"))]
        if devices:
            out.append(f"At '{at}.devices': host devices ({', '.join(devices)}) are not "
                       "allowed ([compose.allow] devices)")
        if _list(svc.get("device_cgroup_rules")):
            out.append(f"At '{at}.device_cgroup_rules': device access rules are not allowed "
                       "([compose.allow] devices)")
        if svc.get("gpus"):
            out.append(f"At '{at}.gpus': the host's GPUs are not allowed "
                       "([compose.allow] devices)")
    if not allow.allows("security_opt", name):
        for i, opt in enumerate(_list(svc.get("security_opt"))):
            if _unconfined(str(opt)):
                out.append(f"At '{at}.security_opt[{i}]': {opt} is not allowed "
                           "([compose.allow] security_opt)")
    out += _volume_problems(at, svc, model, pd, allow, used)
    for kind, what in (("configs", "config"), ("secrets", "secret")):
        top = _mapping(model.get(kind))
        for i, ref in enumerate(_list(svc.get(kind))):
            key = str(ref.get("source") if isinstance(ref, Mapping) else ref)
            used[(kind, key)] = True
            path = _file_of(top.get(key), pd)
            if path and _host_path_refused(path, pd, allow):
                out.append(f"At '{at}.{kind}[{i}]': {what} {key} reads {path} outside "
                           f"project_dir {pd}, which is not allowed {_BIND_HINT}")
    for key, what in (("env_file", "env file"), ("label_file", "label file")):
        for i, entry in enumerate(_file_list(svc.get(key))):
            path = _resolve(entry, pd)
            if _host_path_refused(path, pd, allow):
                out.append(f"At '{at}.{key}[{i}]': {what} {path} outside project_dir {pd} "
                           f"is not allowed {_BIND_HINT}")
    return out


def _volume_problems(at: str, svc: Mapping[str, Any], model: Mapping[str, Any], pd: str,
                     allow: ComposeAllow, used: dict[tuple[str, str], bool]) -> list[str]:
    out: list[str] = []
    top = _mapping(model.get("volumes"))
    for i, vol in enumerate(_list(svc.get("volumes"))):
        kind, src = _mount(vol)
        if kind == "bind" and src:
            path = _resolve(src, pd)
            if _host_path_refused(path, pd, allow):
                key = f"{at}.volumes[{i}].source" if isinstance(vol, Mapping) \
                    else f"{at}.volumes[{i}]"
                out.append(f"At '{key}': bind mount of {path} outside project_dir {pd} "
                           f"is not allowed {_BIND_HINT}")
        elif kind == "volume" and src:
            used[("volumes", src)] = True
            device = _bound_device(top.get(src), pd)
            if device and _host_path_refused(device, pd, allow):
                out.append(f"At '{at}.volumes[{i}].source': volume {src} is bound to "
                           f"{device} outside project_dir {pd}, which is not allowed "
                           f"{_BIND_HINT}")
    return out


def _mount(vol: Any) -> tuple[str, str | None]:
    """(type, source) of a service's volumes entry, long or short syntax."""
    if isinstance(vol, Mapping):
        src = vol.get("source")
        return str(vol.get("type") or "volume"), (str(src) if src else None)
    if isinstance(vol, str):
        src = vol.split(":", 1)[0] if ":" in vol else ""
        if not src:
            return "volume", None  # an anonymous volume
        if src.startswith(("/", ".", "~")):
            return "bind", src
        return "volume", src
    return "?", None


def _bound_device(spec: Any, pd: str) -> str | None:
    """The host path a top-level volume of the local driver is bound (mounted) to, or None:
    ``driver_opts: {type: none, o: bind, device: /}``. A network filesystem is not."""
    spec = _mapping(spec)
    if spec.get("external") or spec.get("driver") not in (None, "", "local"):
        return None
    opts = _mapping(spec.get("driver_opts"))
    device = opts.get("device")
    if not isinstance(device, str) or not device:
        return None
    if str(opts.get("type") or "none").lower() in _NETWORK_FS:
        return None
    return _resolve(device, pd)


def _file_of(spec: Any, pd: str) -> str | None:
    path = _mapping(spec).get("file")
    return _resolve(path, pd) if isinstance(path, str) and path else None


def _device_source(d: Any) -> str:
    if isinstance(d, Mapping):
        return str(d.get("source") or "?")
    return str(d).split(":", 1)[0]


def _unconfined(opt: str) -> bool:
    for sep in ("=", ":"):
        key, found, value = opt.partition(sep)
        if found and (key.strip().lower(), value.strip().lower()) in _UNCONFINED:
            return True
    return False


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Any]:
    if isinstance(v, list):
        return v
    return [] if v is None or v == "" else [v]


def _file_list(v: Any) -> list[str]:
    """``env_file``/``label_file``: a string, a list of strings or of ``{path: ...}``."""
    out = []
    for entry in _list(v):
        path = entry.get("path") if isinstance(entry, Mapping) else entry
        if isinstance(path, str) and path:
            out.append(path)
    return out


# ------------------------------------------------------------------------ the raw files
class _ComposeConstructor(SafeConstructor):
    """Safe YAML, plus compose's own tags (``!reset``, ``!override``) read as untagged."""


def _untagged(self: SafeConstructor, node: Node) -> Any:
    if isinstance(node, MappingNode):
        return self.construct_yaml_map(node)
    if isinstance(node, SequenceNode):
        return self.construct_yaml_seq(node)
    return self.construct_scalar(node)


_ComposeConstructor.add_constructor(None, _untagged)


@dataclass(frozen=True)
class _File:
    rel: str  # path inside project_dir, a key of ``files``
    workdir: str  # what its relative paths resolve against (absolute)


def check_raw_references(files: Mapping[str, bytes], project_dir: Path, allow: ComposeAllow,
                         *, compose_files: Sequence[str], source: str) -> None:
    """Refuse a revision whose compose files name files they must not, before compose
    reads any of them.

    ``files`` is every file of the revision (path relative to ``project_dir``, as it will
    be written -> content); ``compose_files`` is ``[compose] files`` (relative to
    ``project_dir``). Each compose file among ``files`` is parsed (YAML, several documents
    allowed), and so is every file it includes or extends, transitively. Refused:

    * an ``env_file`` or ``label_file`` (of a service, or of an ``include`` entry) outside
      project_dir, unless ``bind_sources`` names it;
    * an ``include`` path or ``extends: {file: ...}`` that is not one of ``files`` (outside
      project_dir, a local file of project_dir, a remote resource), or an include's
      ``project_directory`` outside project_dir, unless ``include_outside``;
    * such a path written with ``$`` interpolation (its value cannot be checked);
    * a file that is not UTF-8 YAML (its references cannot be checked).

    Raises :class:`~agent.errors.UntrustedRevision` (``source``, every problem, paths and
    keys only) or returns None.
    """
    problems = raw_reference_problems(files, project_dir, allow, compose_files=compose_files)
    if problems:
        raise UntrustedRevision(source, problems)


def raw_reference_problems(files: Mapping[str, bytes], project_dir: Path, allow: ComposeAllow,
                           *, compose_files: Sequence[str]) -> list[str]:
    """The problems :func:`check_raw_references` raises, as a list (empty: allowed)."""
    pd = _norm(str(project_dir))
    walk = _Walk(files, pd, allow)
    for f in compose_files:
        path = _resolve(f, pd)
        rel = _relative(path, pd)
        if rel is not None and rel in files:  # else a server file, not the revision's
            walk.visit(_File(rel, pd))
    return walk.problems


def _relative(path: str, pd: str) -> str | None:
    if not _inside(path, pd):
        return None
    return posixpath.relpath(path, pd)


class _Walk:
    def __init__(self, files: Mapping[str, bytes], pd: str, allow: ComposeAllow) -> None:
        self.files, self.pd, self.allow = files, pd, allow
        self.problems: list[str] = []
        self.seen: set[tuple[str, str]] = set()

    def visit(self, f: _File) -> None:
        if (f.rel, f.workdir) in self.seen:
            return
        self.seen.add((f.rel, f.workdir))
        docs = self._load(f.rel)
        for doc in docs:
            if isinstance(doc, Mapping):
                self._document(f, doc)

    def _load(self, rel: str) -> list[Any]:
        try:
            text = self.files[rel].decode("utf-8")
        except UnicodeDecodeError as e:
            self._problem(rel, "(top level)", f"not UTF-8 text (byte {e.start}); its "
                          "references cannot be checked")
            return []
        yaml = YAML(typ="safe", pure=True)
        yaml.Constructor = _ComposeConstructor
        try:
            return list(yaml.load_all(io.StringIO(text)))
        except YAMLError as e:
            mark = e.problem_mark if isinstance(e, MarkedYAMLError) else None
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            self._problem(rel, "(top level)", f"not valid YAML{where}; its references "
                          "cannot be checked")
        except (RecursionError, ValueError, TypeError, OverflowError):
            self._problem(rel, "(top level)", "not valid YAML; its references cannot be "
                          "checked")
        return []

    def _problem(self, rel: str, key: str, text: str) -> None:
        self.problems.append(f"At '{key}' ({rel}): {text}")

    def _document(self, f: _File, doc: Mapping[str, Any]) -> None:
        for i, entry in enumerate(_list(doc.get("include"))):
            self._include(f, f"include[{i}]", entry)
        services = _mapping(doc.get("services"))
        for name in sorted(services, key=str):
            svc = _mapping(services[name])
            at = f"services.{name}"
            for key, what in (("env_file", "env file"), ("label_file", "label file")):
                for i, path in enumerate(_file_list(svc.get(key))):
                    self._host_file(f, f"{at}.{key}[{i}]", path, what)
            ext = svc.get("extends")
            if isinstance(ext, Mapping) and isinstance(ext.get("file"), str):
                target = self._repo_file(f, f"{at}.extends.file", ext["file"])
                if target is not None:
                    self.visit(_File(target, posixpath.dirname(_resolve(target, self.pd))))

    def _include(self, f: _File, at: str, entry: Any) -> None:
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, Mapping):
            return
        workdir = None
        project_directory = entry.get("project_directory")
        if isinstance(project_directory, str) and project_directory:
            key = f"{at}.project_directory"
            if self._interpolated(f, key, project_directory):
                return
            workdir = _resolve(project_directory, f.workdir)
            if not _inside(workdir, self.pd) and not self.allow.include_outside:
                self._problem(f.rel, key, f"{workdir} is outside project_dir {self.pd}, "
                              f"which is not allowed {_INCLUDE_HINT}")
        for i, path in enumerate(_file_list(entry.get("env_file"))):
            self._host_file(f, f"{at}.env_file[{i}]", path, "env file")
        paths = _list(entry.get("path"))
        for i, path in enumerate(paths):
            if not isinstance(path, str) or not path:
                continue
            key = f"{at}.path[{i}]" if isinstance(entry.get("path"), list) else f"{at}.path"
            target = self._repo_file(f, key, path)
            if target is not None:
                own = posixpath.dirname(_resolve(target, self.pd))
                self.visit(_File(target, workdir or own))

    def _interpolated(self, f: _File, key: str, path: str) -> bool:
        if "$" in path:
            self._problem(f.rel, key, f"{path!r} uses variable interpolation; the agent "
                          "checks the paths a compose file from git names, so write it out")
            return True
        return False

    def _host_file(self, f: _File, key: str, path: str, what: str) -> None:
        if self._interpolated(f, key, path):
            return
        resolved = _resolve(path, f.workdir)
        if _host_path_refused(resolved, self.pd, self.allow):
            self._problem(f.rel, key, f"{what} {resolved} outside project_dir {self.pd} is "
                          f"not allowed {_BIND_HINT}")

    def _repo_file(self, f: _File, key: str, path: str) -> str | None:
        """The repository file ``path`` names (relative to project_dir), or None after
        recording why it may not be read (unless ``include_outside``)."""
        if self._interpolated(f, key, path):
            return None
        if _remote(path):
            where = "a remote resource (not shown: its address may carry credentials)"
        else:
            resolved = _resolve(path, f.workdir)
            rel = _relative(resolved, self.pd)
            if rel is not None and rel in self.files:
                return rel
            where = (f"{resolved} is not a file of the repository" if rel is not None
                     else f"{resolved} is outside project_dir {self.pd}")
        if not self.allow.include_outside:
            self._problem(f.rel, key, f"{where}; included and extended compose files must "
                          f"come from the repository {_INCLUDE_HINT}")
        return None


def _remote(path: str) -> bool:
    return "://" in path or path.startswith(("git@", "oci:"))
