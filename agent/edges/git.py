"""The git source: a bare mirror under state_dir, fetched (never re-cloned) each pass."""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from agent.desired import MAX_BYTES
from agent.edges.source import Fetched
from agent.errors import (
    ConfigError,
    DesiredStateError,
    GitError,
    SourceNotFound,
    SourceRefused,
    SourceUnavailable,
    StackFilesError,
    one_line,
)
from agent.log import redact_text, register_secret
from agent.secrets import trusted_copy
from agent.stack import TreeEntry, select_files

log = structlog.get_logger()


def run_git(
    args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
    timeout: float = 120, check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    cmd = ["git", *args]
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})}
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=full_env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"git {args[0]} timed out after {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        raise GitError(
            [redact_text(a) for a in cmd], proc.returncode,
            redact_text(proc.stderr.decode(errors="replace")),
        )
    return proc


def token_auth_env(repo: str, token: str) -> dict[str, str]:
    """An https token as an ``Authorization`` header scoped to the repository's host, passed
    through git's environment config (never the command line, never the URL)."""
    parts = urlsplit(repo)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError("source.token_file",
                          [f"a token needs an https URL; {redact_text(repo)} is not one"])
    scope = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/"
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    register_secret(token)
    register_secret(basic)  # git may echo the header (GIT_TRACE_CURL, errors)
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.{scope}.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


class GitSource:
    def __init__(
        self,
        repo: str,
        branch: str,
        path: str,
        mirror_dir: Path,
        *,
        ssh_key_file: Path | None = None,
        token: str | None = None,
        timeout: float = 60,
        allowed_signers_file: Path | None = None,
    ) -> None:
        self.repo = repo
        self.branch = branch
        self.path = path
        self.mirror = mirror_dir
        self.timeout = timeout
        self.allowed_signers_file = allowed_signers_file
        self.env: dict[str, str] = {}
        self._partial_ready = False
        if ssh_key_file is not None:
            # git runs this through a shell: quote the one value that comes from config
            self.env["GIT_SSH_COMMAND"] = (
                f"ssh -i {shlex.quote(str(ssh_key_file))} -o IdentitiesOnly=yes -o BatchMode=yes"
            )
        if token:
            self.env.update(token_auth_env(repo, token))

    def describe(self) -> str:
        return f"{redact_text(self.repo)}@{self.branch}:{self.path}"

    @property
    def _ref(self) -> str:
        return f"refs/heads/{self.branch}"

    def _ensure_mirror(self) -> None:
        if not (self.mirror / "HEAD").exists():
            self.mirror.mkdir(parents=True, exist_ok=True)
            run_git(["init", "--quiet", "--bare", "--", str(self.mirror)])
        if not self._partial_ready:
            # A partial mirror: blobs over the desired-state limit are never downloaded (a
            # huge blob pushed elsewhere in the repository cannot fill state_dir). The
            # promisor remote "origin" has no URL on disk: the URL is handed to each fetch
            # through the environment, so a missing blob is never fetched lazily.
            have = run_git(["config", "--get", "extensions.partialclone"], cwd=self.mirror,
                           check=False).stdout.decode().strip()
            if have != REMOTE:
                for key, value in (("remote.origin.promisor", "true"),
                                   ("remote.origin.partialclonefilter", BLOB_FILTER),
                                   ("extensions.partialclone", REMOTE)):
                    run_git(["config", "--", key, value], cwd=self.mirror)
            self._partial_ready = True

    def head(self) -> str | None:
        proc = run_git(["rev-parse", "--verify", "--quiet", "--end-of-options",
                        self._ref + "^{commit}"], cwd=self.mirror, check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def _fetch_env(self) -> dict[str, str]:
        """The token header (if any) plus the remote's URL, as environment config: the URL
        is never parsed as an option and never written into the mirror's config."""
        extra = dict(self.env)
        n = int(extra.get("GIT_CONFIG_COUNT", "0"))
        extra[f"GIT_CONFIG_KEY_{n}"] = "remote.origin.url"
        extra[f"GIT_CONFIG_VALUE_{n}"] = self.repo
        extra["GIT_CONFIG_COUNT"] = str(n + 1)
        return extra

    def fetch(self) -> Fetched:
        self._ensure_mirror()
        before = self.head()
        upload_pack = (["--upload-pack=git -c uploadpack.allowFilter=true upload-pack"]
                       if _is_local(self.repo) else [])
        proc = run_git(
            ["fetch", "--quiet", "--prune", "--no-tags", "--force", *upload_pack,
             f"--filter={BLOB_FILTER}", "--", REMOTE, f"+{self._ref}:{self._ref}"],
            cwd=self.mirror, env=self._fetch_env(), timeout=self.timeout, check=False,
        )
        if proc.returncode != 0:
            raise self._fetch_error(proc.returncode, proc.stderr.decode(errors="replace"))
        rev = self.head()
        if rev is None:
            raise SourceNotFound("source.branch", [
                f"branch {self.branch!r} not found in {redact_text(self.repo)}: "
                "check source.branch"])
        went_backwards = False
        if before is not None and before != rev:
            went_backwards = self.is_ancestor(rev, before)
        trust_error = self._verify_signature(rev) if self.allowed_signers_file else None
        # untrusted content is not read (the pass refuses the revision before parsing)
        content = self._read_file(rev) if trust_error is None else b""
        return Fetched(revision=rev, content=content, path=self.path,
                       went_backwards=went_backwards, trust_error=trust_error)

    def _fetch_error(self, returncode: int, stderr: str) -> SourceRefused | SourceUnavailable:
        """What a failed ``git fetch`` means, from git's whole stderr (redacted): the host
        refused (no such repository or branch, credentials refused) -- permanent, a
        SourceRefused naming the setting to fix -- or anything else (unreachable, timed
        out, 5xx), transient."""
        err = redact_text(stderr).strip()
        said = one_line(err) or f"exit {returncode}"
        kind = classify_fetch_error(err)
        if kind is None:
            return SourceUnavailable(f"git fetch of {self.describe()} failed: {said}")
        setting, cls, why = _REFUSALS[kind]
        if kind == "auth":
            if "GIT_CONFIG_COUNT" in self.env:
                setting, why = "source.token_file", why + ": check the token in source.token_file"
            elif "GIT_SSH_COMMAND" in self.env:
                setting, why = "source.ssh_key_file", why + ": check source.ssh_key_file"
            else:
                why += ": set source.token_file (https) or source.ssh_key_file (ssh)"
        return cls(setting, [f"git fetch of {self.describe()} refused: {why}; git said: {said}"],
                   stderr=err)

    def _read_file(self, rev: str) -> bytes:
        """The desired-state file at ``rev``, refused from its size before it is read."""
        where = f"{self.path}@{rev[:12]}"
        tree = run_git(["ls-tree", "-z", "--end-of-options", rev, "--", self.path],
                       cwd=self.mirror, check=False)
        entry = tree.stdout.split(b"\0", 1)[0].decode(errors="replace")
        meta, _, name = entry.partition("\t")
        if tree.returncode != 0 or name != self.path:
            raise DesiredStateError(where, [f"no file {self.path!r} at revision {rev[:12]}"])
        mode, kind, oid = (meta.split() + ["", "", ""])[:3]
        if kind != "blob":
            raise DesiredStateError(where, [f"{self.path!r} is a {kind or mode}, not a file"])
        too_big = (f"{self.path!r} is larger than the limit of {MAX_BYTES} bytes; "
                   "refused unread")
        size = run_git(["cat-file", "-s", oid], cwd=self.mirror, env=NO_LAZY_FETCH,
                       check=False)
        if size.returncode != 0:
            # the partial fetch left it out: it is over the filter's limit
            raise DesiredStateError(where, [too_big])
        if int(size.stdout.decode().strip()) > MAX_BYTES:
            raise DesiredStateError(where, [too_big])
        return run_git(["cat-file", "blob", oid], cwd=self.mirror, env=NO_LAZY_FETCH).stdout

    def read_files(self, revision: str, paths: Sequence[str]) -> dict[str, bytes]:
        """The files at ``paths`` (a directory: every file under it) at exactly ``revision``,
        by path in the repository. Plain files only; each within the per-file limit (the
        mirror's blob filter: a larger blob was never fetched), all within the total limit.
        StackFilesError names the first problem's path."""
        where = f"compose.from_repo@{revision[:12]}"
        proc = run_git(["ls-tree", "-r", "-z", "--full-tree", "--end-of-options", revision,
                        "--", *paths], cwd=self.mirror, env=NO_LAZY_FETCH, check=False)
        if proc.returncode != 0:
            raise StackFilesError(where, [f"cannot list {list(paths)} at {revision[:12]}: "
                                          + proc.stderr.decode(errors="replace").strip()])
        tree = []
        for raw in proc.stdout.split(b"\0"):
            if not raw:
                continue
            meta, _, name = raw.decode(errors="replace").partition("\t")
            mode, kind, oid = (meta.split() + ["", "", ""])[:3]
            tree.append(TreeEntry(name, mode, kind, oid))

        def size_of(e: TreeEntry) -> int | None:
            # fails when the partial fetch left the blob out: it is over the filter's limit
            size = run_git(["cat-file", "-s", e.oid], cwd=self.mirror, env=NO_LAZY_FETCH,
                           check=False)
            return int(size.stdout.decode().strip()) if size.returncode == 0 else None

        return {e.path: run_git(["cat-file", "blob", e.oid], cwd=self.mirror,
                                env=NO_LAZY_FETCH).stdout
                for e in select_files(where, revision, paths, tree, size_of)}

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``ancestor`` is ``descendant`` or one of its ancestors (in the mirror)."""
        proc = run_git(["merge-base", "--is-ancestor", "--end-of-options", ancestor, descendant],
                       cwd=self.mirror, env=NO_LAZY_FETCH, check=False)
        if proc.returncode in (0, 1):
            return proc.returncode == 0
        # a commit the mirror does not hold (e.g. pruned after a force-push): the branch's
        # history is fetched in full, so it is not an ancestor of anything fetched
        for rev in (ancestor, descendant):
            exists = run_git(["cat-file", "-e", "--end-of-options", f"{rev}^{{commit}}"],
                             cwd=self.mirror, env=NO_LAZY_FETCH, check=False)
            if exists.returncode != 0:
                return False
        raise GitError(["git", "merge-base", "--is-ancestor", ancestor, descendant],
                       proc.returncode, redact_text(proc.stderr.decode(errors="replace")))

    def _verify_signature(self, rev: str) -> str | None:
        fmt = _signature_format(
            run_git(["cat-file", "commit", rev], cwd=self.mirror, env=NO_LAZY_FETCH).stdout
        )
        if fmt is None:
            return f"commit {rev[:12]} is not signed"
        if fmt != "ssh":
            # git would hand it to gpg/gpgsm and trust whatever keyring the agent's user has
            return (f"commit {rev[:12]} carries an {fmt} signature; only SSH signatures by a "
                    "key in trust.allowed_signers_file are accepted")
        # git opens the file by name: hand it a private copy of what was checked (owner,
        # mode, no symlink), so it reads exactly that
        assert self.allowed_signers_file is not None
        signers = trusted_copy(self.allowed_signers_file, "trust.allowed_signers_file",
                               self.mirror.parent / "allowed_signers.checked")
        proc = run_git(
            ["-c", "gpg.format=ssh",
             "-c", f"gpg.ssh.allowedSignersFile={signers}",
             "verify-commit", "--end-of-options", rev],
            cwd=self.mirror, env=NO_LAZY_FETCH, check=False,
        )
        if proc.returncode == 0:
            return None
        err = proc.stderr.decode(errors="replace").strip()
        if not err:
            return f"commit {rev[:12]} is not signed"
        return f"commit {rev[:12]} has no valid signature from an allowed signer: {err.splitlines()[-1]}"


REMOTE = "origin"
# blobs of this size or more are left out of the mirror (they could not be a valid file)
BLOB_FILTER = f"blob:limit={MAX_BYTES + 1}"
# newer git (2.44+) honours this; older git fails the lazy fetch because "origin" has no URL
NO_LAZY_FETCH = {"GIT_NO_LAZY_FETCH": "1"}


# What git prints when the host answered and refused; matched on the whole stderr (the cause
# comes first, generic advice -- "Could not read from remote repository" -- last, and that
# advice is printed for unreachable hosts too, so it decides nothing).
_FETCH_REFUSALS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("branch", re.compile(r"couldn't find remote ref|remote branch \S+ not found"
                          r"|no such branch", re.I)),
    ("repo", re.compile(r"repository not found|repository '[^']*' not found"
                        r"|does not appear to be a git repository"
                        r"|requested URL returned error: 404|no such repository", re.I)),
    ("auth", re.compile(r"permission denied \(publickey|authentication failed"
                        r"|requested URL returned error: 40[13]"
                        r"|could not read (username|password)|invalid username or password"
                        r"|host key verification failed", re.I)),
)
_REFUSALS: dict[str, tuple[str, type[SourceRefused], str]] = {
    "branch": ("source.branch", SourceNotFound,
               "the branch does not exist in the repository: check source.branch"),
    "repo": ("source.repo", SourceNotFound,
             "the repository does not exist, or the credentials cannot see it: check "
             "source.repo and the token or key's access"),
    "auth": ("source.repo", SourceRefused, "the host refused the credentials"),
}


def classify_fetch_error(stderr: str) -> str | None:
    """``branch``, ``repo`` or ``auth`` when git's stderr says the host refused; None for
    anything else (network, timeout, server error: transient)."""
    for kind, pattern in _FETCH_REFUSALS:
        if pattern.search(stderr):
            return kind
    return None


def _is_local(repo: str) -> bool:
    """A path or file:// URL: git runs upload-pack itself, so it can be told to filter."""
    if repo.startswith("file://"):
        return True
    if "://" in repo:
        return False
    head = repo.split("/", 1)[0]
    return ":" not in head  # not scp-like host:path


def _signature_format(commit: bytes) -> str | None:
    """The format of a commit object's signature header (``gpgsig``/``gpgsig-sha256``):
    ``ssh``, ``OpenPGP``, ``X.509``, or None when unsigned."""
    header, _, _ = commit.partition(b"\n\n")
    for line in header.split(b"\n"):
        name, _, value = line.partition(b" ")
        if name in (b"gpgsig", b"gpgsig-sha256"):
            first = value.strip()
            if first == b"-----BEGIN SSH SIGNATURE-----":
                return "ssh"
            if first.startswith(b"-----BEGIN PGP"):
                return "OpenPGP"
            if first == b"-----BEGIN SIGNED MESSAGE-----":
                return "X.509"
            return "unknown-format"
    return None
