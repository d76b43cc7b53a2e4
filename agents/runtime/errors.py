"""Typed provider failures and the one table that decides what each one means.

Every failure a provider call or a tool can produce is one of the classes below. The runtime never
inspects status codes or exception types itself: it looks the failure's :class:`Policy` up in
:data:`POLICIES` and obeys it (the reference deployment's ``ErrorHandler``, made exhaustive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

FallbackReason = Literal[
    "circuit_open", "budget_exceeded", "rate_limited", "timeout", "llm_error", "tool_error"
]
MessageKey = Literal["rate_limit", "timeout", "llm_error", "tool_error", "budget", "unavailable"]


class ProviderFailure(Exception):
    """Base class. ``status`` is the upstream HTTP status when there was one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        # Tokens the provider consumed before failing (a cut stream still costs money).
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens


class RateLimited(ProviderFailure):
    """429 from the provider: retry after ``retry_after`` (``Retry-After``) if the deadline allows."""


class Capacity(ProviderFailure):
    """503 / Anthropic 529: the provider is overloaded; retry with backoff."""


class QuotaExhausted(ProviderFailure):
    """429 ``insufficient_quota`` / billing errors: retrying cannot help; go to the fallback."""


class ClientError(ProviderFailure):
    """4xx caused by the request itself: no retry, and not the provider's fault (no breaker)."""


class AuthFailed(ProviderFailure):
    """401/403 from the provider: its key is wrong or revoked. The deployment is broken (breaker
    counts it) but retrying the same call cannot help; the next model may."""


class Timeout(ProviderFailure):
    """No answer in time. ``phase`` is connect, first_token or total."""

    def __init__(self, message: str, *, phase: str = "total", **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.phase = phase


class ToolFailed(ProviderFailure):
    """A tool raised, timed out, was refused or answered badly."""


class ProviderError(ProviderFailure):
    """Any other upstream failure: 5xx, a stream cut before its end, a body that is not even a
    complete reply (cut, not JSON, no usage). Charged an estimate of what was sent and received."""


class MalformedReply(ProviderError):
    """A reply the provider finished (it reported its usage) whose content cannot be used: text
    that is not valid UTF-8 (or holds a lone surrogate), a broken stream event, a body of the
    wrong shape. Charged for the usage it reported.

    Not counted for breakers: the upstream did answer, and what broke is this answer's content,
    which the request can provoke (a prompt that makes a model emit broken bytes). Counting it
    would let one caller's prompts open a deployment or agent breaker that every caller shares.
    A reply that does not even report its usage stays a :class:`ProviderError` (a provider or
    transport fault, counted like a 5xx). Retried, then the next model."""


class DeadlineReached(Timeout):
    """No time was left for an attempt to start (the deadline, less the share kept for the
    models after this one in the chain). Nothing was sent: no breaker counts it."""


@dataclass(frozen=True)
class Policy:
    retry: bool  # try the same model again (with backoff) while the deadline allows
    counts_for_breaker: bool  # a failure of the deployment/agent, for circuit breakers
    fallback: bool  # move on to the next model of the chain when retries are spent
    message: MessageKey  # which fallback message the user sees if everything fails
    reason: FallbackReason  # recorded on the execution


POLICIES: Final[dict[type[ProviderFailure], Policy]] = {
    RateLimited: Policy(True, False, True, "rate_limit", "rate_limited"),
    Capacity: Policy(True, True, True, "unavailable", "llm_error"),
    QuotaExhausted: Policy(False, False, True, "llm_error", "llm_error"),
    ClientError: Policy(False, False, False, "llm_error", "llm_error"),
    AuthFailed: Policy(False, True, True, "unavailable", "llm_error"),
    Timeout: Policy(True, True, True, "timeout", "timeout"),
    ToolFailed: Policy(False, False, False, "tool_error", "tool_error"),
    ProviderError: Policy(True, True, True, "llm_error", "llm_error"),
    MalformedReply: Policy(True, False, True, "llm_error", "llm_error"),
    DeadlineReached: Policy(False, False, True, "timeout", "timeout"),
}


def policy_for(failure: ProviderFailure) -> Policy:
    for cls in type(failure).__mro__:
        policy = POLICIES.get(cls)
        if policy is not None:
            return policy
    return POLICIES[ProviderError]


def classify_http(
    status: int,
    *,
    code: str | None = None,
    error_type: str | None = None,
    message: str | None = None,
) -> type[ProviderFailure]:
    """Map an upstream HTTP error to a failure class (OpenAI and Anthropic conventions)."""
    code = (code or "").lower()
    error_type = (error_type or "").lower()
    # Anthropic reports exhausted credit as a 400 invalid_request_error with this wording.
    if status == 400 and "credit balance" in (message or "").lower():
        return QuotaExhausted
    if status == 429:
        if "insufficient_quota" in (code, error_type) or "billing" in error_type:
            return QuotaExhausted
        return RateLimited
    if status in (503, 529) or error_type == "overloaded_error":
        return Capacity
    if status == 402 or (status in (400, 403) and ("billing" in error_type or "credit" in code)):
        return QuotaExhausted
    if status in (408, 504):
        return Timeout
    if status in (401, 403):
        return AuthFailed
    if 400 <= status < 500:
        return ClientError
    return ProviderError
