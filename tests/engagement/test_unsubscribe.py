"""One-click unsubscribe (RFC 8058): the headers on campaign mail, the confirmation page,
the one-click POST, refusals that change nothing, and the whole flow in headless Chromium."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from email import message_from_bytes
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from daemon.server import Server
from daemon.service import RelayService
from tests.engagement.conftest import AUTH, prepared, send

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def unsubscribe_link(raw: bytes) -> str:
    header = message_from_bytes(raw)["List-Unsubscribe"]
    assert header is not None
    match = re.search(r"<(https?://[^>]+)>", header)
    assert match, header
    return match.group(1)


async def test_campaign_mail_carries_the_headers(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    mid = await send(client, campaign_id="camp-u")
    headers = message_from_bytes((await prepared(service, mid)).raw)
    link = headers["List-Unsubscribe"]
    assert link.startswith("<https://t.example/webhook/unsubscribe?token=")
    assert f"<mailto:bounces+{mid}@bounces.relay.test?subject=unsubscribe>" in link
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    plain = await send(client)  # not campaign mail: no List-Unsubscribe
    assert message_from_bytes((await prepared(service, plain)).raw)["List-Unsubscribe"] is None


async def _token(client: httpx.AsyncClient, service: RelayService, **fields: Any) -> str:
    mid = await send(client, campaign_id="camp-u", **fields)
    return parse_qs(urlsplit(unsubscribe_link((await prepared(service, mid)).raw)).query)["token"][
        0
    ]


async def test_one_click_post_unsubscribes(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    token = await _token(client, service)
    page = await anon.get("/webhook/unsubscribe", params={"token": token})
    assert page.status_code == 200 and 'id="unsubscribe"' in page.text
    assert "reader@example.org" in page.text
    assert (
        await client.get("/api/recipients/reader@example.org")
    ).status_code == 404  # GET changed nothing
    done = await anon.post("/webhook/unsubscribe", params={"token": token}, data=ONE_CLICK)
    assert done.status_code == 200
    assert "<h1>Unsubscribed Successfully</h1>" in done.text
    detail = (await client.get("/api/recipients/reader@example.org")).json()["data"]
    assert detail["status"] == "UNSUBSCRIBED"
    assert detail["suppression_reason"] == "one-click unsubscribe" and detail["opt_out_date"]
    stats = (await client.get("/api/campaigns/camp-u/stats")).json()["data"]["stats"]
    assert stats["unsubscribed"] == 1
    again = await anon.post("/webhook/unsubscribe", params={"token": token}, data=ONE_CLICK)
    assert again.status_code == 200
    stats = (await client.get("/api/campaigns/camp-u/stats")).json()["data"]["stats"]
    assert stats["unsubscribed"] == 1


async def test_reference_form_fields_alongside_a_token(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    token = await _token(client, service)
    form = {"email": "Reader@Example.org", "campaign_id": "camp-u", "reason": "not_interested"}
    done = await anon.post("/webhook/unsubscribe", data={**form, "token": token})
    assert done.status_code == 200
    detail = (await client.get("/api/recipients/reader@example.org")).json()["data"]
    assert (detail["status"], detail["suppression_reason"]) == ("UNSUBSCRIBED", "not_interested")


async def test_without_a_valid_token_nothing_changes(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    await client.post("/api/recipients", json={"email": "reader@example.org"})
    await client.post("/api/recipients", json={"email": "victim@example.org"})
    token = await _token(client, service)
    mid, rid, sig = token.split(".")
    attempts = [
        ({}, {"email": "victim@example.org", "campaign_id": "camp-u", "reason": "x"}),
        ({"token": f"{mid}.{rid}.{'A' * len(sig)}"}, ONE_CLICK),
        (
            {"token": f"{mid}.{int(rid) + 1}.{sig}" if rid.isdigit() else f"{mid}.x{rid}.{sig}"},
            ONE_CLICK,
        ),
        ({"token": token}, {"email": "victim@example.org"}),
        ({"token": token}, {"campaign_id": "another-campaign"}),
        ({"token": "garbage"}, ONE_CLICK),
    ]
    for params, form in attempts:
        response = await anon.post("/webhook/unsubscribe", params=params, data=form)
        assert response.status_code == 400, (params, form)
        assert "Unsubscribed Successfully" not in response.text
    for email in ("reader@example.org", "victim@example.org"):
        detail = (await client.get(f"/api/recipients/{email}")).json()["data"]
        assert detail["status"] == "ACTIVE", email
    assert (await anon.get("/webhook/unsubscribe", params={"token": "x.y.z"})).status_code == 400


# -- the whole flow in a real browser --------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@pytest.fixture
async def relay(make_config: Callable[..., Any], sqlite_url: str) -> AsyncIterator[Server]:
    """relayd with tracking on and its own URL as the link base, delivering to the outbox."""
    server = Server(make_config(sqlite_url, tracking={"enabled": True}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _click_through(url: str) -> tuple[str, str]:
    """Open the link in headless Chromium, press the button; (page before, page after)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.get(url)
        before = driver.find_element(By.TAG_NAME, "body").text
        driver.find_element(By.ID, "reason").send_keys("Too frequent")
        driver.find_element(By.ID, "unsubscribe").click()
        WebDriverWait(driver, 20).until(
            expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Unsubscribed")
        )
        return before, driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()


@pytest.mark.skipif(
    not HAVE_BROWSER and not os.environ.get("CI"), reason="chromium and chromedriver not installed"
)
async def test_unsubscribe_in_chromium_from_a_delivered_message(relay: Server) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url, headers=AUTH) as api:
        mid = await send(api, campaign_id="camp-browser")
        eml = relay.data_dir / "outbox" / f"{mid}.eml"
        for _ in range(500):
            if eml.exists():
                break
            await asyncio.sleep(0.02)
        link = unsubscribe_link(eml.read_bytes())
        assert link.startswith(relay.base_url + "/webhook/unsubscribe?token=")
        before, after = await asyncio.to_thread(_click_through, link)
        assert "reader@example.org" in before
        assert "Unsubscribed Successfully" in after
        detail = (await api.get("/api/recipients/reader@example.org")).json()["data"]
        assert detail["status"] == "UNSUBSCRIBED"
        assert detail["suppression_reason"] == "too_frequent"
        stats = (await api.get("/api/campaigns/camp-browser/stats")).json()["data"]["stats"]
        assert stats["unsubscribed"] == 1


async def test_mailto_unsubscribe_from_the_recipient_only(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    mid = await send(client, campaign_id="camp-u")
    link = message_from_bytes((await prepared(service, mid)).raw)["List-Unsubscribe"]
    mailto = re.search(r"<mailto:([^?>]+)\?subject=unsubscribe>", link)
    assert mailto is not None
    address = mailto.group(1)

    def mail(sender: str) -> bytes:
        return f"From: {sender}\r\nTo: {address}\r\nSubject: unsubscribe\r\n\r\n.\r\n".encode()

    assert await service.engagement.bounce_mail(mail("intruder@example.net"), [address]) == 0
    assert (await client.get("/api/recipients/reader@example.org")).status_code == 404
    assert await service.engagement.bounce_mail(mail("Reader <reader@example.org>"), [address]) == 1
    detail = (await client.get("/api/recipients/reader@example.org")).json()["data"]
    assert (detail["status"], detail["suppression_reason"]) == (
        "UNSUBSCRIBED",
        "mailto unsubscribe",
    )
