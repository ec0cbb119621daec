"""recipient address lower: GET /api/messages?to= ignores case, through an index on lower(address)

The plain index on message_recipients.address served only the exact, case-sensitive
``to=`` filter; the expression index replaces it (one index per recipient row, as before).

Revision ID: 0009
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_message_recipients_address", table_name="message_recipients")
    op.create_index(
        "ix_message_recipients_address_lower",
        "message_recipients",
        [sa.text("lower(address)")],
    )


def downgrade() -> None:
    op.drop_index("ix_message_recipients_address_lower", table_name="message_recipients")
    op.create_index("ix_message_recipients_address", "message_recipients", ["address"])
