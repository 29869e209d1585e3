"""Real reverse proxies in front of a test service, and a loopback load client.

* HAProxy: Debian's HAProxy 2.6 (the host's package), copied with its shared libraries
  into a FROM-scratch image. It discovers the service's containers through Docker's
  embedded DNS (``server-template`` + ``resolvers``) and checks their health itself
  (``/health``), as traefik does with Docker health.
* caddy: Debian's caddy 2.6 on a Debian base image, with ``dynamic a`` upstreams: it
  follows Docker's DNS for the service's name and checks nothing. Whatever the name
  resolves to gets traffic — the case the agent's rotation by name is for.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import requests

if TYPE_CHECKING:
    from harness import Harness

HAPROXY = "/usr/sbin/haproxy"
IMAGE = "gitops-agent-test/haproxy:local"

HAPROXY_CFG = """\
global
    log stdout format raw local0 warning
defaults
    mode http
    log global
    timeout connect 300ms
    timeout client 10s
    timeout server 10s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
resolvers docker
    nameserver dns 127.0.0.11:53
    # re-resolve often (new containers join fast), but keep known servers through a slow
    # or failed DNS answer: only health checks take a server out of rotation
    resolve_retries 3
    timeout resolve 200ms
    timeout retry 500ms
    hold valid 500ms
    hold other 30s
    hold refused 30s
    hold timeout 30s
    hold nx 2s
    hold obsolete 2s
frontend fe
    bind :8000
    default_backend be
backend be
    option httpchk GET /health
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2 check resolvers docker init-addr none
    server-template app 4 {service}:8080
"""


def build_proxy_image(client: docker.DockerClient, workdir: Path) -> str:
    """Build (once) the HAProxy image from the host's binary and its libraries."""
    try:
        client.images.get(IMAGE)
        return IMAGE
    except docker.errors.ImageNotFound:
        pass
    if not Path(HAPROXY).exists():
        raise RuntimeError("the proxy test needs Debian's haproxy (apt-get install haproxy)")
    ctx = workdir / "haproxy-ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["ldd", HAPROXY], capture_output=True, text=True, check=True).stdout
    files = [HAPROXY]
    for line in out.splitlines():
        parts = line.split("=>")
        path = (parts[1] if len(parts) > 1 else parts[0]).strip().split(" (")[0].strip()
        if path.startswith("/"):
            files.append(path)
    lines = ["FROM scratch"]
    for i, f in enumerate(files):
        real = Path(f).resolve()
        name = f"f{i}"
        shutil.copy(real, ctx / name)
        lines.append(f"COPY {name} {f}")
    lines += ['ENTRYPOINT ["/usr/sbin/haproxy", "-db", "-f", "/cfg/haproxy.cfg"]']
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    client.images.build(path=str(ctx), tag=IMAGE, rm=True)
    return IMAGE


CADDY_IMAGE = "local/caddy-test:1"

CADDYFILE = """\
{{
\tadmin off
\tauto_https off
}}
:8000 {{
\treverse_proxy {{
\t\tdynamic a {service} 8080 {{
\t\t\trefresh 1s
\t\t}}
\t\tlb_policy round_robin
\t\tlb_try_duration 2s
\t\tlb_try_interval 50ms
\t\ttransport http {{
\t\t\tdial_timeout 300ms
\t\t}}
\t}}
}}
"""


def _has_image(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def debian_base_image() -> str:
    """``local/debian:bookworm`` through scripts/debian-base-image (idempotent: the image
    existing is the cache), for callers outside pytest's ``debian_base_image`` fixture."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "debian-base-image"
    out = subprocess.run([str(script)], capture_output=True, text=True, check=True,
                         timeout=1800)
    return out.stdout.strip().splitlines()[-1]


def build_caddy_image(client: docker.DockerClient, workdir: Path, base: str) -> str:
    """``local/caddy-test:1``: Debian's caddy package on the Debian base image, once."""
    if _has_image(client, CADDY_IMAGE):
        return CADDY_IMAGE
    ctx = workdir / "caddy-ctx"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(
        f"FROM {base}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends caddy "
        "&& rm -rf /var/lib/apt/lists/*\n"
        'ENTRYPOINT ["caddy"]\n')
    client.images.build(path=str(ctx), tag=CADDY_IMAGE, rm=True)
    return CADDY_IMAGE


def caddy_service_yaml(port: int, cfg_path: Path) -> str:
    return textwrap.indent(textwrap.dedent(f"""\
        proxy:
          image: {CADDY_IMAGE}
          command: ["run", "--config", "/cfg/Caddyfile", "--adapter", "caddyfile"]
          ports: ["127.0.0.1:{port}:8000"]
          volumes: ["{cfg_path}:/cfg/Caddyfile:ro"]
          stop_grace_period: 1s
        """), "  ")


def proxy_service_yaml(port: int, cfg_path: Path) -> str:
    return textwrap.indent(textwrap.dedent(f"""\
        proxy:
          image: {IMAGE}
          ports: ["127.0.0.1:{port}:8000"]
          volumes: ["{cfg_path}:/cfg/haproxy.cfg:ro"]
          stop_grace_period: 1s
        """), "  ")


SLOW = 0.25


@dataclass
class LoadReport:
    sent: int = 0
    failed: int = 0
    slowest: float = 0.0
    slow: int = 0  # responses slower than SLOW seconds
    bodies: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class LoadClient:
    """~``rate`` requests per second to the proxy from loopback, until stopped."""

    def __init__(self, url: str, rate: float = 50, timeout: float = 5) -> None:
        self.url, self.interval, self.timeout = url, 1 / rate, timeout
        self.report = LoadReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        next_at = time.monotonic()
        deadline = time.monotonic() + 300  # bounded, whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                r = session.get(self.url, timeout=self.timeout)
                ok = r.status_code == 200
                key = r.text.strip() if ok else f"HTTP {r.status_code}"
            except requests.RequestException as e:
                ok, key = False, type(e).__name__
            took = time.monotonic() - t0
            rep = self.report
            rep.sent += 1
            rep.slowest = max(rep.slowest, took)
            rep.slow += took > SLOW
            if ok:
                rep.bodies[key] = rep.bodies.get(key, 0) + 1
            else:
                rep.failed += 1
                rep.errors[key] = rep.errors.get(key, 0) + 1
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> LoadClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def wait_serving(url: str, body: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == 200 and r.text.strip() == body:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {body!r}")


def add_proxy(h: "Harness", workdir: Path, service: str = "web",  # noqa: UP037
              front: str = "haproxy") -> str:
    """Put a proxy (``haproxy`` or ``caddy``; caddy's image must be built already, see
    :func:`build_caddy_image`) in front of ``service`` in the harness's compose project;
    returns the proxy's URL on 127.0.0.1."""
    import rig

    port = rig.free_port()
    if front == "caddy":
        cfg = h.project.root / "Caddyfile"
        cfg.write_text(CADDYFILE.format(service=service))
        yaml = caddy_service_yaml(port, cfg)
    else:
        build_proxy_image(h.client, workdir)
        cfg = h.project.root / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(service=service))
        yaml = proxy_service_yaml(port, cfg)
    compose = h.project.project_dir / "compose.yml"
    text = compose.read_text().replace(
        "volumes:\n  webdata:", yaml + "volumes:\n  webdata:")
    compose.write_text(text)
    return f"http://127.0.0.1:{port}/"


def release_under_load(h: "Harness", url: str, web: str, order: str,  # noqa: UP037
                       rate: float = 50) -> tuple[Any, LoadReport]:
    """Commit ``web`` at the given update order and sync it while a loopback client sends
    ``rate`` requests/s through the proxy; returns the sync result and the load report."""
    import rig

    h.commit(rig.desired_yaml(
        {"web": (h.image("web"), h.images[web]), "api": (h.image("api"), h.images["api-v1"])},
        {"web": {"update": order}}))
    with LoadClient(url, rate=rate) as load:
        time.sleep(0.5)
        result = h.sync()
        time.sleep(2)  # the proxy's view settles; requests keep flowing
    return result, load.report
