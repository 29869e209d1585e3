"""A real git smart-HTTP server on 127.0.0.1: git's own ``git http-backend`` behind a small
HTTP server that demands a token (Basic auth, as GitHub accepts ``x-access-token:TOKEN``)."""

from __future__ import annotations

import base64
import http.server
import os
import subprocess
import threading
from pathlib import Path

BACKEND = "/usr/lib/git-core/git-http-backend"


class GitHTTPServer:
    def __init__(self, project_root: Path, token: str | None, *, allow_filter: bool = True,
                 ) -> None:
        self.root = project_root
        self.token = token
        # as GitHub and GitLab do: partial fetches (--filter=blob:limit=N) are served
        self.allow_filter = allow_filter
        self.bytes_sent = 0
        self.auth_seen: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                auth = self.headers.get("Authorization")
                outer.auth_seen.append(auth)
                if outer.token is not None:
                    want = "Basic " + base64.b64encode(
                        f"x-access-token:{outer.token}".encode()).decode()
                    if auth != want:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="git"')
                        self.end_headers()
                        return
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(outer.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_ADDR": "127.0.0.1",
                    "REMOTE_USER": "x-access-token",
                }
                if outer.allow_filter:
                    env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="uploadpack.allowFilter",
                               GIT_CONFIG_VALUE_0="true")
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                out = subprocess.run([BACKEND], input=body, env=env, capture_output=True,
                                     check=False).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    k, _, v = line.partition(":")
                    if k.lower() == "status":
                        status = int(v.strip().split()[0])
                    elif k:
                        headers.append((k, v.strip()))
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                outer.bytes_sent += len(payload)

            do_GET = _serve
            do_POST = _serve

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"

    def __enter__(self) -> GitHTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
