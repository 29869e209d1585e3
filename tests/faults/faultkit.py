"""Fault-suite helpers: misbehaving registries on 127.0.0.1, and the three checks every fault
test makes — a released digest set runs and is healthy, the named volume's data survived,
and the log names the cause.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import socketserver
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import requests
import rig
from harness import AgentProcess, Harness

MANAGED = ("web", "api")


# =========================================================================== the three checks
def write_marker(h: Harness) -> str:
    """Write a unique marker into the named volume ``webdata`` (mounted at /data in web)."""
    token = uuid.uuid4().hex
    web = [c for c in h.containers("web") if c.status == "running"]
    assert len(web) == 1, [(c.name, c.status) for c in h.containers("web")]
    code, out = web[0].exec_run(["sh", "-c", f"echo {token} > /data/marker && sync"])
    assert code == 0, out
    return token


def assert_marker(h: Harness, token: str) -> None:
    """The volume still exists and the running web container sees the marker."""
    h.client.volumes.get(f"{h.project.name}_webdata")  # raises NotFound if it was removed
    web = [c for c in h.containers("web") if c.status == "running"]
    assert len(web) == 1, [(c.name, c.status) for c in h.containers("web")]
    code, out = web[0].exec_run(["cat", "/data/marker"])
    assert code == 0 and out.decode().strip() == token, out


def running_set(h: Harness) -> dict[str, str | None]:
    return {s: h.running_digest(s) for s in MANAGED}


def assert_released_set(h: Harness, *allowed: dict[str, str]) -> None:
    """Every managed service runs one of the ``allowed`` digest sets (never a mix that was
    never released) and every container of the project is running and healthy."""
    now = running_set(h)
    assert now in [dict(a) for a in allowed], f"running {now}, allowed {allowed}"
    deadline = time.monotonic() + 15  # a container without HEALTHCHECK is simply running
    while True:
        bad = []
        for s in (*MANAGED, "side"):
            cs = h.containers(s)
            if len(cs) != 1:
                bad.append(f"{s}: {len(cs)} containers")
                continue
            c = cs[0]
            c.reload()
            health = (c.attrs["State"].get("Health") or {}).get("Status")
            if c.status != "running" or health not in (None, "healthy"):
                bad.append(f"{s}: {c.status}/{health}")
        if not bad:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not healthy: {bad}")
        time.sleep(0.25)


def digests(h: Harness, **keys: str) -> dict[str, str]:
    """``digests(h, web="web-v1", api="api-v1")`` -> {service: digest}."""
    return {s: h.images[k] for s, k in keys.items()}


def one_line(text: str | None) -> str:
    assert text, "no reason logged"
    line = text.splitlines()[0]
    assert line.strip(), text
    return line


# =========================================================================== agent subprocess
class AgentProc(AgentProcess):
    """``gitops-agent sync`` (or ``run``) for a harness's project, as a subprocess."""

    def __init__(self, h: Harness, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(h.project.config_path, *args, env=env)


# =========================================================================== fake registries
class _ThreadingHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Served:
    """A server on 127.0.0.1 in a background thread, stopped on exit."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self.server = server
        self.port = int(server.server_address[1])  # type: ignore[index]
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.requests: list[str] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> _Served:
        self.server.served = self  # type: ignore[attr-defined]
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def status_registry(status: int) -> _Served:
    """A registry that answers ``status`` to everything under /v2/ (401 with a Basic
    challenge, as a registry refusing credentials does)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            self.server.served.requests.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
            code = "UNAUTHORIZED" if status == 401 else "UNAVAILABLE"
            body = json.dumps({"errors": [{"code": code, "message": f"fake {status}"}]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="fault-suite"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = _answer

        def log_message(self, *a: Any) -> None:
            pass

    return _Served(_ThreadingHTTPServer(("127.0.0.1", 0), Handler))


class _SilentServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def silent_registry(answer_ping: bool) -> _Served:
    """Accepts connections and never answers (``answer_ping``: except ``GET /v2/``, so the
    engine gets as far as asking for the manifest, which then never comes)."""
    held: list[socket.socket] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if answer_ping and data.startswith((b"GET /v2/ ", b"HEAD /v2/ ")):
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json"
                    b"\r\nDocker-Distribution-API-Version: registry/2.0\r\n"
                    b"Connection: close\r\n\r\n{}")
                return
            held.append(self.request)
            # hold the connection open, silently, until the client gives up
            with contextlib.suppress(OSError):
                while self.request.recv(65536):
                    pass

    srv = _SilentServer(("127.0.0.1", 0), Handler)
    return _Served(srv)


def registry_proxy(upstream: str, *, cut_blobs_once: bool = False,
                   bytes_per_second: int | None = None, min_blob: int = 64 * 1024) -> _Served:
    """A proxy in front of the real registry. ``cut_blobs_once``: the first download of each
    large blob is cut half-way (connection closed mid-body). ``bytes_per_second``: large blob
    downloads are throttled."""
    cut_done: set[str] = set()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _proxy(self) -> None:
            served = self.server.served  # type: ignore[attr-defined]
            served.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
            try:
                up = requests.request(self.command, f"http://{upstream}{self.path}",
                                      headers=headers, stream=True, allow_redirects=False,
                                      timeout=30)
            except requests.RequestException:
                self.send_error(502)
                return
            length = int(up.headers.get("Content-Length") or 0)
            is_blob = (self.command == "GET" and "/blobs/sha256:" in self.path
                       and length >= min_blob)
            self.send_response(up.status_code)
            for k, v in up.headers.items():
                if k.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                    self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD":
                return
            cut_at = None
            if is_blob and cut_blobs_once:
                key = self.path.split("?")[0]
                with lock:
                    if key not in cut_done:
                        cut_done.add(key)
                        cut_at = length // 2
            sent = 0
            try:
                for chunk in up.raw.stream(16 * 1024, decode_content=False):
                    if cut_at is not None and sent + len(chunk) >= cut_at:
                        self.wfile.write(chunk[: cut_at - sent])
                        self.wfile.flush()
                        served.requests.append(f"CUT {self.path} at {cut_at} of {length}")
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if is_blob and bytes_per_second:
                        time.sleep(len(chunk) / bytes_per_second)
            except OSError:
                self.close_connection = True
            finally:
                up.close()

        do_GET = do_HEAD = _proxy

        def log_message(self, *a: Any) -> None:
            pass

    return _Served(_ThreadingHTTPServer(("127.0.0.1", 0), Handler))


# =========================================================================== images
def push_big_image(client: docker.DockerClient, registry: str, repo: str, tag: str,
                   version: str, workdir: Path, size: int = 3 * 1024 * 1024) -> str:
    """A healthy test image with one extra layer of ``size`` random bytes (so its download
    is real even when busybox's layer is already local). Pushed, then removed locally."""
    ctx = rig.build_context(workdir / f"{repo.replace('/', '_')}-{tag}", "healthy", version)
    (ctx / "blob.bin").write_bytes(os.urandom(size))
    dockerfile = (ctx / "Dockerfile").read_text().replace(
        "COPY entrypoint.sh", "COPY blob.bin /blob.bin\nCOPY entrypoint.sh")
    (ctx / "Dockerfile").write_text(dockerfile)
    ref = f"{registry}/{repo}"
    client.images.build(path=str(ctx), tag=f"{ref}:{tag}", rm=True, forcerm=True)
    digest = rig.push_image(client, ref, tag)
    rig.remove_local_image(client, f"{ref}:{tag}")
    shutil.rmtree(ctx, ignore_errors=True)
    return str(digest)


def set_agent_option(h: Harness, key: str, value: str) -> None:
    """Set ``[agent] key = value`` in the agent config."""
    cfg = h.project.config_path
    text = cfg.read_text()
    assert "[agent]\n" in text
    cfg.write_text(text.replace("[agent]\n", f"[agent]\n{key} = {value}\n", 1))
