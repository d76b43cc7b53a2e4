"""API keys passed in query strings never reach uvicorn's log lines."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from agents.access.credentials import query_keys
from agents.access.keys import generate_key
from core.log_redaction import RedactKeyParams, redact, redact_keys_in_server_logs

KEY = "bw_live_0123456789abcdefghijklmnopqrstuv_abcd12"
REAL = generate_key().plaintext  # the real format: bw_ + 46 base62 characters


def _encoded(text: str, *, upper: bool = True) -> str:
    """Every character percent-encoded (upper- or lower-case hex)."""
    return "".join(("%%%02X" if upper else "%%%02x") % ord(c) for c in text)


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


# Every form in which a query string can carry a key that the query parser decodes to the key
# (so it authenticates), as uvicorn logs it: the raw query string.
ENCODED_FORMS = {
    "encoded-letter-in-name": f"k%65y={REAL}",
    "encoded-name-upper-hex": f"%6B%65%79={REAL}",
    "encoded-name-lower-hex": f"%6b%65%79={REAL}",
    "encoded-value-upper-hex": f"key={_encoded(REAL)}",
    "encoded-value-lower-hex": f"key={_encoded(REAL, upper=False)}",
    "encoded-name-and-value": f"%6B%65%79={_encoded(REAL)}",
    "plus-around-value": f"key=+{REAL}+",
    "encoded-space-around-value": f"key=%20{REAL}%20",
    "repeated": f"a=1&key={REAL}&key={REAL}",
}


@pytest.mark.parametrize("query", ENCODED_FORMS.values(), ids=ENCODED_FORMS.keys())
def test_every_form_of_a_key_that_authenticates_is_redacted(query: str) -> None:
    assert REAL in query_keys(query.encode())  # the parser reads the key out of this form
    line = redact(f'127.0.0.1:5000 - "WebSocket /ws/dashboard/?{query}" 403')
    assert REAL not in line
    assert REAL[3:] not in line
    assert "[redacted]" in line
    for piece in (_encoded(REAL[3:])[:12], _encoded(REAL[3:], upper=False)[:12]):
        assert piece not in line


ANYWHERE = {
    "path": f"GET /api/v1/{REAL}/x HTTP/1.1",
    "referer": f"Forbidden (Referer checking failed - https://evil.example/?t={REAL} does not match)",
    "header": f"Authorization: Bearer {REAL}",
    "encoded-in-another-param": f"/x?token=b%77%5F{REAL[3:]}",
    "nested-in-another-param": f"/x?next=/ws/%3Fkey%3D{REAL}",
}


@pytest.mark.parametrize("line", ANYWHERE.values(), ids=ANYWHERE.keys())
def test_a_breakwater_key_is_redacted_anywhere_in_a_line(line: str) -> None:
    redacted = redact(line)
    assert REAL[3:] not in redacted
    assert "[redacted]" in redacted


def test_short_bw_words_and_lines_without_keys_are_left_alone() -> None:
    for line in ("trigger bw_refuse_change fired", "GET /healthz HTTP/1.1", "a_b=c%20d"):
        assert redact(line) == line


def test_the_filter_redacts_mapping_arguments_too() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "%(path)s", None, None)
    record.args = {"path": f"/ws/?k%65y={REAL}"}
    RedactKeyParams().filter(record)
    assert REAL not in record.getMessage()


def test_the_handler_every_other_logger_writes_to_redacts_keys() -> None:
    # LOGGING in console/settings.py, as Django configured it at set-up: the root handler.
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if any(isinstance(f, RedactKeyParams) for f in handler.filters)
    ]
    assert handlers
    record = logging.getLogger("django.security.csrf").makeRecord(
        "django.security.csrf",
        logging.WARNING,
        __file__,
        1,
        "Forbidden (Referer checking failed - %s does not match any trusted origins.)",
        (f"https://evil.example/page?k%65y={REAL}",),
        None,
    )
    assert handlers[0].filter(record)
    line = handlers[0].format(record)
    assert REAL not in line
    assert "k%65y=[redacted]" in line
