"""recipient address lower: GET /api/messages?to= ignores case, through an index on lower(address)

The plain index on message_recipients.address served only the exact, case-sensitive
``to=`` filter; the expression index replaces it (one index per recipient row, as before).

On PostgreSQL both indexes are built and dropped CONCURRENTLY, outside the migration's
transaction: a plain CREATE INDEX holds a SHARE lock on message_recipients for the whole
build, and every insert of a message waits behind it. The first release of this revision
did that; a database that applied it has the same index, so nothing changes for it. A
concurrent build that fails (or is cancelled) leaves an INVALID index under the name,
which IF NOT EXISTS would take for done: it is dropped and built again.

A concurrent build waits for every transaction open in the whole database, in any
schema, when it starts. An empty table (a new install) needs no such care, so there
the indexes are changed in the migration's transaction, as on SQLite.

Revision ID: 0009
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = "message_recipients"
LOWER = "ix_message_recipients_address_lower"
PLAIN = "ix_message_recipients_address"


def _build_concurrently(name: str, expression: str) -> None:
    """CREATE INDEX CONCURRENTLY, resuming after a build that failed halfway."""
    valid = op.get_bind().execute(
        sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            f" WHERE c.relname = :name AND i.indrelid = '{TABLE}'::regclass"
        ),
        {"name": name},
    ).scalar()
    if valid is False:
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {TABLE} ({expression})")


def _concurrently() -> bool:
    """PostgreSQL with rows to index: build out of the transaction (see the docstring)."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    return bool(bind.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {TABLE})")).scalar())


def upgrade() -> None:
    if _concurrently():
        with op.get_context().autocommit_block():
            _build_concurrently(LOWER, "lower(address)")
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {PLAIN}")
        return
    op.drop_index(PLAIN, table_name=TABLE)
    op.create_index(LOWER, TABLE, [sa.text("lower(address)")])


def downgrade() -> None:
    if _concurrently():
        with op.get_context().autocommit_block():
            _build_concurrently(PLAIN, "address")
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {LOWER}")
        return
    op.drop_index(LOWER, table_name=TABLE)
    op.create_index(PLAIN, TABLE, ["address"])
