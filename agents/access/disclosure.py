"""What an execution's steps and error tell whom: provider error text stays inside.

A failed provider attempt's step keeps the provider's own words (``"401 Incorrect API key
provided: sk-...``, an upstream model name, an organisation id) and an internal error keeps the
exception's text. The stored record keeps all of it, and so does the log (one line per failed
attempt, keys and secrets redacted). Clients see it by scope:

* ``operate`` and ``admin`` keys and console operators and admins: the full text;
* every other key (``execute``, ``read``) and console viewers: a typed summary instead, by failure type and upstream
  status, with no provider text: ``provider error 401 (authentication)``, ``upstream timeout``,
  ``web_search: tool failed``; an error's ``message`` likewise (``internal error``).

Every door renders through :func:`render_execution` / :func:`render_error` with the caller's
scopes: the execute response (lean door and ninja route, in ``agents.doors.execute``), ``GET
/executions/{id}`` and the list (``agents.api``), the execution socket (``agents.doors.consumers``) and
``/v1``'s error messages (``agents.doors.openai``). Steps the runtime words itself (refusals,
fallbacks, cache hits, a successful attempt) are shown as they are.

Cost: a result whose steps need no summary (every successful one) is returned as it is, after
one pass over its steps (well under a microsecond for the usual one to three).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from agents.runtime.types import ExecutionResult
from core.log_redaction import redact

log = logging.getLogger("breakwater.provider")

FULL_TEXT_SCOPES = frozenset({"operate", "admin"})

# Provider failure classes (agents/runtime/errors.py), by the name a step's ``outcome`` holds.
_LABELS = {
    "RateLimited": "rate limited",
    "Capacity": "overloaded",
    "QuotaExhausted": "quota exhausted",
    "ClientError": "invalid request",
    "AuthFailed": "authentication",
    "Timeout": "timeout",
    "ProviderError": "upstream error",
}
# The runtime's own wording before a failure's detail (agents/runtime/providers): kept as a kind.
_KINDS = (
    ("malformed response", "malformed response"),
    ("transport error", "connection failed"),
    ("stream error", "stream error"),
    ("stream ended", "stream cut short"),
)
_STATUS = re.compile(r"(\d{3}) ")
# Provider credentials a provider may echo back (OpenAI/Anthropic style keys, bearer tokens).
_SECRET = re.compile(
    r"""(?<![A-Za-z0-9])(sk-(?:ant-|proj-)?)[A-Za-z0-9_*-]{6,}|(Bearer )[^\s;,"']+""",
    re.IGNORECASE,
)


def sees_provider_text(scopes: Iterable[str] | None) -> bool:
    """``scopes`` of an API key, or None for a console user (Django session)."""
    return scopes is None or not FULL_TEXT_SCOPES.isdisjoint(scopes)


def attempt_summary(outcome: str, detail: str) -> str:
    """A failed attempt, typed: what failed and the upstream status, no provider text."""
    label = _LABELS.get(outcome)
    status = _STATUS.match(detail)
    if status is not None and label is not None:
        return f"provider error {status.group(1)} ({label})"
    if outcome == "Timeout":
        return "upstream timeout"
    kind = next((kind for prefix, kind in _KINDS if detail.startswith(prefix)), None)
    if label is None or label == "upstream error":
        return f"upstream error ({kind})" if kind else "upstream error"
    return f"provider error ({label}, {kind})" if kind else f"provider error ({label})"


_KEPT_TOOL_OUTCOMES = frozenset({"ok", "client"})


def _hides(kind: object, outcome: object) -> bool:
    """A step holding someone else's words: a failed provider attempt or tool."""
    return (kind == "attempt" and outcome != "ok") or (
        kind == "tool" and outcome not in _KEPT_TOOL_OUTCOMES
    )


def _summary(step: Mapping[str, Any]) -> str:
    """What a step that :func:`_hides` shows a caller without full text."""
    detail = step.get("detail") or ""
    if step.get("kind") == "attempt":
        return attempt_summary(step.get("outcome") or "", detail)
    name = detail.partition(":")[0]
    return f"{name}: tool failed" if name else "tool failed"


def render_error(error: Mapping[str, Any] | None, *, full: bool) -> Mapping[str, Any] | None:
    """An execution's ``error`` for a caller (``full``: as stored)."""
    if full or not error:
        return error
    kind = error.get("type")
    if kind == "client_error":
        message = str(error.get("message") or "")
        status = _STATUS.match(message)
        summary = (
            "provider error" + (f" {status.group(1)}" if status else "") + " (invalid request)"
        )
        return {**error, "message": summary}
    if kind == "internal_error":
        return {**error, "message": "internal error"}
    return error


def render_execution(result: dict[str, Any], *, full: bool) -> dict[str, Any]:
    """``result`` (an execution as the API answers it: ``steps`` and maybe ``error``) for a
    caller; the same object when there is nothing to hide."""
    if full:
        return result
    steps = result.get("steps") or ()
    rendered: list[Any] | None = None
    for index, step in enumerate(steps):
        if _hides(step.get("kind"), step.get("outcome")):
            if rendered is None:
                rendered = list(steps)
            rendered[index] = {**step, "detail": _summary(step)}
    error = result.get("error")
    if rendered is None and not error:
        return result  # the usual case: a successful execution
    shown = render_error(error, full=False)
    if rendered is None and shown is error:
        return result
    out = dict(result)
    if rendered is not None:
        out["steps"] = rendered
    if shown is not error:
        out["error"] = shown
    return out


def redact_secrets(text: str) -> str:
    """``text`` without Breakwater keys or provider credentials, for the log."""
    return redact(_SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "[redacted]", text))


def log_failed_attempts(result: ExecutionResult) -> None:
    """One log line per failed provider attempt or tool, with the full text (redacted): what
    execute-scoped callers see summarized, operators find here and in the stored record."""
    for step in result.steps:
        if _hides(step.kind, step.outcome):
            log.warning(
                "execution %s agent %s: %s on %s (deployment %s) failed: %s: %s",
                result.execution_id,
                result.agent,
                step.kind,
                step.model,
                step.deployment,
                step.outcome,
                redact_secrets(step.detail),
            )
