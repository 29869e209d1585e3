"""One timestamp format in all CLI output: ISO 8601, UTC, seconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(value: object) -> str:
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text
    if not isinstance(value, datetime):
        return "-" if value is None else str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
