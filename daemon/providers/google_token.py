"""Google service-account access tokens, fetched with our own httpx client.

google-auth loads the key and signs the JWT assertion (RFC 7523: ``iss`` the
service account, ``sub`` the mailbox to act as under domain-wide delegation,
``scope``, ``aud`` the token endpoint); the exchange itself is one POST of
``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` to ``token_url``
through the provider's client (google-auth's own refresh would need ``requests``
and block the loop). Tokens are cached per subject until shortly before expiry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from google.auth import crypt
from google.auth import jwt as google_jwt

from daemon.core.retry import AUTH_ERROR, TEMPORARY
from daemon.providers.rest import bounded_request, reply_text, transport_reply

GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
# Renew this long before Google's expiry, so a token never dies in flight.
EXPIRY_MARGIN = 300.0
# Token endpoint errors (RFC 6749 5.2) that mean our credentials or delegation are refused.
AUTH_ERRORS = frozenset(
    {"invalid_grant", "unauthorized_client", "invalid_client", "access_denied", "invalid_scope"}
)


class ServiceAccountError(ValueError):
    """A service-account key that cannot be used; ``check`` names the failed check."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check
        self.reason = reason


class TokenError(Exception):
    """The token endpoint refused (``kind`` auth_error) or could not answer (temporary)."""

    def __init__(self, kind: str, reply: str, error: str = "") -> None:
        super().__init__(reply)
        self.kind = kind
        self.reply = reply
        self.error = error


@dataclass(frozen=True)
class ServiceAccount:
    """A parsed service-account key: its e-mail and a signer for its private key."""

    email: str
    signer: crypt.Signer
    project_id: str = ""
    token_uri: str = ""

    @classmethod
    def parse(cls, text: str) -> ServiceAccount:
        """Parse the JSON key file; raises ServiceAccountError naming the failed check."""
        try:
            info: Any = json.loads(text)
        except ValueError as exc:
            raise ServiceAccountError("json", f"not valid JSON: {exc}") from None
        if not isinstance(info, dict):
            raise ServiceAccountError("json", "not a JSON object")
        if info.get("type") != "service_account":
            found = info.get("type")
            raise ServiceAccountError(
                "type", f"type must be 'service_account', not {found!r}" if found else "no type"
            )
        email = info.get("client_email")
        if not isinstance(email, str) or "@" not in email:
            raise ServiceAccountError("client_email", "client_email is missing or not an e-mail")
        if not isinstance(info.get("private_key"), str) or not info["private_key"].strip():
            raise ServiceAccountError("private_key", "private_key is missing")
        try:
            signer = crypt.RSASigner.from_service_account_info(info)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, IndexError) as exc:
            raise ServiceAccountError(
                "private_key", f"private_key does not load: {exc or type(exc).__name__}"
            ) from None
        return cls(
            email=email,
            signer=signer,
            project_id=str(info.get("project_id") or ""),
            token_uri=str(info.get("token_uri") or ""),
        )

    def assertion(
        self, token_url: str, scopes: Sequence[str], subject: str | None, now: int
    ) -> str:
        """The signed JWT to trade for an access token."""
        payload: dict[str, Any] = {
            "iss": self.email,
            "scope": " ".join(scopes),
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        if subject:
            payload["sub"] = subject
        token: bytes = google_jwt.encode(self.signer, payload)  # type: ignore[no-untyped-call]
        return token.decode("ascii")


async def exchange(client: httpx.AsyncClient, token_url: str, assertion: str) -> tuple[str, float]:
    """Trade an assertion for ``(access_token, expires_in)``; raises TokenError."""
    try:
        response = await bounded_request(
            client, "POST", token_url, data={"grant_type": JWT_BEARER, "assertion": assertion}
        )
    except httpx.HTTPError as exc:
        raise TokenError(TEMPORARY, f"token endpoint: {transport_reply(exc)}") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if response.status_code == 200 and isinstance(body.get("access_token"), str):
        return body["access_token"], float(body.get("expires_in") or 3600)
    error = str(body.get("error") or "")
    reply = f"token endpoint: {reply_text(response)}"
    if response.status_code == 429 or response.status_code >= 500:
        raise TokenError(TEMPORARY, reply, error)
    if error in AUTH_ERRORS or 400 <= response.status_code < 500:
        raise TokenError(AUTH_ERROR, reply, error)
    raise TokenError(TEMPORARY, reply, error)


class TokenCache:
    """Access tokens per subject (the sender), fetched once and reused until near expiry."""

    def __init__(
        self,
        account: ServiceAccount,
        token_url: str,
        scopes: Sequence[str] = (GMAIL_SEND,),
    ) -> None:
        self.account = account
        self.token_url = token_url
        self.scopes = tuple(scopes)
        self._tokens: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0

    async def token(self, client: httpx.AsyncClient, subject: str | None) -> str:
        """A valid token for ``subject`` (None: the service account itself)."""
        key = (subject or "").lower()
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one fetch per subject, however many messages wait for it
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            assertion = self.account.assertion(
                self.token_url, self.scopes, subject, int(time.time())
            )
            token, expires_in = await exchange(client, self.token_url, assertion)
            self.fetches += 1
            self._tokens[key] = (token, time.monotonic() + max(expires_in - EXPIRY_MARGIN, 1.0))
            return token

    def forget(self, subject: str | None) -> None:
        """Drop a token Google refused, so the next message fetches a new one."""
        self._tokens.pop((subject or "").lower(), None)
