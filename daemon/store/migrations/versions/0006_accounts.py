"""accounts: Maylng sender addresses; from_email_id and thread_id on messages

Revision ID: 0006
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "email_addresses",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("workspace_id", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("prefix", sa.String(length=64), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_index(
        op.f("ix_email_addresses_workspace_id"), "email_addresses", ["workspace_id"], unique=False
    )
    op.create_index(
        "ix_email_addresses_expiry", "email_addresses", ["status", "expires_at"], unique=False
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("from_email_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("thread_id", sa.String(length=200), nullable=True))
        batch_op.create_index("ix_messages_ws_thread", ["workspace_id", "thread_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_ws_thread")
        batch_op.drop_column("thread_id")
        batch_op.drop_column("from_email_id")
    op.drop_index("ix_email_addresses_expiry", table_name="email_addresses")
    op.drop_index(op.f("ix_email_addresses_workspace_id"), table_name="email_addresses")
    op.drop_table("email_addresses")
