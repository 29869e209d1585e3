"""Shared pieces of the benchmarks: the real rig (registry, images, compose stacks driven by
the real agent CLI and by plain compose), counters (registry access log, a counting
Docker-socket proxy, a git daemon), statistics and result output.

Nothing here is faked: the registry is `docker-registry serve` on 127.0.0.1, images are
built FROM scratch with the static busybox and pushed, stacks run under the real compose
binary, the agent runs as `python -m agent` (the `gitops-agent` entry point).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for p in (REPO_ROOT / "tests", REPO_ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import docker  # noqa: E402
import rig  # noqa: E402

from agent.edges.compose import find_compose_command, render_override  # noqa: E402

PY = sys.executable
RESULTS_DIR = REPO_ROOT / "bench" / "results"


# --------------------------------------------------------------------------- small utils
def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x: float) -> str:
    return f"{x:.3f}s"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a fast smoke run (fewer repetitions)")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the results as JSON here")
    return p


def write_results(name: str, results: dict[str, Any], path: Path | None) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    target = path or RESULTS_DIR / f"{name}.json"
    target.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"results written to {target}")


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "memory": mem,
        "kernel": os.uname().release,
        "docker_engine": out("docker", "version", "--format", "{{.Server.Version}}"),
        "compose": out(*find_compose_command(), "version", "--short"),
        "registry": out("docker-registry", "--version"),
        "git": out("git", "--version"),
        "python": sys.version.split()[0],
    }


# --------------------------------------------------------------------------- /proc
def proc_cpu(pid: int) -> dict[str, float]:
    """utime/stime of the process and of its waited-for children (git, compose), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    # fields[0] is state (field 3); utime is field 14 -> index 11
    ut, st, cut, cst = (int(fields[i]) / tck for i in (11, 12, 13, 14))
    return {"self": ut + st, "children": cut + cst, "total": ut + st + cut + cst}


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- registry
class BenchRegistry(rig.Registry):
    """The rig's registry with its access log on, so requests can be counted."""

    def start(self) -> BenchRegistry:
        self.log_requests = True
        super().start()
        return self

    _ACCESS = re.compile(r'^\S+ - \S+ \[[^\]]+\] "(\w+) (\S+) ')

    def access_log(self) -> list[tuple[str, str]]:
        out = []
        for line in (self.workdir / "registry.log").read_text(errors="replace").splitlines():
            m = self._ACCESS.match(line)
            if m:
                out.append((m.group(1), m.group(2)))
        return out


# --------------------------------------------------------------------------- images
def build_context(dest: Path, variant: str, version: str) -> Path:
    """rig's test image plus one small layer of its own, so every image has a distinct
    layer to pull (not only a distinct config)."""
    rig.build_context(dest, variant, version)
    (dest / "release.txt").write_text(f"{version}\n" + os.urandom(2048).hex() + "\n")
    df = (dest / "Dockerfile").read_text().replace(
        'COPY entrypoint.sh /entrypoint.sh',
        'COPY entrypoint.sh /entrypoint.sh\nCOPY release.txt /release.txt')
    (dest / "Dockerfile").write_text(df)
    return dest


def build_and_push(client: docker.DockerClient, registry: str, repo: str, tag: str,
                   variant: str, version: str, workdir: Path) -> str:
    ctx = build_context(workdir / f"{repo.replace('/', '_')}-{tag}", variant, version)
    ref = f"{registry}/{repo}"
    client.images.build(path=str(ctx), tag=f"{ref}:{tag}", rm=True, forcerm=True)
    digest = rig.push_image(client, ref, tag)
    rig.remove_local_image(client, f"{ref}:{tag}")
    return digest


def remove_images(client: docker.DockerClient, refs: Iterable[str]) -> None:
    """Remove local images (by repo@digest) so the next release must pull them."""
    for ref in refs:
        rig.remove_local_image(client, ref)


def image_is_local(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.api.inspect_image(ref)
        return True
    except docker.errors.NotFound:
        return False


# --------------------------------------------------------------------------- the bench
class Bench:
    """Owns a temp dir, a registry, the compose projects and images it creates, and cleans
    all of it up on exit (normal exit, exception, SIGTERM/SIGINT)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"gitops-bench-{name}-"))
        deadline = time.monotonic() + 120  # a shared machine: dockerd may be restarting
        while True:
            try:
                self.client = rig.docker_client()
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        self.compose_cmd = find_compose_command()
        self.registry = BenchRegistry(port=rig.free_port(), workdir=self.root / "registry")
        self.stacks: list[Stack] = []
        self.images: list[str] = []  # repo@digest refs to remove at the end
        self.procs: list[subprocess.Popen[Any]] = []
        self.cleanups: list[Callable[[], None]] = []
        self._closed = False

    def __enter__(self) -> Bench:
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.registry.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        log(f"{self.name}: cleaning up")
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for s in self.stacks:
            with contextlib.suppress(Exception):
                s.down()
        with contextlib.suppress(Exception):
            self.registry.stop()
        with contextlib.suppress(Exception):
            remove_images(self.client, self.images)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def reg(self) -> str:
        return self.registry.host

    def image(self, repo: str, tag: str, variant: str, version: str | None = None) -> str:
        """Build and push one image; returns its digest; not left local."""
        d = build_and_push(self.client, self.reg, repo, tag, variant, version or f"{repo} {tag}",
                           self.root / "ctx")
        self.images.append(f"{self.reg}/{repo}@{d}")
        return d

    def stack(self, name: str, services: dict[str, str], **kw: Any) -> Stack:
        s = Stack(self, name, services, **kw)
        s.write()
        self.stacks.append(s)
        return s


@dataclass
class Timed:
    seconds: float
    code: int
    stdout: str = ""
    stderr: str = ""


def run_timed(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 900, check: bool = True) -> Timed:
    t0 = time.perf_counter()
    p = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=timeout, check=False)
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}… exited {p.returncode}:\n{p.stderr[-3000:]}")
    return Timed(dt, p.returncode, p.stdout, p.stderr)


class Stack:
    """A compose project managed two ways: by the agent (desired-state commits + `sync`) and
    by hand (a pin file + `docker compose pull` + `docker compose up -d --wait`).

    ``services``: service name -> image repository (without registry), e.g. ``bench/web``.
    Both ways pin images to ``repo@digest`` with the same override content, so compose sees
    the same service config whichever way made the container.
    """

    def __init__(self, bench: Bench, name: str, services: dict[str, str], *,
                 ports: dict[str, int] | None = None, settle: float = 0.0,
                 health_timeout: float = 60.0, interval: float = 3600, jitter: float = 0,
                 source_url: str | None = None, extra_agent: str = "",
                 stop_grace: str = "3s", update: str | None = None) -> None:
        self.bench = bench
        self.name = name
        self.services = services
        self.ports = ports or {}
        self.root = bench.root / name
        self.project_dir = self.root / "srv"
        self.state_dir = self.root / "state"
        self.config_path = self.root / "agent.toml"
        self.hand_override = self.root / "hand-pins.json"
        self.repo = rig.GitRepo(self.root / "git").init()
        self.settle = settle
        self.health_timeout = health_timeout
        self.interval = interval
        self.jitter = jitter
        self.source_url = source_url
        self.extra_agent = extra_agent
        self.stop_grace = stop_grace
        self.pins: dict[str, str] = {}
        # desired-state `update:` for every service (None: the agent's default, start-first
        # where a service can run twice); "stop-first" is what plain compose does (recreate)
        self.update = update

    def ref(self, service: str, digest: str) -> str:
        return f"{self.bench.reg}/{self.services[service]}@{digest}"

    def write(self) -> None:
        self.project_dir.mkdir(parents=True, exist_ok=True)
        lines = ["services:"]
        for svc, repo in self.services.items():
            lines += [f"  {svc}:", f"    image: {self.bench.reg}/{repo}:unpinned",
                      "    restart: unless-stopped", f"    stop_grace_period: {self.stop_grace}"]
            if svc in self.ports:
                lines += ["    ports:", f'      - "127.0.0.1:{self.ports[svc]}:8080"']
        (self.project_dir / "compose.yml").write_text("\n".join(lines) + "\n")
        self.write_config()

    def write_config(self) -> None:
        self.config_path.write_text(rig.agent_toml(
            repo=str(self.source_url or self.repo.origin), branch=self.repo.branch,
            project_dir=self.project_dir, project_name=self.name, state_dir=self.state_dir,
            interval=self.interval, jitter=self.jitter, health_timeout=self.health_timeout,
            settle=self.settle,
        ) + self.extra_agent)

    # ------------------------------------------------------------------ agent way
    def commit(self, digests: dict[str, str], message: str = "release",
               update: str | None = None) -> str:
        services = {s: (f"{self.bench.reg}/{self.services[s]}", d) for s, d in digests.items()}
        order = update or self.update
        extra = {s: {"update": order} for s in digests} if order else None
        return self.repo.commit_file("desired-state.yml", rig.desired_yaml(services, extra),
                                     message)

    def agent_cmd(self, *args: str) -> list[str]:
        return [PY, "-m", "agent", "--config", str(self.config_path), "--log-format", "json",
                *args]

    def sync(self, *args: str, check: bool = True) -> tuple[Timed, dict[str, Any]]:
        """`gitops-agent sync` as a user (or cron) runs it; returns timing and the pass
        record the agent wrote to its history (with per-phase timings)."""
        t = run_timed(self.agent_cmd("sync", *args), cwd=REPO_ROOT, check=False)
        if check and t.code != 0:
            raise RuntimeError(f"sync exited {t.code}:\n{t.stderr[-3000:]}")
        return t, self.last_pass()

    def last_pass(self) -> dict[str, Any]:
        st = json.loads((self.state_dir / "state.json").read_text())
        return dict(st["history"][0]) if st.get("history") else {}

    # ------------------------------------------------------------------ by hand
    def compose(self, *args: str) -> list[str]:
        base = [*self.bench.compose_cmd, "--project-name", self.name, "--project-directory",
                str(self.project_dir), "--file", str(self.project_dir / "compose.yml")]
        if self.hand_override.exists():
            base += ["--file", str(self.hand_override)]
        return [*base, *args]

    def hand_pin(self, digests: dict[str, str]) -> None:
        """What a person does by hand: pin the new digests in the compose files."""
        self.pins.update({s: self.ref(s, d) for s, d in digests.items()})
        self.hand_override.write_bytes(render_override(self.pins))

    def hand_release(self, digests: dict[str, str]) -> dict[str, float]:
        """`docker compose pull` + `docker compose up -d --wait`: the cron-job baseline."""
        self.hand_pin(digests)
        pull = run_timed(self.compose("pull", "--quiet"), cwd=self.project_dir)
        up = run_timed(self.compose("up", "--detach", "--wait", "--no-build"),
                       cwd=self.project_dir)
        return {"pull": pull.seconds, "up_wait": up.seconds, "total": pull.seconds + up.seconds}

    def down(self) -> None:
        subprocess.run(
            [*self.bench.compose_cmd, "--project-name", self.name, "down", "--volumes",
             "--timeout", "1", "--remove-orphans"],
            capture_output=True, check=False, timeout=300,
        )

    # ------------------------------------------------------------------ observation
    def containers(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for c in self.bench.client.api.containers(
                all=True, filters={"label": f"com.docker.compose.project={self.name}"}):
            out.setdefault(c["Labels"].get("com.docker.compose.service", "?"), []).append(c)
        return out

    def container_ids(self) -> dict[str, str]:
        return {s: ",".join(sorted(c["Id"] for c in cs)) for s, cs in self.containers().items()}

    def running_refs(self) -> dict[str, str]:
        return {s: cs[0]["Image"] for s, cs in self.containers().items() if len(cs) == 1}

    def all_healthy(self, digests: dict[str, str]) -> bool:
        cs = self.containers()
        for s, d in digests.items():
            mine = cs.get(s, [])
            if len(mine) != 1 or mine[0]["Image"] != self.ref(s, d):
                return False
            st = mine[0]["Status"]
            if mine[0]["State"] != "running" or "starting" in st or "unhealthy" in st:
                return False
        return True


# --------------------------------------------------------------------------- counters
@dataclass
class DockerCall:
    method: str
    path: str
    agent: str


class DockerSocketProxy:
    """A unix-socket proxy in front of the Docker engine that records every API request
    (method, path, User-Agent). Point a process at it with DOCKER_HOST=unix://PATH."""

    def __init__(self, path: Path, upstream: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.upstream = upstream
        self.calls: list[DockerCall] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stop = False

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> DockerSocketProxy:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    def snapshot(self) -> list[DockerCall]:
        with self._lock:
            return list(self.calls)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                u.connect(self.upstream)
            except OSError:
                c.close()
                continue
            threading.Thread(target=self._client_to_engine, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _client_to_engine(self, c: socket.socket, u: socket.socket) -> None:
        buf = b""
        body_left = 0
        parsing = True
        try:
            while data := c.recv(65536):
                u.sendall(data)
                if not parsing:
                    continue
                buf += data
                while parsing:
                    if body_left:
                        take = min(body_left, len(buf))
                        buf, body_left = buf[take:], body_left - take
                        if body_left:
                            break
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head, buf = buf[:end].decode("latin-1"), buf[end + 4:]
                    lines = head.split("\r\n")
                    parts = lines[0].split(" ")
                    headers = {k.strip().lower(): v.strip() for k, _, v in
                               (ln.partition(":") for ln in lines[1:])}
                    with self._lock:
                        self.calls.append(DockerCall(parts[0], parts[1] if len(parts) > 1 else "",
                                                     headers.get("user-agent", "")))
                    if headers.get("transfer-encoding", "").lower() == "chunked" or \
                            "upgrade" in headers.get("connection", "").lower():
                        parsing = False  # streamed body / hijack: stop parsing this connection
                    body_left = int(headers.get("content-length") or 0)
        except OSError:
            pass
        finally:
            for s in (c, u):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def is_mutating(call: DockerCall) -> bool:
    return call.method not in ("GET", "HEAD")


class GitDaemon:
    """`git daemon` on 127.0.0.1 serving a directory; counts upload-pack requests (fetches)."""

    def __init__(self, base: Path, logfile: Path) -> None:
        self.base = base
        self.port = rig.free_port()
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, repo: Path) -> str:
        return f"git://127.0.0.1:{self.port}/{repo.relative_to(self.base)}"

    def start(self) -> GitDaemon:
        f = open(self.logfile, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--verbose",
             f"--base-path={self.base}", "--listen=127.0.0.1", f"--port={self.port}",
             str(self.base)],
            stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                break
            time.sleep(0.05)
        return self

    def requests(self) -> int:
        return self.logfile.read_text(errors="replace").count("Request upload-pack")

    def connections(self) -> int:
        return self.logfile.read_text(errors="replace").count("Connection from")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --------------------------------------------------------------------------- daemon
@dataclass
class Daemon:
    """`gitops-agent run` as a subprocess; its JSON log lines are collected."""

    stack: Stack
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    lines: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> Daemon:
        self.proc = subprocess.Popen(
            self.stack.agent_cmd("run"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, cwd=REPO_ROOT, env={**os.environ, **self.env})
        self.stack.bench.procs.append(self.proc)
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            t = time.monotonic()
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.lines.append((t, ev))
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def count(self, event: str) -> int:
        with self._cond:
            return sum(1 for _, e in self.lines if e.get("event") == event)

    def wait_for(self, event: str, *, count: int = 1, timeout: float = 120,
                 where: Callable[[dict[str, Any]], bool] | None = None
                 ) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [(t, e) for t, e in self.lines if e.get("event") == event
                        and (where is None or where(e))]
                if len(hits) >= count:
                    return hits[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    raise RuntimeError(f"no {event} x{count} within {timeout}s")
                self._cond.wait(min(left, 0.5))

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def wait_until(pred: Callable[[], bool], timeout: float = 120, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting")
        time.sleep(step)


def print_table(rows: list[list[str]], header: list[str]) -> str:
    w = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(str(h).ljust(w[i]) for i, h in enumerate(header)),
           "  ".join("-" * x for x in w)]
    out += ["  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(out)


def wait_docker(client: docker.DockerClient, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except Exception:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


class Rounds:
    """Runs measurement rounds; a round that fails (this machine is shared: another job may
    restart dockerd under us) is logged, not counted, and run again — at most ``retries``
    times in total. The number of discarded rounds is reported."""

    def __init__(self, client: docker.DockerClient, retries: int = 4) -> None:
        self.client = client
        self.retries = retries
        self.discarded: list[str] = []

    def run(self, fn: Callable[[int], Any], i: int) -> Any:
        while True:
            try:
                return fn(i)
            except Exception as e:  # noqa: BLE001
                if len(self.discarded) >= self.retries:
                    raise
                self.discarded.append(f"round {i}: {str(e)[:300]}")
                log(f"round {i} failed, discarded and run again: {str(e)[:300]}")
                time.sleep(3)
                wait_docker(self.client)
