"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}

# Rules: migrations/README. Indexes on existing tables: CONCURRENTLY on PostgreSQL, in
# op.get_context().autocommit_block(), IF NOT EXISTS after dropping an INVALID leftover
# (see 0009); NOT NULL columns with a server_default; data moved in SQL, not Python.


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
