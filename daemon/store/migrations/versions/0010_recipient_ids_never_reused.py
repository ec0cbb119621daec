"""recipient ids never reused: AUTOINCREMENT on SQLite's recipients table

Without AUTOINCREMENT SQLite gives the next recipient max(id) + 1, so deleting the
newest recipient handed its id to the next one created: a client holding the id, the
``rid`` in tracking URLs of mail already sent and message_tracking.recipient_id then
named someone else. SQLite only takes AUTOINCREMENT in CREATE TABLE, so the table is
rebuilt (rows and ids kept). Ids deleted before this revision are not recorded
anywhere, except those message_tracking still names: the sequence starts past them.
PostgreSQL sequences never hand a number out twice: nothing to do there.

Revision ID: 0010
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "recipients", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass
    # Copying the rows set sqlite_sequence to the highest id kept; ids that only
    # message_tracking remembers (revision 0007, when applied) must not come back either.
    if not sa.inspect(bind).has_table("message_tracking"):
        return
    highest = bind.execute(sa.text("SELECT MAX(recipient_id) FROM message_tracking")).scalar()
    if highest is None:
        return
    seq = bind.execute(
        sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'recipients'")
    ).scalar()
    if seq is None:
        bind.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('recipients', :n)"),
            {"n": highest},
        )
    elif highest > seq:
        bind.execute(
            sa.text("UPDATE sqlite_sequence SET seq = :n WHERE name = 'recipients'"),
            {"n": highest},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("recipients", recreate="always"):
        pass
