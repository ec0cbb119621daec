"""The Alembic migrations produce exactly the schema the models declare."""

from __future__ import annotations

import re
import warnings

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from daemon.store.engine import make_engine
from daemon.store.migrate import upgrade
from daemon.store.schema import metadata

# Indexes on an expression, such as lower(address): SQLAlchemy cannot reflect them on
# SQLite, so Alembic compares them on PostgreSQL only; test_expression_indexes checks both.
EXPRESSION_INDEXES = {"ix_message_recipients_address_lower": "lower(address)"}


def test_models_and_migrations_agree(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        with engine.connect() as conn, warnings.catch_warnings():
            if conn.dialect.name == "sqlite":
                for name in EXPRESSION_INDEXES:
                    warnings.filterwarnings("ignore", f".*expression-based index '?{name}'?")
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            diff = compare_metadata(context, metadata)
        assert diff == [], f"models changed without a migration: {diff}"
    finally:
        engine.dispose()


def test_expression_indexes(db_url: str) -> None:
    """Each expression index exists after the migrations, on the expression the model names."""
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            for name, expression in EXPRESSION_INDEXES.items():
                if conn.dialect.name == "sqlite":
                    query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"
                else:
                    query = "SELECT indexdef FROM pg_indexes WHERE indexname = :n"
                definition = conn.execute(sa.text(query), {"n": name}).scalar()
                assert definition is not None, name
                if conn.dialect.name == "postgresql":  # not left INVALID by a concurrent build
                    valid = conn.execute(
                        sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = :n ::regclass"),
                        {"n": name},
                    ).scalar()
                    assert valid is True, name
                # PostgreSQL spells lower(address) as lower((address)::text).
                spelled = re.sub(r"::\w+", "", definition.lower()).replace('"', "")
                assert expression in spelled.replace("((", "(").replace("))", ")"), definition
            model_indexes = {i.name for t in metadata.tables.values() for i in t.indexes}
            assert set(EXPRESSION_INDEXES) <= model_indexes
    finally:
        engine.dispose()


def test_sqlite_autoincrement_as_the_models_say(sqlite_url: str) -> None:
    """compare_metadata does not look at AUTOINCREMENT: the tables that never reuse an id
    (daemon.store.schema.NEVER_REUSED_IDS) have it, and only they."""
    engine = make_engine(sqlite_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            for table in metadata.tables.values():
                sql = conn.execute(
                    sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"),
                    {"n": table.name},
                ).scalar_one()
                declared = bool(table.dialect_options["sqlite"]["autoincrement"])
                assert ("AUTOINCREMENT" in sql.upper()) == declared, table.name
    finally:
        engine.dispose()
