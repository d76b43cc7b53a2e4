"""Keep API keys out of the server's logs.

Scripts may authenticate a websocket with ``?key=bw_...`` (browsers cannot set headers on a
socket), and uvicorn logs every socket's path with its query string at INFO (``"WebSocket
/ws/dashboard/?key=..." [accepted]``), and every request's with ``--access-log``; Django logs
some requests' referers (a failed CSRF check). uvicorn writes the query string as it arrived, so
a key may appear in any form the query parser decodes (``agents/access/credentials.py``): a
percent-encoded name (``k%65y``, ``%6B%65%79``, either case of hex), a percent-encoded value,
``+`` or ``%20`` around it, repeated parameters. The filter rewrites, before a record is
formatted:

* the value of every parameter whose name decodes to ``key`` (in any letter case; a name
  preceded by a separator, so not ``monkey=``) to ``[redacted]``;
* every Breakwater key anywhere in the line (``bw_`` and at least 12 key characters, literal or
  percent-encoded): a bearer token pasted into a path, a referer, a message, to
  ``bw_[redacted]``. The key's public id is its first 8 characters; the rule leaves shorter
  ``bw_`` words (identifiers) alone.

It is installed on uvicorn's loggers (by ``serve``) and on the handler every other logger writes
to (``LOGGING`` in ``console/settings.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any


def _char(c: str) -> str:
    """``c`` literal or percent-encoded (the pattern is case-insensitive: hex in either case)."""
    return f"(?:{re.escape(c)}|%{ord(c):02x})"


_SPACE = r"(?:\+|%20)*"
# A parameter starts the line or follows a separator (literal, or percent-encoded inside
# another parameter's value: a ``next=/x%3Fkey%3D...`` redirect).
_START = r"""(?:(?<![^?&;\s"'])|(?<=%3f)|(?<=%26))"""
_KEY_PARAM = re.compile(
    rf"({_START}{_SPACE}{''.join(_char(c) for c in 'key')}{_SPACE}(?:=|%3d))[^&;#\s\"']+",
    re.IGNORECASE,
)
_KEY_TOKEN = re.compile(
    rf"{''.join(_char(c) for c in 'bw_')}(?:[a-z0-9]|%[0-9a-f]{{2}}){{12,}}", re.IGNORECASE
)
REDACTED = r"\1[redacted]"
KEY_REDACTED = "bw_[redacted]"
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    # Each pattern runs only on lines that hold what it needs (any encoded form has a "%"):
    # most lines skip both regular expressions.
    encoded = "%" in text
    folded = text.lower()
    if encoded or ("key" in folded and "=" in text):
        text = _KEY_PARAM.sub(REDACTED, text)
    if encoded or "bw_" in folded:
        text = _KEY_TOKEN.sub(KEY_REDACTED, text)
    return text


def _redact_arg(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class RedactKeyParams(logging.Filter):
    """Rewrites keys in a record's message and string arguments (formatters such as uvicorn's
    access formatter read the arguments themselves, so they stay arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_arg(a) for a in args)
        elif isinstance(args, Mapping):
            record.args = {name: _redact_arg(value) for name, value in args.items()}
        return True


def redact_keys_in_server_logs() -> None:
    """Install the filter on uvicorn's loggers (after uvicorn has configured its logging)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeyParams) for f in logger.filters):
            logger.addFilter(RedactKeyParams())
