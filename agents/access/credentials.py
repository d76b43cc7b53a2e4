"""How a client presents an API key outside the REST doors: the one reading of ``?key=`` and
``Authorization: Bearer`` for every place that accepts a key that way (today the websockets:
``console/asgi.py`` routes on it, the consumers authenticate with it).

The query string is parsed as Django and every URL library parse it (``&``-separated,
percent-decoded names and values, ``+`` as a space), so ``?k%65y=bw_...`` is the key it looks
like, not something a check on the raw bytes would miss. ``core/log_redaction.py`` redacts
every such form from the logs.

A key is *presented* when the query has a ``key`` parameter or a request header is
``Authorization: Bearer ...``. Other authorization schemes (a browser's cached ``Basic``
credentials for a proxy in front) are not a key and are ignored. A presented key that is not
one usable token (empty, or two different ones: two ``key`` parameters, or a parameter and a
header that disagree) is :data:`UNUSABLE`: it authenticates nothing, and the caller refuses it
rather than falling back to another credential.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

UNUSABLE = ""  # presented, but not one usable token: no key matches it


def query_keys(query_string: bytes) -> list[str]:
    """The values of every ``key`` parameter, percent-decoded and stripped."""
    if not query_string:
        return []
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, errors="replace")
    return [value.strip() for name, value in pairs if name == "key"]


def bearer_tokens(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The token of every ``Authorization: Bearer`` header, stripped."""
    tokens = []
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                tokens.append(token.strip())
    return tokens


def presented_key(scope: Any) -> str | None:
    """The API key an ASGI connection presents: None when it presents none, :data:`UNUSABLE`
    when it presents something that cannot be one key, else the token."""
    found = query_keys(bytes(scope.get("query_string", b""))) + bearer_tokens(
        scope.get("headers", ())
    )
    if not found:
        return None
    first = found[0]
    if not first or any(token != first for token in found[1:]):
        return UNUSABLE
    return first
