"""Usage counters and idempotency keys in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from daemon.store import tenancy as store

DAY = datetime(2024, 1, 15, tzinfo=UTC)
LATER = DAY + timedelta(days=2)


def bucket(key: str, limit: int | None) -> store.Bucket:
    return store.Bucket(key, DAY, LATER, limit)


def test_consume_is_all_or_nothing(engine: Engine) -> None:
    wide, narrow = bucket("wide", 10), bucket("narrow", 2)
    with engine.begin() as conn:
        assert store.consume(conn, [wide, narrow]) == store.Consumed(True, (1, 1))
        assert store.consume(conn, [wide, narrow]) == store.Consumed(True, (2, 2))
        refused = store.consume(conn, [wide, narrow])
        assert refused == store.Consumed(False, (2, 2), 1)  # wide was given back
        assert store.consume(conn, [bucket("big", 3)], n=4).ok is False
        assert store.consume(conn, [bucket("free", None)], n=1000).counts == (1000,)
        assert store.peek(conn, [wide, bucket("never", 1)]) == (2, 0)


def test_counters_like_lists_one_window(engine: Engine) -> None:
    with engine.begin() as conn:
        store.consume(conn, [bucket("quota:user:ws:alice", None)])
        store.consume(conn, [bucket("quota:user:ws:bob", None)], n=3)
        store.consume(conn, [bucket("quota:user:ws_x:eve", None)])  # '_' is not a wildcard
        assert store.counters_like(conn, "quota:user:ws:", DAY) == {"alice": 1, "bob": 3}


def test_idempotency_claims_expire(engine: Engine) -> None:
    now = DAY + timedelta(hours=1)
    with engine.begin() as conn:
        claim = ("ws", "k", "hash-1", {"a": 1}, 202)
        assert store.claim_idempotency(conn, *claim, now, now - timedelta(hours=24)) is None
        earlier = store.claim_idempotency(
            conn, "ws", "k", "hash-2", {"b": 2}, 202, now, now - timedelta(hours=24)
        )
        assert earlier.request_hash == "hash-1" and earlier.response == {"a": 1}
        much_later = now + timedelta(hours=25)
        renewed = store.claim_idempotency(
            conn, "ws", "k", "hash-2", {"b": 2}, 202, much_later, much_later - timedelta(hours=24)
        )
        assert renewed is None


def test_purge_drops_expired_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        store.consume(conn, [bucket("old", None)])
        store.claim_idempotency(conn, "ws", "k", "h", {}, 202, DAY, DAY - timedelta(hours=24))
        assert store.purge_expired(conn, LATER - timedelta(seconds=1), DAY) == 0
        assert store.purge_expired(conn, LATER + timedelta(seconds=1), DAY + timedelta(1)) == 2
        assert store.peek(conn, [bucket("old", None)]) == (0,)
