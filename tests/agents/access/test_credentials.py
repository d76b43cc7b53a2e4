"""The one reading of a key presented as ``?key=`` or ``Authorization: Bearer`` (sockets)."""

from __future__ import annotations

import pytest

from agents.access.credentials import UNUSABLE, presented_key, query_keys

KEY = "bw_" + "a" * 46
OTHER = "bw_" + "b" * 46


def _scope(query: str = "", *headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"query_string": query.encode(), "headers": list(headers)}


@pytest.mark.parametrize(
    "query",
    [f"key={KEY}", f"k%65y={KEY}", f"%6b%65%79={KEY}", f"a=1&key=%62%77%5F{'a' * 46}&b=2"],
)
def test_the_query_is_read_percent_decoded_as_django_reads_it(query: str) -> None:
    assert query_keys(query.encode()) == [KEY]
    assert presented_key(_scope(query)) == KEY


def test_a_socket_without_key_or_bearer_header_presents_none() -> None:
    assert presented_key(_scope("monkey=1&api_key=2")) is None
    assert presented_key(_scope("", (b"authorization", b"Basic b3BzOnB3"))) is None
    assert presented_key(_scope("", (b"cookie", b"sessionid=abc"))) is None


def test_a_bearer_header_presents_its_token() -> None:
    assert presented_key(_scope("", (b"authorization", f"Bearer {KEY}".encode()))) == KEY
    assert presented_key(_scope("", (b"Authorization", f"bearer  {KEY} ".encode()))) == KEY


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("key=", ()),
        (f"key={KEY}&key={OTHER}", ()),
        (f"key={KEY}", ((b"authorization", f"Bearer {OTHER}".encode()),)),
        ("", ((b"authorization", b"Bearer "),)),
    ],
    ids=["empty", "two-params", "param-and-header-disagree", "empty-bearer"],
)
def test_something_that_cannot_be_one_key_is_presented_but_unusable(
    query: str, headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    assert presented_key(_scope(query, *headers)) == UNUSABLE


def test_the_same_key_twice_is_that_key() -> None:
    scope = _scope(f"key={KEY}", (b"authorization", f"Bearer {KEY}".encode()))
    assert presented_key(scope) == KEY
