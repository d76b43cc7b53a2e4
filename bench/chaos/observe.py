"""What the scenarios read back, all from outside the processes.

* the database: execution rows by status, ledger entries (``budgets_spendentry``), budgets and
  their limits, incidents (plain SQL on the tables Django created: ``agents_execution``,
  ``budgets_spendentry``, ``budgets_budget``, ``agents_agent``, ``incidents_incident``);
* the shared state as the API shows it (``GET /api/v1/deployments``: each deployment's live
  ``in_flight`` leases; ``GET /api/v1/budgets``: ``reserved_usd``), which is what the runtime's
  ``in_flight`` and ``budget_usage`` calls return;
* in distributed mode, Redis itself as a cross-check (live lease entries and reservation fields
  under ``bw:``; the key layout of ``agents/runtime/lua/lib.lua``, informational only).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bench.chaos.stack import Stack, http_json


def status_counts(stack: Stack) -> dict[str, int]:
    rows = stack.db.query("SELECT status, COUNT(*) FROM agents_execution GROUP BY status")
    return {str(status): int(n) for status, n in rows}


def running(stack: Stack) -> int:
    """Executions still ``running`` or ``queued`` (not settled)."""
    rows = stack.db.query(
        "SELECT COUNT(*) FROM agents_execution WHERE status IN ('running', 'queued')"
    )
    return int(rows[0][0])


def running_without_ledger(stack: Stack) -> int:
    """Executions still ``running`` with no ledger entry: neither finished nor charged."""
    rows = stack.db.query(
        "SELECT COUNT(*) FROM agents_execution e WHERE e.status = 'running' AND NOT EXISTS "
        "(SELECT 1 FROM budgets_spendentry s WHERE s.execution_id = e.id)"
    )
    return int(rows[0][0])


def executions(stack: Stack) -> int:
    return int(stack.db.query("SELECT COUNT(*) FROM agents_execution")[0][0])


def _uuid_text(value: Any) -> str:
    text = str(value).replace("-", "").lower()
    return text


def missing_rows(stack: Stack, ids: set[str]) -> set[str]:
    """The execution ids of ``ids`` that have no row."""
    if not ids:
        return set()
    found = {_uuid_text(v) for (v,) in stack.db.query("SELECT id FROM agents_execution")}
    return {i for i in ids if _uuid_text(i) not in found}


def charged(stack: Stack) -> tuple[int, Decimal]:
    """Ledger entries with a cost, and their sum."""
    rows = stack.db.query(
        "SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM budgets_spendentry WHERE cost_usd > 0"
    )
    return int(rows[0][0]), Decimal(str(rows[0][1]))


@dataclass(frozen=True)
class BudgetSpend:
    label: str  # "agent:capped daily"
    limit_usd: Decimal
    spent_usd: Decimal  # the ledger's sum over what the budget covers

    @property
    def over_usd(self) -> Decimal:
        return max(Decimal(0), self.spent_usd - self.limit_usd)


def ledger_vs_budgets(stack: Stack) -> list[BudgetSpend]:
    """Each budget's limit against what the ledger holds for its scope.

    Each scenario has a fresh database, so the whole ledger is the current window's (a run that
    crosses midnight UTC would mix two daily windows; the scenarios last minutes)."""
    budgets = stack.db.query(
        "SELECT b.scope, b.window, b.limit_usd, a.name, b.api_key_id FROM budgets_budget b "
        "LEFT JOIN agents_agent a ON a.id = b.agent_id"
    )
    out = []
    for scope, window, limit, agent, key_id in budgets:
        # Summed here, in Decimal: SQLite's SUM of a decimal column is a float (1.0000000000000002).
        if scope == "agent":
            sql = "SELECT cost_usd FROM budgets_spendentry WHERE agent_name = %s"
            params: tuple[Any, ...] = (agent,)
            label = f"agent:{agent} {window}"
        elif scope == "api_key":
            sql = "SELECT cost_usd FROM budgets_spendentry WHERE api_key_id = %s"
            params, label = (key_id,), f"api_key:{key_id} {window}"
        else:
            sql, params, label = ("SELECT cost_usd FROM budgets_spendentry", (), f"global {window}")
        spent = sum((Decimal(str(row[0])) for row in stack.db.query(sql, params)), Decimal(0))
        out.append(BudgetSpend(label, Decimal(str(limit)), spent))
    return out


def overspend(stack: Stack) -> tuple[float, str]:
    """The largest overspend of any budget ($), and a note of every budget's figures."""
    spends = ledger_vs_budgets(stack)
    worst = max((s.over_usd for s in spends), default=Decimal(0))
    note = "; ".join(f"{s.label} ${s.spent_usd:.4f} of ${s.limit_usd:.4f}" for s in spends)
    return float(worst), note


def incidents(stack: Stack) -> dict[str, int]:
    rows = stack.db.query("SELECT kind, COUNT(*) FROM incidents_incident GROUP BY kind")
    return {str(kind): int(n) for kind, n in rows}


# --- the shared state through the API ------------------------------------------------------------


def api_items(stack: Stack, path: str, *, tries: int = 3) -> list[dict[str, Any]] | None:
    """The ``items`` of an admin GET; None if it fails ``tries`` times in a row (0.5 s apart:
    the first read after Redis came back may meet a pooled connection that died with it)."""
    for attempt in range(tries):
        try:
            items: list[dict[str, Any]] = http_json(stack.url + path, key=stack.admin_key)["items"]
            return items
        except (OSError, ValueError, KeyError, TypeError):
            if attempt + 1 < tries:
                time.sleep(0.5)
    return None


def api_leases(stack: Stack) -> int | None:
    """Live leases over every deployment (``in_flight``); None if the API does not answer."""
    items = api_items(stack, "/api/v1/deployments?limit=100")
    return None if items is None else sum(int(i.get("in_flight") or 0) for i in items)


def api_reserved(stack: Stack) -> float | None:
    """Reserved dollars summed over every budget (a call under an agent budget and the global
    one holds its reservation on both); None if the API does not answer."""
    items = api_items(stack, "/api/v1/budgets?limit=100")
    return (
        None if items is None else round(sum(float(i.get("reserved_usd") or 0) for i in items), 6)
    )


def redis_held(stack: Stack) -> tuple[int, float] | None:
    """(live lease entries, reserved $) read from Redis itself; None in embedded mode or when
    Redis does not answer. Informational: it follows lib.lua's key layout of today."""
    if stack.redis is None:
        return None
    import redis

    try:
        client = stack.redis.client()
        try:
            now = time.time()
            leases = 0
            for key in client.scan_iter(match="bw:lease:*", count=1000):
                leases += int(client.zcount(key, now, "+inf"))
            reserved = 0
            for key in client.scan_iter(match="bw:bg:*", count=1000):
                if key.endswith(b":x"):
                    continue
                with contextlib.suppress(redis.ResponseError, ValueError, TypeError):
                    reserved += int(client.hget(key, "reserved") or 0)
            return leases, reserved / 1e6
        finally:
            client.close()
    except redis.RedisError:
        return None


@dataclass
class Held:
    leases: int | None
    reserved_usd: float | None
    raw: tuple[int, float] | None

    def note(self) -> str:
        text = f"leases {self.leases}, reserved ${self.reserved_usd}"
        if self.raw is not None:
            text += f" (Redis itself: {self.raw[0]} lease entries, ${self.raw[1]:.4f} reserved)"
        return text


def held(stack: Stack) -> Held:
    return Held(api_leases(stack), api_reserved(stack), redis_held(stack))
