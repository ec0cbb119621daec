"""SMTP AUTH with workspace API keys over STARTTLS; quotas and queue depth on SMTP."""

from __future__ import annotations

import smtplib
from typing import Any

import httpx
import pytest

from daemon.api import create_app
from tests.smtp.conftest import TOKEN, SmtpRelay, StartRelay, in_thread

MAIL = (
    b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n"
    b"X-Workspace-ID: ws-b\r\n\r\nbody\r\n"
)


async def admin_call(relay: SmtpRelay, method: str, path: str, **kwargs: Any) -> Any:
    transport = httpx.ASGITransport(app=create_app(relay.service))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://relay.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        response = await client.request(method, path, **kwargs)
    assert response.status_code < 300, response.text
    return response.json().get("data")


async def workspace_key(relay: SmtpRelay, workspace_id: str, **settings: Any) -> dict[str, Any]:
    await admin_call(relay, "POST", "/api/admin/workspaces", json={"id": workspace_id, **settings})
    data: dict[str, Any] = await admin_call(
        relay, "POST", "/api/admin/keys", json={"workspace_id": workspace_id}
    )
    return data


def submit(
    relay: SmtpRelay, username: str, password: str, count: int = 1, mail: bytes = MAIL
) -> list[Any]:
    """Log in over STARTTLS and send ``count`` messages; each outcome or SMTP error."""
    outcomes: list[Any] = []
    with relay.smtp() as client:
        client.starttls(context=relay.client_context())
        client.login(username, password)
        for _ in range(count):
            try:
                client.sendmail("a@example.com", ["b@example.org"], mail)
                outcomes.append("ok")
            except smtplib.SMTPRecipientsRefused as exc:
                outcomes.append(exc.recipients["b@example.org"])
            except smtplib.SMTPDataError as exc:
                outcomes.append((exc.smtp_code, exc.smtp_error))
            client.rset()
    return outcomes


async def test_workspace_key_owns_the_mail(start_relay: StartRelay) -> None:
    relay = await start_relay(smtp={"require_auth": True})
    key = await workspace_key(relay, "ws-a")
    assert await in_thread(submit, relay, "ws-a", key["key"]) == ["ok"]
    with relay.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT workspace_id FROM messages").all()
    # X-Workspace-ID: ws-b in the message does not move it out of the key's workspace.
    assert [r[0] for r in rows] == ["ws-a"]


@pytest.mark.usefixtures("clear_of_midnight")
async def test_per_user_key_owns_the_user_and_its_quota(start_relay: StartRelay) -> None:
    relay = await start_relay(smtp={"require_auth": True})
    await workspace_key(relay, "ws-u", quotas={"user_daily": 1})
    key = await admin_call(
        relay, "POST", "/api/admin/keys", json={"workspace_id": "ws-u", "user_id": "alice"}
    )
    outcomes = [
        await in_thread(
            submit, relay, "ws-u", key["key"], 1, MAIL.replace(b"ws-b", b"ws-u\r\n" + header)
        )
        for header in (b"X-User-ID: mallory", b"X-User-ID: trudy")
    ]
    assert outcomes == [["ok"], [(452, b"4.5.3 Daily sending quota exceeded, try again later")]]
    with relay.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT workspace_id, user_id FROM messages").all()
    # X-User-ID neither moves the mail to another user nor escapes alice's quota.
    assert [tuple(r) for r in rows] == [("ws-u", "alice")]


@pytest.mark.parametrize("username", ["ws-other", "ws-a "])
async def test_key_of_another_workspace_is_refused(start_relay: StartRelay, username: str) -> None:
    relay = await start_relay(smtp={"require_auth": True})
    key = await workspace_key(relay, "ws-a")
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        await in_thread(submit, relay, username, key["key"])
    assert refused.value.smtp_code == 535


async def test_revoked_key_is_refused(start_relay: StartRelay) -> None:
    relay = await start_relay(smtp={"require_auth": True})
    key = await workspace_key(relay, "ws-a")
    await admin_call(relay, "DELETE", f"/api/admin/keys/{key['id']}")
    with pytest.raises(smtplib.SMTPAuthenticationError):
        await in_thread(submit, relay, "ws-a", key["key"])


@pytest.mark.usefixtures("clear_of_midnight")
async def test_daily_quota_is_a_temporary_refusal(start_relay: StartRelay) -> None:
    relay = await start_relay()
    key = await workspace_key(relay, "ws-q", quotas={"daily": 2})
    outcomes = await in_thread(submit, relay, "ws-q", key["key"], 3)
    assert outcomes[:2] == ["ok", "ok"]
    code, text = outcomes[2]
    assert code == 452 and text.startswith(b"4.5.3")
    assert relay.count() == 2


async def test_full_queue_is_452_431(start_relay: StartRelay) -> None:
    relay = await start_relay(queue={"max_depth": 1})
    outcomes = await in_thread(submit, relay, "anyone", TOKEN, 2)
    assert outcomes[0] == "ok"
    assert outcomes[1][0] == 452 and outcomes[1][1].startswith(b"4.3.1")
    assert relay.count() == 1
