"""API keys passed in query strings never reach uvicorn's log lines."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from console.log_redaction import RedactKeyParams, redact, redact_keys_in_server_logs

KEY = "bw_live_0123456789abcdefghijklmnopqrstuv_abcd12"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"/ws/dashboard/?key={KEY}", "/ws/dashboard/?key=[redacted]"),
        (f"/ws/executions/e1/?a=1&key={KEY}&b=2", "/ws/executions/e1/?a=1&key=[redacted]&b=2"),
        (f"/x?key={KEY};next=1", "/x?key=[redacted];next=1"),
        (f'"WebSocket /ws/?key={KEY}" 403', '"WebSocket /ws/?key=[redacted]" 403'),
        ("/x?monkey=banana&api_key=1", "/x?monkey=banana&api_key=1"),
        ("/x?key=", "/x?key="),
        ("/healthz", "/healthz"),
    ],
)
def test_the_value_of_a_key_parameter_is_redacted_and_nothing_else(
    text: str, expected: str
) -> None:
    assert redact(text) == expected


@pytest.fixture
def uvicorn_error_log() -> Iterator[io.StringIO]:
    logger = logging.getLogger("uvicorn.error")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    before = list(logger.filters)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = before


def test_a_socket_line_as_uvicorn_logs_it_carries_no_key(uvicorn_error_log: io.StringIO) -> None:
    redact_keys_in_server_logs()
    redact_keys_in_server_logs()  # idempotent: one filter, not two
    logger = logging.getLogger("uvicorn.error")
    assert sum(isinstance(f, RedactKeyParams) for f in logger.filters) == 1
    logger.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", f"/ws/dashboard/?key={KEY}")
    line = uvicorn_error_log.getvalue()
    assert KEY not in line
    assert '"WebSocket /ws/dashboard/?key=[redacted]" [accepted]' in line
