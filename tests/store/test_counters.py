"""Engagement events and delivery results on recipients and campaigns (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from daemon.core.message import Outcome
from daemon.store import audience, counters, queue
from tests.delivery.conftest import new_message

NOW = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)


def _recipient(engine: Engine, email: str, workspace_id: str = "ws-1") -> None:
    with engine.begin() as conn:
        audience.insert_recipient(
            conn,
            {
                "workspace_id": workspace_id,
                "email": email,
                "status": "ACTIVE",
                "metadata": {},
                "created_at": NOW,
                "updated_at": NOW,
            },
        )


def _get(engine: Engine, email: str, workspace_id: str = "ws-1") -> Any:
    with engine.connect() as conn:
        return audience.get_recipient(conn, workspace_id, email)


def _event(engine: Engine, email: str, event: str, **kw: Any) -> None:
    with engine.begin() as conn:
        counters.record_event(conn, workspace_id="ws-1", email=email, event=event, at=NOW, **kw)


def test_events_update_the_recipient(engine: Engine) -> None:
    _recipient(engine, "a@example.org")
    _event(engine, "A@example.org", "opened")
    _event(engine, "a@example.org", "opened")
    _event(engine, "a@example.org", "clicked")
    _event(engine, "a@example.org", "bounced", bounce_type="soft")
    row = _get(engine, "a@example.org")
    assert (row.total_opened, row.total_clicked, row.bounce_count) == (2, 1, 1)
    assert row.last_open_date == NOW and row.last_click_date == NOW
    assert (row.status, row.bounce_type) == ("ACTIVE", "soft")
    _event(engine, "a@example.org", "bounced")
    row = _get(engine, "a@example.org")
    assert (row.status, row.bounce_type, row.bounce_count) == ("BOUNCED", "hard", 2)
    assert row.suppression_reason == "hard bounce"


@pytest.mark.parametrize(
    ("event", "status", "reason"),
    [
        ("unsubscribed", "UNSUBSCRIBED", "unsubscribed"),
        ("complained", "COMPLAINED", "spam complaint"),
    ],
)
def test_unsubscribe_and_complaint_suppress(
    engine: Engine, event: str, status: str, reason: str
) -> None:
    _recipient(engine, "b@example.org")
    _event(engine, "b@example.org", event)
    row = _get(engine, "b@example.org")
    assert row.status == status
    assert row.suppression_reason == reason
    assert row.suppressed_at == NOW
    with engine.connect() as conn:
        found = audience.suppressed_addresses(
            conn, [("ws-1", "B@Example.org"), ("ws-2", "b@example.org")]
        )
    assert found == {("ws-1", "b@example.org"): f"suppressed: recipient is {status} ({reason})"}


def test_unknown_event_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError), engine.begin() as conn:
        counters.record_event(conn, workspace_id="w", email="a@b.c", event="liked", at=NOW)


def test_deliveries_count_received_mail_and_campaign_figures(engine: Engine) -> None:
    _recipient(engine, "c@example.org")
    message = new_message(("c@example.org", "d@example.org"), workspace_id="ws-1",
                          campaign_id="camp")  # fmt: skip
    with engine.begin() as conn:
        queue.insert_messages(conn, [message])
        claimed = queue.claim(conn, message.queued_at + timedelta(seconds=1), 10, "w",
                              timedelta(minutes=1))  # fmt: skip
    assert [m.id for m in claimed] == [message.id]
    outcome = Outcome(
        message_id=message.id,
        lease_owner="w",
        status="sent",
        processed_at=NOW,
        retry_count=0,
        recipient_status=(("C@example.org", "sent", None), ("d@example.org", "failed", "550")),
    )
    with engine.begin() as conn:
        assert queue.apply_outcomes(conn, [outcome]) == 1
        assert queue.apply_outcomes(conn, [outcome]) == 0  # a lost lease counts nothing
    assert _get(engine, "c@example.org").total_received == 1
    with engine.connect() as conn:
        (row,) = counters.find_campaigns(conn, "camp", "ws-1")
    assert (row.total_recipients, row.sent, row.delivered, row.bounced) == (2, 2, 1, 1)
    assert (row.messages, row.pending, row.started_at, row.completed_at) == (1, 0, NOW, NOW)
    # A later bounce of a delivered recipient moves it from delivered to bounced.
    _event(engine, "c@example.org", "bounced", campaign_id="camp")
    with engine.connect() as conn:
        (row,) = counters.find_campaigns(conn, "camp", None)
    assert (row.sent, row.delivered, row.bounced) == (2, 0, 2)
