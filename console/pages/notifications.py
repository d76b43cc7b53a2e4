"""Console page ``/notifications/``: the channels (kind, where to, routing, last delivery) and the
delivery log (newest first, paginated; attempts, status, error). Viewers read; admins press
"Send test" (:func:`incidents.notifications.notification_test`, audited with the signed-in user as
actor, the same service as ``POST /api/v1/notifications/{name}/test``). With htmx the answer is a
fragment that follows its delivery until it is sent or has failed; without, a redirect back."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from console.pages.paging import pager_links
from console.roles import has_role, role_required
from core.errors import ApplicationError, ValidationFailed
from incidents import selectors
from incidents.models import DeliveryStatus, NotificationChannel, NotificationDelivery
from incidents.notifications import notification_test

PAGE_SIZE = 50
FOLLOW_EVERY_S = 1
_STATUS_CLASS = {
    DeliveryStatus.SENT: "ok",
    DeliveryStatus.FAILED: "failed",
    DeliveryStatus.RETRYING: "warn",
    DeliveryStatus.PENDING: "queued",
}


def _target(channel: NotificationChannel) -> str:
    """Where the channel sends, without a secret: a URL's scheme and host, or the variable."""
    if channel.to:
        return ", ".join(channel.to)
    if channel.url_env:
        return f"${channel.url_env}"
    parts = urlsplit(channel.url)
    return f"{parts.scheme}://{parts.netloc}"


def _channels() -> list[dict[str, Any]]:
    """Each channel with its newest delivery: two queries."""
    latest = NotificationDelivery.objects.order_by("-created_at", "-id")[:1]
    rows = NotificationChannel.objects.order_by("name").prefetch_related(
        Prefetch("deliveries", queryset=latest, to_attr="latest")
    )
    out = []
    for channel in rows:
        last = channel.latest[0] if channel.latest else None
        out.append(
            {
                "channel": channel,
                "target": _target(channel),
                "signed": bool(channel.secret_env),
                "last": last,
                "last_css": _STATUS_CLASS.get(DeliveryStatus(last.status), "") if last else "",
            }
        )
    return out


def _delivery_row(delivery: NotificationDelivery) -> dict[str, Any]:
    return {
        "delivery": delivery,
        "css": _STATUS_CLASS.get(DeliveryStatus(delivery.status), ""),
        "log": list(delivery.attempt_log.all()),
        "done": delivery.status in (DeliveryStatus.SENT, DeliveryStatus.FAILED),
    }


@require_GET
@role_required("viewer")
def notifications_page(request: HttpRequest) -> HttpResponse:
    errors: list[str] = []
    channel = request.GET.get("channel", "")
    if len(channel) > 64:
        errors.append("channel: at most 64 characters")
        channel = ""
    after = request.GET.get("after") or None
    deliveries: list[NotificationDelivery] = []
    cursor = None
    try:
        deliveries, cursor = selectors.delivery_page(
            channel=channel or None, after=after, limit=PAGE_SIZE
        )
    except ValidationFailed as error:
        errors.extend(error.errors)
    channels = _channels()
    context = {
        "channels": channels,
        "rows": [_delivery_row(d) for d in deliveries],
        "channel": channel,
        "channel_names": [row["channel"].name for row in channels],
        "errors": errors,
        "filtered": bool(channel),
        **pager_links(request, cursor),
    }
    return render(request, "console/notifications.html", context, status=400 if errors else 200)


@require_POST
@role_required("admin")
def notification_send_test(request: HttpRequest, name: str) -> HttpResponse:
    if not has_role(request.user, "admin"):  # a forged POST, whatever the page showed
        raise PermissionDenied("sending a test notification needs the admin role")
    try:
        delivery = notification_test(name=name, actor=f"user:{request.user.get_username()}")
    except ApplicationError as error:
        if request.htmx:  # type: ignore[attr-defined]
            return render(
                request,
                "console/_notification_test.html",
                {"error": error.message},
                status=error.status,
            )
        messages.error(request, f"No test was sent: {error.message}")
        return redirect("notifications")
    if request.htmx:  # type: ignore[attr-defined]
        return _follow(request, delivery.pk, status=202)
    messages.success(
        request, f"Test notification queued for {name} (delivery {delivery.pk}); see the log below."
    )
    return redirect("notifications")


def _follow(request: HttpRequest, delivery_id: Any, *, status: int = 200) -> HttpResponse:
    delivery = (
        NotificationDelivery.objects.filter(pk=delivery_id).prefetch_related("attempt_log").first()
    )
    if delivery is None:
        raise Http404("no such delivery")
    context = {"row": _delivery_row(delivery), "every_s": FOLLOW_EVERY_S}
    return render(request, "console/_notification_test.html", context, status=status)


@require_GET
@role_required("viewer")
def notification_delivery(request: HttpRequest, delivery_id: Any) -> HttpResponse:
    """One delivery's status as a fragment (the "Send test" answer polls it until it is done)."""
    return _follow(request, delivery_id)
