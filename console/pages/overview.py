"""Console page(s): overview (being built this session; see issue 12)."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse

from console.roles import role_required


@role_required("viewer")
def placeholder(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
    raise Http404("not built yet")
