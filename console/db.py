"""Database helpers used by migrations."""

from __future__ import annotations

from typing import Any

from django.db import migrations

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION bw_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;
"""


def append_only(table: str) -> migrations.RunPython:
    """Refuse UPDATE (and, on PostgreSQL, DELETE) of ``table``'s rows in the database itself.

    On SQLite only UPDATE is refused by trigger: Django's test flush empties tables with DELETE
    there (PostgreSQL uses TRUNCATE, which row triggers do not see). The ORM refuses deletes on
    both (``console.models.AppendOnlyQuerySet``).
    """

    def forward(apps: Any, schema_editor: Any) -> None:
        vendor = schema_editor.connection.vendor
        if vendor == "postgresql":
            schema_editor.execute(_PG_FUNCTION)
            schema_editor.execute(
                f'CREATE TRIGGER "{table}_append_only" BEFORE UPDATE OR DELETE ON "{table}" '
                "FOR EACH ROW EXECUTE FUNCTION bw_refuse_change()"
            )
        elif vendor == "sqlite":
            schema_editor.execute(
                f'CREATE TRIGGER "{table}_append_only" BEFORE UPDATE ON "{table}" '
                f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only: UPDATE refused'); END"
            )

    def backward(apps: Any, schema_editor: Any) -> None:
        vendor = schema_editor.connection.vendor
        if vendor == "postgresql":
            schema_editor.execute(f'DROP TRIGGER IF EXISTS "{table}_append_only" ON "{table}"')
        elif vendor == "sqlite":
            schema_editor.execute(f'DROP TRIGGER IF EXISTS "{table}_append_only"')

    return migrations.RunPython(forward, backward)
