"""mcp-gateway: a tiny HTTP service of the example stack (Python standard library only).

GET  /health  -> 200 {"status": "ok"}             (the container healthcheck)
GET  /        -> 200 {"service": ..., "version": ...}
POST /mcp     -> a minimal JSON-RPC 2.0 endpoint in the shape of the Model Context
                 Protocol: ``initialize``, ``tools/list`` and ``tools/call`` of one tool,
                 ``provider_status``, which asks binance-provider (over the compose
                 network) for its version.

``python app.py healthcheck`` GETs /health on 127.0.0.1 and exits 0 if it answers 200.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = os.environ.get("APP_VERSION", "dev")
PORT = int(os.environ.get("PORT", "8080"))
PROVIDER_URL = os.environ.get("BINANCE_PROVIDER_URL", "http://binance-provider:8080")

TOOLS = [
    {
        "name": "provider_status",
        "description": "Version and health of the binance-provider service.",
        "inputSchema": {"type": "object", "properties": {}},
    }
]


def provider_status() -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{PROVIDER_URL}/", timeout=3) as r:  # noqa: S310
            return {"reachable": True, "provider": json.load(r)}
    except (OSError, ValueError) as e:
        return {"reachable": False, "error": str(e)}


def rpc(request: dict[str, Any]) -> dict[str, Any]:
    method, rid = request.get("method"), request.get("id")
    if method == "initialize":
        result: Any = {
            "protocolVersion": "2025-03-26",
            "serverInfo": {"name": "mcp-gateway", "version": VERSION},
            "capabilities": {"tools": {}},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call" and (request.get("params") or {}).get("name") == "provider_status":
        result = {"content": [{"type": "text", "text": json.dumps(provider_status())}]}
    else:
        return {"jsonrpc": "2.0", "id": rid,
                "error": {"code": -32601, "message": f"method not found: {method}"}}
    return {"jsonrpc": "2.0", "id": rid, "result": result}


class Handler(BaseHTTPRequestHandler):
    server_version = "mcp-gateway"

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/":
            self._send(200, {"service": "mcp-gateway", "version": VERSION})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/mcp":
            self._send(404, {"error": "not found"})
            return
        length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            self._send(400, {"jsonrpc": "2.0", "id": None,
                             "error": {"code": -32700, "message": "parse error"}})
            return
        self._send(200, rpc(request))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.path != "/health":  # keep healthchecks out of the logs
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def healthcheck() -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2) as r:  # noqa: S310
            return 0 if r.status == 200 else 1
    except OSError:
        return 1


def main() -> int:
    if sys.argv[1:2] == ["healthcheck"]:
        return healthcheck()
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)  # noqa: S104
    # PID 1 in a container: exit promptly on SIGTERM instead of waiting to be killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"mcp-gateway {VERSION} listening on :{PORT}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
