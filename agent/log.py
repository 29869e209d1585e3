"""structlog set-up: JSON lines when stderr is not a TTY (journald), console on a TTY.

Events are dotted names (``agent.pull.retry_scheduled``) with key-value context. Values that
look like secrets are redacted before rendering, whatever the caller passed.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO


def _import_structlog_without_rich() -> None:
    """Import structlog without letting ``structlog.dev`` pull in rich (and pygments).

    structlog.dev imports rich at import time whenever it is installed (a dev tool,
    import-linter, depends on it) to offer rich tracebacks in ConsoleRenderer. The agent
    never uses them (``format_exc_info`` renders tracebacks to text before the renderer),
    and the import costs the daemon ~4 MB RSS. rich is hidden only while structlog is
    first imported; anything imported later can still use it.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` fail
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()

import structlog  # noqa: E402  (after the rich-less import above)

_SECRET_KEYS = re.compile(r"(pass(word)?|secret|token|authorization|auth|credential)", re.I)
# credentials embedded in URLs: https://user:token@host/
_URL_CREDS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/\s:@]+(:[^/\s@]*)?@", re.I)
_known_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """A value (token, password) that must never be rendered."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def redact_text(text: str) -> str:
    text = _URL_CREDS.sub(lambda m: f"{m.group('scheme')}***@", text)
    for s in _known_secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


def _redact_value(v: Any) -> Any:
    if isinstance(v, str):
        return redact_text(v)
    if isinstance(v, list | tuple):  # e.g. a command line
        return [_redact_value(x) for x in v]
    if isinstance(v, dict):
        return {
            k: "***" if isinstance(k, str) and _SECRET_KEYS.search(k) else _redact_value(x)
            for k, x in v.items()
        }
    return v


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in list(event_dict.items()):
        if _SECRET_KEYS.search(k) and k not in ("event",):
            event_dict[k] = "***"
        else:
            event_dict[k] = _redact_value(v)
    return event_dict


def configure(stream: TextIO | None = None, *, json: bool | None = None, level: str = "info") -> None:
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *([] if json else [structlog.processors.StackInfoRenderer()]),
            # tracebacks are rendered to text *before* redaction: they carry messages too
            structlog.processors.format_exc_info,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
