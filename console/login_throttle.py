"""Login throttling (django-axes): each lockout goes into the audit trail.

django-axes counts failed logins per username and client address and refuses the pair for the
cool-off once it reaches the limit (settings: ``AXES_*``). Its ``user_locked_out`` signal comes
for the failure that locks the pair out, and again for each refused try during the cool-off
(those carry no failure count): one audit row per lockout, not per refused try.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from core.audit import audit_record


def audit_lockout(
    sender: object,
    *,
    request: HttpRequest | None = None,
    username: str | None = None,
    ip_address: str | None = None,
    **kwargs: Any,
) -> None:
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is None:
        return  # a try refused during the cool-off: the lockout is audited already
    audit_record(
        actor=f"login:{ip_address or 'unknown'}"[:150],
        action="login_lockout",
        target_type="user",
        target_id=(username or "")[:128] or "(blank)",
        after={
            "ip_address": ip_address,
            "failures": failures,
            "cooloff_s": settings.AXES_COOLOFF_TIME.total_seconds(),
            "path": request.path if request is not None else "",
        },
        reason=f"{failures} failed logins for this username from this address",
        request_id=(request.headers.get("X-Request-ID", "") if request is not None else "")[:64],
    )


def connect_signals() -> None:
    from axes.signals import user_locked_out

    user_locked_out.connect(audit_lockout, dispatch_uid="bw-audit-login-lockout")
