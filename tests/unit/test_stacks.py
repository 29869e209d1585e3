"""Many stacks in one agent (agent/stacks.py) on honest fakes: the [[stack]] config, one
fetch per repo and round, untouched stacks handed the revision they have, dependencies,
isolation and the concurrency limit, per-stack reporting."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from agent.errors import ConfigError, SourceUnavailable
from agent.outcomes import PassResult
from agent.ports import Fetched, GateQuestion
from agent.report.github_status import GitHubStatusReporter
from agent.report.metrics import StackMetrics
from agent.stacks import (
    DependencyGate,
    SharedRepo,
    StackRun,
    StackSet,
    StackSource,
)
from agent.stacks_config import parse_agent_file


def stacks_config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "agent": {"state_dir": str(tmp_path / "state"), "stack_concurrency": 2},
        "repo": [{"name": "mono", "repo": "https://git.example.test/ops.git"}],
        "stack": [
            {"name": "infra", "repo": "mono", "dir": "infra",
             "compose": {"project_dir": str(tmp_path / "infra"), "from_repo": ["compose.yml"]}},
            {"name": "app", "repo": "mono", "dir": "app", "depends_on": ["infra"],
             "health_timeout_seconds": 30,
             "compose": {"project_dir": str(tmp_path / "app")}},
        ],
    }
    doc.update(extra)
    return doc


# ------------------------------------------------------------------ config
def test_a_config_without_stack_tables_is_one_implicit_stack_in_state_dir_itself(
        tmp_path: Path) -> None:
    f = parse_agent_file({"source": {"repo": "https://git.example.test/x.git"},
                          "compose": {"project_dir": str(tmp_path / "shop")},
                          "agent": {"state_dir": str(tmp_path / "state")}})
    assert not f.multi and f.names() == ["shop"]
    assert f.specs[0].cfg.agent.state_dir == tmp_path / "state"
    assert f.specs[0].cfg.stack_name is None


def test_each_stack_gets_its_own_state_dir_source_path_settings_and_status_context(
        tmp_path: Path) -> None:
    doc = stacks_config(tmp_path, report={"github": {
        "repo": "acme/ops", "token_file": str(tmp_path / "token")}})
    f = parse_agent_file(doc)
    infra, app = f.specs
    assert f.multi and f.state_dir == tmp_path / "state"
    assert app.cfg.agent.state_dir == tmp_path / "state" / "stacks" / "app"
    assert (infra.cfg.source.path, app.cfg.source.path) == (
        "infra/desired-state.yml", "app/desired-state.yml")
    assert infra.repo_key == app.repo_key == "repo:mono"
    assert app.depends_on == ("infra",) and infra.repo_dir == "infra"
    assert app.cfg.agent.health_timeout_seconds == 30
    assert infra.cfg.agent.health_timeout_seconds == 120  # the agent's default
    assert app.cfg.stack_name == "app"
    gh = app.cfg.report.github
    assert gh is not None and gh.context == "deploy/{host}/{stack}"
    rep = GitHubStatusReporter(repo="acme/ops", api_url="https://api.github.com", token="t",
                               context=gh.context, host="web1", state_dir=tmp_path,
                               stack=app.cfg.stack_name)
    assert rep.context == "deploy/web1/app"


def test_every_stack_problem_is_reported_at_once_at_its_path(tmp_path: Path) -> None:
    doc = stacks_config(tmp_path)
    doc["source"] = {"repo": "https://git.example.test/x.git"}
    doc["stack"] += [
        {"name": "app", "repo": "mono", "compose": {"project_dir": str(tmp_path / "x")}},
        {"name": "db", "repo": "nope", "compose": {"project_dir": str(tmp_path / "db")}},
        {"name": "web", "repo": "mono", "health_timeout_seconds": -1, "depends_on": ["ghost"],
         "compose": {"project_dir": str(tmp_path / "web")}},
        {"name": "Bad Name", "repo": "mono", "compose": {}},
        {"name": "q", "repo": "mono", "colour": "red", "compose": {"project_dir": "/q"}},
    ]
    with pytest.raises(ConfigError) as e:
        parse_agent_file(doc)
    problems = "\n".join(e.value.problems)
    for want in ("source: with [[stack]] tables",
                 "stack.app: a second [[stack]] named 'app'",
                 "stack.db.repo: no [[repo]] named 'nope' (repos: mono)",
                 "At 'stack.web.health_timeout_seconds': Input should be greater than 0",
                 "stack.web.depends_on: no stack named 'ghost'",
                 "stack.Bad Name.name: required",
                 "stack.q.colour: unknown key"):
        assert want in problems, problems
    assert all(line.count("\n") == 0 for line in e.value.problems)


def test_a_dependency_cycle_and_a_shared_project_dir_are_refused(tmp_path: Path) -> None:
    doc = stacks_config(tmp_path)
    doc["stack"][0]["depends_on"] = ["app"]
    doc["stack"][1]["compose"] = {"project_dir": str(tmp_path / "infra")}
    with pytest.raises(ConfigError) as e:
        parse_agent_file(doc)
    problems = "\n".join(e.value.problems)
    assert "stack.depends_on: a cycle: infra -> app -> infra" in problems
    assert "stack.app.compose.project_dir:" in problems


def test_stacks_of_one_repo_must_agree_on_signed_commits(tmp_path: Path) -> None:
    doc = stacks_config(tmp_path)
    signers = tmp_path / "signers"
    doc["stack"][1]["trust"] = {"require_signed_commits": True,
                                "allowed_signers_file": str(signers)}
    with pytest.raises(ConfigError) as e:
        parse_agent_file(doc)
    assert any(p.startswith("stack.app.trust: the stacks of one repo read one fetch")
               for p in e.value.problems)


# ------------------------------------------------------------------ one fetch per repo
class FakeRepo:
    """A repository's history (revision -> files) and the head; counts fetches, logs file
    reads; can be down."""

    def __init__(self, path: str = "infra/desired-state.yml") -> None:
        self.path = path
        self.commits: dict[str, dict[str, bytes]] = {}
        self.head = ""
        self.fetches = 0
        self.reads: list[tuple[str, list[str]]] = []  # (revision, paths) per read_files
        self.down = False

    def commit(self) -> str:
        """A new head with the files of the last; tests then set its files."""
        rev = f"{len(self.commits) + 1:040x}"
        self.commits[rev] = dict(self.commits.get(self.head, {}))
        self.head = rev
        return rev

    def fetch(self) -> Fetched:
        self.fetches += 1
        if self.down:
            raise SourceUnavailable("git fetch failed: connection refused")
        return Fetched(self.head, self.commits[self.head].get(self.path, b""), self.path)

    def read_files(self, revision: str, paths: list[str]) -> dict[str, bytes]:
        self.reads.append((revision, list(paths)))
        return {k: v for k, v in self.commits[revision].items()
                if any(k == p or k.startswith(p.rstrip("/") + "/") for p in paths)}

    def describe(self) -> str:
        return f"fake:{self.path}"

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return ancestor <= descendant


def views(tmp_path: Path, repo: FakeRepo,
          last: dict[str, str | None] | None = None) -> tuple[SharedRepo, StackSource,
                                                               StackSource]:
    f = parse_agent_file(stacks_config(tmp_path))
    shared = SharedRepo(repo, "repo:mono")
    last = last or {}
    infra, app = (StackSource(shared, s.cfg, lambda n=s.name: last.get(n), s.repo_dir)
                  for s in f.specs)
    return shared, infra, app


def test_stacks_sharing_a_repo_cost_one_fetch_per_round(tmp_path: Path) -> None:
    repo = FakeRepo()
    rev = repo.commit()
    repo.commits[rev] = files(infra__desired_state_yml=b"i1", app__desired_state_yml=b"a1",
                              infra__compose_yml=b"c1")
    shared, infra, app = views(tmp_path, repo)
    for _ in range(3):
        shared.new_round()
        assert infra.fetch().content == b"i1"
        assert app.fetch().content == b"a1"
    assert repo.fetches == 3
    assert infra.read_files(repo.head, ["compose.yml"]) == {"compose.yml": b"c1"}


def files(**kw: bytes) -> dict[str, bytes]:
    return {k.replace("__", "/").replace("_", "-").replace("-yml", ".yml"): v
            for k, v in kw.items()}


def test_a_commit_that_changes_none_of_a_stacks_files_hands_it_the_revision_it_has(
        tmp_path: Path) -> None:
    repo = FakeRepo()
    first = repo.commit()
    repo.commits[first] = files(infra__desired_state_yml=b"i1", infra__compose_yml=b"c1",
                                app__desired_state_yml=b"a1")
    shared, infra, app = views(tmp_path, repo)
    shared.new_round()
    assert (infra.fetch().revision, app.fetch().revision) == (first, first)
    second = repo.commit()
    repo.commits[second] = {**repo.commits[first], "app/desired-state.yml": b"a2"}
    shared.new_round()
    got_infra, got_app = infra.fetch(), app.fetch()
    assert (got_infra.revision, got_infra.content) == (first, b"i1")  # untouched: as it was
    assert (got_app.revision, got_app.content) == (second, b"a2")
    third = repo.commit()  # infra's compose file (a from_repo path) changes
    repo.commits[third] = {**repo.commits[second], "infra/compose.yml": b"c2"}
    shared.new_round()
    assert infra.fetch().revision == third
    assert app.fetch().revision == second


def test_after_a_restart_the_kept_revision_is_the_recorded_one_when_the_files_are_same(
        tmp_path: Path) -> None:
    repo = FakeRepo()
    first = repo.commit()
    repo.commits[first] = files(infra__desired_state_yml=b"i1", app__desired_state_yml=b"a1")
    second = repo.commit()
    repo.commits[second] = {**repo.commits[first], "app/desired-state.yml": b"a2"}
    shared, infra, app = views(tmp_path, repo, last={"infra": first, "app": first})
    shared.new_round()
    assert infra.fetch().revision == first
    assert app.fetch().revision == second


def test_a_retry_within_a_round_fetches_again_and_a_failure_is_each_stacks(
        tmp_path: Path) -> None:
    repo = FakeRepo()
    first = repo.commit()
    repo.commits[first] = files(infra__desired_state_yml=b"i1", app__desired_state_yml=b"a1")
    shared, infra, app = views(tmp_path, repo)
    repo.down = True
    shared.new_round()
    with pytest.raises(SourceUnavailable):
        infra.fetch()
    with pytest.raises(SourceUnavailable):
        app.fetch()  # the round's failure: no second request
    assert repo.fetches == 1
    repo.down = False
    assert infra.fetch().revision == first  # infra's retry: a real fetch
    assert repo.fetches == 2


def test_a_missing_desired_state_file_in_the_stack_folder_is_invalid_naming_it(
        tmp_path: Path) -> None:
    from agent.errors import DesiredStateError

    repo = FakeRepo()
    rev = repo.commit()
    repo.commits[rev] = files(infra__desired_state_yml=b"i1")
    shared, _infra, app = views(tmp_path, repo)
    shared.new_round()
    with pytest.raises(DesiredStateError) as e:
        app.fetch()
    assert str(e.value) == (f"app/desired-state.yml@{rev[:12]}: no file "
                            f"'app/desired-state.yml' at revision {rev[:12]}")


# ------------------------------------------------------------------ dependencies, rounds
def result(outcome: str, revision: str = "a" * 40, reason: str | None = None) -> PassResult:
    return PassResult(outcome, revision, reason=reason)  # type: ignore[arg-type]


def question(services: tuple[str, ...] = ("api",), converging: bool = False) -> GateQuestion:
    return GateQuestion("b" * 40, services, converging=converging, force=False)


def test_a_dependent_waits_while_its_dependency_is_not_healthy_and_says_why() -> None:
    results: dict[str, PassResult | None] = {"infra": result("rolled-back",
                                                             reason="web: unhealthy\nmore")}

    def blocked(dep: str) -> str | None:
        r = results[dep]
        return None if r is not None and r.ok else f"{r.outcome if r else 'crashed'}"

    gate = DependencyGate("app", ["infra"], blocked)
    answer = gate.check(question())
    assert answer is not None and answer.outcome == "waiting"
    assert answer.reason == "waiting for stack infra: rolled-back"
    assert gate.check(question(services=())) is None  # nothing to change: never held
    assert gate.check(question(converging=True)) is None  # back to known-good: never held
    results["infra"] = result("no-op")
    assert gate.check(question()) is None


class FakeRec:
    def __init__(self) -> None:
        self.gates: list[Any] = []
        self.closed = False
        self.engine = self
        self.observers: list[Any] = []
        self.source = self

    def describe(self) -> str:
        return "fake"

    def close(self) -> None:
        self.closed = True


def stack_set(tmp_path: Path, names: list[tuple[str, list[str]]],
              concurrency: int = 2) -> StackSet:
    doc = stacks_config(tmp_path)
    doc["agent"]["stack_concurrency"] = concurrency
    doc["stack"] = [{"name": n, "repo": "mono", "depends_on": deps,
                     "compose": {"project_dir": str(tmp_path / n)}} for n, deps in names]
    f = parse_agent_file(doc)
    return StackSet(f, [StackRun(s, FakeRec()) for s in f.specs])  # type: ignore[arg-type]


def test_a_crashing_stack_is_that_stacks_only_and_its_dependents_are_told(
        tmp_path: Path) -> None:
    s = stack_set(tmp_path, [("infra", []), ("app", ["infra"]), ("tools", [])])
    seen: dict[str, str | None] = {}

    def one(run: StackRun) -> PassResult | None:
        if run.name == "infra":
            raise RuntimeError("boom")
        if run.name == "app":
            seen["app"] = s.blocked("infra")
        return result("applied")

    out = s.run_round(one)
    assert out == {"infra": None, "app": out["app"], "tools": out["tools"]}
    assert out["app"] is not None and out["tools"] is not None
    assert seen["app"] == "its pass crashed this round"


def test_stacks_run_concurrently_up_to_the_limit_and_after_their_dependencies(
        tmp_path: Path) -> None:
    s = stack_set(tmp_path, [("a", []), ("b", []), ("c", []), ("d", ["a", "b", "c"])],
                  concurrency=2)
    lock = threading.Lock()
    running: set[str] = set()
    peak = 0
    order: list[str] = []

    def one(run: StackRun) -> PassResult | None:
        nonlocal peak
        with lock:
            running.add(run.name)
            peak = max(peak, len(running))
        time.sleep(0.05)
        with lock:
            running.discard(run.name)
            order.append(run.name)
        return result("applied")

    s.run_round(one)
    assert peak == 2
    assert order[-1] == "d" and sorted(order[:3]) == ["a", "b", "c"]


def test_a_dependency_outside_the_round_is_judged_by_its_record(tmp_path: Path) -> None:
    s = stack_set(tmp_path, [("infra", []), ("app", ["infra"])])
    assert s.blocked("infra") == "it has no pass recorded yet"


# ------------------------------------------------------------------ reporting
def test_each_stacks_metrics_carry_its_stack_label_in_one_scrape(tmp_path: Path) -> None:
    f = parse_agent_file(stacks_config(tmp_path))
    metrics = StackMetrics(textfile=tmp_path / "agent.prom")
    for spec in f.specs:
        spec.cfg.agent.state_dir.mkdir(parents=True)
    infra, app = (metrics.observer(spec.cfg) for spec in f.specs)
    infra.pass_finished(result("applied"))
    app.pass_finished(result("rolled-back"))
    text = generate_latest(metrics.registry).decode()
    assert 'gitops_agent_passes_total{outcome="applied",stack="infra"} 1.0' in text
    assert 'gitops_agent_passes_total{outcome="rolled-back",stack="app"} 1.0' in text
    assert 'gitops_agent_passes_total{outcome="applied",stack="app"} 0.0' in text
    assert (tmp_path / "agent.prom").read_text().count('stack="app"') > 3


def test_the_drop_in_names_every_stacks_project_dir(tmp_path: Path) -> None:
    from agent.install import drop_in_for_config

    cfg = tmp_path / "agent.toml"
    cfg.write_text('[[repo]]\nname = "ops"\nrepo = "https://git.example.test/ops.git"\n'
                   '[[stack]]\nname = "a"\nrepo = "ops"\n[stack.compose]\n'
                   'project_dir = "/srv/a"\n'
                   '[[stack]]\nname = "b"\nrepo = "ops"\n[stack.compose]\n'
                   'project_dir = "b"\n')
    text = drop_in_for_config(cfg)
    assert 'ReadWritePaths="/srv/a"\n' in text
    assert f'ReadWritePaths="{tmp_path / "b"}"\n' in text


def test_check_config_names_a_stacks_missing_project_dir(tmp_path: Path) -> None:
    from agent.check_config import check_config

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
                   '[[repo]]\nname = "ops"\nrepo = "https://git.example.test/ops.git"\n'
                   '[[stack]]\nname = "shop"\nrepo = "ops"\n[stack.compose]\n'
                   f'project_dir = "{tmp_path / "nope"}"\n')
    problems = check_config(cfg)
    assert f"stack.shop.compose.project_dir: {tmp_path / 'nope'} does not exist" in problems


def test_an_idle_round_reads_no_file_of_the_stack_again(tmp_path: Path) -> None:
    repo = FakeRepo()
    rev = repo.commit()
    repo.commits[rev] = files(infra__desired_state_yml=b"i1", infra__compose_yml=b"c1",
                              app__desired_state_yml=b"a1")
    shared, infra, app = views(tmp_path, repo)
    shared.new_round()
    infra.fetch(), app.fetch()
    first = len(repo.reads)
    for _ in range(3):
        shared.new_round()
        assert (infra.fetch().revision, app.fetch().revision) == (rev, rev)
    assert len(repo.reads) == first  # GitHub kind: no API request on an idle round


def test_a_new_head_reads_the_stacks_files_once_for_the_judge_and_the_pass(
        tmp_path: Path) -> None:
    repo = FakeRepo()
    rev = repo.commit()
    repo.commits[rev] = files(infra__desired_state_yml=b"i1", infra__compose_yml=b"c1",
                              app__desired_state_yml=b"a1")
    reads = repo.reads
    shared, infra, _ = views(tmp_path, repo)
    shared.new_round()
    head = infra.fetch()
    before = list(reads)
    # what the pass reads next (StackFiles.validated): the same files of the same head
    assert infra.read_files(head.revision, infra.paths) == {"compose.yml": b"c1"}
    assert reads == before  # no second read of the files the judge just read
    assert ("infra/compose.yml" in reads[-1][1]) and reads[-1][0] == rev
    # other paths or another revision are read from the source
    infra.read_files(head.revision, ["other.yml"])
    assert len(reads) == len(before) + 1


def test_a_stacks_rollout_gate_reads_its_own_status_context_and_fleet_sample(
        tmp_path: Path) -> None:
    from agent.fleet import build_gates

    token = tmp_path / "token"
    token.write_text("ghs_x\n")
    token.chmod(0o600)
    doc = stacks_config(tmp_path, report={"github": {"repo": "acme/ops",
                                                     "token_file": str(token)}},
                        fleet={"sample": 3})
    doc["agent"]["host"] = "web1"
    app = parse_agent_file(doc).specs[1]
    [gate] = build_gates(app.cfg)
    # the template the gate reads every host's status of this stack with
    assert gate.context == "deploy/{host}/app"
    assert gate.sample == 3
