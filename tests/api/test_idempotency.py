"""Idempotency-Key and personalization on POST /api/messages."""

from __future__ import annotations

import asyncio

import httpx

from tests.api.conftest import assert_envelope, message


async def total(client: httpx.AsyncClient) -> int:
    listed = await client.get("/api/messages")
    return int(listed.json()["data"]["pagination"]["total"])


async def test_same_key_and_body_replays_the_first_response(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/api/messages", json=message(), headers=headers)
    assert first.status_code == 202
    # Same body with other key order and spacing: still the same request.
    again = await client.post(
        "/api/messages",
        content=b'{"text_body": "Hello there", "subject": "Hello", "to": ["rcpt@example.org"],'
        b' "from": "sender@example.com"}',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await total(client) == 1

    other = await client.post("/api/messages", json=message(subject="Other"), headers=headers)
    error = assert_envelope(other, 422, "IDEMPOTENCY_KEY_REUSED")
    assert error["details"] == {"idempotency_key": "order-42"}
    assert await total(client) == 1
    # Keys are per workspace.
    elsewhere = await client.post(
        "/api/messages", json=message(), headers={**headers, "X-Workspace-ID": "ws-2"}
    )
    assert elsewhere.status_code == 202
    assert elsewhere.json()["data"]["message_id"] != first.json()["data"]["message_id"]


async def test_concurrent_requests_with_one_key_queue_one_message(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "burst-1"}
    responses = await asyncio.gather(
        *(client.post("/api/messages", json=message(), headers=headers) for _ in range(10))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["data"]["message_id"] for r in responses}) == 1
    assert await total(client) == 1


async def test_bad_idempotency_key(client: httpx.AsyncClient) -> None:
    for value in ["", "x" * 256, "has space"]:
        response = await client.post(
            "/api/messages", json=message(), headers={"Idempotency-Key": value}
        )
        assert_envelope(response, 400, "INVALID_REQUEST")


async def test_refusals_are_not_remembered(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "fix-and-retry"}
    bad = await client.post("/api/messages", json=message(to=["not an address"]), headers=headers)
    assert bad.status_code == 400
    good = await client.post("/api/messages", json=message(), headers=headers)
    assert good.status_code == 202


async def test_personalization_renders_subject_and_bodies(client: httpx.AsyncClient) -> None:
    sent = await client.post(
        "/api/messages",
        json=message(
            subject="Hello {{first_name}}",
            text_body="Dear {{ first_name }} {{ last_name }},",
            html_body="<p>Hi {{first_name}}</p>",
            personalization={
                "enabled": True,
                "variables": {"first_name": "<John>", "last_name": "Doe"},
            },
        ),
    )
    assert sent.status_code == 202, sent.text
    shown = (await client.get(f"/api/messages/{sent.json()['data']['message_id']}")).json()["data"]
    assert shown["subject"] == "Hello <John>"
    assert shown["text_body"].strip() == "Dear <John> Doe,"
    assert "<p>Hi &lt;John&gt;</p>" in shown["html_body"]


async def test_personalization_errors(client: httpx.AsyncClient) -> None:
    missing = await client.post(
        "/api/messages",
        json=message(text_body="Hi {{ nickname }}", personalization={"variables": {"a": "b"}}),
    )
    error = assert_envelope(missing, 400, "INVALID_REQUEST")
    assert error["details"] == {"field": "text_body", "variable": "nickname"}
    assert "nickname" in error["message"]
    for body in [
        message(subject="{{ x }}", personalization={"variables": {"x": "a\r\nBcc: evil@x.org"}}),
        message(subject="{% for %}", personalization={"variables": {"x": 1}}),
        message(text_body="{{ ''.__class__ }}", personalization={"variables": {"x": 1}}),
        message(text_body="{{ 'a' * 999999999 }}", personalization={"variables": {"x": 1}}),
    ]:
        assert_envelope(await client.post("/api/messages", json=body), 400, "INVALID_REQUEST")
    # Disabled personalization leaves the text alone.
    kept = await client.post(
        "/api/messages",
        json=message(subject="{{ x }}", personalization={"enabled": False, "variables": {"y": 1}}),
    )
    assert kept.status_code == 202
