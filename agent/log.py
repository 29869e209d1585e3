"""structlog set-up: JSON lines when stderr is not a TTY (journald), console on a TTY.

Events are dotted names (``agent.pull.retry_scheduled``) with key-value context. Values that
look like secrets are redacted before rendering, whatever the caller passed.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
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
# credential headers as git and curl print them (GIT_TRACE_CURL, -c http.extraHeader=...):
# the whole value after the name goes
_HEADER_CREDS = re.compile(
    r"(?P<key>\b(?:proxy-)?authorization\b\s*[:=]\s*|\bextraheader\b\s*[:=]\s*)"
    r"(?P<value>[^\r\n'\"]+)", re.I)
# tokens of well-known forms, wherever they appear (GitHub, GitLab)
_TOKENS = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}"
                     r"|glpat-[A-Za-z0-9_-]{16,})")
_known_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """A value (token, password) that must never be rendered."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def redact_text(text: str) -> str:
    text = _URL_CREDS.sub(lambda m: f"{m.group('scheme')}***@", text)
    text = _HEADER_CREDS.sub(lambda m: f"{m.group('key')}***", text)
    text = _TOKENS.sub("***", text)
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


# sd-daemon(3)'s SyslogLevelPrefix: "<N>" before a line written to the journal's stream is
# that line's priority (journald strips it), so `journalctl -p warning` selects by level
SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3,
                   "exception": 3, "critical": 2}


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is connected to the journal: systemd sets ``JOURNAL_STREAM`` to
    ``<device>:<inode>`` of the stream it connected, which must match the stream's fstat(2)
    (a child that redirected stderr elsewhere inherits the variable, not the stream)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (StringIO), closed
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class PriorityPrefix:
    """Wraps a renderer: each rendered line starts with ``<N>``, N the event's syslog
    priority (debug 7, info 6, warning 4, error 3, critical 2)."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        level = str(event_dict.get("level", name)).lower()
        return f"<{SYSLOG_PRIORITY.get(level, 6)}>{self.renderer(logger, name, event_dict)}"


def configure(stream: TextIO | None = None, *, json: bool | None = None, level: str = "info",
              journal: bool | None = None) -> None:
    """``journal`` (default: detected from ``JOURNAL_STREAM``) prefixes each line with its
    syslog priority."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    if journal is None:
        journal = stream_is_journal(stream)
    if journal:
        renderer = PriorityPrefix(renderer)
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
