"""Every JSON endpoint bounds its body alike: 413 MESSAGE_TOO_LARGE, and reads no further."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.conftest import assert_envelope

CHUNK = 4096
# (method, path, the endpoint's body limit in bytes)
ENDPOINTS = [
    ("POST", "/api/recipients", 256 * 1024),
    ("PUT", "/api/recipients/ann@example.org", 256 * 1024),
    ("PUT", "/api/campaigns/spring", 16 * 1024),
    ("POST", "/api/webhooks", 16 * 1024),
    ("PUT", "/api/admin/config", 64 * 1024),
    ("POST", "/api/admin/workspaces", 64 * 1024),
    ("POST", "/api/admin/keys", 64 * 1024),
]


@pytest.mark.parametrize(("method", "path", "limit"), ENDPOINTS)
async def test_a_declared_length_past_the_limit_is_413(
    client: httpx.AsyncClient, method: str, path: str, limit: int
) -> None:
    body = b'{"name": "' + b"x" * limit + b'"}'
    response = await client.request(
        method, path, content=body, headers={"Content-Type": "application/json"}
    )
    error = assert_envelope(response, 413, "MESSAGE_TOO_LARGE")
    assert error["details"] == {"max_body": limit}
    assert error["message"] == f"the request body exceeds {limit} bytes"


@pytest.mark.parametrize(("method", "path", "limit"), ENDPOINTS)
async def test_a_streamed_body_is_refused_once_past_the_limit(
    client: httpx.AsyncClient, method: str, path: str, limit: int
) -> None:
    """No Content-Length: the body is read chunk by chunk and no further than the limit."""
    sent = 0
    chunks = limit // CHUNK + 200  # 800 KiB past the limit, if it were all read

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(chunks):
            sent += 1
            yield b" " * CHUNK

    response = await client.request(
        method, path, content=stream(), headers={"Content-Type": "application/json"}
    )
    assert_envelope(response, 413, "MESSAGE_TOO_LARGE")
    assert sent <= limit // CHUNK + 2, f"read {sent} of {chunks} chunks"
