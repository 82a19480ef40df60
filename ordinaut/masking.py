"""Masks for values that may carry credentials, before they go into an audit row or a log.

Webhook URLs and MCP server URLs often carry a token in their query string
(`https://hooks.example.com/in?token=...`) or user info (`https://user:pass@host/`), and an
MCP server's command-line arguments may hold a key (`--api-key sk-...`). The audit log is
kept forever and readable by every `admin` agent, and log lines go wherever the operator
ships them, so both get the masked form; the full value stays in its own column, readable
only where it was before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "[redacted]"
# Option names whose value is a credential: --token, --api-key, --password, -auth...
_SENSITIVE_OPTION = re.compile(
    r"^-{1,2}[\w.-]*(token|key|secret|passw|pwd|auth|cred|bearer)[\w.-]*$", re.IGNORECASE
)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` without its user info and query string (each replaced by the mask) or fragment;
    anything that is not a URL comes back unchanged."""
    if not isinstance(url, str) or not _URL.match(url):
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK  # unparsable: nothing of it is shown
    netloc = f"{MASK}@" if "@" in parts.netloc else ""
    netloc += f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, netloc + port, parts.path, MASK if parts.query else "", ""))


def mask_args(args: Iterable[str]) -> list[str]:
    """Command-line arguments with credentials masked: the value of an option named like
    one (`--api-key X`, `--token=X`), and URLs as mask_url does."""
    masked: list[str] = []
    hide_next = False
    for arg in args:
        text = str(arg)
        option, equals, _ = text.partition("=")
        if hide_next and not text.startswith("-"):
            masked.append(MASK)
        elif equals and _SENSITIVE_OPTION.match(option):
            masked.append(f"{option}={MASK}")
        else:
            masked.append(mask_url(text))
        hide_next = not equals and bool(_SENSITIVE_OPTION.match(text))
    return masked
