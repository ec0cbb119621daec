"""The Python client library against a real relayd, including the reference's example."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relayctl.client import Attachment, Client
from relayctl.errors import ApiError, AuthError, NotFoundError, RelayError

SEND_AT = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)


def reference_example(token: str) -> tuple[str, str]:
    """The API reference's Python example, verbatim apart from the real token."""
    from smtp_relay import Client

    client = Client(api_key=token, workspace_id="ws-001")

    response = client.send_message(
        from_email="sender@example.com",
        to=["recipient@example.com"],
        subject="Test Email",
        html="<h1>Hello World</h1>",
        text="Hello World",
    )

    print(f"Message sent: {response.message_id}")
    message = client.get_message(response.message_id)
    client.close()
    return response.message_id, message["workspace_id"]


async def test_reference_example_runs_unchanged(
    relay: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_URL", relay.base_url)
    message_id, workspace = await asyncio.to_thread(reference_example, relay.admin_token)
    assert message_id.startswith("msg-")
    assert capsys.readouterr().out == f"Message sent: {message_id}\n"
    assert workspace == "ws-001"


def exercise(url: str, token: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with Client(api_key=token, base_url=url) as client:
        result = client.send_message(
            from_email="Ops <ops@example.com>",
            to="dev@example.org",
            subject="report",
            text="attached",
            attachments=[Attachment("a.csv", b"x,y\n1,2\n", "text/csv")],
            metadata={"source": "test"},
            campaign_id="camp-1",
            send_at=SEND_AT,
        )
        seen["result"] = result
        seen["detail"] = client.get_message(result.message_id)
        seen["page"] = client.list_messages(status="scheduled", limit=10)
        seen["cancel"] = client.cancel_message(result.message_id)
        try:
            client.get_message("msg-nope")
        except RelayError as exc:
            seen["not_found"] = exc
        try:
            client.retry_message(result.message_id)
        except RelayError as exc:
            seen["invalid_state"] = exc
        seen["health"] = client.health()
    with Client(api_key="bad", base_url=url) as client:
        try:
            client.list_messages()
        except AuthError as exc:
            seen["auth"] = exc
    return seen


async def test_typed_results_and_errors(relay: Any) -> None:
    seen = await asyncio.to_thread(exercise, relay.base_url, relay.admin_token)
    result = seen["result"]
    assert result.status == "scheduled"
    assert result.estimated_send_time is not None
    assert result.estimated_send_time.startswith(SEND_AT.isoformat()[:19])
    detail = seen["detail"]
    assert detail["campaign_id"] == "camp-1"
    assert detail["metadata"]["source"] == "test"
    assert [a["filename"] for a in detail["attachments"]] == ["a.csv"]
    assert [m["id"] for m in seen["page"]["messages"]] == [result.message_id]

    not_found = seen["not_found"]
    assert isinstance(not_found, NotFoundError)
    assert (not_found.code, not_found.status) == ("MESSAGE_NOT_FOUND", 404)
    assert not_found.request_id
    invalid_state = seen["invalid_state"]
    assert isinstance(invalid_state, ApiError)
    assert (invalid_state.code, invalid_state.status) == ("INVALID_STATE", 409)
    auth = seen["auth"]
    assert (auth.code, auth.status) == ("INVALID_TOKEN", 401)
