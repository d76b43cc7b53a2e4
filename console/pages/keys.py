"""Console page ``/keys/`` (admin only): the API keys without secrets, Create (the key is shown
once, in the answer to the POST itself, never stored or shown again) and Revoke (a reason and a
confirmation). Both are :mod:`agents.access.services` calls, audited with the signed-in user as
actor, and put in force in this process at once (other processes poll within about a second)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from agents import selectors
from agents.access import services as access_services
from agents.engine import engines_reload_config
from agents.models import Agent, Scope
from console.roles import has_role, role_required
from core.errors import ApplicationError, ValidationFailed

PAGE_SIZE = 50
REASON_MAX = 1000
# Form field names as the service's errors name them -> the labels the form shows.
LABELS = {
    "name": "Name",
    "scopes": "Scopes",
    "agents": "Agents",
    "expires_at": "Expires (UTC)",
    "rate_limit_rpm": "Requests per minute",
    "rate_limit_tpm": "Tokens per minute",
}


def _admin(request: HttpRequest) -> None:
    if not has_role(request.user, "admin"):
        raise PermissionDenied("managing API keys needs the admin role")


def _state(key: dict[str, Any], now: datetime) -> str:
    if key["revoked_at"] is not None:
        return "revoked"
    if key["expires_at"] is not None and key["expires_at"] <= now:
        return "expired"
    return "active"


def _whole(raw: str, field: str, errors: list[str]) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()):
        errors.append(f"{field}: must be a whole number")
        return None
    return int(raw)


def _expiry(raw: str, errors: list[str]) -> datetime | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        errors.append(f"expires_at: {raw!r} is not a date and time (YYYY-MM-DDTHH:MM)")
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    if moment <= timezone.now():
        errors.append("expires_at: must be in the future")
        return None
    return moment


def _labelled(errors: list[str]) -> list[str]:
    out = []
    for error in errors:
        field, sep, rest = error.partition(": ")
        out.append(f"{LABELS[field]}: {rest}" if sep and field in LABELS else error)
    return out


def _page(
    request: HttpRequest, *, form: dict[str, Any], errors: list[str], status: int
) -> HttpResponse:
    after = request.GET.get("after") or None
    page_errors: list[str] = []
    try:
        page = selectors.api_key_page(after=after, limit=PAGE_SIZE)
    except ValidationFailed as error:
        page = {"items": [], "next": None}
        page_errors = error.errors
        status = 400
    now = timezone.now()
    context = {
        "keys": [key | {"state": _state(key, now)} for key in page["items"]],
        "next": page["next"],
        "paged": after is not None,
        "page_errors": page_errors,
        "form": form,
        "errors": _labelled(errors),
        "scopes": Scope.values,
        "agents": list(Agent.objects.order_by("name").values_list("name", flat=True)),
        "reason_max": REASON_MAX,
    }
    return render(request, "console/keys.html", context, status=status)


@require_http_methods(["GET", "POST"])
@role_required("admin")
def key_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _create(request)
    return _page(request, form={"scopes": ["read"]}, errors=[], status=200)


def _create(request: HttpRequest) -> HttpResponse:
    _admin(request)
    post = request.POST
    form: dict[str, Any] = {
        "name": post.get("name", ""),
        "scopes": post.getlist("scopes"),
        "agents": post.getlist("agents"),
        "expires_at": post.get("expires_at", ""),
        "rate_limit_rpm": post.get("rate_limit_rpm", ""),
        "rate_limit_tpm": post.get("rate_limit_tpm", ""),
    }
    errors: list[str] = []
    expires_at = _expiry(form["expires_at"], errors)
    rpm = _whole(form["rate_limit_rpm"], "rate_limit_rpm", errors)
    tpm = _whole(form["rate_limit_tpm"], "rate_limit_tpm", errors)
    if any("\x00" in value for value in [form["name"], *form["agents"]]):
        errors.append("name: must not contain NUL characters")
    if not errors:
        try:
            created = access_services.api_key_create(
                name=form["name"],
                scopes=form["scopes"],
                agents=form["agents"],
                expires_at=expires_at,
                rate_limit_rpm=rpm,
                rate_limit_tpm=tpm,
                actor=f"user:{request.user.get_username()}",
            )
        except ValidationFailed as error:
            errors.extend(error.errors)
    if errors:
        return _page(request, form=form, errors=errors, status=422)
    engines_reload_config()  # usable on this process at once
    key = selectors.api_key_out(created.api_key)
    response = render(
        request,
        "console/key_created.html",
        {"key": key, "plaintext": created.plaintext},
        status=201,
    )
    # The key is in this answer only: never cached, never kept in a message or the session.
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


@require_POST
@role_required("admin")
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    _admin(request)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        messages.error(
            request, "The key was not revoked: Reason: say why (it is kept in the audit)"
        )
        return redirect("keys")
    if len(reason) > REASON_MAX or "\x00" in reason:
        messages.error(
            request,
            f"The key was not revoked: Reason: at most {REASON_MAX} characters, no NUL characters",
        )
        return redirect("keys")
    try:
        key, revoked = access_services.api_key_revoke(
            key_id=key_id, actor=f"user:{request.user.get_username()}", reason=reason
        )
    except ApplicationError as error:
        messages.error(request, f"The key was not revoked: {error.message}")
        return redirect("keys")
    engines_reload_config()  # refused on this process at once
    if revoked:
        messages.success(request, f"API key {key.prefix} ({key.name}) revoked; it is refused now.")
    else:
        messages.warning(request, f"API key {key.prefix} ({key.name}) was already revoked.")
    return redirect("keys")
