"""End-to-end, against the real engine and registry: a digest built for another platform,
a manifest list without the engine's platform, and a Docker socket the agent's user may not
use are each classified by cause."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
import requests
import rig

REPO_ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put_blob(base: str, repo: str, data: bytes) -> str:
    digest = _sha(data)
    r = requests.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=10)
    r.raise_for_status()
    loc = r.headers["Location"]
    loc = base + loc if loc.startswith("/") else loc
    r = requests.put(loc, params={"digest": digest}, data=data, timeout=10,
                     headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()
    return digest


def push_foreign_image(registry: str, repo: str, arch: str = "arm64",
                       os_name: str = "linux") -> tuple[str, str]:
    """Push, with plain registry API requests, an image whose config says ``os_name/arch``
    (one static file, FROM scratch) and a manifest list holding only that image. Returns
    (manifest digest, manifest list digest)."""
    base = f"http://{registry}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        content = f"built for {os_name}/{arch}\n".encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mode = len(content), 0o644
        t.addfile(info, io.BytesIO(content))
    layer_tar = buf.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    config = json.dumps({
        "architecture": arch, "os": os_name, "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [_sha(layer_tar)]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": len(config), "digest": _put_blob(base, repo, config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer), "digest": _put_blob(base, repo, layer)}],
    }).encode()
    r = requests.put(f"{base}/v2/{repo}/manifests/{arch}", data=manifest, timeout=10,
                     headers={"Content-Type": MANIFEST})
    r.raise_for_status()
    single = r.headers["Docker-Content-Digest"]
    assert single == _sha(manifest)
    index = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_LIST,
        "manifests": [{"mediaType": MANIFEST, "size": len(manifest), "digest": single,
                       "platform": {"architecture": arch, "os": os_name}}],
    }).encode()
    r = requests.put(f"{base}/v2/{repo}/manifests/{arch}-only-list", data=index, timeout=10,
                     headers={"Content-Type": MANIFEST_LIST})
    r.raise_for_status()
    return single, r.headers["Docker-Content-Digest"]


@pytest.fixture
def foreign(registry, docker_client):  # type: ignore[no-untyped-def]
    repo = "e2e/armweb"
    single, index = push_foreign_image(registry.host, repo)
    yield f"{registry.host}/{repo}", single, index
    for d in (single, index):
        rig.remove_local_image(docker_client, f"{registry.host}/{repo}@{d}")


def _engine_platform(docker_client) -> str:  # type: ignore[no-untyped-def]
    v = docker_client.version()
    return f"{v['Os']}/{v['Arch']}"


@pytest.mark.parametrize("kind", ["single-manifest", "manifest-list"])
def test_digest_for_another_platform_fails_naming_both_platforms_and_touches_nothing(
        harness, foreign, docker_client, kind):
    image, single, index = foreign
    here = _engine_platform(docker_client)
    assert here != "linux/arm64", "the rig must run on another platform than the test image"
    harness.release(web="web-v1", api="api-v1")
    assert harness.sync().code == 0
    before = harness.container_ids()
    rev = harness.commit(rig.desired_yaml({
        "web": (image, single if kind == "single-manifest" else index),
        "api": (harness.image("api"), harness.images["api-v2"]),
    }), "release for the wrong platform")
    r = harness.sync()
    summary = r.summary()
    assert r.code == 1, summary
    assert summary["outcome"] == "failed"
    reason = summary["reason"]
    assert here in reason and "linux/arm64" in reason, reason
    assert "unavailable" not in reason and "docker login" not in reason
    assert r.find("agent.pull.retry_scheduled") == []  # permanent: not retried like a 5xx
    assert harness.container_ids() == before  # nothing touched: api-v2 not applied either
    assert harness.running_digest("web") == harness.images["web-v1"]
    assert harness.serve("web") == "web v1"
    # permanent for that digest: the revision is failed, not pulled again every pass
    assert rev in harness.state()["failed_revisions"]
    again = harness.sync()
    assert again.summary()["outcome"] == "skipped"
    assert again.find("agent.pull.started") == []


def _world_readable(path: Path) -> None:
    """``path`` and every directory above it traversable and readable by anyone (pytest's
    basetemp is 0700)."""
    for p in (path, *path.parents):
        mode = p.stat().st_mode
        if mode & 0o005 != 0o005:
            p.chmod(stat.S_IMODE(mode) | 0o755)


# a probe run as nobody imports these: the agent's package and what it imports from the venv
_PROBE_IMPORTS = "agent.edges.docker, agent.outcomes"
_LISTER = f"""
import json, sys, sysconfig
import {_PROBE_IMPORTS}
roots = [sys.argv[1], sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
tops = set()
for name, mod in list(sys.modules.items()):
    f = getattr(mod, "__file__", None) or ""
    for root in roots:
        if f.startswith(root.rstrip("/") + "/"):
            rel = f[len(root.rstrip("/")) + 1:]
            tops.add((root, rel.split("/", 1)[0]))
print(json.dumps(sorted(tops)))
"""


def _copy_for_nobody(tmp_path: Path) -> tuple[str, Path]:
    """What a probe run as nobody needs, copied where nobody can read it: the checkout (and
    its venv) may be private (a 0700 clone). Returns an interpreter nobody can run (the
    same Python minor version, outside any private directory) and the PYTHONPATH to use."""
    lib = tmp_path / "nobody-lib"
    lib.mkdir()
    tops = json.loads(subprocess.run(
        [sys.executable, "-c", _LISTER, str(REPO_ROOT)], capture_output=True, text=True,
        check=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    ).stdout)
    for root, top in tops:
        src = Path(root) / top
        if src.is_dir():
            shutil.copytree(src, lib / top, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, lib / top)
    for info in Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info"):
        shutil.copytree(info, lib / info.name, dirs_exist_ok=True)  # importlib.metadata
    _world_readable(lib)
    for d in lib.rglob("*"):
        d.chmod(0o755 if d.is_dir() else 0o644)
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable),
                  getattr(sys, "_base_executable", ""),
                  shutil.which(f"python{want}", path="/usr/local/bin:/usr/bin:/bin") or ""]
    for exe in filter(None, candidates):
        p = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", exe,
             "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
        if p.returncode == 0 and p.stdout.strip() == want:
            return exe, lib
    raise AssertionError(f"no python{want} that uid {NOBODY} can run: tried {candidates}")


def test_docker_socket_permission_denied_is_an_environment_error_not_docker_login(
        registry, images, tmp_path):
    """The real engine's socket (root:docker 0660), used by a user outside its group."""
    probe = (
        "import sys\n"
        "from agent.edges.docker import DockerEngine\n"
        "from agent.outcomes import exit_code\n"
        "for call in ('has_image', 'pull'):\n"
        "    try:\n"
        f"        getattr(DockerEngine(), call)({registry.host + '/e2e/web'!r}, "
        f"{images['web-v1']!r})\n"
        "        print(call, 'no error')\n"
        "    except Exception as e:\n"
        "        print(call, type(e).__name__, exit_code('error', e), e)\n"
    )
    # nobody cannot read a private checkout: the probe runs from a world-readable copy
    python, lib = _copy_for_nobody(tmp_path)
    p = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         python, "-c", probe],
        capture_output=True, text=True, timeout=60, cwd=lib,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": str(lib),
             "PYTHONNOUSERSITE": "1"},
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2, p.stdout
    for call, line in zip(("has_image", "pull"), lines, strict=True):
        assert line.startswith(f"{call} LocalPermissionDenied 4 permission denied on the "
                               "Docker socket"), line
        assert "docker login" not in line and "not reachable" not in line
