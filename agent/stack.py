"""The compose project from git (``compose.from_repo``): which files the agent writes into
``project_dir``, which it owns, and how it puts them back.

One revision is files + digests. The files of a revision are read from the source at
exactly that commit, validated from a staging copy (never from ``project_dir``), and only
then written into ``project_dir``, each atomically. What the agent wrote is recorded in
``state_dir/stack/`` — the ownership record — so that:

* a file the agent did not write (a local ``.env``, a data directory) is never overwritten
  or removed: git bringing a file whose path is taken by one makes the revision invalid;
* a file the agent wrote and git no longer has is removed;
* a hand edit of a file the agent wrote is put back (drift);
* a failed release gets the files of the last applied revision back (kept in
  ``state_dir/stack/applied/``);
* a kill at any point converges: the intent (the files about to be written and the ones
  they replace) is recorded before a file is touched, so every path either set holds is
  the agent's on the next pass, which writes whatever revision it converges on.

The layout of ``state_dir/stack/``::

    current.json      {"revision", "files": {path: sha256}}  what project_dir holds
    intent.json       {"revision", "files", "previous"}       a write in progress
    applied.json      {"revision", "files", "dir"}            the last applied revision
    applied-<id>/     its contents, for a rollback
    staging/<path>    the revision being validated
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from agent.desired import MAX_BYTES, _image_allowed, normalize_repository
from agent.errors import StackFilesError, StateWriteError, UnsafeStateDir, UntrustedRevision
from agent.failpoints import failpoint
from agent.safefs import SafeDir, path_problem
from agent.safefs import check_project_dir as check_project_dir  # for the pass
from agent.state import write_atomic

log = structlog.get_logger()

STACK_DIR = "stack"
FILE_MODE = 0o644


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A set of files in project_dir: path (relative) -> sha256 of the content."""

    revision: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "files": dict(sorted(self.files.items()))}

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        if not isinstance(doc, dict):
            return cls()
        files = doc.get("files") or {}
        return cls(revision=doc.get("revision"),
                   files={str(k): str(v) for k, v in files.items()})

    @classmethod
    def of(cls, revision: str | None, files: Mapping[str, bytes]) -> Manifest:
        return cls(revision, {p: sha256(b) for p, b in files.items()})


@dataclass(frozen=True)
class StackPlan:
    """What project_dir must hold for this pass, and what it takes to get there."""

    revision: str | None  # the revision the files come from
    files: dict[str, bytes]  # path -> content that project_dir must hold
    writes: list[str]  # paths whose content on disk differs (or that are missing)
    deletes: list[str]  # paths the agent wrote that the revision no longer has
    drifted: list[str]  # paths the agent wrote, edited since by someone else
    adopted: list[str]  # paths that were already there with exactly git's content
    staged_compose: list[Path] | None = None  # compose files to validate, when anything changes

    @property
    def touches(self) -> bool:
        return bool(self.writes or self.deletes)


def check_compose_images(all_services: Mapping[str, Any], allowed: list[str] | None,
                         source: str) -> None:
    """Every image the compose files reference (every profile) is inside the allowlist."""
    if allowed is None:
        return
    problems = []
    for name, svc in sorted(all_services.items()):
        image = (svc or {}).get("image")
        if not image:
            problems.append(f"At 'services.{name}': no image (the agent never builds); "
                            "an image inside [trust] allowed_images is required")
        elif not any(_image_allowed(str(image), entry) for entry in allowed):
            problems.append(f"At 'services.{name}.image': {image!r} "
                            f"({'/'.join(normalize_repository(str(image)))}) is outside "
                            "the allowlist ([trust] allowed_images)")
    if problems:
        raise UntrustedRevision(source, problems)


def orphans(observed: Iterable[str], model: Iterable[str]) -> list[str]:
    """Services with containers in the project that the compose model no longer has."""
    known = set(model)
    return sorted(s for s in observed if s not in known and s != "?")


class StackJournal:
    """The ownership record and the file operations on project_dir."""

    def __init__(self, state_dir: Path, project_dir: Path) -> None:
        self.dir = state_dir / STACK_DIR
        self.project_dir = project_dir

    # ------------------------------------------------------------------ records
    def _read(self, name: str) -> Any:
        try:
            return json.loads((self.dir / name).read_bytes())
        except (OSError, ValueError):
            return None

    def _write(self, name: str, doc: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.dir / name, json.dumps(doc, sort_keys=True).encode())

    def current(self) -> Manifest:
        return Manifest.from_json(self._read("current.json"))

    def intent(self) -> dict[str, Any] | None:
        doc = self._read("intent.json")
        return doc if isinstance(doc, dict) else None

    def applied(self) -> Manifest | None:
        doc = self._read("applied.json")
        return None if doc is None else Manifest.from_json(doc)

    def applied_files(self) -> dict[str, bytes] | None:
        """The last applied revision's files, when every one of them is kept intact."""
        manifest = self.applied()
        if manifest is None:
            return None
        out = {}
        name = str((self._read("applied.json") or {}).get("dir") or "applied")
        if path_problem(name) or "/" in name:
            return None
        try:
            with self._state_dir(self.dir / name) as kept:
                for path, digest in manifest.files.items():
                    data = kept.read(path)
                    if data is None or sha256(data) != digest:
                        return None
                    out[path] = data
        except (StackFilesError, UnsafeStateDir, StateWriteError):
            return None
        return out

    def _state_dir(self, root: Path, *, create: bool = False) -> SafeDir:
        """A directory of the agent's own under state_dir/stack (staging, kept copies)."""
        return SafeDir.open(root, create=create, mode=0o700, unsafe=UnsafeStateDir,
                            failed=StateWriteError)

    def _project(self, *, create: bool = False) -> SafeDir:
        """project_dir, opened once and checked on the open descriptor (owner, mode, not a
        symlink: AgentEnvironmentError); ``create``: made (0755) when missing."""
        return SafeDir.open(self.project_dir, create=create, check_owner=True)

    def owned(self) -> set[str]:
        """Every path the agent wrote or was about to write (a killed write included)."""
        paths = set(self.current().files)
        intent = self.intent()
        if intent is not None:
            for key in ("files", "previous"):
                paths |= set(Manifest.from_json(intent.get(key)).files)
        return paths

    # ------------------------------------------------------------------ plan
    def plan(self, revision: str | None, want: Mapping[str, bytes]) -> StackPlan:
        """Compare what project_dir holds with ``want``. A path taken by a file the agent
        did not write (with other content), a directory or a symlink on the way to a path
        (wherever it leads) or a path that is not plainly relative makes the revision
        invalid: StackFilesError. project_dir itself must be safe (check_project_dir)."""
        owned = self.owned()
        current = self.current()
        writes, drifted, adopted, deletes = [], [], [], []
        clashes: list[str] = []
        with self._project() as root:
            for path in sorted(want):
                problem = path_problem(path)
                if problem:
                    clashes.append(f"{path!r} {problem}; not a path inside {self.project_dir}")
                    continue
                try:
                    got = root.lookup(path, limit=len(want[path]))
                except StackFilesError as e:
                    clashes.extend(e.problems)
                    continue
                if got.kind == "dir":
                    clashes.append(f"{path!r} is a directory in {self.project_dir}")
                    continue
                if got.data == want[path]:
                    if path not in owned:
                        adopted.append(path)
                    continue
                if path not in owned and got.kind != "missing":
                    clashes.append(f"{path!r} exists in {self.project_dir} and was not written "
                                   "by the agent; remove or rename it to let git manage it")
                    continue
                writes.append(path)
                if got.data is not None and current.files.get(path) == sha256(want[path]):
                    drifted.append(path)
            for path in sorted(owned - set(want)):
                if path_problem(path):
                    continue  # never a path the agent wrote
                try:
                    if root.kind(path) in ("file", "symlink"):
                        deletes.append(path)
                except StackFilesError as e:
                    clashes.extend(e.problems)
        if clashes:
            raise StackFilesError(f"compose.from_repo@{(revision or '?')[:12]}", clashes)
        return StackPlan(revision, dict(want), writes, deletes, drifted, adopted)

    # ------------------------------------------------------------------ write
    def write(self, plan: StackPlan) -> None:
        """Make project_dir hold ``plan.files``: the intent first (what is written and what
        it replaces), then each file atomically, then the ownership record. Every path is
        checked again as it is written (agent/safefs.py): a directory swapped for a symlink
        since the plan is refused (StackFilesError), nothing is written or removed outside
        project_dir; a missing project_dir is made (0755)."""
        if self.applied() is None:
            # the first write: what was there (adopted files) is what a rollback returns to
            self._keep_applied(None, {p: plan.files[p] for p in plan.adopted})
        current = self.current()
        new = Manifest.of(plan.revision, plan.files)
        if not plan.touches and new == current:
            return
        with self._project(create=True) as root:
            self._write("intent.json", {"revision": plan.revision, "files": new.to_json(),
                                        "previous": current.to_json()})
            for path in plan.writes:
                root.write(path, plan.files[path], mode=FILE_MODE)
                failpoint("during-files")  # a kill with some files written, others not
            for path in plan.deletes:
                root.unlink(path)
                _prune_empty_dirs(root, path)
        self._write("current.json", new.to_json())
        (self.dir / "intent.json").unlink(missing_ok=True)

    def record_applied(self, plan: StackPlan) -> None:
        """The revision's release is healthy: its files are what a rollback returns to."""
        applied = self.applied()
        if applied is not None and applied == Manifest.of(plan.revision, plan.files):
            return
        self._keep_applied(plan.revision, plan.files)

    def _keep_applied(self, revision: str | None, files: Mapping[str, bytes]) -> None:
        """A new directory of copies, then the record naming it (atomically), then the old
        directory goes: a kill leaves the old record and copies, or the new ones."""
        old = self._read("applied.json")
        name = f"applied-{sha256(json.dumps(Manifest.of(revision, files).to_json()).encode())[:16]}"
        tmp = self.dir / name
        shutil.rmtree(tmp, ignore_errors=True)  # symlinks in it are unlinked, never followed
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._state_dir(tmp, create=True) as kept:
            for path, data in files.items():
                kept.write(path, data, mode=0o600, dir_mode=0o700)
        self._write("applied.json", {**Manifest.of(revision, files).to_json(), "dir": name})
        if isinstance(old, dict) and old.get("dir") and old["dir"] != name:
            shutil.rmtree(self.dir / str(old["dir"]), ignore_errors=True)

    def restore_applied(self) -> StackPlan | None:
        """Put the last applied revision's files back into project_dir (a failed release).
        None when there is no intact record of them."""
        files = self.applied_files()
        applied = self.applied()
        if files is None or applied is None:
            log.error("agent.stack.no_applied_files",
                      message="no intact copy of the last applied files; left as they are")
            return None
        plan = self.plan(applied.revision, files)
        self.write(plan)
        return plan


def _prune_empty_dirs(root: SafeDir, relpath: str) -> None:
    """The directories on the way to ``relpath`` that are now empty go (by descriptor,
    never through a symlink)."""
    root.prune(relpath)


@runtime_checkable
class FileSource(Protocol):
    """A source that can read a tree of paths at a revision (git, GitHub)."""

    def read_files(self, revision: str, paths: Sequence[str]) -> dict[str, bytes]: ...


class StackCompose(Protocol):
    """compose on a set of files (staged or project_dir's): the model and its hashes."""

    def services(self) -> dict[str, Any]: ...

    def inactive_services(self) -> dict[str, list[str]]: ...

    def config(self, with_override: bool = False,
               profiles: Sequence[str] | None = None) -> dict[str, Any]: ...

    def config_hashes(self, images: Mapping[str, str]) -> dict[str, str]: ...


@dataclass
class StagedStack:
    """The files of the revision a pass converges on, and compose reading them."""

    plan: StackPlan
    compose: StackCompose
    hashes: dict[str, str] = field(default_factory=dict)  # the model's, with target pins


# compose.from_repo: at most this many files, this many bytes in all
MAX_STACK_FILES = 1000
MAX_STACK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a revision's tree, as a source lists it."""

    path: str
    mode: str  # git's file mode: 100644, 100755, 120000 (symlink), 160000 (submodule)
    kind: str  # blob, tree, commit
    oid: str  # the object to read it by


def select_files(where: str, revision: str, paths: Sequence[str], tree: Sequence[TreeEntry],
                 size_of: Callable[[TreeEntry], int | None]) -> list[TreeEntry]:
    """The entries under ``paths`` (a directory: every file under it), refused before any
    is read: a path missing, an entry whose path is not plainly relative (a ``..``, ``.``
    or empty component, absolute, a backslash or NUL) or that normalises outside its
    ``from_repo`` entry, too many files, anything but a plain file, a file over the
    per-file limit (``size_of`` None: its size is unknown, so it is over), or over the total.
    Every source of files applies the same rules through this. StackFilesError."""

    def under(p: str, name: str) -> bool:
        base = p.rstrip("/")
        return name == base or name.startswith(base + "/")

    # a lying source (a GitHub API answer) can name anything: every entry that is, or
    # would normalise to, a path under a from_repo entry must be exactly such a path
    for e in tree:
        norm = posixpath.normpath(e.path) if e.path else e.path
        if not any(under(p, e.path) or under(p, norm) for p in paths):
            continue
        problem = path_problem(e.path)
        if problem:
            raise StackFilesError(where, [f"{e.path!r} {problem}; refused (the files are "
                                          "written at their paths in project_dir)"])
        if not any(under(p, norm) for p in paths if under(p, e.path)):
            raise StackFilesError(where, [f"{e.path!r} normalises to {norm!r}, outside "
                                          f"the from_repo entries {list(paths)}"])
    for p in paths:
        if not any(under(p, e.path) for e in tree):
            raise StackFilesError(where, [f"{p!r} is not in the repository at {revision[:12]}"])
    chosen = [e for e in tree if e.kind != "tree" and any(under(p, e.path) for p in paths)]
    if len(chosen) > MAX_STACK_FILES:
        raise StackFilesError(where, [f"{len(chosen)} files; the limit is {MAX_STACK_FILES}"])
    total = 0
    for e in chosen:
        if e.kind != "blob" or e.mode not in ("100644", "100755"):
            what = "symlink" if e.mode == "120000" else e.kind or e.mode
            raise StackFilesError(where, [f"{e.path!r} is a {what}, not a file"])
        size = size_of(e)
        if size is None or size > MAX_BYTES:
            raise StackFilesError(where, [f"{e.path!r} is larger than the limit of "
                                          f"{MAX_BYTES} bytes per file; refused unread"])
        total += size
        if total > MAX_STACK_BYTES:
            raise StackFilesError(where, [f"the files under {list(paths)} exceed "
                                          f"{MAX_STACK_BYTES} bytes in total"])
    return chosen
