"""audience: recipients and campaigns

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _counter(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.Integer(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("workspace_id", sa.String(length=200), nullable=False),
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        _counter("messages"),
        _counter("pending"),
        _counter("total_recipients"),
        _counter("sent"),
        _counter("delivered"),
        _counter("bounced"),
        _counter("opened"),
        _counter("clicked"),
        _counter("unsubscribed"),
        _counter("complained"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "id"),
    )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.create_index("ix_campaigns_id", ["id"], unique=False)

    op.create_table(
        "recipients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=True),
        sa.Column("campaign_id", sa.String(length=200), nullable=True),
        sa.Column("first_name", sa.String(length=200), nullable=True),
        sa.Column("last_name", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("opt_in_date", sa.DateTime(), nullable=True),
        sa.Column("opt_out_date", sa.DateTime(), nullable=True),
        _counter("bounce_count"),
        sa.Column("last_bounce_date", sa.DateTime(), nullable=True),
        sa.Column("bounce_type", sa.String(length=20), nullable=True),
        _counter("total_received"),
        _counter("total_opened"),
        _counter("total_clicked"),
        sa.Column("last_open_date", sa.DateTime(), nullable=True),
        sa.Column("last_click_date", sa.DateTime(), nullable=True),
        sa.Column("suppression_reason", sa.Text(), nullable=True),
        sa.Column("suppressed_at", sa.DateTime(), nullable=True),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace_id", "email", name="uq_recipients_workspace_email"),
    )
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.create_index("ix_recipients_status_email", ["status", "email"], unique=False)
        batch_op.create_index(
            "ix_recipients_ws_status", ["workspace_id", "status", "id"], unique=False
        )

    # Listing newest first without a status filter reads 50 index entries, not the table.
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_queued", ["queued_at", "id"], unique=False)
        batch_op.create_index(
            "ix_messages_ws_queued", ["workspace_id", "queued_at", "id"], unique=False
        )

    # Campaigns of mail queued before this revision, with the counters its rows imply.
    op.execute(
        """
        INSERT INTO campaigns (workspace_id, id, messages, pending, total_recipients, sent,
            delivered, bounced, opened, clicked, unsubscribed, complained,
            created_at, started_at, completed_at, updated_at)
        SELECT m.workspace_id, m.campaign_id, COUNT(*),
            SUM(CASE WHEN m.status IN ('queued', 'scheduled', 'processing') THEN 1 ELSE 0 END),
            COALESCE(SUM(r.total), 0),
            COALESCE(SUM(r.sent), 0) + COALESCE(SUM(r.failed), 0),
            COALESCE(SUM(r.sent), 0), COALESCE(SUM(r.failed), 0), 0, 0, 0, 0,
            MIN(m.queued_at), MIN(m.processed_at),
            CASE WHEN SUM(CASE WHEN m.status IN ('queued', 'scheduled', 'processing')
                THEN 1 ELSE 0 END) = 0 THEN MAX(m.processed_at) END,
            MAX(COALESCE(m.updated_at, m.queued_at))
        FROM messages m LEFT JOIN (
            SELECT message_id, COUNT(*) AS total,
                SUM(CASE WHEN status = 'sent' THEN 1 ELSE 0 END) AS sent,
                SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed
            FROM message_recipients GROUP BY message_id
        ) r ON r.message_id = m.id
        WHERE m.campaign_id IS NOT NULL AND m.source <> 'dsn'
        GROUP BY m.workspace_id, m.campaign_id
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_ws_queued")
        batch_op.drop_index("ix_messages_queued")
    op.drop_table("recipients")
    op.drop_table("campaigns")
