"""Disk used by the managed images over N releases, with and without image retention.

Each release is a new web image whose own layer is a 2 MiB random payload (an application
layer that changes every release) on the shared busybox base; api stays put. The real agent
(`sync`, in this process) releases them one by one on the real rig (docker-registry on
127.0.0.1, the real engine, compose, git). After each release the engine's own accounting
(`docker system df`: per image Size and SharedSize) gives the disk the web repository's
images take: each image's unique bytes plus the shared base counted once.

"without retention" is `keep_releases = 100` (more than the releases run: nothing is
removed, as before retention existed); "with" is the default `keep_releases = 3`.

    .venv/bin/python bench/retention.py [--releases 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log, write_results  # noqa: I001

import rig

from agent.cli import main as cli_main
from agent.edges.compose import find_compose_command

PAYLOAD = 2 * 1024 * 1024


def build_release(client: Any, host: str, repo: str, i: int, work: Path) -> str:
    ctx = rig.build_context(work / f"ctx-{i}", "healthy", f"web r{i}")
    (ctx / "payload").write_bytes(os.urandom(PAYLOAD))
    dockerfile = ctx / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "COPY payload /payload\n")
    ref = f"{host}/{repo}"
    client.images.build(path=str(ctx), tag=f"{ref}:r{i}", rm=True, forcerm=True)
    digest = rig.push_image(client, ref, f"r{i}")
    rig.remove_local_image(client, f"{ref}:r{i}")  # the agent pulls it, as on a server
    return digest


def repo_disk(client: Any, repo: str) -> tuple[int, int]:
    """(images the repository references, bytes they take: unique + shared base once)."""
    df = client.df()
    mine = [img for img in df["Images"]
            if any(r.startswith(repo + "@") or r.startswith(repo + ":")
                   for r in (img.get("RepoDigests") or []) + (img.get("RepoTags") or []))]
    unique = sum(max(0, img["Size"] - max(0, img.get("SharedSize", 0))) for img in mine)
    shared = max((img.get("SharedSize", 0) for img in mine), default=0)
    return len(mine), unique + max(0, shared)


def run(keep: int, digests: list[str], host: str, api: str, side: str, client: Any,
        root: Path, compose_cmd: list[str]) -> list[dict[str, Any]]:
    name = f"ret{uuid.uuid4().hex[:6]}"
    repo = rig.GitRepo(root / name / "git").init()
    project = rig.Project(name=name, root=root / name, registry=host, repo=repo,
                          extra_config=f"keep_releases = {keep}\n")
    project.write(side_ref=f"{host}/bench/side@{side}")
    # the compose file names e2e/* repositories: point web and api at this benchmark's
    compose = project.project_dir / "compose.yml"
    compose.write_text(compose.read_text().replace("/e2e/", "/bench/"))
    rows = []
    try:
        for i, d in enumerate(digests, 1):
            repo.commit_file("desired-state.yml", rig.desired_yaml({
                "web": (f"{host}/bench/web", d), "api": (f"{host}/bench/api", api)}),
                f"release {i}")
            code = cli_main(["--config", str(project.config_path), "--log-level", "error",
                             "sync"], configure_logging=True)
            if code != 0:
                raise RuntimeError(f"release {i} exited {code}")
            n, size = repo_disk(client, f"{host}/bench/web")
            rows.append({"release": i, "images": n, "bytes": size})
            log(f"keep_releases={keep}: release {i}: {n} web images, {size / 1e6:.1f} MB")
    finally:
        project.down(compose_cmd)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--releases", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    client = rig.docker_client()
    compose_cmd = find_compose_command()
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        root = Path(tmp)
        reg = rig.Registry(port=rig.free_port(), workdir=root / "registry").start()
        try:
            host = reg.host
            log(f"building {args.releases} web releases of {PAYLOAD >> 20} MiB each")
            digests = [build_release(client, host, "bench/web", i, root)
                       for i in range(1, args.releases + 1)]
            api = rig.build_and_push(client, host, "bench/api", "v1", "nohealth", "api",
                                     root / "ctx")
            side = rig.build_and_push(client, host, "bench/side", "v1", "nohealth", "side",
                                      root / "ctx")
            results = {}
            for label, keep in (("without retention (keep_releases = 100)", 100),
                                ("with retention (keep_releases = 3)", 3)):
                results[label] = run(keep, digests, host, api, side, client, root,
                                     compose_cmd)
            print(f"{'release':>7}  " + "  ".join(f"{k:>42}" for k in results))
            for i in range(args.releases):
                cells = [f"{r[i]['images']:>3} images {r[i]['bytes'] / 1e6:>7.1f} MB"
                         for r in results.values()]
                print(f"{i + 1:>7}  " + "  ".join(f"{c:>42}" for c in cells))
            write_results("retention", results, args.json)
        finally:
            with contextlib.suppress(Exception):
                for img in client.images.list():
                    refs = (img.attrs.get("RepoDigests") or []) + (img.attrs.get("RepoTags")
                                                                   or [])
                    if any(r.startswith(f"{reg.host}/") for r in refs):
                        for r in refs:
                            if r.startswith(f"{reg.host}/"):
                                rig.remove_local_image(client, r)
            reg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
