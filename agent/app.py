"""The wiring: one place that builds the pass from the config — source, engine, compose,
registry credentials, gates (freeze, windows, fleet waves) and observers (commit status,
metrics, notifications). The CLI's commands and the daemon both ask here; no command module
builds a Reconciler of its own, and none imports another. The edges themselves (source,
engine, compose) are built by :mod:`agent.wiring` and handed to the pass.

``build_reconciler(cfg)`` is what a read-only command (``status``, ``diff``) needs: it
reports nothing. ``report=True`` adds the gates and observers a pass runs with (``sync``,
``rollback``, the daemon); ``serve_metrics=True`` also serves ``GET /metrics`` (the daemon).
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.config import AgentConfig
from agent.ports import Gate, PassObserver, Source
from agent.reconcile import Reconciler
from agent.wiring import build_compose, build_engine, build_source, compose_for


def build_gates(cfg: AgentConfig) -> list[Gate]:
    """Policies asked before anything is pulled: freeze and windows, then the fleet's
    waves. Raises ConfigError (e.g. an unreadable report token) before any pass runs."""
    from agent.controls import build_gates as control_gates
    from agent.fleet import build_gates as fleet_gates

    return [*control_gates(cfg), *fleet_gates(cfg)]


def build_observers(cfg: AgentConfig, *, serve_metrics: bool = False) -> list[PassObserver]:
    from agent.report import build_observers as report_observers

    return report_observers(cfg, serve_metrics=serve_metrics)


def build_reconciler(cfg: AgentConfig, *, report: bool = False,
                     serve_metrics: bool = False, source: Source | None = None,
                     observers: Sequence[PassObserver] | None = None) -> Reconciler:
    """``source``: one shared by the stacks of a repo (agent/stacks.py); ``observers``:
    ones already built (one metrics registry and server for all stacks)."""
    from agent.secrets import registry_auth

    if observers is None:
        observers = build_observers(cfg, serve_metrics=serve_metrics) if report else []
    gates = build_gates(cfg) if report else []
    return Reconciler(cfg, source=source or build_source(cfg), engine=build_engine(cfg),
                      compose=build_compose(cfg), compose_for=compose_for(cfg),
                      registry_auth=registry_auth(cfg), observers=observers, gates=gates)


__all__ = ["build_gates", "build_observers", "build_reconciler", "build_source"]
