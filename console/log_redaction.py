"""Keep API keys out of the server's logs.

Scripts may authenticate a websocket with ``?key=bw_...`` (browsers cannot set headers on a
socket), and uvicorn logs every socket's path with its query string at INFO (``"WebSocket
/ws/dashboard/?key=..." [accepted]``), and every request's with ``--access-log``. The filter
rewrites the value of any ``key`` query parameter to ``[redacted]`` before a record is
formatted, on the loggers uvicorn writes those lines to.
"""

from __future__ import annotations

import logging
import re

# ``key=`` as a query parameter (not the tail of ``monkey=``), up to the next separator.
_KEY_PARAM = re.compile(r"(?<![\w.-])(key=)[^&;#\s\"']+")
REDACTED = r"\1[redacted]"
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    return _KEY_PARAM.sub(REDACTED, text) if "key=" in text else text


class RedactKeyParams(logging.Filter):
    """Rewrites ``key=<value>`` in a record's message and string arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_keys_in_server_logs() -> None:
    """Install the filter on uvicorn's loggers (after uvicorn has configured its logging)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeyParams) for f in logger.filters):
            logger.addFilter(RedactKeyParams())
