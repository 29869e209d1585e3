"""Side effects live here: Docker engine, compose CLI, git, HTTP.

Edges never import the reconcile loop or the CLI; they raise the typed errors of
:mod:`agent.errors`, carrying command, exit code and stderr where a subprocess failed.
"""
