"""The git source: a bare mirror under state_dir, fetched (never re-cloned) each pass."""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from agent.edges.source import Fetched
from agent.errors import ConfigError, DesiredStateError, GitError, SourceUnavailable
from agent.log import redact_text

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
            run_git(["init", "--quiet", "--bare", str(self.mirror)])

    def head(self) -> str | None:
        proc = run_git(["rev-parse", "--verify", "--quiet", self._ref + "^{commit}"],
                       cwd=self.mirror, check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def fetch(self) -> Fetched:
        self._ensure_mirror()
        before = self.head()
        proc = run_git(
            ["fetch", "--quiet", "--prune", "--no-tags", "--force", self.repo,
             f"+{self._ref}:{self._ref}"],
            cwd=self.mirror, env=self.env, timeout=self.timeout, check=False,
        )
        if proc.returncode != 0:
            err = redact_text(proc.stderr.decode(errors="replace")).strip()
            last = err.splitlines()[-1] if err else f"exit {proc.returncode}"
            raise SourceUnavailable(f"git fetch of {self.describe()} failed: {last}")
        rev = self.head()
        if rev is None:
            raise SourceUnavailable(f"branch {self.branch!r} not found in {redact_text(self.repo)}")
        went_backwards = False
        if before is not None and before != rev:
            anc = run_git(["merge-base", "--is-ancestor", rev, before], cwd=self.mirror,
                          check=False)
            went_backwards = anc.returncode == 0
        show = run_git(["cat-file", "blob", f"{rev}:{self.path}"], cwd=self.mirror, check=False)
        if show.returncode != 0:
            raise DesiredStateError(
                f"{self.path}@{rev[:12]}", [f"no file {self.path!r} at revision {rev[:12]}"]
            )
        trust_error = self._verify_signature(rev) if self.allowed_signers_file else None
        return Fetched(revision=rev, content=show.stdout, path=self.path,
                       went_backwards=went_backwards, trust_error=trust_error)

    def _verify_signature(self, rev: str) -> str | None:
        proc = run_git(
            ["-c", "gpg.format=ssh",
             "-c", f"gpg.ssh.allowedSignersFile={self.allowed_signers_file}",
             "verify-commit", rev],
            cwd=self.mirror, check=False,
        )
        if proc.returncode == 0:
            return None
        err = proc.stderr.decode(errors="replace").strip()
        if not err:
            return f"commit {rev[:12]} is not signed"
        return f"commit {rev[:12]} has no valid signature from an allowed signer: {err.splitlines()[-1]}"
