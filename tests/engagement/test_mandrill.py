"""POST /webhook/mandrill: Mandrill's signature, both encodings, every event type's effect,
and replayed batches counting once."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from daemon.service import RelayService
from daemon.store import queue
from tests.api.conftest import assert_envelope
from tests.engagement.conftest import send

KEY = "mandrill-webhook-key"
URL = "https://relay.example.com/webhook/mandrill"


def mandrill_signature(key: str, url: str, params: dict[str, str]) -> str:
    """Mandrill's documented algorithm, written out independently of the daemon's."""
    signed = url
    for name in sorted(params):
        signed += name + params[name]
    return base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def event(kind: str, mid: str, email: str = "reader@example.org", **extra: Any) -> dict[str, Any]:
    return {
        "event": kind,
        "_id": mid,
        "ts": 1705320000 + len(kind),
        "msg": {"_id": mid, "email": email, "state": "sent", "ts": 1705320000, **extra},
        **({"url": "https://example.com/x"} if kind == "click" else {}),
    }


def form(events: list[object]) -> dict[str, str]:
    # Anything JSON: a test may post events that are not objects at all.
    return {"mandrill_events": json.dumps(events)}


def keyed(service: RelayService) -> None:
    section = dataclasses.replace(service.config.webhooks, mandrill_key=KEY, mandrill_url=URL)
    service.reconfigure(dataclasses.replace(service.config, webhooks=section))


async def post_form(
    anon: httpx.AsyncClient, params: dict[str, str], signature: str | None = None
) -> httpx.Response:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers["X-Mandrill-Signature"] = signature
    return await anon.post("/webhook/mandrill", content=urlencode(params), headers=headers)


async def test_head_answers_200(anon: httpx.AsyncClient) -> None:
    assert (await anon.head("/webhook/mandrill")).status_code == 200


async def test_signature_good_bad_missing(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    keyed(service)
    mid = await send(client, html_body=None)
    params = form([event("open", mid)])
    good = mandrill_signature(KEY, URL, params)
    assert_envelope(await post_form(anon, params), 401, "AUTH_REQUIRED")
    assert_envelope(await post_form(anon, params, "bm90IGl0"), 401, "INVALID_TOKEN")
    other_url = mandrill_signature(KEY, "https://elsewhere/webhook/mandrill", params)
    assert_envelope(await post_form(anon, params, other_url), 401, "INVALID_TOKEN")
    json_post = await anon.post(
        "/webhook/mandrill",
        json={"mandrill_events": [event("open", mid)]},
        headers={"X-Mandrill-Signature": good},
    )
    assert_envelope(json_post, 401, "AUTH_REQUIRED")
    stats = (await client.get("/api/recipients?email=reader")).json()["data"]["recipients"]
    assert stats == []  # nothing changed by any refused post
    response = await post_form(anon, params, good)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"applied": 1, "duplicates": 0, "skipped": 0}


async def test_unsigned_form_and_json_without_key(
    client: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    mid = await send(client, campaign_id="camp-m")
    as_form = await post_form(anon, form([event("open", mid)]))
    assert as_form.status_code == 200 and as_form.json()["data"]["applied"] == 1
    as_json = await anon.post("/webhook/mandrill", json={"mandrill_events": [event("click", mid)]})
    assert as_json.status_code == 200 and as_json.json()["data"]["applied"] == 1
    stats = (await client.get("/api/campaigns/camp-m/stats")).json()["data"]["stats"]
    assert stats["opened"] == 1 and stats["clicked"] == 1
    bad = await post_form(anon, {"mandrill_events": "{not json"})
    assert_envelope(bad, 400, "INVALID_REQUEST")
    assert_envelope(await post_form(anon, {}), 400, "MISSING_REQUIRED_FIELD")


async def _sent(client: httpx.AsyncClient, service: RelayService, campaign: str) -> str:
    """A campaign message a provider took (status sent), to a known recipient."""
    from tests.api.conftest import finish

    await client.post("/api/recipients", json={"email": "reader@example.org"})
    mid = await send(client, campaign_id=campaign)
    await finish(service, mid, status="sent")
    return mid


@pytest.mark.parametrize(
    ("kind", "status", "recipient_status", "stat", "engagement"),
    [
        ("send", "delivered", "ACTIVE", None, None),
        ("open", "sent", "ACTIVE", "opened", "total_opened"),
        ("click", "sent", "ACTIVE", "clicked", "total_clicked"),
        ("hard_bounce", "failed", "BOUNCED", "bounced", None),
        ("bounce", "failed", "BOUNCED", "bounced", None),
        ("soft_bounce", "sent", "ACTIVE", None, None),
        ("spam", "sent", "COMPLAINED", "complained", None),
        ("unsub", "sent", "UNSUBSCRIBED", "unsubscribed", None),
        ("reject", "failed", "ACTIVE", "bounced", None),
    ],
)
async def test_every_event_type(
    client: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    service: RelayService,
    kind: str,
    status: str,
    recipient_status: str,
    stat: str | None,
    engagement: str | None,
) -> None:
    mid = await _sent(client, service, "camp-e")
    before = (await client.get("/api/campaigns/camp-e/stats")).json()["data"]["stats"]
    response = await post_form(anon, form([event(kind, mid, bounce_description="mailbox gone")]))
    assert response.json()["data"]["applied"] == 1
    message = (await client.get("/api/messages/" + mid)).json()["data"]
    assert message["status"] == status
    detail = (await client.get("/api/recipients/reader@example.org")).json()["data"]
    assert detail["status"] == recipient_status
    after = (await client.get("/api/campaigns/camp-e/stats")).json()["data"]["stats"]
    changed = {k for k in after if after[k] != before[k]}
    if stat is None:
        assert changed == set()
    else:
        assert after[stat] == before[stat] + 1
    if engagement:
        assert detail["engagement"][engagement] == 1
    if kind in ("hard_bounce", "bounce", "soft_bounce", "reject"):
        assert detail["bounce_count"] == 1
        assert detail["bounce_type"] == {"soft_bounce": "soft", "reject": "reject"}.get(
            kind, "hard"
        )
    if recipient_status != "ACTIVE":
        assert detail["suppression_reason"] and detail["suppressed_at"]


async def test_replayed_batch_counts_once(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    mid = await _sent(client, service, "camp-r")
    batch = form([event("open", mid), event("click", mid), event("hard_bounce", mid)])
    first = await post_form(anon, batch)
    assert first.json()["data"] == {"applied": 3, "duplicates": 0, "skipped": 0}
    second = await post_form(anon, batch)
    assert second.json()["data"] == {"applied": 0, "duplicates": 3, "skipped": 0}
    stats = (await client.get("/api/campaigns/camp-r/stats")).json()["data"]["stats"]
    assert (stats["opened"], stats["clicked"], stats["bounced"]) == (1, 1, 1)
    detail = (await client.get("/api/recipients/reader@example.org")).json()["data"]
    assert detail["bounce_count"] == 1 and detail["engagement"]["total_opened"] == 1


async def test_unknown_events_are_skipped_not_fatal(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    mid = await send(client)
    response = await post_form(
        anon, form([{"event": "nonsense"}, "x", event("open", mid), {"event": "open"}])
    )
    assert response.json()["data"] == {"applied": 1, "duplicates": 0, "skipped": 3}
    assert await service.reader.run(lambda c: queue.get_message(c, mid)) is not None


async def test_unreadable_key_file_refuses_instead_of_taking_unsigned_posts(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService, tmp_path: Path
) -> None:
    key_file = tmp_path / "mandrill.key"
    key_file.write_text(KEY)
    section = dataclasses.replace(
        service.config.webhooks, mandrill_key_file=str(key_file), mandrill_url=URL
    )
    service.reconfigure(dataclasses.replace(service.config, webhooks=section))
    mid = await send(client, campaign_id="camp-k")
    unsigned = {"mandrill_events": [event("open", mid)]}
    assert_envelope(await anon.post("/webhook/mandrill", json=unsigned), 401, "AUTH_REQUIRED")
    key_file.unlink()  # e.g. rotated away or its permissions changed after start-up
    refused = await anon.post("/webhook/mandrill", json=unsigned)
    assert_envelope(refused, 500, "INTERNAL_ERROR")
    stats = (await client.get("/api/campaigns/camp-k/stats")).json()["data"]["stats"]
    assert stats["opened"] == 0
