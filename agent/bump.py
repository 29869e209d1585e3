"""`gitops-agent bump`: edit desired-state.yml in place (being written)."""

from __future__ import annotations

import argparse
from typing import Any


def add_bump_parser(sub: Any) -> None:
    sub.add_parser("bump", help="set a service's digest in desired-state.yml")


def cmd_bump(args: argparse.Namespace) -> int:
    raise NotImplementedError
