"""POST /v1/emails/send, GET /v1/emails, GET /v1/emails/{id} and /status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from typing import Any

import pytest
import sqlalchemy as sa

from daemon.service import RelayService
from daemon.store import queue
from daemon.store.models import messages
from tests.api.conftest import finish
from tests.maylng.conftest import Accounts

EMAIL_KEYS = {
    "id",
    "from_email_id",
    "to_recipients",
    "cc_recipients",
    "bcc_recipients",
    "subject",
    "text_content",
    "html_content",
    "thread_id",
    "scheduled_at",
    "sent_at",
    "status",
    "provider_message_id",
    "failure_reason",
    "attachments",
    "metadata",
    "created_at",
    "updated_at",
}


async def _raw(service: RelayService, email_id: str) -> Any:
    def load(conn: Any) -> bytes | None:
        queue_id = conn.execute(
            sa.select(messages.c.id).where(messages.c.uuid == email_id)
        ).scalar()
        return queue.get_raw(conn, queue_id)

    raw = await service.reader.run(load)
    assert raw is not None
    return message_from_bytes(raw, policy=policy.default)


async def test_send_the_reference_example(accounts: Accounts, service: RelayService) -> None:
    client = accounts.client
    _, auth = await accounts.create()
    address = await accounts.address(auth, type="temporary", prefix="news")
    scheduled = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "from_email_id": address["id"],
        "to_recipients": ["recipient1@example.com", "recipient2@example.com"],
        "cc_recipients": ["cc@example.com"],
        "bcc_recipients": ["bcc@example.com"],
        "subject": "Hello from Maylng!",
        "text_content": "This is the plain text version of the email.",
        "html_content": "<h1>Hello!</h1><p>This is the <strong>HTML</strong> version.</p>",
        "attachments": {"file1.pdf": {"size": 1024, "type": "application/pdf"}},
        "headers": {"X-Priority": "1", "X-Custom-Header": "custom-value"},
        "thread_id": "789e0123-e89b-12d3-a456-426614174222",
        "scheduled_at": scheduled,
        "metadata": {"campaign_id": "newsletter_2025_07", "source": "api"},
    }
    response = await client.post("/v1/emails/send", headers=auth, json=body)
    assert response.status_code == 201, response.text
    email = response.json()
    assert set(email) == EMAIL_KEYS
    assert email["from_email_id"] == address["id"]
    assert email["to_recipients"] == body["to_recipients"]
    assert email["cc_recipients"] == ["cc@example.com"]
    assert email["bcc_recipients"] == ["bcc@example.com"]
    assert email["text_content"] == body["text_content"]
    assert email["html_content"] == body["html_content"]
    assert email["thread_id"] == body["thread_id"]
    assert email["scheduled_at"] == scheduled
    assert email["status"] == "scheduled"
    assert email["sent_at"] is None and email["provider_message_id"] is None
    assert email["failure_reason"] is None
    assert email["attachments"] == body["attachments"]
    assert email["metadata"] == body["metadata"]

    shown = await client.get(f"/v1/emails/{email['id']}", headers=auth)
    assert shown.status_code == 200
    assert shown.json() == email  # bodies read back from the stored MIME are the same
    mime = await _raw(service, email["id"])
    assert mime["From"] == "news@mail.example.com"
    assert mime["X-Custom-Header"] == "custom-value"
    assert "bcc@example.com" not in str(mime)
    row = await service.reader.run(
        lambda c: c.execute(sa.select(messages).where(messages.c.uuid == email["id"])).one()
    )
    assert row.priority == 0  # X-Priority 1 is high, as on /api
    assert row.from_email_id == address["id"]
    # A scheduled email can be cancelled through /api by its msg- id.
    cancelled = await client.delete(f"/api/messages/{row.id}", headers=auth)
    assert cancelled.status_code == 200
    status = await client.get(f"/v1/emails/{email['id']}/status", headers=auth)
    assert status.json() == {
        "id": email["id"],
        "status": "failed",
        "sent_at": None,
        "provider_message_id": None,
        "failure_reason": "cancelled",
    }


async def test_errors_quoted_in_the_reference(accounts: Accounts, service: RelayService) -> None:
    client = accounts.client
    _, auth = await accounts.create()
    _, other = await accounts.create()
    address = await accounts.address(auth)
    foreign = await accounts.address(other)
    no_content = await accounts.send(auth, address["id"], text_content=None, html_content=None)
    assert no_content.status_code == 400
    assert no_content.json() == {
        "error": "At least one of text_content or html_content must be provided"
    }
    empty = await accounts.send(auth, address["id"], text_content="", html_content="")
    assert empty.json()["error"].startswith("At least one of")
    for sender in (foreign["id"], "00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = await accounts.send(auth, sender)
        assert response.status_code == 404
        assert response.json() == {"error": "from email address not found or not active"}
    disabled = await accounts.address(auth)
    await client.patch(
        f"/v1/email-addresses/{disabled['id']}", headers=auth, json={"status": "disabled"}
    )
    refused = await accounts.send(auth, disabled["id"])
    assert refused.status_code == 404
    assert refused.json() == {"error": "from email address not found or not active"}


async def test_an_expired_address_cannot_send_even_before_the_job_runs(
    accounts: Accounts, service: RelayService
) -> None:
    _, auth = await accounts.create()
    expires = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    address = await accounts.address(auth, type="temporary", expires_at=expires)
    assert (await accounts.send(auth, address["id"])).status_code == 201
    later = service.clock() + timedelta(minutes=2)
    service.clock = lambda: later
    response = await accounts.send(auth, address["id"])
    assert response.status_code == 404
    assert response.json() == {"error": "from email address not found or not active"}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"to_recipients": ["not an address"]}, "to_recipients[0]"),
        ({"cc_recipients": ["ok@example.com", "bad@"]}, "cc_recipients[1]"),
        ({"bcc_recipients": "x@y@z"}, "bcc_recipients[0]"),
        ({"to_recipients": []}, "to_recipients is required"),
        ({"subject": None}, "subject is required"),
        ({"from_email_id": None}, "from_email_id is required"),
        ({"reply_to": "x@example.com"}, "unknown field(s): reply_to"),
        ({"headers": {"Bcc": "spy@example.com"}}, "headers.Bcc"),
        ({"headers": {"X-Evil": "a\r\nBcc: spy@example.com"}}, "headers.X-Evil"),
        ({"headers": {"Bad Name": "x"}}, "headers.Bad Name"),
        ({"subject": "two\r\nlines"}, "subject"),
        ({"scheduled_at": "next week"}, "scheduled_at must be an ISO 8601"),
        ({"attachments": {"a.pdf": 5}}, "attachments.a.pdf must be an object"),
        ({"attachments": ["a.pdf"]}, "attachments must be an object"),
        ({"thread_id": ""}, "thread_id must be 1-200 characters"),
        ({"metadata": "x"}, "metadata must be an object"),
    ],
)
async def test_invalid_sends_are_400_naming_the_field(
    accounts: Accounts, fields: dict[str, Any], error: str
) -> None:
    _, auth = await accounts.create()
    address = await accounts.address(auth)
    body = {
        "from_email_id": address["id"],
        "to_recipients": ["rcpt@example.org"],
        "subject": "Hello",
        "text_content": "Hello there",
        **fields,
    }
    response = await accounts.client.post("/v1/emails/send", headers=auth, json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert error in response.json()["error"]


async def test_thread_id_sets_in_reply_to_and_references(
    accounts: Accounts, service: RelayService
) -> None:
    _, auth = await accounts.create()
    address = await accounts.address(auth)
    first = (await accounts.send(auth, address["id"], subject="Plans")).json()
    second = (
        await accounts.send(auth, address["id"], subject="Re: Plans", thread_id=first["id"])
    ).json()
    third = (
        await accounts.send(auth, address["id"], subject="Re: Plans", thread_id=first["id"])
    ).json()
    ids = [(await _raw(service, e["id"]))["Message-ID"] for e in (first, second, third)]
    assert len(set(ids)) == 3
    second_mime = await _raw(service, second["id"])
    assert second_mime["In-Reply-To"] == ids[0]
    assert second_mime["References"] == ids[0]
    third_mime = await _raw(service, third["id"])
    assert third_mime["In-Reply-To"] == ids[1]
    assert third_mime["References"] == f"{ids[0]} {ids[1]}"
    assert third["thread_id"] == first["id"]
    # A caller's own In-Reply-To wins; a new thread id threads nothing.
    own = (
        await accounts.send(
            auth, address["id"], thread_id=first["id"], headers={"In-Reply-To": "<x@y.z>"}
        )
    ).json()
    own_mime = await _raw(service, own["id"])
    assert own_mime["In-Reply-To"] == "<x@y.z>"
    fresh = (await accounts.send(auth, address["id"], thread_id="brand-new")).json()
    assert (await _raw(service, fresh["id"]))["In-Reply-To"] is None
    # Another account's email does not thread into ours.
    _, other = await accounts.create()
    other_address = await accounts.address(other)
    foreign = (await accounts.send(other, other_address["id"], thread_id=first["id"])).json()
    assert (await _raw(service, foreign["id"]))["In-Reply-To"] is None


async def test_list_emails_pagination(accounts: Accounts) -> None:
    client = accounts.client
    _, auth = await accounts.create("pro")
    address = await accounts.address(auth)
    sent = [(await accounts.send(auth, address["id"], subject=f"n{i}")).json() for i in range(3)]
    listed = await client.get("/v1/emails", headers=auth)
    assert listed.status_code == 200
    body = listed.json()
    assert body["pagination"] == {"limit": 50, "offset": 0}
    assert [e["id"] for e in body["emails"]] == [e["id"] for e in reversed(sent)]
    assert body["emails"][0] == sent[-1]
    page = await client.get("/v1/emails?limit=1&offset=1", headers=auth)
    assert [e["subject"] for e in page.json()["emails"]] == ["n1"]
    assert page.json()["pagination"] == {"limit": 1, "offset": 1}
    capped = await client.get("/v1/emails?limit=500", headers=auth)
    assert capped.json()["pagination"]["limit"] == 100
    for query in ("limit=0", "limit=abc", "offset=-1"):
        bad = await client.get(f"/v1/emails?{query}", headers=auth)
        assert bad.status_code == 400, query
        assert set(bad.json()) == {"error"}


async def test_delivery_outcomes_map_to_maylng_statuses(
    accounts: Accounts, service: RelayService
) -> None:
    client = accounts.client
    _, auth = await accounts.create()
    address = await accounts.address(auth)
    ok = (await accounts.send(auth, address["id"])).json()
    assert ok["status"] == "queued"
    queue_id = await service.reader.run(
        lambda c: c.execute(sa.select(messages.c.id).where(messages.c.uuid == ok["id"])).scalar()
    )
    assert queue_id is not None
    await finish(service, queue_id, "sent")
    status = (await client.get(f"/v1/emails/{ok['id']}/status", headers=auth)).json()
    assert status["status"] == "sent"
    assert status["provider_message_id"] == "prov-1"
    assert status["sent_at"] is not None and status["failure_reason"] is None
    by_queue_id = await client.get(f"/v1/emails/{queue_id}", headers=auth)
    assert by_queue_id.json()["id"] == ok["id"]

    bad = (await accounts.send(auth, address["id"])).json()
    bad_id = await service.reader.run(
        lambda c: c.execute(sa.select(messages.c.id).where(messages.c.uuid == bad["id"])).scalar()
    )
    assert bad_id is not None
    await finish(service, bad_id, "failed", 550)
    failed = (await client.get(f"/v1/emails/{bad['id']}", headers=auth)).json()
    assert failed["status"] == "failed"
    assert failed["failure_reason"] == "550 5.1.1 mailbox unavailable"
    assert failed["sent_at"] is None


async def test_another_account_cannot_read_emails(accounts: Accounts) -> None:
    client = accounts.client
    _, owner = await accounts.create()
    _, intruder = await accounts.create()
    address = await accounts.address(owner)
    email = (await accounts.send(owner, address["id"])).json()
    for path in (f"/v1/emails/{email['id']}", f"/v1/emails/{email['id']}/status"):
        response = await client.get(path, headers=intruder)
        assert response.status_code == 404
        assert response.json() == {"error": "Email not found"}
    assert (await client.get("/v1/emails", headers=intruder)).json()["emails"] == []
    assert (await client.get("/v1/emails/nonsense", headers=owner)).status_code == 404
