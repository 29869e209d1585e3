"""``gitops-agent init``: "bring an existing stack". A first desired-state.yml from the
containers a compose project runs now: each service's image repository and the digest of
what runs (the RepoDigest of its image for that repository). A service whose image has no
registry digest (built locally) cannot be managed: it is named in a comment and left out.
Read-only towards the engine; needs no agent config."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.desired import REPOSITORY_RE, parse_desired_state
from agent.plan import repository_of, running_digest


@dataclass
class InitResult:
    text: str
    services: dict[str, tuple[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def project_name(project_dir: Path, name: str | None) -> str:
    """compose's default project name: the directory's name, lower case, [a-z0-9_-]."""
    if name:
        return name
    return re.sub(r"[^a-z0-9_-]", "", project_dir.resolve().name.lower()) or "default"


def desired_from_running(project_dir: Path, files: Sequence[str], name: str | None
                         ) -> InitResult:
    from agent.edges.docker import DockerEngine

    project = project_name(project_dir, name)
    observed = DockerEngine().observe(project)
    declared = _compose_services(project_dir, files, project)
    services: dict[str, tuple[str, str]] = {}
    warnings: list[str] = []
    for svc in sorted(observed):
        cs = [c for c in observed[svc] if c.status in ("running", "restarting")]
        if not cs:
            warnings.append(f"{svc}: no running container; left out")
            continue
        digest = running_digest(cs)
        repo = repository_of(cs[0].image_ref)
        if digest is None or not REPOSITORY_RE.match(repo):
            warnings.append(f"{svc}: image {cs[0].image_ref or '?'} has no registry digest "
                            "(built locally?): not manageable, left out")
            continue
        services[svc] = (repo, digest)
    for svc in sorted(set(declared) - set(observed)):
        warnings.append(f"{svc}: in the compose files but not running; left out")
    if not observed:
        warnings.append(f"no containers of compose project {project!r} run on this engine")
    lines = [f"# desired state of compose project {project}, from what runs now "
             "(gitops-agent init)"]
    lines += [f"# not managed: {w}" for w in warnings]
    lines += ["version: 1", "services:" if services else "services: {}"]
    for svc, (repo, digest) in services.items():
        lines += [f"  {svc}:", f"    image: {repo}", f"    digest: {digest}"]
    text = "\n".join(lines) + "\n"
    parse_desired_state(text.encode(), "desired-state.yml (init)")  # what we write is valid
    return InitResult(text, services, warnings)


def _compose_services(project_dir: Path, files: Sequence[str], project: str) -> list[str]:
    """The compose files' services, best effort (for the not-running note)."""
    from agent.edges.compose import Compose, find_compose_command
    from agent.errors import AgentError

    names = list(files) or [n for n in ("compose.yaml", "compose.yml", "docker-compose.yaml",
                                        "docker-compose.yml") if (project_dir / n).is_file()][:1]
    if not names:
        return []
    try:
        return list(Compose(find_compose_command(), project_dir, names, project).services())
    except AgentError:
        return []


def write_new(path: Path, text: str, *, force: bool) -> bool:
    """Write ``text`` to ``path`` atomically; False (nothing written) when it exists and
    not ``force``."""
    import os
    import tempfile

    if path.exists() and not force:
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True
