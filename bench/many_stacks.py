"""Issue 24 — ten stacks in one agent: what an idle round costs, against one stack.

A real `gitops-agent run` daemon with ``[[stack]]`` tables: N stacks (default 10) in one
monorepo served by `git daemon` on 127.0.0.1, each stack its own folder (``dir``) with
compose.yml from git, one service each. Rounds are driven back to back with SIGHUP
(interval 1 h). Counted per round: git fetches (upload-pack requests in git daemon's log;
goal 1 for all stacks), CPU of the daemon and its children (/proc), and the daemon's RSS
(VmRSS) after the last round. The same measurement on a config of ONE stack (the same
[[stack]] form), and on the classic config without [[stack]] tables, gives the baseline:
goal RSS(N stacks) <= RSS(1 stack) + 5 MB.

    .venv/bin/python bench/many_stacks.py [--quick] [--stacks N] [--rounds N]
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PY,
    Bench,
    Daemon,
    GitDaemon,
    base_args,
    log,
    median,
    proc_cpu,
    proc_rss_mb,
    rig,  # tests/rig.py, put on sys.path by common
    run_timed,
    write_results,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


class MultiConfig:
    """What common.Daemon needs of a 'stack': the agent command on this config."""

    def __init__(self, bench: Bench, config: Path) -> None:
        self.bench = bench
        self.config_path = config

    def agent_cmd(self, *args: str) -> list[str]:
        return [PY, "-m", "agent", "--config", str(self.config_path), "--log-format", "json",
                "--log-level", "debug", *args]


def write_stacks(b: Bench, name: str, n: int, api: str, git: GitDaemon,
                 repo: rig.GitRepo) -> MultiConfig:
    root = b.root / name
    image = f"{b.reg}/bench/api"
    toml = [textwrap.dedent(f"""\
        [agent]
        interval_seconds = 3600
        jitter_seconds = 0
        settle_seconds = 0.5
        health_timeout_seconds = 60
        state_dir = "{root / 'state'}"
        stack_concurrency = 2

        [[repo]]
        name = "mono"
        repo = "{git.url(repo.origin)}"
        branch = "main"
        """)]
    for i in range(n):
        st = f"{name}-s{i}"
        repo.commit_file(f"{st}/compose.yml", textwrap.dedent(f"""\
            services:
              api:
                image: {image}:unpinned
                restart: unless-stopped
                stop_grace_period: 1s
            """), f"{st} compose")
        repo.commit_file(f"{st}/desired-state.yml",
                         rig.desired_yaml({"api": (image, api)}), f"{st} release")
        (root / "srv" / st).mkdir(parents=True)
        b.cleanups.append(lambda st=st: run_timed(
            [*b.compose_cmd, "--project-name", st, "down", "--timeout", "1"], check=False))
        toml.append(textwrap.dedent(f"""\
            [[stack]]
            name = "s{i}"
            repo = "mono"
            dir = "{st}"
            [stack.compose]
            project_dir = "{root / 'srv' / st}"
            project_name = "{st}"
            from_repo = ["compose.yml"]
            """))
    cfg = root / "agent.toml"
    cfg.write_text("\n".join(toml))
    return MultiConfig(b, cfg)


def idle_rounds(b: Bench, target: Any, stacks: int, rounds: int, git: GitDaemon,
                label: str) -> dict[str, Any]:
    sync = run_timed(target.agent_cmd("sync"), cwd=REPO_ROOT, check=False)
    if sync.code != 0:
        raise RuntimeError(f"{label}: first sync exited {sync.code}:\n{sync.stderr[-3000:]}")
    d = Daemon(target).start()  # type: ignore[arg-type]
    d.wait_for("agent.pass.completed", count=stacks, timeout=300)  # the round at start
    cpu0, git0 = proc_cpu(d.pid), git.requests()
    for i in range(2, rounds + 2):
        d.hup()
        d.wait_for("agent.pass.completed", count=stacks * i, timeout=300)
    cpu1, git1 = proc_cpu(d.pid), git.requests()
    rss = proc_rss_mb(d.pid)
    done = [e for _, e in d.lines if e.get("event") == "agent.pass.completed"][stacks:]
    outcomes = sorted({e["outcome"] for e in done})
    d.stop()
    res = {
        "config": label, "stacks": stacks, "rounds": rounds, "outcomes": outcomes,
        "git_requests_per_round": (git1 - git0) / rounds,
        "cpu_ms_per_round": (cpu1["total"] - cpu0["total"]) * 1000 / rounds,
        "cpu_self_ms_per_round": (cpu1["self"] - cpu0["self"]) * 1000 / rounds,
        "cpu_ms_per_stack_pass": (cpu1["total"] - cpu0["total"]) * 1000 / rounds / stacks,
        "pass_wall_median_s": median(e["duration_seconds"] for e in done),
        "rss_mb": rss,
    }
    log(f"{label}: {res['git_requests_per_round']:.2f} fetches/round, "
        f"cpu {res['cpu_ms_per_round']:.0f} ms/round, rss {rss:.1f} MB, outcomes {outcomes}")
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = base_args(__doc__ or "")
    ap.add_argument("--stacks", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 30)

    with Bench("manystacks") as b:
        log("building images")
        api = b.image("bench/api", "v1", "nohealth")
        repo = rig.GitRepo(b.root / "git").init()
        git = GitDaemon(repo.root, b.root / "git-daemon.log").start()
        b.cleanups.append(git.stop)
        many = write_stacks(b, "many", args.stacks, api, git, repo)
        one = write_stacks(b, "one", 1, api, git, repo)
        results = [idle_rounds(b, one, 1, rounds, git, "1 stack ([[stack]])"),
                   idle_rounds(b, many, args.stacks, rounds, git,
                               f"{args.stacks} stacks ([[stack]])")]
        base, big = results
        summary = {
            "rss_delta_mb": big["rss_mb"] - base["rss_mb"],
            "rss_goal_met": big["rss_mb"] <= base["rss_mb"] + 5,
            "git_requests_per_round": big["git_requests_per_round"],
            "cpu_ms_per_idle_stack_pass": big["cpu_ms_per_stack_pass"],
        }
        log(f"RSS {args.stacks} stacks - 1 stack = {summary['rss_delta_mb']:+.1f} MB "
            f"(goal <= +5 MB: {'met' if summary['rss_goal_met'] else 'NOT met'}); "
            f"{summary['git_requests_per_round']:.2f} git fetches per round for all stacks")
        out = {"results": results, "summary": summary}
        write_results("many_stacks", out, args.json)
        return out


if __name__ == "__main__":
    main()
