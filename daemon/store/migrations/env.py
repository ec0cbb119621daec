"""Alembic environment: runs on the connection handed in by daemon.store.migrate.

PostgreSQL: one transaction per migration, so a migration can leave its transaction
for ``CREATE INDEX CONCURRENTLY`` (``op.get_context().autocommit_block()``). SQLite: the
connection arrives inside daemon.store.migrate's single BEGIN IMMEDIATE transaction,
which Alembic then leaves alone (see that module).
"""

from __future__ import annotations

from alembic import context

from daemon.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via `alembic` CLI with a URL
    raise RuntimeError("run migrations with `relayd migrate`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    transaction_per_migration=connection.dialect.name == "postgresql",
)
with context.begin_transaction():
    context.run_migrations()
