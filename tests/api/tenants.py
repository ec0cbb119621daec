"""Helpers for tests of tenancy: workspaces and keys made through the admin API."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt

JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"


async def make_workspace(admin: httpx.AsyncClient, workspace_id: str, **fields: Any) -> None:
    response = await admin.post("/api/admin/workspaces", json={"id": workspace_id, **fields})
    assert response.status_code == 201, response.text


async def make_key(admin: httpx.AsyncClient, workspace_id: str, **fields: Any) -> dict[str, Any]:
    response = await admin.post("/api/admin/keys", json={"workspace_id": workspace_id, **fields})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def key_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def token(secret: str = JWT_SECRET, expires_in: int = 300, **claims: Any) -> str:
    """An HS256 JWT like the reference's example token."""
    body = {"exp": int(time.time()) + expires_in, **claims}
    return jwt.encode(body, secret, algorithm="HS256")
