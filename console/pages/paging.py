"""The keyset pager of the console's lists (audit, incidents, notifications' delivery log): the
view's half of ``{% paged_list %}`` (console/templatetags/console.py)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def pager_links(request: HttpRequest, cursor: str | None) -> dict[str, Any]:
    """``paged`` (past the first page), ``first_query`` (the newest page with the same filters)
    and ``next_query`` (the page after ``cursor``; None on the last page)."""
    query = request.GET.copy()
    query.pop("after", None)
    next_query = None
    if cursor:
        following = query.copy()
        following["after"] = cursor
        next_query = following.urlencode()
    return {
        "paged": bool(request.GET.get("after")),
        "first_query": query.urlencode(),
        "next_query": next_query,
    }
