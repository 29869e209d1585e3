"""compose.from_repo — idle pass cost when the compose project itself comes from git.

The same measurement as ``bench/idle_poll.py`` (a real `gitops-agent run` daemon, passes
driven back to back with SIGHUP; the source behind `git daemon` on 127.0.0.1, the registry's
access log, a counting Docker socket proxy), on a stack whose ``compose.yml`` and ``conf/``
are written from the repository (``from_repo = ["compose.yml", "conf/"]``). Counted besides:
files written — every file under project_dir and state_dir/stack, compared by (inode, size,
mtime_ns) before and after the idle passes.

    .venv/bin/python bench/stack_idle.py [--quick] [--passes N]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Bench, GitDaemon, base_args, log, write_results
from idle_poll import measure


def snapshot(*roots: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__ or "")
    ap.add_argument("--passes", type=int, default=None)
    args = ap.parse_args(argv)
    passes = args.passes or (30 if args.quick else 300)

    with Bench("stackidle") as b:
        log("building images")
        web = b.image("bench/web", "v1", "healthy")
        api = b.image("bench/api", "v1", "nohealth")
        st = b.stack("benchstack", {"web": "bench/web", "api": "bench/api"}, settle=1.0)
        git = GitDaemon(st.repo.root, b.root / "git-daemon.log").start()
        b.cleanups.append(git.stop)
        compose = (st.project_dir / "compose.yml").read_text()
        st.repo.commit_file("compose.yml", compose, "compose from git")
        st.repo.commit_file("conf/app.conf", "level=info\n", "conf")
        (st.project_dir / "compose.yml").unlink()
        st.commit({"web": web, "api": api})
        st.source_url = git.url(st.repo.origin)
        st.write_config()
        line = f'project_name = "{st.name}"'
        st.config_path.write_text(st.config_path.read_text().replace(
            line, f'{line}\nfrom_repo = ["compose.yml", "conf/"]', 1))
        st.sync()  # deployed from git; every pass from here on is a no-op
        assert (st.project_dir / "compose.yml").read_text() == compose
        before = snapshot(st.project_dir, st.state_dir / "stack")
        log(f"git daemon source, from_repo: {passes} passes")
        run = measure(b, st, passes, "git://127.0.0.1 (git daemon), from_repo", git)
        after = snapshot(st.project_dir, st.state_dir / "stack")
        changed = sorted(p for p in {*before, *after} if before.get(p) != after.get(p))

    res: dict[str, Any] = {
        "run": run,
        "files_watched": len(before),
        "files_written": changed,
        "met": {
            "one_source_request": run["git_requests_per_pass"] == 1.0,
            "zero_registry_requests": run["registry_requests_per_pass"] == 0,
            "no_file_writes": not changed,
            "no_mutating_docker_calls": run["docker_mutating_calls"] == 0,
        },
    }
    print("\n== idle pass with compose.from_repo: nothing to change ==")
    print(f"-- {run['passes']} passes, outcomes {run['outcomes']}")
    print(f"   wall per pass: median {run['wall_median_s'] * 1000:.0f} ms")
    print(f"   CPU per pass: agent process {run['cpu_self_ms_per_pass']:.1f} ms + children "
          f"(git, compose) {run['cpu_children_ms_per_pass']:.1f} ms = "
          f"{run['cpu_total_ms_per_pass']:.1f} ms")
    print(f"   git requests per pass: {run['git_requests_per_pass']}   registry requests "
          f"per pass: {run['registry_requests_per_pass']}")
    print(f"   Docker API calls per pass: {run['docker_calls_per_pass']:.2f} "
          f"(mutating in total: {run['docker_mutating_calls']})")
    print(f"   files under project_dir and state_dir/stack: {len(before)}; "
          f"written during the idle passes: {len(changed)} {changed}")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}"
                                  for k, v in res["met"].items()))
    write_results("stack_idle", res, args.json)
    return res


if __name__ == "__main__":
    main()
