"""``gitops-agent`` and ``python -m agent``: the CLI as a process.

The interpreter's own teardown (collecting every module and pydantic model) costs ~90 ms a
command on this 2-core machine — a third of a one-off ``sync``'s overhead over plain compose
(BENCHMARKS.md, release overhead). Everything the agent must leave behind is written before
``main`` returns (state, override and files atomically, logs flushed below), so the process
ends with ``os._exit`` instead. An exception escaping ``main`` takes the ordinary way out.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from agent.cli import main


def entry() -> NoReturn:
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry()
