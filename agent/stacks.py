"""Many stacks in one agent (``[[stack]]``): one pass runner per stack."""

from __future__ import annotations
