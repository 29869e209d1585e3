"""File operations confined to one directory (``compose.project_dir``, the agent's copies
under ``state_dir/stack/``), safe against symlinks swapped in at any moment.

A check of the path before writing (``Path.resolve``) leaves a window: a directory on the
way replaced by a symlink to ``/etc`` after the check makes a write by name land there. So
nothing here goes by name from ``/``: the root is opened once (``O_DIRECTORY|O_NOFOLLOW``)
and every component below it is opened relative to its parent's descriptor with
``O_NOFOLLOW`` (``openat``), so the walk can never leave the directory it started in:

* a component that is a symlink (wherever it points, inside or out) or not a directory is
  refused: ``StackFilesError`` naming the relative path and the root, never file contents;
* a file is written as a temp file in its directory (by descriptor), fsynced, renamed over
  the name (``renameat``: a symlink there is replaced, never followed), the directory fsynced;
* a delete unlinks the name in its opened parent (``unlinkat``: a symlink is removed itself,
  never its target); empty directories are pruned the same way (``rmdir`` by descriptor);
* a read opens the name with ``O_NOFOLLOW`` and reads only a regular file.

Other failures (permission, a full disk) are environment errors (exit 4).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from agent.errors import AgentEnvironmentError, AgentError, StackFilesError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PROJECT_DIR_MODE = 0o755

Kind = Literal["missing", "file", "symlink", "dir", "other"]


def path_problem(rel: str) -> str | None:
    """Why ``rel`` is not a plain relative path (components that are not ``..``, ``.`` or
    empty; no leading ``/``, no backslash, no NUL), or None."""
    if not rel:
        return "is empty"
    if "\0" in rel:
        return "contains a NUL byte"
    if "\\" in rel:
        return "contains a backslash"
    if rel.startswith("/"):
        return "is absolute"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "has a '..', '.' or empty component"
    return None


def _owner_mode_problem(path: Path, st: os.stat_result) -> str | None:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return (f"project_dir {path} is a symlink; the agent does not follow it: point "
                "[compose] project_dir at the directory itself")
    if not stat.S_ISDIR(st.st_mode):
        return f"project_dir {path} is not a directory"
    if st.st_uid not in (0, os.geteuid()):
        return (f"project_dir {path} is owned by uid {st.st_uid}, not by root or the agent's "
                f"user (uid {os.geteuid()}); the agent refuses to act: run "
                f"'chown {os.geteuid()} {path}'")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"project_dir {path} is writable by group or others (mode {mode:04o}); the "
                f"agent refuses to act: run 'chmod go-w {path}'")
    return None


def check_project_dir(project_dir: Path, *, create: bool = False) -> None:
    """project_dir holds the compose files the agent deploys: nobody but root or the agent's
    user may be able to change what is in it. Refused (AgentEnvironmentError naming the
    path and what is wrong): a symlink, not a directory, owned by another user,
    group/other-writable. Missing: fine (``create``: made, mode 0755)."""
    with SafeDir.open(project_dir, create=create, check_owner=True):
        pass


@dataclass(frozen=True)
class Entry:
    """What a path inside the root is; ``data`` for a regular file (up to the limit read)."""

    kind: Kind
    data: bytes | None = None


class SafeDir:
    """A directory opened once, never through a symlink at its last component, and the
    operations on relative paths inside it. A context manager (closes the descriptor).

    ``unsafe``/``failed`` make the errors: a symlink or not-a-directory on the way (default
    ``StackFilesError``), any other OS failure (default ``AgentEnvironmentError``)."""

    def __init__(self, root: Path, fd: int | None, *,
                 unsafe: Callable[[str], AgentError] | None = None,
                 failed: Callable[[str], AgentError] | None = None) -> None:
        self.root = root
        self.fd = fd  # None: the root does not exist (reads see nothing)
        self._unsafe = unsafe or (lambda msg: StackFilesError(f"project_dir {root}", [msg]))
        self._failed = failed or AgentEnvironmentError

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(cls, root: Path, *, create: bool = False, mode: int = PROJECT_DIR_MODE,
             check_owner: bool = False,
             unsafe: Callable[[str], AgentError] | None = None,
             failed: Callable[[str], AgentError] | None = None) -> SafeDir:
        """Open ``root`` (``create``: made with ``mode`` when missing, its parents too);
        ``check_owner``: the open directory (fstat, no window) must be owned by root or the
        agent's user and not group/other-writable (AgentEnvironmentError)."""
        sd = cls(root, None, unsafe=unsafe, failed=failed)
        made = False
        while True:
            try:
                fd = os.open(root, DIR_FLAGS)
                break
            except FileNotFoundError:
                if not create:
                    return sd
                try:
                    if not root.parent.is_dir():
                        os.makedirs(root.parent, mode=mode, exist_ok=True)
                    os.mkdir(root, mode)
                    made = True
                except FileExistsError:
                    continue  # made meanwhile: opened (and checked) as it is
                except OSError as e:
                    raise sd._failed(f"{root} cannot be created: {e.strerror}") from None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    problem = _lstat_problem(root) if check_owner else None
                    raise (AgentEnvironmentError(problem) if problem else
                           sd._unsafe(f"{root} is a symlink or not a directory; the agent "
                                      "does not follow it")) from None
                raise sd._failed(f"{root} cannot be opened: {e.strerror}") from None
        sd.fd = fd
        try:
            if made:
                os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            problem = _owner_mode_problem(root, os.fstat(fd)) if check_owner else None
        except OSError as e:
            sd.close()
            raise sd._failed(f"{root} cannot be read: {e.strerror}") from None
        if problem:
            sd.close()
            raise AgentEnvironmentError(problem)
        return sd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ walking
    def _parts(self, rel: str) -> list[str]:
        problem = path_problem(rel)
        if problem:
            raise self._unsafe(f"{rel!r} {problem}; not a path inside {self.root}")
        return rel.split("/")

    @contextlib.contextmanager
    def _parent(self, rel: str, *, create: bool = False,
                dir_mode: int = PROJECT_DIR_MODE) -> Iterator[tuple[int | None, str]]:
        """The descriptor of ``rel``'s directory (each component opened by the one before,
        never through a symlink) and the last component. None: a directory on the way is
        missing (and not ``create``)."""
        parts = self._parts(rel)
        fds: list[int] = []
        fd = self.fd
        try:
            if fd is None:
                if create:
                    raise self._failed(f"{self.root} does not exist")
                yield None, parts[-1]
                return
            for i, name in enumerate(parts[:-1]):
                sub = "/".join(parts[:i + 1])
                try:
                    nfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        yield None, parts[-1]
                        return
                    try:
                        os.mkdir(name, dir_mode, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile: opened below, never through a symlink
                    except OSError as e:
                        raise self._failed(self._msg(rel, f"cannot create {sub!r}: "
                                                          f"{e.strerror}")) from None
                    nfd = self._open_dir(name, fd, rel, sub)
                except OSError as e:
                    raise self._refusal(e, fd, name, rel, sub) from None
                fds.append(nfd)
                fd = nfd
            yield fd, parts[-1]
        finally:
            for f in fds:
                os.close(f)

    def _open_dir(self, name: str, fd: int, rel: str, sub: str) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError as e:
            raise self._refusal(e, fd, name, rel, sub) from None

    def _refusal(self, e: OSError, fd: int, name: str, rel: str, sub: str) -> AgentError:
        kind = _kind(fd, name)
        if kind == "symlink":
            return self._unsafe(self._msg(rel, f"{sub!r} is a symlink; the agent never writes "
                                               f"through one (it could lead outside "
                                               f"{self.root})"))
        if kind in ("file", "other") or e.errno in (errno.ENOTDIR, errno.ELOOP):
            return self._unsafe(self._msg(rel, f"{sub!r} is a file in {self.root}, "
                                               "not a directory"))
        return self._failed(self._msg(rel, f"cannot open {sub!r}: {e.strerror}"))

    def _msg(self, rel: str, what: str) -> str:
        return f"{rel!r} in {self.root}: {what}"

    # ------------------------------------------------------------------ operations
    def lookup(self, rel: str, limit: int | None = None) -> Entry:
        """What ``rel`` is; a regular file's content (at most ``limit`` + 1 bytes read:
        enough to tell it differs from content of ``limit`` bytes). A symlink or a
        non-directory on the way: refused."""
        with self._parent(rel) as (fd, name):
            if fd is None:
                return Entry("missing")
            kind = _kind(fd, name)
            if kind != "file":
                return Entry(kind)
            try:
                ffd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                              dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENXIO, errno.ENOENT):
                    return Entry(_kind(fd, name))  # swapped meanwhile
                raise self._failed(self._msg(rel, f"cannot read: {e.strerror}")) from None
            try:
                if not stat.S_ISREG(os.fstat(ffd).st_mode):
                    return Entry("other")
                return Entry("file", _read_all(ffd, limit))
            except OSError as e:
                raise self._failed(self._msg(rel, f"cannot read: {e.strerror}")) from None
            finally:
                os.close(ffd)

    def kind(self, rel: str) -> Kind:
        """What ``rel`` is, without reading it. A symlink or non-directory on the way:
        refused."""
        with self._parent(rel) as (fd, name):
            return "missing" if fd is None else _kind(fd, name)

    def read(self, rel: str) -> bytes | None:
        """A regular file's content; None for anything else (missing, a symlink...)."""
        return self.lookup(rel).data

    def write(self, rel: str, data: bytes, mode: int = 0o644,
              dir_mode: int = PROJECT_DIR_MODE) -> None:
        """Make ``rel`` a regular file holding ``data``, atomically: a temp file in its
        directory, fsync, rename over the name (a symlink there is replaced, never followed),
        fsync of the directory. Missing directories on the way are made (``dir_mode``)."""
        with self._parent(rel, create=True, dir_mode=dir_mode) as (fd, name):
            assert fd is not None
            tmp = f".{name}.{secrets.token_hex(6)}.tmp"
            try:
                tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, mode, dir_fd=fd)
            except OSError as e:
                raise self._failed(self._msg(rel, _why(e))) from None
            try:
                try:
                    os.fchmod(tfd, mode)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(tfd, view):]
                    os.fsync(tfd)
                finally:
                    os.close(tfd)
                if _kind(fd, name) == "dir":
                    raise self._unsafe(self._msg(rel, f"is a directory in {self.root}"))
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                tmp = ""
                os.fsync(fd)
            except OSError as e:
                if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise self._unsafe(self._msg(rel, f"is a directory in {self.root}")) \
                        from None
                raise self._failed(self._msg(rel, _why(e))) from None
            finally:
                if tmp:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=fd)

    def unlink(self, rel: str) -> bool:
        """Remove ``rel`` (a file, or a symlink itself: never its target). False: it was not
        there. A directory there, or a symlink or non-directory on the way: refused."""
        with self._parent(rel) as (fd, name):
            if fd is None:
                return False
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                return False
            except OSError as e:
                if e.errno in (errno.EISDIR, errno.EPERM) and _kind(fd, name) == "dir":
                    raise self._unsafe(self._msg(rel, f"is a directory in {self.root}; "
                                                      "left as it is")) from None
                raise self._failed(self._msg(rel, f"cannot remove: {e.strerror}")) from None
            with contextlib.suppress(OSError):
                os.fsync(fd)
            return True

    def prune(self, rel: str) -> None:
        """Remove the directories on the way to ``rel`` that are empty, deepest first (each
        by its opened parent: a symlink is never followed, nor removed)."""
        parts = self._parts(rel)
        for depth in range(len(parts) - 1, 0, -1):
            sub = "/".join(parts[:depth])
            with self._parent(sub) as (fd, name):
                if fd is None:
                    continue
                if _kind(fd, name) != "dir":
                    return
                try:
                    os.rmdir(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError:
                    return  # not empty (or not ours to remove): the ones above are not either


def _kind(fd: int, name: str) -> Kind:
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "other"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "other"


def _lstat_problem(path: Path) -> str | None:
    try:
        return _owner_mode_problem(path, os.lstat(path))
    except OSError:
        return None


def _read_all(fd: int, limit: int | None) -> bytes:
    chunks, total = [], 0
    while limit is None or total <= limit:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _why(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return f"cannot write: {e.strerror} (the disk is full)"
    return f"cannot write: {e.strerror}"


__all__ = ["Entry", "SafeDir", "check_project_dir", "path_problem"]
