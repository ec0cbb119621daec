"""The unsubscribe page cannot be framed or run anything; the generated tracking secret is
kept 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from daemon.config import build_config
from daemon.engagement import resolve_secret
from daemon.service import RelayService
from tests.engagement.conftest import prepared, send
from tests.engagement.test_unsubscribe import unsubscribe_link


async def _token(client: httpx.AsyncClient, service: RelayService) -> str:
    mid = await send(client, campaign_id="camp-s")
    link = unsubscribe_link((await prepared(service, mid)).raw)
    return parse_qs(urlsplit(link).query)["token"][0]


async def test_unsubscribe_page_cannot_be_framed_or_run_code(
    client: httpx.AsyncClient, anon: httpx.AsyncClient, service: RelayService
) -> None:
    token = await _token(client, service)
    for response in (
        await anon.get("/webhook/unsubscribe", params={"token": token}),
        await anon.get("/webhook/unsubscribe", params={"token": token + "x"}),
    ):
        headers = response.headers
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        policy = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert "form-action 'self'" in policy
        assert headers["Referrer-Policy"] == "no-referrer"


def test_generated_tracking_secret_is_private_even_if_it_was_not(tmp_path: Path) -> None:
    config = build_config([("file", {"data_dir": str(tmp_path / "data")})])
    first = resolve_secret(config)
    path = tmp_path / "data" / "tracking.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)  # restored from a backup, copied in, or written by hand
    assert resolve_secret(config) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
