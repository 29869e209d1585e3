"""Many stacks in one agent: ``[[stack]]`` tables, one pass per stack, one fetch per repo.

A config without ``[[stack]]`` tables is one implicit stack, run exactly as before (its state
in state_dir itself). With them, each stack is a compose project of its own with its own
source (``[stack.source]``, or a shared ``[[repo]]`` it names), desired-state path, compose
settings, update/health settings and trust, and its own state in
``state_dir/stacks/<name>/`` (history, freeze, rollback, retention). One daemon, one lock
(state_dir's), one schedule: each round

* fetches each repo once (:class:`SharedRepo`): the stacks of a repo read their files from
  that one fetch, so ten stacks on one repo cost one conditional request per interval;
* hands each stack the newest commit that changed *its* files (:class:`StackSource`): a
  commit to one stack's folder is, to every other stack, the revision it already runs: an
  idle pass, nothing re-validated, nothing recreated; its applied revision stays the last
  commit that changed its paths;
* runs the stacks' passes, up to ``[agent] stack_concurrency`` at once, a stack only after
  the stacks it ``depends_on`` finished theirs (:meth:`StackSet.run_round`). A stack that
  fails (invalid, rolled back, engine error, even a crash) is that stack's outcome only; its
  dependents hold their releases and say why (:class:`DependencyGate`) until it runs its
  desired revision healthy again.

The ``[[stack]]`` tables themselves are read and checked by agent/stacks_config.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.config import AgentConfig
from agent.errors import AgentError, DesiredStateError
from agent.ports import Fetched, GateAnswer, GateQuestion
from agent.stacks_config import AgentFile, StackSpec

if TYPE_CHECKING:
    from agent.outcomes import PassResult
    from agent.reconcile import Reconciler

log = structlog.get_logger()



# ====================================================================== the source
class SharedRepo:
    """One repository's fetch, made once per round whatever number of stacks read it."""

    def __init__(self, source: Any, key: str = "default") -> None:
        self.source = source  # a Source that is a FileSource too (git, GitHub)
        self.key = key
        self._lock = threading.Lock()
        self._got: Fetched | None = None
        self._error: AgentError | None = None
        self.round = 0

    def new_round(self) -> None:
        with self._lock:
            self._got, self._error = None, None
            self.round += 1

    def fetch(self, *, again: bool = False) -> Fetched:
        """This round's fetch; ``again`` (a stack's retry) fetches anew."""
        with self._lock:
            if again or (self._got is None and self._error is None):
                try:
                    self._got, self._error = self.source.fetch(), None
                except AgentError as e:
                    self._got, self._error = None, e
                log.debug("agent.repo.fetched", repo=self.key, round=self.round,
                          revision=self._got.revision[:12] if self._got else None)
            if self._error is not None:
                raise self._error
            assert self._got is not None
            return self._got


class StackSource:
    """A stack's view of its repo: the round's fetch, read at the stack's desired-state path,
    and -- when the new commit changed none of the stack's files -- the revision the stack
    already has, so that stack's pass is idle."""

    def __init__(self, repo: SharedRepo, cfg: AgentConfig,
                 last_revision: Callable[[], str | None], repo_dir: str | None = None) -> None:
        self.repo = repo
        self.path = cfg.source.path
        self.paths = list(cfg.compose.from_repo or [])
        self.prefix = f"{repo_dir}/" if repo_dir else ""
        self.last_revision = last_revision
        self._seen_round = -1
        self._last: tuple[str, bytes, dict[str, bytes]] | None = None
        self._answer: tuple[str, Fetched] | None = None  # (head, what the stack saw)

    def describe(self) -> str:
        inner = str(self.repo.source.describe())
        base = inner.rsplit(":", 1)[0] if inner.endswith(":" + self.repo.source.path) \
            else inner
        return f"{base}:{self.path}"

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        return bool(self.repo.source.is_ancestor(ancestor, descendant))

    def read_files(self, revision: str, paths: Sequence[str]) -> dict[str, bytes]:
        """The stack's files (``paths`` relative to its folder, keys too). The files this
        view just read to judge the head are not read again by the pass."""
        if self._last is not None and self._last[0] == revision and list(paths) == self.paths:
            return dict(self._last[2])
        got = self.repo.source.read_files(revision, [self.prefix + p for p in paths])
        return {k.removeprefix(self.prefix): v for k, v in got.items()}

    def fetch(self) -> Fetched:
        again = self._seen_round == self.repo.round  # the pass retries: a real fetch
        self._seen_round = self.repo.round
        head = self.repo.fetch(again=again)
        if head.trust_error:
            return replace(head, content=b"", path=self.path)
        if self._answer is not None and self._answer[0] == head.revision:
            return self._answer[1]  # the same head as last round: nothing read again
        got = self._judge(head)
        self._answer = (head.revision, replace(got, went_backwards=False))
        return got

    def _judge(self, head: Fetched) -> Fetched:
        """What this stack sees of a new head: it, or the revision it has when the head
        changed none of its files."""
        content = self._content(head)
        files = self.read_files(head.revision, self.paths) if self.paths else {}
        last = self._last or self._load_last()
        if last is not None and last[0] != head.revision and (last[1], last[2]) == (content, files):
            log.debug("agent.stack.unchanged", revision=head.revision[:12], kept=last[0][:12],
                      message="the new commit changes none of this stack's files")
            return Fetched(revision=last[0], content=last[1], path=self.path)
        self._last = (head.revision, content, files)
        return replace(head, content=content, path=self.path)

    def _content(self, head: Fetched) -> bytes:
        if head.path == self.path:
            return head.content
        if self._last is not None and self._last[0] == head.revision:
            return self._last[1]
        return self._read(head.revision)

    def _read(self, revision: str) -> bytes:
        try:
            got: dict[str, bytes] = dict(self.repo.source.read_files(revision, [self.path]))
        except AgentError as e:
            problems = getattr(e, "problems", [str(e)])
            raise DesiredStateError(f"{self.path}@{revision[:12]}", problems) from None
        if self.path not in got:
            raise DesiredStateError(f"{self.path}@{revision[:12]}", [
                f"no file {self.path!r} at revision {revision[:12]}"])
        return got[self.path]

    def _load_last(self) -> tuple[str, bytes, dict[str, bytes]] | None:
        """After a restart: the stack's files at the revision it last attempted, from the
        mirror (None when that revision is gone: the head is then the stack's news)."""
        rev = self.last_revision()
        if rev is None:
            return None
        try:
            content = self._read(rev)
            files = self.read_files(rev, self.paths) if self.paths else {}
        except AgentError:
            return None
        self._last = (rev, content, files)
        return self._last


# ====================================================================== dependencies
class DependencyGate:
    """A stack releases only while the stacks it depends on run their desired revision
    healthy (their pass this round, else their last recorded one, ended ``applied`` or
    ``no-op``). A pass with nothing to change, or one returning to known-good digests, is
    never held."""

    def __init__(self, name: str, depends_on: Sequence[str],
                 blocked: Callable[[str], str | None]) -> None:
        self.name = name
        self.depends_on = list(depends_on)
        self.blocked = blocked

    def check(self, question: GateQuestion) -> GateAnswer | None:
        if not question.services or question.converging:
            return None
        for dep in self.depends_on:
            why = self.blocked(dep)
            if why is not None:
                log.info("agent.stack.waiting", depends_on=dep, why=why)
                return GateAnswer("waiting", f"waiting for stack {dep}: {why}")
        return None


def _why_not(outcome: str, revision: str | None, reason: str | None) -> str:
    rev = f" at {revision[:12]}" if revision else ""
    first = reason.splitlines()[0][:160] if reason else ""
    return f"its last pass ended {outcome}{rev}" + (f" ({first})" if first else "")


# ====================================================================== the runner
@dataclass
class StackRun:
    spec: StackSpec
    rec: Reconciler

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class StackSet:
    """Every stack's pass, built from the config file by :meth:`build`."""

    file: AgentFile
    runs: list[StackRun]
    repos: dict[str, SharedRepo] = field(default_factory=dict)
    observers: list[Any] = field(default_factory=list)  # to close: observers, metrics
    results: dict[str, PassResult | None] = field(default_factory=dict)

    @classmethod
    def build(cls, file: AgentFile, *, report: bool = False, serve_metrics: bool = False,
              only: str | None = None) -> StackSet:
        from agent.app import build_reconciler
        from agent.report import build_observers

        specs = file.select(only)
        if not file.multi:
            rec = build_reconciler(specs[0].cfg, report=report, serve_metrics=serve_metrics)
            return cls(file, [StackRun(specs[0], rec)], observers=list(rec.observers))
        out = cls(file, [])
        metrics = None
        if report and (file.metrics.listen is not None or file.metrics.textfile is not None):
            from agent.report.metrics import StackMetrics

            metrics = StackMetrics(file.metrics.textfile)
        for spec in specs:
            repo = out._repo(spec)
            view = StackSource(repo, spec.cfg, _last_revision(spec.cfg.agent.state_dir),
                               spec.repo_dir)
            obs = build_observers(spec.cfg, metrics=metrics) if report else []
            rec = build_reconciler(spec.cfg, report=report, source=view, observers=obs)
            if report and spec.depends_on:
                rec.gates.append(DependencyGate(spec.name, spec.depends_on, out.blocked))
            out.runs.append(StackRun(spec, rec))
            out.observers += obs
        if metrics is not None and serve_metrics and file.metrics.listen is not None:
            metrics.serve(file.metrics.listen)
            out.observers.append(metrics)
        return out

    def blocked(self, dep: str) -> str | None:
        """Why stack ``dep`` does not run its desired revision healthy (None: it does):
        from its pass this round, else (``sync --stack``) from its record."""
        if dep in self.results:
            r = self.results[dep]
            if r is None:
                return "its pass crashed this round"
            return None if r.ok else _why_not(r.outcome, r.revision, r.reason)
        from agent.state import StateStore

        spec = next(s for s in self.file.specs if s.name == dep)
        last = StateStore(spec.cfg.agent.state_dir).load().last_attempted
        if last is None:
            return "it has no pass recorded yet"
        if last.outcome in ("applied", "no-op"):
            return None
        return _why_not(last.outcome, last.revision, last.reason)

    def run(self, name: str) -> StackRun:
        return next(r for r in self.runs if r.name == name)

    def _repo(self, spec: StackSpec) -> SharedRepo:
        if spec.repo_key not in self.repos:
            from agent.wiring import build_source

            where = (self.file.state_dir / "repos" / spec.repo_key.removeprefix("repo:")
                     if spec.repo_key.startswith("repo:") else spec.cfg.agent.state_dir)
            cfg = spec.cfg.model_copy(update={"agent": spec.cfg.agent.model_copy(
                update={"state_dir": where})})
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.repos[spec.repo_key] = SharedRepo(build_source(cfg), spec.repo_key)
        return self.repos[spec.repo_key]

    # ------------------------------------------------------------------ a round
    def run_round(self, one: Callable[[StackRun], PassResult | None]) -> dict[str, PassResult | None]:
        """Each stack's pass (``one``), a stack after the stacks it depends on, up to
        stack_concurrency at once. Never raises: a crashed stack's result is None."""
        for r in self.repos.values():
            r.new_round()
        self.results.clear()
        if len(self.runs) == 1:
            self.results[self.runs[0].name] = self._one(one, self.runs[0])
            return dict(self.results)
        pending = {r.name: r for r in self.runs}
        running: dict[Future[PassResult | None], str] = {}
        limit = self.file.agent.stack_concurrency
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="stack") as ex:
            while pending or running:
                for name, run in list(pending.items()):
                    if len(running) >= limit:
                        break
                    deps = [d for d in run.spec.depends_on if d in pending or d in running.values()]
                    if not deps:
                        del pending[name]
                        running[ex.submit(self._one, one, run)] = name
                if not running:  # only a cycle could leave stacks unstartable (refused)
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in finished:
                    name = running.pop(f)
                    self.results[name] = f.result()
        return dict(self.results)

    def _one(self, one: Callable[[StackRun], PassResult | None],
             run: StackRun) -> PassResult | None:
        ctx = {"stack": run.name} if self.file.multi else {}
        with structlog.contextvars.bound_contextvars(**ctx):
            try:
                return one(run)
            except Exception as e:  # noqa: BLE001 - one stack's crash is that stack's only
                log.error("agent.stack.crashed", error=repr(e))
                return None

    def describe(self) -> str:
        return "; ".join(
            f"{r.name}: {r.rec.source.describe()}" if self.file.multi
            else r.rec.source.describe() for r in self.runs)

    def close(self) -> None:
        for r in self.runs:
            r.rec.engine.close()
        for o in self.observers:
            close = getattr(o, "close", None)
            if close is not None:
                close()


def _last_revision(state_dir: Path) -> Callable[[], str | None]:
    def last() -> str | None:
        from agent.state import StateStore

        st = StateStore(state_dir).load()
        return st.last_attempted.revision if st.last_attempted else None

    return last


__all__ = ["DependencyGate", "SharedRepo", "StackRun", "StackSet", "StackSource"]
