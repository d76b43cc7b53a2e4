"""Database-level guards that Django's migrations cannot express."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db import connections

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION bw_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;
"""


def append_only_tables() -> list[str]:
    from core.models import AppendOnlyModel

    return sorted(
        model._meta.db_table
        for model in apps.get_models()
        if issubclass(model, AppendOnlyModel) and not model._meta.abstract
    )


def ensure_append_only(using: str = "default") -> None:
    """Install (idempotently) triggers that refuse UPDATE of append-only rows, and DELETE on
    PostgreSQL.

    Run after every ``migrate`` (``post_migrate``) rather than once in a migration, because
    SQLite rebuilds a table (dropping its triggers) whenever a later migration alters it. On
    SQLite only UPDATE is refused by trigger: Django's test flush empties tables with DELETE there
    (PostgreSQL uses TRUNCATE, which row triggers do not see). The ORM refuses deletes on both
    (``core.models.AppendOnlyQuerySet``).
    """
    connection = connections[using]
    with connection.cursor() as cursor:
        existing = set(connection.introspection.table_names(cursor))
        if connection.vendor == "postgresql":
            cursor.execute(_PG_FUNCTION)
        for table in append_only_tables():
            if table not in existing:
                continue
            if connection.vendor == "postgresql":
                cursor.execute(
                    f'CREATE OR REPLACE TRIGGER "{table}_append_only" BEFORE UPDATE OR DELETE '
                    f'ON "{table}" FOR EACH ROW EXECUTE FUNCTION bw_refuse_change()'
                )
            elif connection.vendor == "sqlite":
                cursor.execute(
                    f'CREATE TRIGGER IF NOT EXISTS "{table}_append_only" BEFORE UPDATE ON "{table}" '
                    f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only: UPDATE refused'); END"
                )


def on_post_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    ensure_append_only(using)
