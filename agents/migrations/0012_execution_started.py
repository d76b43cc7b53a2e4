# Issue 14: executions keep their acceptance time, get a start time of their own, and carry the
# write that last changed what the rollups count (docs/DECISIONS.md #23).

from typing import Any

from django.db import migrations, models
from django.db.migrations.operations.base import Operation

# The columns whose change moves a row in, out of or within the rollups (budgets.rollups): an
# update that changes none of them (who runs it, what it reserved, a redelivered record with
# the same values) keeps the row's seq, so the next refresh does not refold its minute.
COUNTED = (
    "status", "created_at", "agent_name", "api_key_id", "model", "attempts", "fallback_used",
    "fallback_reason", "cached", "input_tokens", "output_tokens", "cost_usd", "model_choice",
    "saved_usd", "latency_ms",
)  # fmt: skip

_NEW = ", ".join(f"NEW.{c}" for c in COUNTED)
_OLD = ", ".join(f"OLD.{c}" for c in COUNTED)

# PostgreSQL: the writing transaction's id (xid8, 64 bits: it never wraps). A refresh reads the
# rows whose transaction was not visible in its previous run's snapshot (pg_current_snapshot):
# commit order, not id order, decides, so a transaction that commits late is never skipped.
PG_CREATE = f"""
CREATE OR REPLACE FUNCTION agents_execution_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR ({_NEW}) IS DISTINCT FROM ({_OLD}) THEN
        NEW.seq := pg_current_xact_id()::text::bigint;
    ELSE
        NEW.seq := OLD.seq;
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS agents_execution_seq ON agents_execution;
CREATE TRIGGER agents_execution_seq BEFORE INSERT OR UPDATE ON agents_execution
    FOR EACH ROW EXECUTE FUNCTION agents_execution_seq();
"""
PG_DROP = """
DROP TRIGGER IF EXISTS agents_execution_seq ON agents_execution;
DROP FUNCTION IF EXISTS agents_execution_seq();
"""

# SQLite: one writer at a time (IMMEDIATE transactions, console/settings.py), so the next
# number after the largest is handed out in commit order.
_NEXT = (
    "COALESCE((SELECT seq FROM agents_execution WHERE seq IS NOT NULL "
    "ORDER BY seq DESC LIMIT 1), 0) + 1"
)
_CHANGED = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in COUNTED)
SQLITE_CREATE = [
    "CREATE TRIGGER IF NOT EXISTS agents_execution_seq_insert AFTER INSERT ON agents_execution "
    f"BEGIN UPDATE agents_execution SET seq = {_NEXT} WHERE id = NEW.id; END",
    "CREATE TRIGGER IF NOT EXISTS agents_execution_seq_update "
    f"AFTER UPDATE OF {', '.join(COUNTED)} ON agents_execution WHEN {_CHANGED} "
    f"BEGIN UPDATE agents_execution SET seq = {_NEXT} WHERE id = NEW.id; END",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS agents_execution_seq_insert",
    "DROP TRIGGER IF EXISTS agents_execution_seq_update",
]

INDEX = models.Index(fields=["seq"], name="execution_seq", condition=models.Q(seq__isnull=False))


def trigger_create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_CREATE)
        # A new column has no statistics until the next ANALYZE: the planner would guess that
        # a third of the table matches ``seq >= x`` and read all of it (10 s at 15M rows)
        # instead of the index. Sampled: seconds at 15M rows.
        schema_editor.execute("ANALYZE agents_execution")
    else:
        for sql in SQLITE_CREATE:
            schema_editor.execute(sql)


def trigger_drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DROP)
    else:
        for sql in SQLITE_DROP:
            schema_editor.execute(sql)


def running_started(apps: Any, schema_editor: Any) -> None:
    """Executions running now were claimed (or admitted) at their ``created_at``: until this
    migration a claim rewrote it. Their claim's age is read from ``started_at`` from now on."""
    execution = apps.get_model("agents", "Execution")
    execution.objects.filter(status="running", started_at__isnull=True).update(
        started_at=models.F("created_at")
    )


class SeqIndex(Operation):
    """The partial index on ``seq``: built CONCURRENTLY on PostgreSQL (no write is blocked
    while it reads the table: a minute or so at 15M rows), plainly on SQLite. Existing rows
    have no seq, so the index starts empty."""

    reduces_to_sql = False
    reversible = True

    def state_forwards(self, app_label: str, state: Any) -> None:
        state.add_index(app_label, "execution", INDEX)

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = to_state.apps.get_model(app_label, "Execution")
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX.name} "
                f"ON {model._meta.db_table} (seq) WHERE seq IS NOT NULL"
            )
        else:
            schema_editor.add_index(model, INDEX)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = from_state.apps.get_model(app_label, "Execution")
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX.name}")
        else:
            schema_editor.remove_index(model, INDEX)

    def describe(self) -> str:
        return f"Create index {INDEX.name} on Execution.seq"


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("agents", "0011_agent_max_concurrency"),
    ]

    operations = [
        migrations.AddField(
            model_name="execution",
            name="started_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="execution",
            name="seq",
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(running_started, migrations.RunPython.noop),
        migrations.RunPython(trigger_create, trigger_drop),
        SeqIndex(),
    ]
