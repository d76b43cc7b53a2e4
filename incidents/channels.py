"""The three kinds of notification channel: how a delivery's payload becomes a message, and how
that message is sent (docs/OPERATIONS.md, "Notifications").

- ``webhook``: the payload as a JSON body, POSTed; with ``secret_env`` set, signed with
  HMAC-SHA256 over ``"<timestamp>.<raw body>"`` (:func:`signature`, :func:`signature_valid`).
- ``slack``: a Slack incoming-webhook message (``text`` plus ``blocks``).
- ``email``: Django's email backend (``EMAIL_*`` settings; SMTP by default).

Each send is one attempt: it returns the receiver's status code or raises :class:`SendFailed`
with a message that names what went wrong and never the URL (a Slack webhook URL is a secret).
HTTP calls have a timeout and never follow a redirect (a 3xx is a failed attempt); the URL is
checked before each call like a provider's ``base_url`` (no cloud metadata address, typed or
resolved, unless the host is in ``BREAKWATER_PROVIDER_ALLOW_HOSTS``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import smtplib
import socket
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from agents.config.schema import base_url_refusal
from agents.runtime.addresses import metadata_refusal, normal_host
from incidents.models import ChannelKind, NotificationChannel

SIGNATURE_HEADER = "X-Breakwater-Signature"
TIMESTAMP_HEADER = "X-Breakwater-Timestamp"
DELIVERY_HEADER = "X-Breakwater-Delivery"
EVENT_HEADER = "X-Breakwater-Event"
SIGNATURE_TOLERANCE_S = 300  # what signature_valid accepts by default: five minutes either way
_BODY_EXCERPT = 200
_USER_AGENT = "Breakwater-Notifications/1"


class SendFailed(Exception):
    """One attempt failed: ``message`` says why, ``status`` is the receiver's code if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# --- signing ---------------------------------------------------------------------------------


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Breakwater-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of
    ``timestamp + "." + body`` keyed with the secret."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def signature_valid(
    secret: bytes,
    *,
    timestamp: str,
    body: bytes,
    header: str,
    now: float | None = None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """What a receiver checks: the signature matches (compared in constant time) and the
    timestamp is within ``tolerance_s`` of ``now`` (a replayed old message is refused)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)


# --- messages --------------------------------------------------------------------------------


def summary(payload: dict[str, Any]) -> str:
    """One line: ``[CRITICAL] opened: Circuit breaker open: agent support (#12)``."""
    incident = payload.get("incident")
    if not incident:
        return f"Breakwater test notification for channel {payload.get('channel', '')}"
    event = "reopened" if payload.get("reopened") else payload["event"]
    return f"[{incident['severity'].upper()}] {event}: {incident['title']} (#{incident['id']})"


def _text(payload: dict[str, Any]) -> str:
    lines = [summary(payload)]
    incident = payload.get("incident")
    if incident:
        lines.append(f"Status: {incident['status']} · kind {incident['kind']}")
        if incident.get("agent"):
            lines.append(f"Agent: {incident['agent']}")
        lines.append(f"Console: {incident['url']}")
        if payload.get("timeline"):
            lines.append("")
            lines.append("Timeline:")
            lines += [f"  {e['at']}  {e['kind']}: {e['message']}" for e in payload["timeline"]]
    else:
        lines.append(payload.get("message", ""))
    return "\n".join(lines)


def webhook_body(payload: dict[str, Any], delivery_id: str) -> bytes:
    return json.dumps({"delivery_id": delivery_id, **payload}, separators=(",", ":")).encode()


def slack_body(payload: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (notifications, clients without blocks) and
    ``blocks`` (a section with the summary, fields, the timeline excerpt and a console link)."""
    text = summary(payload)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_slack_escape(text)}*"}}
    ]
    incident = payload.get("incident")
    if incident:
        fields = [
            f"*Severity*\n{incident['severity']}",
            f"*Status*\n{incident['status']}",
            f"*Kind*\n{incident['kind']}",
            f"*Agent*\n{incident.get('agent') or '-'}",
        ]
        blocks.append(
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]}
        )
        if payload.get("timeline"):
            excerpt = "\n".join(
                f"`{e['at'][11:19]}` {e['kind']}: {_slack_escape(e['message'])[:200]}"
                for e in payload["timeline"]
            )
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": excerpt}})
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"<{incident['url']}|Open in the console>"}
                ],
            }
        )
    else:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": payload.get("message", "")}],
            }
        )
    return {"text": text, "blocks": blocks}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- sending ---------------------------------------------------------------------------------


def _env(name: str, what: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise SendFailed(f"{what}: environment variable {name} is not set")
    return value


def target_url(channel: NotificationChannel) -> str:
    """The channel's URL (from ``url_env`` if so configured), checked as a provider's
    ``base_url`` is: http(s), a host, no cloud metadata address."""
    url = channel.url or _env(channel.url_env, "url_env")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        source = f"url_env {channel.url_env}" if channel.url_env else "url"
        raise SendFailed(f"{source}: must be an http(s) URL with a host")
    refusal = base_url_refusal(url)
    if refusal is not None:
        raise SendFailed(f"url refused: {refusal}")
    return url


def _resolved_refusal(host: str, port: int) -> str | None:
    """A name that resolves to a metadata address is refused (literals: :func:`target_url`)."""
    if normal_host(host) in {normal_host(h) for h in settings.BREAKWATER_PROVIDER_ALLOW_HOSTS}:
        return None
    try:
        found = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return f"cannot resolve the host: {exc.strerror or exc}"
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        reason = metadata_refusal(address)
        if reason is not None:
            return (
                f"the host resolves to {address} ({reason}); refused unless it is in "
                "BREAKWATER_PROVIDER_ALLOW_HOSTS"
            )
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is answered as an error, never followed (to another host or not)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body``; the 2xx status, or :class:`SendFailed` (never naming the URL)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    refusal = _resolved_refusal(host, parts.port or (443 if parts.scheme == "https" else 80))
    if refusal is not None:
        raise SendFailed(refusal)
    timeout = settings.BREAKWATER_NOTIFY_TIMEOUT_S
    request = urllib.request.Request(  # noqa: S310 - http(s) only, checked in target_url
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": _USER_AGENT, **headers},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65_536)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
        if 300 <= status < 400:
            where = urlsplit(exc.headers.get("Location", "")).hostname or "(no location)"
            raise SendFailed(
                f"HTTP {status}: redirect to {where} not followed (redirects never are)", status
            ) from None
        excerpt = exc.read(_BODY_EXCERPT).decode("utf-8", "replace").strip()
        raise SendFailed(
            f"HTTP {status} {exc.reason}" + (f": {excerpt}" if excerpt else ""), status
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError | socket.timeout):
            raise SendFailed(f"no answer within {timeout:g} s") from None
        raise SendFailed(f"connection to {host} failed: {reason}") from None
    except TimeoutError:
        raise SendFailed(f"no answer within {timeout:g} s") from None
    except OSError as exc:
        raise SendFailed(f"connection to {host} failed: {exc}") from None


def send(channel: NotificationChannel, *, delivery_id: str, payload: dict[str, Any]) -> int:
    """Send one message to ``channel``; the receiver's status (HTTP, or 250 for SMTP)."""
    if channel.kind == ChannelKind.EMAIL:
        return _send_email(channel, delivery_id=delivery_id, payload=payload)
    url = target_url(channel)
    headers = {DELIVERY_HEADER: delivery_id, EVENT_HEADER: payload["event"]}
    if channel.kind == ChannelKind.SLACK:
        body = json.dumps(slack_body(payload), separators=(",", ":")).encode()
        return http_post(url, body, headers)
    body = webhook_body(payload, delivery_id)
    if channel.secret_env:
        secret = _env(channel.secret_env, "secret_env").encode()
        timestamp = str(int(time.time()))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    return http_post(url, body, headers)


def _send_email(channel: NotificationChannel, *, delivery_id: str, payload: dict[str, Any]) -> int:
    message = EmailMessage(
        subject=f"[Breakwater] {summary(payload)}"[:250],
        body=_text(payload),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=list(channel.to),
        headers={DELIVERY_HEADER: delivery_id, EVENT_HEADER: payload["event"]},
    )
    try:
        connection = get_connection(fail_silently=False, timeout=settings.EMAIL_TIMEOUT)
        sent = connection.send_messages([message])
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode("utf-8", "replace")
            if isinstance(exc.smtp_error, bytes)
            else str(exc.smtp_error)
        )
        raise SendFailed(f"SMTP {exc.smtp_code}: {text}"[:500], exc.smtp_code) from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({code for code, _ in exc.recipients.values()})
        raise SendFailed(
            f"SMTP: every recipient refused ({', '.join(map(str, codes))})",
            codes[0] if codes else None,
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise SendFailed(f"SMTP: {type(exc).__name__}: {exc}"[:500]) from None
    if not sent:
        raise SendFailed("the email backend sent nothing")
    return 250
