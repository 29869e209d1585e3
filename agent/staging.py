"""The revision as it will run (``compose.from_repo``): a staging directory that mirrors
project_dir, and which of git's files each service reads.

compose resolves ``env_file``, ``include``, ``extends``, ``configs``/``secrets`` ``file:`` and
relative bind sources against the project directory. A revision is therefore validated in a
*mirror* of project_dir: the revision's files, written for real, and every other entry of
project_dir (the admin's ``.env``, a data directory, a local certificate) as a symlink to
the original, exactly where it will be. Files the agent wrote that the revision no longer has
are absent, as they will be. compose runs there with the mirror as its project directory;
the model it prints names the mirror's paths, which :func:`rewrite` turns back into
project_dir's, so that what is checked (host policy, images) and compared is the model as
it will run.

A file from git that a service bind-mounts or names as a ``configs``/``secrets`` source
does not change the compose configuration hash when only its content changes, so compose
would never recreate the service. The agent adds a label per service carrying the digest of
exactly the git files it reads (:func:`file_labels`); a changed file changes the label, the
label changes the hash, and the existing machinery (diff, recreate, health gate, rollback)
treats it as the configuration change it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.stack import StackPlan

FILES_LABEL = "io.gitops-agent.files"


class StackCompose(Protocol):
    """compose on a set of files (the mirror's or project_dir's): the model and hashes."""

    def services(self) -> dict[str, Any]: ...

    def model(self) -> dict[str, Any]: ...

    def inactive_services(self) -> dict[str, list[str]]: ...

    def config(self, with_override: bool = False,
               profiles: Sequence[str] | None = None) -> dict[str, Any]: ...

    def config_hashes(self, images: Mapping[str, str],
                      labels: Mapping[str, Mapping[str, str]] | None = None
                      ) -> dict[str, str]: ...


@dataclass
class StagedStack:
    """The files of the revision a pass converges on, and compose reading them (from the
    mirror when they differ from project_dir's)."""

    plan: StackPlan
    compose: StackCompose
    mirror: Path | None = None  # the staging mirror, when the files differ
    hashes: dict[str, str] = field(default_factory=dict)  # per service, as it must run
    reasons: dict[str, list[str]] = field(default_factory=dict)  # why a service changes


def build_mirror(staging: Path, project_dir: Path, files: Mapping[str, bytes],
                 absent: Iterable[str] = ()) -> None:
    """Make ``staging`` a mirror of project_dir as the revision will leave it: ``files``
    written, ``absent`` (the agent's files the revision deletes) missing, and every other
    entry of project_dir a symlink to the original. Only directories on the way to a
    revision's file (or an absent one) are walked; everything else is linked whole."""
    shutil.rmtree(staging, ignore_errors=True)  # symlinks are unlinked, never followed
    staging.mkdir(parents=True, mode=0o700)
    gone = set(absent)
    mine = set(files) | gone
    walk = {str(p) for f in mine for p in Path(f).parents if str(p) != "."}

    def fill(rel: str) -> None:
        src = project_dir / rel if rel else project_dir
        try:
            entries = sorted(os.scandir(src), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            r = f"{rel}/{entry.name}" if rel else entry.name
            if r in mine:
                continue
            dest = staging / r
            if r in walk and entry.is_dir(follow_symlinks=False):
                dest.mkdir(mode=0o700, exist_ok=True)
                fill(r)
            else:
                dest.symlink_to(project_dir / r)

    fill("")
    for path, data in sorted(files.items()):
        dest = staging / path
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        dest.write_bytes(data)


def rewrite(value: Any, mirror: Path, project_dir: Path) -> Any:
    """Every string in ``value`` that names a path in the mirror, named in project_dir."""
    old, new = str(mirror), str(project_dir)
    if isinstance(value, str):
        if value == old or value.startswith(old + "/"):
            return new + value[len(old):]
        return value.replace(old + "/", new + "/")
    if isinstance(value, dict):
        return {k: rewrite(v, mirror, project_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite(v, mirror, project_dir) for v in value]
    return value


def _under(path: str, root: Path) -> str | None:
    """``path`` (absolute) relative to ``root``, or None when it is outside."""
    norm = os.path.normpath(path)
    base = str(root)
    if norm == base:
        return ""
    if norm.startswith(base.rstrip("/") + "/"):
        return norm[len(base.rstrip("/")) + 1:]
    return None


def env_files(texts: Iterable[bytes]) -> dict[str, list[str]]:
    """Per service, the ``env_file`` paths the compose files name (relative to the project
    directory, as compose resolves them in the project's own files). compose's model drops
    ``env_file`` once it has read it, so the files' own text is read for it."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    out: dict[str, list[str]] = {}
    for text in texts:
        try:
            docs = list(YAML(typ="safe", pure=True).load_all(text))
        except (YAMLError, ValueError):
            continue  # compose itself says what is wrong with the file
        for doc in docs:
            services = doc.get("services") if isinstance(doc, dict) else None
            for name, svc in (services or {}).items() if isinstance(services, dict) else []:
                value = svc.get("env_file") if isinstance(svc, dict) else None
                entries = value if isinstance(value, list) else [value] if value else []
                for e in entries:
                    path = e.get("path") if isinstance(e, dict) else e
                    if isinstance(path, str) and path:
                        out.setdefault(str(name), []).append(path)
    return out


def file_refs(model: Mapping[str, Any], project_dir: Path,
              repo_files: Iterable[str],
              env: Mapping[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Per service, the files from git it reads: bind sources (a file, or a directory and
    everything under it), ``configs``/``secrets`` ``file:`` sources and ``env`` (its
    ``env_file`` paths, see :func:`env_files`), in project_dir. ``model`` is compose's
    resolved model with project_dir's paths."""
    files = sorted(set(repo_files))
    top = {kind: model.get(kind) or {} for kind in ("configs", "secrets")}

    def covered(source: str) -> list[str]:
        rel = _under(source, project_dir)
        if rel is None:
            return []
        if rel == "":
            return list(files)
        return [f for f in files if f == rel or f.startswith(rel + "/")]

    out: dict[str, list[str]] = {}
    for name, svc in sorted((model.get("services") or {}).items()):
        svc = svc or {}
        found: set[str] = set()
        for vol in svc.get("volumes") or []:
            if isinstance(vol, dict) and vol.get("type") == "bind" and vol.get("source"):
                found.update(covered(str(vol["source"])))
        for kind in ("configs", "secrets"):
            for ref in svc.get(kind) or []:
                key = ref.get("source") if isinstance(ref, dict) else ref
                spec = top[kind].get(str(key)) if key is not None else None
                if isinstance(spec, dict) and spec.get("file"):
                    found.update(covered(str(spec["file"])))
        for path in (env or {}).get(name, []):
            found.update(covered(os.path.join(str(project_dir), path)))
        if found:
            out[name] = sorted(found)
    return out


def file_labels(refs: Mapping[str, list[str]],
                digests: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Per service that reads git files, the label carrying their digest."""
    out = {}
    for service, paths in sorted(refs.items()):
        text = "\n".join(f"{p}\0{digests.get(p, '')}" for p in paths)
        out[service] = {FILES_LABEL: hashlib.sha256(text.encode()).hexdigest()[:32]}
    return out


def with_labels(services: Mapping[str, Any],
                labels: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """The services of a model with the agent's labels merged in (as the override does)."""
    out = {}
    for name, svc in services.items():
        svc = dict(svc or {})
        if name in labels:
            svc["labels"] = {**(svc.get("labels") or {}), **labels[name]}
        out[name] = svc
    return out


def changed_files(refs_old: Mapping[str, list[str]], refs_new: Mapping[str, list[str]],
                  old: Mapping[str, str], new: Mapping[str, str], service: str) -> list[str]:
    """The git files ``service`` reads whose content (or presence) differs."""
    paths = sorted({*refs_old.get(service, []), *refs_new.get(service, [])})
    return [p for p in paths if old.get(p) != new.get(p)
            or (p in refs_old.get(service, [])) != (p in refs_new.get(service, []))]


def pinned(services: Mapping[str, Any], images: Mapping[str, str]) -> dict[str, Any]:
    """The services of a model with managed services pinned (as the override does)."""
    return {name: {**(svc or {}), "image": images.get(name, (svc or {}).get("image"))}
            for name, svc in services.items()}


class StackHashes:
    """What the diff of a from_repo pass needs: per service the configuration hash it must
    run with (``hashes``: compose's own, from the model as it will run, pinned and
    labelled), and for a service the revision's files change, why (``reasons``: the git
    files it reads that changed, then the compose keys that did)."""

    def __init__(self, hashes: dict[str, str], reasons: dict[str, list[str]]) -> None:
        self.hashes = hashes
        self.reasons = reasons

    @classmethod
    def of(cls, project: StackCompose, staged: StackCompose | None, project_dir: Path,
           current: Mapping[str, str], new: Mapping[str, str],
           images: Mapping[str, str], *, env_now: Mapping[str, list[str]] | None = None,
           env_new: Mapping[str, list[str]] | None = None) -> StackHashes:
        """``project``/``staged``: compose on project_dir's and the mirror's files;
        ``current``/``new``: the git files project_dir holds and will hold (path ->
        sha256); ``env_now``/``env_new``: the ``env_file`` paths per service of each
        (:func:`env_files`); ``staged`` None: the revision's files are project_dir's."""
        from agent.errors import ComposeFileError

        if staged is None:
            model = project.model()
            labels = file_labels(file_refs(model, project_dir, current, env_now), current)
            return cls(project.config_hashes(images, labels), {})
        new_model = staged.model()
        new_refs = file_refs(new_model, project_dir, new, env_new)
        hashes = staged.config_hashes(images, file_labels(new_refs, new))
        try:  # what project_dir holds now, to say why a service changes
            cur_model = project.model()
        except ComposeFileError:  # nothing (valid) there yet: the first release
            cur_model = {}
        cur_refs = file_refs(cur_model, project_dir, current, env_now)
        old = pinned(cur_model.get("services") or {}, images)
        want = pinned(new_model.get("services") or {}, images)
        reasons = {}
        for name, svc in sorted(want.items()):
            before = old.get(name)
            files = changed_files(cur_refs, new_refs, current, new, name)
            if before is None:
                reasons[name] = ["(added)"]
            elif files or before != svc:
                reasons[name] = [*files, *sorted(k for k in {*svc, *before}
                                                 if svc.get(k) != before.get(k))]
        return cls(hashes, reasons)
