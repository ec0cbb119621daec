"""The suppression policy: split a claimed message, fail an all-suppressed one, merge results."""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.core import suppression
from daemon.core.message import ClaimedMessage, Outcome, Recipient

NOW = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
FOUND = {("ws-1", "gone@example.org"): "suppressed: recipient is UNSUBSCRIBED"}


def claimed(*addresses: str, workspace_id: str = "ws-1") -> ClaimedMessage:
    return ClaimedMessage(
        id="msg-1",
        mail_from="a@example.com",
        recipients=[Recipient(a) for a in addresses],
        raw=b"",
        workspace_id=workspace_id,
        campaign_id=None,
        retry_count=2,
        max_retries=None,
        dsn_ret=None,
        dsn_envid=None,
        lease_owner="w",
        queued_at=NOW,
    )


def test_split_keeps_active_recipients_in_order() -> None:
    message = claimed("a@example.org", "Gone@Example.org", "b@example.org")
    kept, dropped = suppression.split(message, FOUND)
    assert [r.address for r in kept.recipients] == ["a@example.org", "b@example.org"]
    assert dropped == (("Gone@Example.org", "suppressed: recipient is UNSUBSCRIBED"),)


def test_split_matches_the_workspace_and_leaves_others_untouched() -> None:
    message = claimed("gone@example.org", workspace_id="ws-2")
    assert suppression.split(message, FOUND) == (message, ())


def test_all_suppressed_fails_with_the_reason() -> None:
    message = claimed("gone@example.org")
    _, dropped = suppression.split(message, FOUND)
    outcome = suppression.all_suppressed(message, dropped, NOW)
    assert outcome.status == "failed"
    assert outcome.retry_count == 2
    assert outcome.error == "gone@example.org: suppressed: recipient is UNSUBSCRIBED"
    assert outcome.recipient_status == (
        ("gone@example.org", "suppressed", "suppressed: recipient is UNSUBSCRIBED"),
    )
    assert outcome.attempts == ()


def test_merge_adds_the_suppressed_recipients() -> None:
    sent = Outcome("msg-1", "w", "sent", NOW, 0, recipient_status=(("a@x.org", "sent", None),))
    assert suppression.merge(sent, ()) is sent
    merged = suppression.merge(sent, (("g@x.org", "why"),))
    assert merged.status == "sent"
    assert merged.recipient_status == (("a@x.org", "sent", None), ("g@x.org", "suppressed", "why"))
    assert merged.error == "g@x.org: why"
