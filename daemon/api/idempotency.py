"""``Idempotency-Key`` on ``POST /api/messages``.

The first request with a key stores its response in the same transaction as
the message (daemon.tenancy.admit). Within 24 hours the same key (per
workspace) with the same body gets that response again, marked
``Idempotent-Replayed: true``, and queues nothing; with another body it gets 422
``IDEMPOTENCY_KEY_REUSED``. Bodies are compared as canonical JSON, so key order
and whitespace do not matter. Refusals (validation, quota) are not stored: the
client may fix the request and retry under the same key.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from daemon.api.errors import ApiError
from daemon.api.middleware import header
from daemon.store import tenancy as store
from daemon.tenancy import IDEMPOTENCY_TTL, IdempotencyClaim

HEADER = "Idempotency-Key"
_SANE_KEY = re.compile(r"^[\x21-\x7e]{1,255}\Z")


def key_of(request: Request) -> str | None:
    """The request's Idempotency-Key: 1-255 visible ASCII characters, or None."""
    value = header(request, b"idempotency-key")
    if value is None:
        return None
    value = value.strip()
    if not _SANE_KEY.match(value):
        raise ApiError(
            "INVALID_REQUEST",
            f"{HEADER} must be 1-255 visible ASCII characters",
            {"header": HEADER},
        )
    return value


def request_hash(document: Any) -> str:
    """A digest of the request body that ignores formatting and key order."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def replay(earlier: Any, digest: str) -> JSONResponse:
    """The stored first response, or 422 when the key came with another body."""
    if earlier.request_hash != digest:
        raise ApiError(
            "IDEMPOTENCY_KEY_REUSED",
            f"{HEADER} {earlier.key!r} was used with a different request body",
            {"idempotency_key": earlier.key},
        )
    return JSONResponse(
        earlier.response,
        status_code=earlier.status_code,
        headers={"Idempotent-Replayed": "true"},
    )


async def earlier_use(request: Request, workspace_id: str, key: str) -> Any:
    """The stored response to ``key`` from the last 24 hours, if any (a cheap pre-check)."""
    service = request.app.state.service
    cutoff = service.clock() - IDEMPOTENCY_TTL

    return await service.reader.run(lambda c: store.get_idempotency(c, workspace_id, key, cutoff))


def claim(
    workspace_id: str, key: str, digest: str, response: dict[str, Any], status_code: int
) -> IdempotencyClaim:
    return IdempotencyClaim(workspace_id, key, digest, response, status_code)
