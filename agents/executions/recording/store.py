"""Upsert a batch of journal events into ``Execution``, idempotently.

* ``started`` inserts a ``running`` row; over an existing row it writes only ``owner`` and
  ``reserved_usd`` (a queued row its worker claimed; a ``finished`` that arrived first keeps its
  status and everything else).
* ``finished`` is an upsert on ``id`` rewriting every column: redelivering it writes the same
  values again, and it wins over ``running`` (and over the reaper's ``failed``, being the truth).
* Within one batch the events of one execution collapse first (``finished`` wins).

A ``finished`` event that cost something, or was answered from the cache, also appends its
``budgets.SpendEntry`` (the ledger) in the same transaction, with ``ignore_conflicts`` on the
unique ``execution_id``: a redelivered event finds its entry there and adds nothing, and the
first charge recorded for an execution stands. The entry carries the prices of the deployment
that answered (for a cancelled execution, the last one attempted), looked up at drain time
from ``budgets.PriceVersion``: the latest version effective at the execution's ``started_at``
(the journal event does not carry prices; the executor's result has none). Null when no
version is known. The charged ``cost_usd`` itself always comes from the event.

A batch is one transaction. If the database refuses it for something in the data (a constraint,
a value it cannot hold), each row is retried alone and the ones that still fail are returned as
rejected (the caller sets them aside), so one bad event never blocks the journal. Any other
error (database down or locked, schema not migrated) is raised: the events stay in the journal.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, transaction

from agents.executions.recording.events import FINISHED_FIELDS, STARTED_FIELDS, Row

log = logging.getLogger("breakwater.recording")

# Errors caused by the event itself. Anything else is the database's (down, locked, not
# migrated): the events are kept and retried, never set aside.
POISON = (IntegrityError, DataError, ValidationError, ValueError, TypeError, ArithmeticError)
# Free text a client chose (session_id) is cut to its column rather than refused.
_CUT = ("agent_name", "model", "session_id")


@dataclass
class StoreOutcome:
    rows: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (event index, reason)


@dataclass
class _Merged:
    row: Row
    indexes: list[int]


def _merge(rows: Sequence[tuple[int, Row]]) -> list[_Merged]:
    merged: dict[uuid.UUID, _Merged] = {}
    for index, row in rows:
        seen = merged.get(row.id)
        if seen is None:
            merged[row.id] = _Merged(row, [index])
            continue
        seen.indexes.append(index)
        if row.finished or not seen.row.finished:
            seen.row = row
    return list(merged.values())


def _write(batch: Sequence[_Merged]) -> None:
    from agents.models import ApiKey, Execution

    key_ids = {m.row.fields["api_key_id"] for m in batch} - {None}
    with transaction.atomic():
        # A key deleted since the request: keep the record, drop the dangling reference.
        known = set(ApiKey.objects.filter(id__in=key_ids).values_list("id", flat=True))
        limits = {
            f.name: f.max_length
            for f in Execution._meta.concrete_fields
            if f.name in _CUT and f.max_length
        }
        started: list[Execution] = []
        finished: list[Execution] = []
        for m in batch:
            fields = dict(m.row.fields)
            if fields["api_key_id"] not in known:
                fields["api_key_id"] = None
            for name, length in limits.items():
                fields[name] = fields.get(name, "")[:length]
            (finished if m.row.finished else started).append(Execution(id=m.row.id, **fields))
        if started:
            # A row that exists (a claimed queued execution, a finished one) keeps everything
            # but who runs it and what it reserved.
            Execution.objects.bulk_create(
                started,
                update_conflicts=True,
                unique_fields=["id"],
                update_fields=list(STARTED_FIELDS),
            )
        if finished:
            Execution.objects.bulk_create(
                finished,
                update_conflicts=True,
                unique_fields=["id"],
                update_fields=list(FINISHED_FIELDS),
            )
            _ledger_append(finished, [m.row for m in batch if m.row.finished])


def _answering_deployment(execution: Any, steps: list[Any]) -> int | None:
    if execution.deployment_id is not None:
        return int(execution.deployment_id)
    for step in reversed(steps):
        if isinstance(step, dict) and step.get("deployment") is not None:
            return int(step["deployment"])
    return None


def _ledger_append(executions: Sequence[Any], rows: Sequence[Row]) -> None:
    """Append the ledger entries of finished executions that cost something or hit the cache."""
    from agents.runtime.budgets import to_micros
    from budgets.models import PriceVersion, SpendEntry

    charged = [
        (e, _answering_deployment(e, r.fields.get("steps") or []))
        for e, r in zip(executions, rows, strict=True)
        if e.cost_usd > 0 or e.cached
    ]
    if not charged:
        return
    versions: dict[int, list[Any]] = {}
    deployment_ids = {d for _, d in charged if d is not None}
    # Ordered newest first: the first version not after started_at is the one in force.
    for version in PriceVersion.objects.filter(deployment_id__in=deployment_ids).order_by(
        "deployment_id", "-effective_from", "-id"
    ):
        versions.setdefault(version.deployment_id, []).append(version)
    entries = []
    for execution, deployment_id in charged:
        price = next(
            (
                v
                for v in versions.get(deployment_id or 0, ())
                if v.effective_from <= execution.started_at
            ),
            None,
        )
        entries.append(
            SpendEntry(
                execution_id=execution.id,
                at=execution.started_at,
                agent_name=execution.agent_name,
                api_key_id=execution.api_key_id,
                model=execution.model,
                deployment_id=deployment_id,
                input_tokens=execution.input_tokens,
                output_tokens=execution.output_tokens,
                input_usd_per_mtok=price.input_usd_per_mtok if price else None,
                output_usd_per_mtok=price.output_usd_per_mtok if price else None,
                cost_usd=execution.cost_usd,
                charged_micros=to_micros(execution.cost_usd, up=True),
                cached=execution.cached,
                saved_usd=execution.saved_usd,
            )
        )
    SpendEntry.objects.bulk_create(entries, ignore_conflicts=True)


def store_rows(rows: Sequence[tuple[int, Row]]) -> StoreOutcome:
    """Write ``(event index, row)`` pairs; raises when the database, not the data, failed."""
    merged = _merge(rows)
    outcome = StoreOutcome()
    if not merged:
        return outcome
    try:
        _write(merged)
    except POISON:
        log.warning("record batch of %d failed; retrying row by row", len(merged), exc_info=True)
    else:
        outcome.rows = len(merged)
        return outcome
    for m in merged:
        try:
            _write([m])
        except POISON as exc:
            log.error("execution %s cannot be stored: %r", m.row.id, exc)
            outcome.rejected.extend((index, repr(exc)) for index in m.indexes)
        else:
            outcome.rows += 1
    return outcome
