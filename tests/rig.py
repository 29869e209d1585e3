"""The real test rig: Docker engine, a local registry on 127.0.0.1, compose v2, git.

Used by the end-to-end tests, the fault suite, the demo and the benchmarks. Nothing here
fakes Docker: images are built FROM scratch with the static busybox, pushed to a real
registry, and deployed through the real compose binary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def busybox_path() -> str:
    for p in BUSYBOX_CANDIDATES:
        if Path(p).is_file():
            out = subprocess.run(["file", "-L", p], capture_output=True, text=True, check=False)
            if "static" in out.stdout or out.returncode != 0:
                return p
    raise RuntimeError("a static busybox is needed (apt-get install busybox-static)")


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(
            f"the end-to-end rig needs a running Docker engine ({e}); run .ci/run or "
            "scripts/rig-up first"
        ) from e
    return client


# --------------------------------------------------------------------------- registry
@dataclass
class Registry:
    port: int
    workdir: Path
    htpasswd: Path | None = None
    log_requests: bool = False  # the access log, for benchmarks that count requests
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        storage = self.workdir / "data"
        storage.mkdir(parents=True, exist_ok=True)
        cfg = textwrap.dedent(f"""\
            version: 0.1
            log:
              level: {"error" if self.log_requests else "warn"}
              accesslog:
                disabled: {"false" if self.log_requests else "true"}
            storage:
              filesystem:
                rootdirectory: {storage}
              delete:
                enabled: true
            http:
              addr: 127.0.0.1:{self.port}
            """)
        if self.htpasswd is not None:
            cfg += textwrap.dedent(f"""\
                auth:
                  htpasswd:
                    realm: gitops-agent-test
                    path: {self.htpasswd}
                """)
        (self.workdir / "config.yml").write_text(cfg)
        log = open(self.workdir / "registry.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.workdir / "config.yml")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                r = requests.get(f"http://{self.host}/v2/", timeout=1)
                if r.status_code in (200, 401):
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited: {(self.workdir / 'registry.log').read_text()}")
            time.sleep(0.1)
        raise RuntimeError("registry did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def make_htpasswd(path: Path, user: str, password: str) -> None:
    """bcrypt htpasswd entry (the registry accepts only bcrypt), via apache2-utils."""
    out = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True,
                         check=True)
    path.write_text(out.stdout.strip() + "\n")


# --------------------------------------------------------------------------- images
SERVE = """\
#!/bin/sh
# PID 1 must exit on SIGTERM, or every stop waits out Docker's grace period.
trap 'exit 0' TERM INT
mkdir -p /www
echo "$VERSION_TEXT" > /www/index.html
# /health answers once the service is "ready" (after HEALTH_DELAY), never with NO_HEALTH
if [ -z "$NO_HEALTH" ]; then (sleep "${HEALTH_DELAY:-0}"; echo ok > /www/health) & fi
httpd -f -p 8080 -h /www &
wait $!
"""

VARIANTS: dict[str, tuple[str, str | None, dict[str, str]]] = {
    # name: (entrypoint script, HEALTHCHECK line or None, environment)
    "healthy": (SERVE, 'HEALTHCHECK --interval=500ms --timeout=2s --retries=2 '
                'CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"]', {}),
    "nohealth": (SERVE, None, {}),
    "unhealthy": (SERVE, 'HEALTHCHECK --interval=500ms --timeout=2s --retries=1 '
                  'CMD ["sh", "-c", "echo health endpoint says 503; exit 1"]',
                  {"NO_HEALTH": "1"}),
    "crash": ("#!/bin/sh\necho 'fatal: cannot start' >&2\nexit 3\n", None, {}),
    "exit0": ("#!/bin/sh\necho done\nexit 0\n", None, {}),
    # healthy only once /health exists, HEALTH_DELAY seconds after start
    "slow": (SERVE, 'HEALTHCHECK --interval=500ms --timeout=2s --retries=100 '
             'CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"]',
             {"HEALTH_DELAY": "3"}),
}


def build_context(dest: Path, variant: str, version: str, env: dict[str, str] | None = None) -> Path:
    script, healthcheck, variant_env = VARIANTS[variant]
    env = {**variant_env, **(env or {})}
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox_path(), dest / "busybox")
    (dest / "entrypoint.sh").write_text(script)
    lines = [
        "FROM scratch",
        "COPY busybox /bin/busybox",
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
        "COPY entrypoint.sh /entrypoint.sh",
        'RUN ["/bin/chmod", "755", "/entrypoint.sh"]',
        f'ENV VERSION_TEXT="{version}"',
        f'LABEL org.opencontainers.image.version="{version}"',
    ]
    for k, v in env.items():
        lines.append(f'ENV {k}="{v}"')
    if healthcheck:
        lines.append(healthcheck)
    lines += ["EXPOSE 8080", 'ENTRYPOINT ["/entrypoint.sh"]']
    (dest / "Dockerfile").write_text("\n".join(lines) + "\n")
    return dest


def build_and_push(
    client: docker.DockerClient, registry: str, repo: str, tag: str, variant: str,
    version: str, workdir: Path, env: dict[str, str] | None = None,
) -> str:
    """Build a test image, push it, return the manifest digest."""
    ctx = build_context(workdir / f"{repo.replace('/', '_')}-{tag}", variant, version, env)
    ref = f"{registry}/{repo}"
    client.images.build(path=str(ctx), tag=f"{ref}:{tag}", rm=True, forcerm=True)
    return push_image(client, ref, tag)


def push_image(client: docker.DockerClient, ref: str, tag: str) -> str:
    """Push ``ref:tag`` and return the manifest digest the registry reported."""
    digest = None
    for chunk in client.api.push(ref, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise RuntimeError(f"push {ref}:{tag}: {chunk['error']}")
        digest = (chunk.get("aux") or {}).get("Digest") or digest
    if not digest:
        raise RuntimeError(f"push {ref}:{tag} reported no digest")
    return str(digest)


def remove_local_image(client: docker.DockerClient, ref: str) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
        client.images.remove(ref, force=True)


# --------------------------------------------------------------------------- git
def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.test",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.test"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@dataclass
class GitRepo:
    """A bare origin plus a working clone that commits and pushes."""

    root: Path
    branch: str = "main"

    @property
    def origin(self) -> Path:
        return self.root / "origin.git"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def init(self) -> GitRepo:
        self.root.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--bare", f"--initial-branch={self.branch}", str(self.origin),
            cwd=self.root)
        git("init", "--quiet", f"--initial-branch={self.branch}", str(self.work), cwd=self.root)
        git("remote", "add", "origin", str(self.origin), cwd=self.work)
        return self

    def commit_file(self, relpath: str, content: str, message: str = "update",
                    signing_key: Path | None = None) -> str:
        p = self.work / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        git("add", relpath, cwd=self.work)
        sign = ([] if signing_key is None else
                ["-c", "gpg.format=ssh", "-c", f"user.signingkey={signing_key}"])
        git(*sign, "commit", "--quiet", "--allow-empty", *(["-S"] if signing_key else []),
            "-m", message, cwd=self.work)
        git("push", "--quiet", "--force", "origin", f"HEAD:{self.branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


def desired_yaml(services: dict[str, tuple[str, str]], extra: dict[str, dict[str, str]] | None = None) -> str:
    lines = ["# written by the tests", "version: 1", "services:"]
    for name, (image, digest) in services.items():
        lines += [f"  {name}:", f"    image: {image}", f"    digest: {digest}"]
        for k, v in (extra or {}).get(name, {}).items():
            lines.append(f"    {k}: {v}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- agent config
def agent_toml(
    *, repo: str, project_dir: Path, project_name: str, state_dir: Path, branch: str = "main",
    interval: float = 2, jitter: float = 0, health_timeout: float = 20, settle: float = 1,
    handover: float | None = None,
) -> str:
    """The agent config the tests, the demo and the benchmarks run with."""
    handover_line = "" if handover is None else f"handover_seconds = {handover}\n"
    return textwrap.dedent(f"""\
        [source]
        repo = "{repo}"
        branch = "{branch}"
        path = "desired-state.yml"

        [compose]
        project_dir = "{project_dir}"
        files = ["compose.yml"]
        project_name = "{project_name}"

        [agent]
        interval_seconds = {interval}
        jitter_seconds = {jitter}
        health_timeout_seconds = {health_timeout}
        settle_seconds = {settle}
        state_dir = "{state_dir}"
        """) + handover_line


# --------------------------------------------------------------------------- compose project
@dataclass
class Project:
    name: str
    root: Path
    registry: str
    repo: GitRepo
    managed: tuple[str, ...] = ("web", "api")
    settle: float = 1.0
    handover: float = 0.0
    health_timeout: float = 20.0
    extra_config: str = ""
    compose_text: str | None = None
    state_dir: Path = field(init=False)
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state_dir = self.root / "state"
        self.config_path = self.root / "agent.toml"

    @property
    def project_dir(self) -> Path:
        return self.root / "srv"

    def default_compose(self, side_ref: str) -> str:
        return textwrap.dedent(f"""\
            services:
              web:
                image: {self.registry}/e2e/web:latest
                restart: unless-stopped
                stop_grace_period: 3s
                volumes:
                  - webdata:/data
              api:
                image: {self.registry}/e2e/api:latest
                restart: unless-stopped
                stop_grace_period: 3s
              side:
                image: {side_ref}
                restart: unless-stopped
                stop_grace_period: 3s
            volumes:
              webdata:
            """)

    def write(self, side_ref: str) -> Project:
        self.project_dir.mkdir(parents=True, exist_ok=True)
        (self.project_dir / "compose.yml").write_text(self.compose_text or self.default_compose(side_ref))
        self.config_path.write_text(agent_toml(
            repo=str(self.repo.origin), branch=self.repo.branch, project_dir=self.project_dir,
            project_name=self.name, state_dir=self.state_dir,
            health_timeout=self.health_timeout, settle=self.settle, handover=self.handover,
        ) + self.extra_config)
        return self

    def down(self, compose_cmd: list[str]) -> None:
        subprocess.run(
            [*compose_cmd, "--project-name", self.name, "--project-directory", str(self.project_dir),
             "--file", str(self.project_dir / "compose.yml"), "down", "--volumes", "--timeout", "1",
             "--remove-orphans"],
            capture_output=True, check=False, timeout=120,
        )


@contextlib.contextmanager
def temp_root(prefix: str = "gitops-e2e-") -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
