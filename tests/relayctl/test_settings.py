"""Token and URL discovery: explicit, environment, then the admin token file relayd wrote."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from relayctl.client import Client
from relayctl.settings import (
    DEFAULT_URL,
    Source,
    TokenFileError,
    redact_url,
    resolve_sources,
    resolve_token,
    resolve_url,
)


def test_url_precedence() -> None:
    assert resolve_url(None, {}) == DEFAULT_URL
    assert resolve_url(None, {"RELAY_URL": "http://relay:9000/"}) == "http://relay:9000"
    assert resolve_url("http://x:1", {"RELAY_URL": "http://relay:9000"}) == "http://x:1"


def test_token_precedence(tmp_path: Path) -> None:
    data = tmp_path / "custom"
    data.mkdir()
    (data / "admin.token").write_text("from-data-dir\n")
    default = tmp_path / "relay-data"
    default.mkdir()
    (default / "admin.token").write_text("from-default\n")
    env = {"RELAY_DATA_DIR": str(data)}
    assert resolve_token("explicit", {"RELAY_TOKEN": "env"}, tmp_path) == "explicit"
    assert resolve_token(None, {"RELAY_TOKEN": " env \n", **env}, tmp_path) == "env"
    assert resolve_token(None, env, tmp_path) == "from-data-dir"
    assert resolve_token(None, {"RELAY_DATA_DIR": "custom"}, tmp_path) == "from-data-dir"
    assert resolve_token(None, {}, tmp_path) == "from-default"


def test_missing_empty_or_unreadable_token_files_are_skipped(tmp_path: Path) -> None:
    assert resolve_token(None, {}, tmp_path) is None
    (tmp_path / "relay-data").mkdir()
    (tmp_path / "relay-data" / "admin.token").write_text("  \n")
    assert resolve_token(None, {}, tmp_path) is None
    # A directory where the file should be cannot be read: skipped, not a crash.
    assert resolve_token(None, {"RELAY_DATA_DIR": str(tmp_path)}, tmp_path / "relay-data") is None


def test_token_file_that_is_not_text_names_the_file(tmp_path: Path) -> None:
    token_file = tmp_path / "relay-data" / "admin.token"
    token_file.parent.mkdir()
    token_file.write_bytes(b"rly_\xff\xfe")
    with pytest.raises(TokenFileError) as caught:
        resolve_token(None, {}, tmp_path)
    assert str(caught.value) == f"cannot read {token_file}: not UTF-8 text (byte 4)"
    # Not read at all when a token is given.
    assert resolve_token(None, {"RELAY_TOKEN": "t"}, tmp_path) == "t"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://ops:s3cret@relay:8080", "http://ops:***@relay:8080"),
        ("https://ops:p@ss@relay/", "https://ops:***@relay/"),
        ("ops:s3cret@relay:8080", "ops:***@relay:8080"),
        ("http://:s3cret@relay", "http://:***@relay"),
        ("http://ops@relay:8080", "http://ops@relay:8080"),
        ("http://relay:8080/a:b@c", "http://relay:8080/a:b@c"),
        ("http://relay:8080", "http://relay:8080"),
        ("localhost:8080", "localhost:8080"),
    ],
)
def test_redact_url_masks_only_a_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_sources_precedence_and_token_binding() -> None:
    flag = Source("http://flag:1")
    profile = Source("http://prof:1", "prof-token", "ws-prof")
    env = Source("http://env:1", "env-token")
    # The first URL wins; a source naming another URL gives nothing, not even its workspace.
    assert resolve_sources([flag, profile, env]) == Source("http://flag:1", None, None)
    assert resolve_sources([Source(), profile, env]) == Source(
        "http://prof:1", "prof-token", "ws-prof"
    )
    assert resolve_sources([Source(), env, profile]) == Source("http://env:1", "env-token")
    # Sources without a URL go with the URL in use, in their order.
    assert resolve_sources([Source(token="t"), profile]) == Source("http://prof:1", "t", "ws-prof")
    assert resolve_sources([flag, Source(token="env-only")]) == Source("http://flag:1", "env-only")
    # The same daemon however the URL is spelled.
    assert resolve_sources([Source("HTTP://Prof:1/"), profile]).token == "prof-token"
    assert resolve_sources([Source("http://prof:80"), Source("http://prof", "t")]).token == "t"
    assert resolve_sources([]) == Source(DEFAULT_URL)


def test_the_local_admin_token_is_only_sent_to_a_loopback_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "relay-data").mkdir()
    (tmp_path / "relay-data" / "admin.token").write_text("local-admin\n")
    for url in ("http://127.0.0.1:8080", "http://127.9.9.9", "http://[::1]:80", "http://localhost"):
        assert resolve_token(None, {}, tmp_path, url=url) == "local-admin", url
    for url in ("http://relay.example:8080", "https://10.0.0.2", "http://[2001:db8::1]"):
        assert resolve_token(None, {}, tmp_path, url=url) is None, url
    assert resolve_token(None, {"RELAY_TOKEN": "env"}, tmp_path, url=url) == "env"

    # The client library: what the server is sent, through a transport that records it.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELAY_TOKEN", raising=False)
    monkeypatch.delenv("RELAY_DATA_DIR", raising=False)
    seen: list[str | None] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"success": True, "data": {"status": "ok"}})

    for url in ("http://relay.example:8080", "http://127.0.0.1:8080"):
        with Client(base_url=url, transport=httpx.MockTransport(record)) as client:
            client.health()
    assert seen == [None, "Bearer local-admin"]
