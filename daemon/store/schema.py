"""Imports every table module so ``metadata`` is complete (migrations, drift test)."""

from __future__ import annotations

import sqlalchemy as sa

from daemon.store import accounts, audience, models
from daemon.store import engagement as engagement_tables
from daemon.store import providers as provider_tables
from daemon.store import tenancy as tenancy_tables
from daemon.store.models import metadata

TABLE_MODULES = [
    models,
    tenancy_tables,
    audience,
    provider_tables,
    accounts,
    engagement_tables,
]

# Integer ids that leave their table: recipients.id is in API answers, in the tracking
# URLs of mail already sent (rid) and in message_tracking.recipient_id. SQLite without
# AUTOINCREMENT gives a deleted highest id to the next row, so those old references
# would name the new recipient; AUTOINCREMENT never hands an id out twice (migration
# 0010; PostgreSQL sequences never do). The other integer ids (message_recipients,
# delivery_attempts, recipient_events, webhook_events) are only ever read with their
# row, so they keep SQLite's cheaper rowid allocation. Each table here declares
# sqlite_autoincrement in its own __table_args__; tests/store/test_ids_reuse.py holds
# every integer-keyed table to this list or the other and checks the declaration.
NEVER_REUSED_IDS: list[sa.Table] = [audience.recipients]

__all__ = ["NEVER_REUSED_IDS", "TABLE_MODULES", "metadata"]
