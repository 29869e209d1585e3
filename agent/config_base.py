"""What every table of the agent's configuration shares: the strict, frozen model base and
the URL checks (credentials in a URL, a token in clear text to a remote host).

Pure: imports nothing of the agent, nothing that touches Docker, git or the network.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A config table: unknown keys refused, no type coercion, frozen once loaded."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _split_url(url: str) -> SplitResult | None:
    """``url`` split, or None for what git takes as a path or an scp-like address."""
    if "://" not in url:
        return None
    try:
        return urlsplit(url)
    except ValueError:
        return None


def url_credentials_problem(url: str) -> str | None:
    """Why ``url`` must not be used as it is (it carries credentials), or None. The message
    never repeats the URL: it is a secret."""
    parts = _split_url(url)
    if parts is not None and parts.scheme and (parts.query or "?" in url):
        # ?access_token=..., ?private_token=...: the same secret in another place
        return (
            "the URL has a query string (?...), where tokens go: it would be on every "
            "git command line and in logs: remove it from the URL and put the token in "
            "source.token_file"
        )
    if parts is None or "@" not in parts.netloc:
        return None
    userinfo = parts.netloc.rsplit("@", 1)[0]
    # ssh://git@host/... names the login user, no secret; a password never belongs there,
    # and an http(s) user name is itself often a token (https://ghp_xxx@github.com/...)
    if ":" in userinfo or parts.scheme.lower() in ("http", "https"):
        return (
            "the URL carries credentials (user:token@); they would be on every git command "
            "line and in logs: remove them from the URL and put the token in "
            "source.token_file"
        )
    return None


def cleartext_to_remote_host(url: str) -> bool:
    """``http://`` to a host that is not loopback (127.0.0.0/8, ::1, localhost)."""
    parts = _split_url(url)
    if parts is None or parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
