"""Apply Alembic migrations (on start, or alone with ``relayd migrate``)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).parent / "migrations"
# Serialises concurrent daemons migrating one PostgreSQL database.
_PG_LOCK_KEY = 0x52454C4159


class MigrationError(Exception):
    """The database's schema cannot be brought to this version's (one line, for the operator)."""


def alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    """The head revisions, comma-joined (feature branches each have their own head)."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return ",".join(sorted(heads)) or None


def _current(conn: sa.Connection) -> str | None:
    heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return _current(conn)


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the schema to every head; returns (revisions before, revisions after)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        before = _current(conn)
        script = ScriptDirectory.from_config(cfg)
        unknown = [rev for rev in (before or "").split(",") if rev and not _known(script, rev)]
        if unknown:
            raise MigrationError(
                f"the database is at schema revision {', '.join(unknown)}, which this relayd"
                " does not know: a newer relayd has migrated it; run that version (or restore"
                " a backup taken before the upgrade)"
            )
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
        after = _current(conn)
    return before, after
