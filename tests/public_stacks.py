"""Public compose projects (docker/awesome-compose, tests/data/public-stacks/) deployed from
git with stand-in images: what each project is, the changes a test ships to it, and the
stand-in images every upstream image is replaced by.

The compose files name their images ``127.0.0.1:5000/standin/<upstream name>``; the files
are committed with the session registry's host put in (:func:`repo_files`). Every stand-in
repository holds the same two images: ``good`` (busybox httpd on :8080, healthy) and ``bad``
(never healthy). Both carry shims for the commands the upstream healthchecks run
(``pg_isready``, ``mysqladmin``, ``curl``: they ask the stand-in's own /health), an
/etc/passwd with the users upstream runs as (``user: postgres``) and a world-writable /www.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import docker
import rig
from ruamel.yaml import YAML

DATA = Path(__file__).resolve().parent / "data" / "public-stacks"
PLACEHOLDER = "127.0.0.1:5000/standin/"

SHIM = """#!/bin/sh
# stand-in for the upstream image's own tool: healthy when the stand-in's /health answers
exec wget -q -O /dev/null http://127.0.0.1:8080/health
"""
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "postgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh\n"
          "mysql:x:998:998:mysql:/var/lib/mysql:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\npostgres:x:999:\nmysql:x:998:\nnogroup:x:65534:\n"


@dataclass(frozen=True)
class Change:
    """One edit of a file from git: ``old`` replaced by ``new`` (first occurrence).
    ``readers``: the services that read the file and so must be recreated; ``target``: where
    they see it (a bind mount, a ``secrets``/``configs`` file); ``env_before``/``env_after``:
    environment values the readers run with before and after (an env_file, or ``.env``)."""

    path: str
    old: str
    new: str
    readers: tuple[str, ...]
    target: str | None = None
    env_before: dict[str, str] = field(default_factory=dict)
    env_after: dict[str, str] = field(default_factory=dict)

    def apply(self, text: str) -> str:
        assert self.old in text, f"{self.path}: {self.old!r} not found"
        return text.replace(self.old, self.new, 1)


@dataclass(frozen=True)
class PublicStack:
    name: str                      # the directory under tests/data/public-stacks
    from_repo: tuple[str, ...]     # [compose] from_repo
    proves: str                    # what this project adds to the others
    env: Change                    # step 3: its env_file changes
    config: Change                 # step 2: a bind-mounted / secret / config file changes
    new_service: str               # step 4: a service block added under services:
    rollback: Change               # step 5: shipped with `broken` on the bad image
    broken: str
    bind_sources: tuple[str, ...] = ()   # [compose.allow] bind_sources
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # step 1: as upstream
    env_at_start: dict[str, dict[str, str]] = field(default_factory=dict)  # step 1

    compose_file = "compose.yaml"

    @property
    def dir(self) -> Path:
        return DATA / self.name

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.dir)) for p in self.dir.rglob("*") if p.is_file())


def repo_files(stack: PublicStack, registry: str) -> dict[str, str]:
    """The project's files as committed: the stand-in images on the session's registry."""
    return {rel: (stack.dir / rel).read_text().replace(PLACEHOLDER, f"{registry}/standin/")
            for rel in stack.files()}


def services_of(compose_text: str) -> dict[str, dict]:
    return dict(YAML(typ="safe", pure=True).load(compose_text)["services"])


def image_repo(image: str) -> str:
    """``host:port/a/b:tag`` -> ``host:port/a/b``."""
    last = image.rsplit("/", 1)
    if ":" in last[-1]:
        image = image[: image.rindex(":")]
    return image


def add_service(compose_text: str, block: str) -> str:
    """``block`` (indented two spaces, as the file is) appended to the services mapping,
    before the next top-level key; the rest of the file unchanged."""
    lines = compose_text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip() == "services:")
    end = next((i for i in range(start + 1, len(lines))
                if re.match(r"[A-Za-z]", lines[i])), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    if end and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return "".join(lines[:end]) + block + "".join(lines[end:])


def standin_repos(registry: str) -> list[str]:
    """Every stand-in repository the projects' compose files and new services name."""
    repos = set()
    for s in STACKS:
        texts = [*(t for p, t in repo_files(s, registry).items() if p == s.compose_file),
                 s.new_service.replace(PLACEHOLDER, f"{registry}/standin/")]
        for text in texts:
            repos.update(image_repo(m) for m in re.findall(rf"{re.escape(registry)}/\S+", text))
    return sorted(repos)


def build_standins(client: docker.DockerClient, registry: str, workdir: Path,
                   repos: list[str]) -> dict[str, dict[str, str]]:
    """The good and bad stand-in images, built once (FROM scratch with busybox, the rig's
    image contexts plus the shims), pushed to every repository; per repository the
    digests by variant. The local copies are removed: the agent pulls for real."""
    built: dict[str, str] = {}
    for variant, rig_variant in (("good", "healthy"), ("bad", "unhealthy")):
        ctx = rig.build_context(workdir / f"standin-{variant}", rig_variant,
                                f"stand-in ({variant})")
        (ctx / "shims").mkdir(exist_ok=True)
        for tool in ("pg_isready", "mysqladmin", "curl"):
            (ctx / "shims" / tool).write_text(SHIM)
            (ctx / "shims" / tool).chmod(0o755)
        (ctx / "passwd").write_text(PASSWD)
        (ctx / "group").write_text(GROUP)
        dockerfile = (ctx / "Dockerfile").read_text().replace("EXPOSE 8080", "\n".join([
            "COPY shims/ /usr/bin/",
            "COPY passwd /etc/passwd",
            "COPY group /etc/group",
            'RUN ["/bin/mkdir", "-m", "1777", "/www"]',
            "EXPOSE 8080",
        ]))
        (ctx / "Dockerfile").write_text(dockerfile)
        image, _ = client.images.build(path=str(ctx), tag=f"{registry}/standin/base:{variant}",
                                       rm=True, forcerm=True)
        built[variant] = image.id
    out: dict[str, dict[str, str]] = {}
    refs = []
    for repo in repos:
        for variant, image_id in built.items():
            client.images.get(image_id).tag(repo, tag=variant)
            out.setdefault(repo, {})[variant] = rig.push_image(client, repo, variant)
            refs.append(f"{repo}:{variant}")
    for ref in [*refs, *(f"{registry}/standin/base:{v}" for v in built)]:
        rig.remove_local_image(client, ref)
    return out


R = PLACEHOLDER

STACKS: list[PublicStack] = [
    PublicStack(
        name="prometheus-grafana",
        from_repo=("compose.yaml", "grafana.env", "grafana/", "prometheus/"),
        proves="bind-mounted config directories (prometheus.yml, grafana provisioning), "
               "a named volume, fixed container_name + published ports (stop-first)",
        config=Change("prometheus/prometheus.yml", "  scrape_interval: 15s\n",
                      "  scrape_interval: 5s\n", ("prometheus",),
                      target="/etc/prometheus/prometheus.yml"),
        env=Change("grafana.env", "GF_LOG_LEVEL=info", "GF_LOG_LEVEL=debug", ("grafana",),
                   env_before={"GF_LOG_LEVEL": "info"}, env_after={"GF_LOG_LEVEL": "debug"}),
        new_service=(f"  node-exporter:\n    image: {R}prom/node-exporter\n"
                     "    restart: unless-stopped\n"),
        rollback=Change("grafana/datasource.yml", "isDefault: true", "isDefault: false",
                        ("grafana",),
                        target="/etc/grafana/provisioning/datasources/datasource.yml"),
        broken="grafana",
        env_at_start={"grafana": {"GF_USERS_ALLOW_SIGN_UP": "false",
                                  "GF_SECURITY_ADMIN_USER": "admin"}},
    ),
    PublicStack(
        name="traefik-golang",
        from_repo=("compose.yaml", "backend.env", "traefik/"),
        proves="traefik labels, the Docker socket bind ([compose.allow] bind_sources), "
               "a configs: file: (traefik's file provider), depends_on",
        config=Change("traefik/dynamic.yml", "frameDeny: true", "frameDeny: false",
                      ("frontend",), target="/etc/traefik/dynamic.yml"),
        env=Change("backend.env", "APP_ENV=production", "APP_ENV=staging", ("backend",),
                   env_before={"APP_ENV": "production"}, env_after={"APP_ENV": "staging"}),
        new_service=(f"  whoami:\n    image: {R}traefik/whoami\n    labels:\n"
                     '      - "traefik.enable=true"\n'
                     '      - "traefik.http.routers.whoami.rule=Path(`/whoami`)"\n'),
        rollback=Change("traefik/dynamic.yml", "browserXssFilter: true",
                        "browserXssFilter: false", ("frontend",),
                        target="/etc/traefik/dynamic.yml"),
        broken="frontend",
        bind_sources=("/var/run/docker.sock",),
        labels={"backend": {"traefik.enable": "true",
                            "traefik.http.routers.go.rule": "Path(`/`)",
                            "traefik.http.services.go.loadbalancer.server.port": "80"}},
    ),
    PublicStack(
        name="nginx-golang-postgres",
        from_repo=("compose.yaml", "backend.env", "db/", "proxy/"),
        proves="secrets: file:, a long-syntax read-only bind of nginx.conf, depends_on "
               "condition: service_healthy, a compose healthcheck (pg_isready), user: postgres",
        config=Change("proxy/nginx.conf", "server_name  localhost;",
                      "server_name  example.test;", ("proxy",),
                      target="/etc/nginx/conf.d/default.conf"),
        env=Change("backend.env", "POSTGRES_DB=example", "POSTGRES_DB=example2", ("backend",),
                   env_before={"POSTGRES_DB": "example"}, env_after={"POSTGRES_DB": "example2"}),
        new_service=f"  adminer:\n    image: {R}adminer\n    depends_on:\n      - db\n",
        rollback=Change("db/password.txt", "db-frknz", "db-rotated", ("backend", "db"),
                        target="/run/secrets/db-password"),
        broken="db",
        env_at_start={"db": {"POSTGRES_PASSWORD_FILE": "/run/secrets/db-password"},
                      "backend": {"POSTGRES_HOST": "db"}},
    ),
    PublicStack(
        name="nginx-flask-mysql",
        from_repo=("compose.yaml", "backend.env", "db/"),
        proves="two networks, a secret read by two services, a CMD-SHELL healthcheck with "
               "$$ escaping, depends_on service_healthy, restart: always",
        config=Change("db/password.txt", "db-78n9n", "db-rotated", ("backend", "db"),
                      target="/run/secrets/db-password"),
        env=Change("backend.env", "FLASK_ENV=production", "FLASK_ENV=development",
                   ("backend",), env_before={"FLASK_ENV": "production"},
                   env_after={"FLASK_ENV": "development"}),
        new_service=(f"  adminer:\n    image: {R}adminer\n    networks:\n      - backnet\n"
                     "    depends_on:\n      - db\n"),
        rollback=Change("backend.env", "MYSQL_HOST=db", "MYSQL_HOST=db.internal", ("backend",),
                        env_before={"MYSQL_HOST": "db"}),
        broken="proxy",
    ),
    PublicStack(
        name="react-express-mysql",
        from_repo=("compose.yaml", "frontend.env", "backend/", "db/", "frontend/"),
        proves="directory and single-file binds of source code, an anonymous volume, "
               "two named volumes, public/private networks, a secret",
        config=Change("backend/src/config.js", "port: process.env.PORT || 8080",
                      "port: process.env.PORT || 8081", ("backend",),
                      target="/code/src/config.js"),
        env=Change("frontend.env", "BROWSER=none", "BROWSER=firefox", ("frontend",),
                   env_before={"BROWSER": "none"}, env_after={"BROWSER": "firefox"}),
        new_service=(f"  phpmyadmin:\n    image: {R}phpmyadmin\n    environment:\n"
                     "      - PMA_HOST=db\n    networks:\n      - private\n"
                     "    depends_on:\n      - db\n"),
        rollback=Change("backend/package.json", '"version": "2.0.1"', '"version": "2.0.2"',
                        ("backend",), target="/code/package.json"),
        broken="backend",
        env_at_start={"backend": {"DATABASE_PASSWORD": "/run/secrets/db-password"},
                      "frontend": {"CHOKIDAR_USEPOLLING": "true"}},
    ),
    PublicStack(
        name="postgresql-pgadmin",
        from_repo=(".env", "compose.yaml", "pgadmin.env", "servers.json"),
        proves=".env from git interpolated into the environment, fixed container_name",
        config=Change("servers.json", '"SSLMode": "prefer"', '"SSLMode": "require"',
                      ("pgadmin",), target="/pgadmin4/servers.json"),
        env=Change("pgadmin.env", "PGADMIN_CONFIG_SERVER_MODE=False",
                   "PGADMIN_CONFIG_SERVER_MODE=True", ("pgadmin",),
                   env_before={"PGADMIN_CONFIG_SERVER_MODE": "False"},
                   env_after={"PGADMIN_CONFIG_SERVER_MODE": "True"}),
        new_service=(f"  backup:\n    image: {R}postgres:latest\n    environment:\n"
                     "      - PGHOST=postgres\n      - PGUSER=${POSTGRES_USER}\n"
                     "    depends_on:\n      - postgres\n"),
        rollback=Change(".env", "POSTGRES_DB=postgres", "POSTGRES_DB=app", ("postgres",),
                        env_before={"POSTGRES_DB": "postgres"}),
        broken="postgres",
        env_at_start={"postgres": {"POSTGRES_USER": "yourUser", "POSTGRES_PASSWORD": "changeit"},
                      "pgadmin": {"PGADMIN_DEFAULT_EMAIL": "your@email.com"}},
    ),
    PublicStack(
        name="elasticsearch-logstash-kibana",
        from_repo=("compose.yaml", "kibana.env", "logstash/"),
        proves="single-file binds (a logstash pipeline, a log), three fixed container_names, "
               "a bridge network, a curl healthcheck, environment keys with dots",
        config=Change("logstash/pipeline/logstash-nginx.config", 'index => "nginx"',
                      'index => "nginx-2"', ("logstash",),
                      target="/usr/share/logstash/pipeline/logstash-nginx.config"),
        env=Change("kibana.env", "SERVER_NAME=kibana", "SERVER_NAME=kibana-2", ("kibana",),
                   env_before={"SERVER_NAME": "kibana"}, env_after={"SERVER_NAME": "kibana-2"}),
        new_service=(f"  filebeat:\n    image: {R}beats/filebeat:7.16.1\n"
                     "    depends_on:\n      - elasticsearch\n    networks:\n      - elastic\n"),
        rollback=Change("logstash/nginx.log", '"response": 304', '"response": 200',
                        ("logstash",), target="/home/nginx.log"),
        broken="elasticsearch",
        env_at_start={"elasticsearch": {"discovery.type": "single-node"}},
    ),
    PublicStack(
        name="nginx-wsgi-flask",
        from_repo=("compose.yaml", "flask.env", "nginx/"),
        proves="a bind-mounted nginx template, compose healthchecks on both services, "
               "depends_on, command",
        config=Change("nginx/default.conf", "proxy_cache_valid 200 30s;",
                      "proxy_cache_valid 200 60s;", ("nginx-proxy",), target="/tmp/default.conf"),
        env=Change("flask.env", "FLASK_ENV=production", "FLASK_ENV=development", ("flask-app",),
                   env_before={"FLASK_ENV": "production"},
                   env_after={"FLASK_ENV": "development"}),
        new_service=f"  redis:\n    image: {R}redis:alpine\n    restart: always\n",
        rollback=Change("flask.env", "GUNICORN_CMD_ARGS=--log-level=info",
                        "GUNICORN_CMD_ARGS=--log-level=debug", ("flask-app",),
                        env_before={"GUNICORN_CMD_ARGS": "--log-level=info"}),
        broken="flask-app",
        env_at_start={"nginx-proxy": {"FLASK_SERVER_ADDR": "flask-app:8000"}},
    ),
]
