"""API key authentication from memory: no database read per request.

Keys come from the live config snapshot (reloaded within ~1 s of any change, so a revocation is
in force in every process within a second). The checksum rejects mistyped or foreign tokens
before any look-up; the hash comparison is constant-time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from django.utils import timezone

from agents.access.keys import looks_like_key, prefix_of, verify_key
from agents.runtime.types import RateLimits
from core.errors import ApplicationError


class PermissionDenied(ApplicationError):
    status = 403
    type = "permission_denied"


@dataclass(frozen=True)
class Principal:
    key_id: int
    prefix: str
    scopes: frozenset[str]
    agents: frozenset[str]  # empty = all agents
    limits: RateLimits = field(default_factory=RateLimits)

    def require(self, scope: str) -> None:
        # admin implies every scope; operate implies read.
        if scope in self.scopes or "admin" in self.scopes:
            return
        if scope == "read" and "operate" in self.scopes:
            return
        raise PermissionDenied(f"this API key lacks the {scope!r} scope")

    def may_use(self, agent: str) -> bool:
        return not self.agents or agent in self.agents


# token -> (the config snapshot it was verified against, its key's expiry, its principal).
# A hit is only good for the same snapshot: any key change (revocation, new scopes) makes a new
# one. Saves the checksum and the SHA-256 on every request of a client that keeps its key.
_VERIFIED: dict[str, tuple[object, datetime | None, Principal]] = {}
_VERIFIED_MAX = 10_000


class _KeyConfig(Protocol):
    @property
    def snapshot(self) -> object: ...
    def key(self, prefix: str) -> Any: ...


class KeyRing(Protocol):
    """Where keys are looked up: the process's engine (its live config, its last-used buffer)."""

    @property
    def config(self) -> _KeyConfig: ...
    def key_used(self, key_id: int, at: datetime) -> None: ...


def principal_for(token: str, *, keys: KeyRing) -> Principal | None:
    """The principal ``token`` stands for, or None (malformed, unknown, revoked or expired)."""
    engine = keys
    snapshot = engine.config.snapshot
    hit = _VERIFIED.get(token)
    if hit is not None and hit[0] is snapshot:
        _, expires_at, principal = hit
    else:
        if not looks_like_key(token):
            return None
        info = engine.config.key(prefix_of(token))
        if info is None or not verify_key(token, info.secret_hash):
            return None
        expires_at = info.expires_at
        principal = Principal(info.id, info.prefix, info.scopes, info.agents, info.limits)
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[token] = (snapshot, expires_at, principal)
    now = timezone.now()
    if expires_at is not None and expires_at <= now:
        return None
    engine.key_used(principal.key_id, now)
    return principal
