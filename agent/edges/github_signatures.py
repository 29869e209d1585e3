"""A commit's signature as the GitHub source checks it (``[trust] require_signed_commits``).

The head's ``commit.verification`` is asked for. Without ``allowed_signers_file`` GitHub's own
verdict is taken (true for *any* GitHub user's key and for GitHub's web-flow key). With it,
the SSH signature and payload GitHub returns are verified locally against that file
(``ssh-keygen -Y verify``, namespace ``git``), the payload must hash to the SHA asked for, and
only SSH signatures count. Either way the verdict names the root tree everything of that
revision is read from (:mod:`agent.edges.github_files`).
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from agent.edges.github_api import JSON, GitHubApi, is_sha
from agent.errors import AgentEnvironmentError, SourceUnavailable
from agent.trust import commit_tree

SIGNERS_COPY = "allowed_signers.checked"
SSH_SIGNATURE_HEADER = "-----BEGIN SSH SIGNATURE-----"


def commit_verdict(api: GitHubApi, sha: str,
                   signers: Callable[[], Path] | None) -> tuple[str | None, str | None]:
    """(why commit ``sha`` is refused, None), or (None, the root tree its signed payload
    names): the tree everything of that revision is read from. ``signers`` gives the allowed
    signers file to verify against (None: GitHub's verdict is taken)."""
    resp, got = api.get(api.repo_url(f"commits/{sha}"), JSON, what=f"commit {sha[:12]}")
    if got.kind != "ok":
        raise api.error(got, what="commit")
    try:
        data = resp.json()
        answered = data["sha"]
        verification = data["commit"]["verification"]
        verified = verification.get("verified") is True
        reason = str(verification.get("reason") or "unknown")
        signature = verification.get("signature")
        payload = verification.get("payload")
        claimed = (data["commit"].get("tree") or {}).get("sha")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SourceUnavailable(
            f"GitHub API {api.host} answered commit {sha[:12]} of {api.repo} "
            "without commit.verification"
        ) from None
    if answered != sha:
        return (f"GitHub API {api.host} answered commit {str(answered)[:12]!r} when "
                f"asked for {sha[:12]}; refusing it"), None
    if signers is None:
        if not verified:
            return f"commit {sha[:12]} is not verified by GitHub (reason: {reason})", None
        # GitHub's verdict is taken, so is its word for the tree when the payload it
        # returns is not that commit's
        tree = (commit_tree(payload, len(sha)) if isinstance(payload, str)
                and isinstance(signature, str)
                and commit_sha(payload, signature, len(sha)) == sha else None)
        if tree is None and isinstance(claimed, str) and is_sha(claimed) \
                and len(claimed) == len(sha):
            tree = claimed
        if tree is None:
            return (f"GitHub API {api.host} answered commit {sha[:12]} without its "
                    "tree; refusing it"), None
        return None, tree
    error = verify_ssh_signature(sha, signature, payload, signers())
    if error is not None:
        return error, None
    tree = commit_tree(str(payload), len(sha))
    if tree is None:
        return f"the signed payload of commit {sha[:12]} names no tree; refusing it", None
    return None, tree


def verify_ssh_signature(sha: str, signature: object, payload: object,
                         allowed_signers_file: Path) -> str | None:
    """Verify the signature GitHub returns for commit ``sha`` against the allowed signers file,
    as ``git verify-commit`` would. None when good, else why not."""
    if not isinstance(signature, str) or not signature.strip() or not isinstance(payload, str):
        return f"commit {sha[:12]} is not signed"
    if not signature.lstrip().startswith(SSH_SIGNATURE_HEADER):
        return (f"commit {sha[:12]} does not carry an SSH signature; only SSH signatures by "
                "a key in trust.allowed_signers_file are accepted")
    if commit_sha(payload, signature, len(sha)) != sha:
        return (f"the signed payload GitHub returned for commit {sha[:12]} is not that "
                "commit; refusing it")
    with tempfile.TemporaryDirectory(prefix="gitops-agent-sig-") as tmp:
        sig = Path(tmp) / "commit.sig"
        sig.write_text(signature if signature.endswith("\n") else signature + "\n")
        found = _ssh_keygen(["-Y", "find-principals", "-f", str(allowed_signers_file),
                             "-s", str(sig)], b"")
        principals = found.stdout.decode(errors="replace").split()
        if found.returncode != 0 or not principals:
            return (f"commit {sha[:12]} has no valid signature from an allowed signer: "
                    "its key is not in trust.allowed_signers_file")
        for principal in principals:
            ok = _ssh_keygen(["-Y", "verify", "-f", str(allowed_signers_file), "-I", principal,
                              "-n", "git", "-s", str(sig)], payload.encode())
            if ok.returncode == 0:
                return None
        err = ok.stderr.decode(errors="replace").strip()
        tail = err.splitlines()[-1] if err else f"ssh-keygen exited {ok.returncode}"
        return f"commit {sha[:12]} has no valid signature from an allowed signer: {tail}"


def _ssh_keygen(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["ssh-keygen", *args], input=stdin, capture_output=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AgentEnvironmentError(f"cannot run ssh-keygen to verify a signature: {e}") from None


def commit_sha(payload: str, signature: str, sha_len: int = 40) -> str:
    """The SHA of the commit whose unsigned form is ``payload`` and whose signature header
    holds ``signature`` (git appends ``gpgsig`` as the last header)."""
    head, sep, message = payload.partition("\n\n")
    lines = signature.rstrip("\n").split("\n")
    name = "gpgsig" if sha_len == 40 else "gpgsig-sha256"
    header = f"{name} " + "\n ".join(lines)
    body = (head + "\n" + header + "\n" + sep[1:] + message if sep else
            payload.rstrip("\n") + "\n" + header + "\n")
    raw = body.encode()
    algo = hashlib.sha1 if sha_len == 40 else hashlib.sha256  # noqa: S324 - git's object id
    return algo(b"commit %d\0" % len(raw) + raw).hexdigest()


__all__ = ["SIGNERS_COPY", "SSH_SIGNATURE_HEADER", "commit_sha", "commit_verdict",
           "verify_ssh_signature"]
