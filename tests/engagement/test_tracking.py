"""Open and click tracking through the app: rewrite once, pixel and click counting,
the open-redirect refusal matrix, and never a 500 whatever the query string."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.core import tracking
from daemon.service import RelayService
from daemon.store import queue
from tests.engagement.conftest import (
    SECRET,
    html_part,
    links,
    local,
    pixel,
    prepared,
    send,
    text_part,
)


async def test_rewrite_happens_once_and_only_in_html(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    mid = await send(client)
    original = await service.reader.run(lambda c: queue.get_raw(c, mid))
    assert original is not None
    first = await prepared(service, mid)
    html = html_part(first.raw)
    rewritten = links(html)
    assert rewritten[0].startswith("https://t.example/webhook/click?")
    assert parse_qs(urlsplit(rewritten[0]).query)["url"] == ["https://example.com/a?x=1&y=2"]
    assert "mailto:help@sender.example" in rewritten and "#top" in rewritten
    assert pixel(html).startswith("https://t.example/webhook/pixel?mid=" + mid)
    assert text_part(first.raw) == text_part(original)  # text parts are left alone
    assert first.return_path == f"bounces+{mid}@bounces.relay.test"
    stored = await service.reader.run(lambda c: queue.get_raw(c, mid))
    assert stored == first.raw  # persisted: retries send the same bytes
    again = await prepared(service, mid)
    assert again.raw == first.raw and again.return_path == first.return_path


async def test_rid_is_the_recipient_id_when_known(
    client: httpx.AsyncClient, service: RelayService
) -> None:
    created = await client.post("/api/recipients", json={"email": "reader@example.org"})
    rid = created.json()["data"]["id"]
    mid = await send(client)
    html = html_part((await prepared(service, mid)).raw)
    assert parse_qs(urlsplit(pixel(html)).query)["rid"] == [str(rid)]
    other = await send(client, to=["stranger@example.org"])
    opaque = parse_qs(urlsplit(pixel(html_part((await prepared(service, other)).raw))).query)
    assert opaque["rid"][0] != str(rid) and len(opaque["rid"][0]) == 16


async def test_pixel_counts_unique_and_total_opens(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    await client.post("/api/recipients", json={"email": "reader@example.org"})
    mid = await send(client, campaign_id="camp-1")
    url = local(pixel(html_part((await prepared(service, mid)).raw)))
    for _ in range(3):
        response = await anon.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert len(response.content) == 43 and response.content.startswith(b"GIF89a")
        assert "no-store" in response.headers["cache-control"]
    detail = (await client.get("/api/recipients/reader@example.org")).json()["data"]
    assert detail["engagement"]["total_opened"] == 3
    assert detail["engagement"]["last_open_date"] is not None
    stats = (await client.get("/api/campaigns/camp-1/stats")).json()["data"]["stats"]
    assert stats["opened"] == 1  # unique per message and recipient


async def test_click_redirects_and_counts(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    await client.post("/api/recipients", json={"email": "reader@example.org"})
    mid = await send(client, campaign_id="camp-2")
    click = local(links(html_part((await prepared(service, mid)).raw))[0])
    for _ in range(2):
        response = await anon.get(click)
        assert response.status_code == 302
        assert response.headers["location"] == "https://example.com/a?x=1&y=2"
    detail = (await client.get("/api/recipients/reader@example.org")).json()["data"]
    assert detail["engagement"]["total_clicked"] == 2
    stats = (await client.get("/api/campaigns/camp-2/stats")).json()["data"]["stats"]
    assert stats["clicked"] == 1


def _click(mid: str, rid: str, url: str, sig: str | None) -> str:
    params = {"mid": mid, "rid": rid, "url": url}
    if sig is not None:
        params["sig"] = sig
    return "/webhook/click?" + urlencode(params)


async def test_open_redirect_refusals(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    mid = await send(client)
    other = await send(client, to=["other@example.org"])
    good = parse_qs(urlsplit(links(html_part((await prepared(service, mid)).raw))[0]).query)
    theirs = parse_qs(urlsplit(links(html_part((await prepared(service, other)).raw))[0]).query)
    rid, url, sig = good["rid"][0], good["url"][0], good["sig"][0]
    key = SECRET.encode()
    cases = {
        "no sig": _click(mid, rid, url, None),
        "wrong sig": _click(mid, rid, url, "A" * 22),
        "changed url": _click(mid, rid, "https://evil.example/", sig),
        "javascript": _click(
            mid,
            rid,
            "javascript:alert(1)",
            tracking.sign(key, "click", mid, rid, "javascript:alert(1)"),
        ),
        "data": _click(
            mid,
            rid,
            "data:text/html,<script>x</script>",
            tracking.sign(key, "click", mid, rid, "data:text/html,<script>x</script>"),
        ),
        "another message's sig": _click(mid, rid, url, theirs["sig"][0]),
        "another message's rid": _click(mid, theirs["rid"][0], url, sig),
        "unknown message": _click(
            "msg-00000000000000000000000000",
            rid,
            url,
            tracking.sign(key, "click", "msg-00000000000000000000000000", rid, url),
        ),
        "protocol-relative": _click(
            mid, rid, "//evil.example/", tracking.sign(key, "click", mid, rid, "//evil.example/")
        ),
    }
    for name, path in cases.items():
        response = await anon.get(path)
        assert response.status_code == 400, name
        assert "location" not in response.headers, name
    assert (await anon.get(_click(mid, rid, url, sig))).status_code == 302
    detail = await client.get("/api/messages/" + mid)
    assert detail.status_code == 200


_PRINTABLE = st.characters(
    min_codepoint=33, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Cc")
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.text(_PRINTABLE, max_size=120),
    params=st.dictionaries(
        st.sampled_from(["mid", "rid", "url", "sig", "token", "email"]),
        st.one_of(st.text(max_size=80), st.sampled_from(["msg-" + "0" * 26, "http://x/"])),
    ),
)
async def test_public_endpoints_never_500(
    anon: httpx.AsyncClient, raw: str, params: dict[str, str]
) -> None:
    for query in (raw, urlencode(params)):
        for path in ("/webhook/click", "/webhook/pixel", "/webhook/unsubscribe"):
            response = await anon.get(path + "?" + query)
            assert response.status_code in (200, 400), (path, query, response.text)
            assert "location" not in response.headers


@pytest.mark.parametrize(
    "workspaces", [["default=off"], ["default=none"], ["default=opens"], ["default=clicks"]]
)
async def test_workspace_overrides(
    workspaces: list[str], client: httpx.AsyncClient, service: RelayService
) -> None:
    import dataclasses

    section = dataclasses.replace(service.config.tracking, workspaces=workspaces)
    service.reconfigure(dataclasses.replace(service.config, tracking=section))
    mid = await send(client, campaign_id="camp-o")
    message = await prepared(service, mid)
    html = html_part(message.raw)
    mode = workspaces[0].split("=")[1]
    assert ("webhook/pixel" in html) == (mode == "opens")
    assert ("webhook/click" in html) == (mode == "clicks")
    assert (b"List-Unsubscribe:" in message.raw) == (mode != "off")
