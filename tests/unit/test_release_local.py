"""scripts/release-local: the release workflow rehearsed against a local registry.

The pure helpers and the argument checks, without an engine; the end to end rehearsals
(real images pushed to a real registry) are tests/e2e/test_release_local_e2e.py."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from release_rehearsal import SCRIPT, config_repo, release


def _load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("release_local", str(SCRIPT))
    spec = importlib.util.spec_from_loader("release_local", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["release_local"] = mod  # dataclasses look their module up there
    loader.exec_module(mod)
    return mod


rl = _load_script()


# --------------------------------------------------------------------------- pure helpers
def test_script_is_executable_with_a_python3_shebang() -> None:
    assert SCRIPT.stat().st_mode & 0o111
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")


def test_script_never_runs_a_shell() -> None:
    text = SCRIPT.read_text()
    assert "shell=True" not in text and "os.system" not in text and "os.popen" not in text


def test_push_digest_is_read_from_the_line_for_the_pushed_tag() -> None:
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    out = (
        "The push refers to repository [127.0.0.1:5001/gitops-demo/web]\n"
        "5f70bf18a086: Pushed\n"
        f"other: digest: {d1} size: 527\n"
        f"v1: digest: {d2} size: 739\n"
    )
    assert rl.parse_push_digest(out, "v1") == d2
    assert rl.parse_push_digest(out, "v2") is None


def test_repo_digests_pick_the_pushed_repository() -> None:
    d = "sha256:" + "3" * 64
    refs = [f"elsewhere/web@{'sha256:' + '4' * 64}", f"127.0.0.1:5001/gitops-demo/web@{d}"]
    assert rl.digest_from_repo_digests(refs, "127.0.0.1:5001/gitops-demo/web") == d
    assert rl.digest_from_repo_digests(refs, "127.0.0.1:5001/gitops-demo/api") is None


@pytest.mark.parametrize("bad", ["web", "=ctx", "web=", "Web=ctx", "-x=ctx"])
def test_service_argument_must_be_name_equals_context(bad: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        rl.parse_service(bad)


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--registry", "127.0.0.1:1", "--repo-dir", str(tmp_path),
         "--service", "a=x", "--service", "a=y"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert "more than once" in done.stderr


def test_missing_dockerfile_fails_before_building(tmp_path: Path) -> None:
    repo = config_repo(tmp_path, "127.0.0.1:1/gitops-demo")
    done = release(repo, "127.0.0.1:1", [("web", tmp_path / "nothing")], "--tag", "v1")
    assert done.returncode == 1
    assert "no Dockerfile" in done.stderr
