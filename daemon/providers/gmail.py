"""The gmail provider: Gmail API ``users.messages.send`` as the sender, by domain-wide delegation.

A service account acts as each sender, the From address (the JWT's ``sub``): one access token per
sender, cached until near expiry (:mod:`daemon.providers.google_token`). The
message goes out as ``{"raw": base64url(bytes)}`` to
``POST {base}/gmail/v1/users/me/messages/send``, or, past a few MB, as a
multipart media upload to ``POST {base}/upload/gmail/v1/users/me/messages/send``.

Gmail delivers to the addresses in the To, Cc and Bcc headers, not to an
envelope. So envelope recipients missing from those headers (blind copies
given only in the SMTP envelope) are added in a ``Bcc`` header, which Gmail
removes before delivery; a header recipient that is not in the envelope (the
envelope names a subset) would receive a copy it must not, so that message is
refused for this provider (permanent, with the reason) rather than duplicated.

Answers: 200 sent (``id`` is the provider id); 400 permanent; 401 the token is
refused: a fresh one is fetched and the send tried once more, then auth_error,
not a retry loop; 403 is
auth_error too unless Google says it is a rate or quota limit (temporary); 429
and 5xx temporary. A token endpoint that refuses the grant (``invalid_grant``,
``unauthorized_client``: delegation not granted) is auth_error as well.
"""

from __future__ import annotations

import base64
import secrets
import time
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import getaddresses, parseaddr
from pathlib import Path

import httpx

from daemon.config import Config, ConfigError, ProviderConfig
from daemon.core.retry import AUTH_ERROR, PERMANENT, SENT, TEMPORARY
from daemon.providers.base import DeliveryResult, Envelope, HealthResult
from daemon.providers.google_token import (
    DEFAULT_TOKEN_URL,
    GMAIL_SEND,
    ServiceAccount,
    ServiceAccountError,
    TokenCache,
    TokenError,
    exchange,
)
from daemon.providers.rest import RestProvider, client_settings, make_client, reply_text

DEFAULT_BASE_URL = "https://gmail.googleapis.com"
SEND_PATH = "/gmail/v1/users/me/messages/send"
# Larger messages take the upload URI: the metadata URI answers 413 past a few MB
# (base64 adds a third). The upload URI's limit for messages.send is 35 MB.
UPLOAD_THRESHOLD = 3 * 1024 * 1024
MAX_MESSAGE_BYTES = 35 * 1024 * 1024
RATE_REASONS = frozenset(
    {"rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded", "quotaExceeded"}
)


def load_account(pc: ProviderConfig) -> ServiceAccount:
    """The service account of a gmail provider, from ``service_account_json`` or its file."""
    text = pc.options.get("service_account_json") or ""
    path = pc.options.get("service_account_file") or ""
    if not text and path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"providers.{pc.id}.service_account_file", str(exc)) from None
    if not text:
        raise ConfigError(
            f"providers.{pc.id}.service_account_file",
            "a gmail provider needs service_account_file or service_account_json",
        )
    try:
        return ServiceAccount.parse(text)
    except ServiceAccountError as exc:
        raise ConfigError(f"providers.{pc.id}.service_account", exc.reason) from None


def _addresses(values: list[str]) -> list[str]:
    return [addr for _, addr in getaddresses(values) if addr]


def _with_bcc(raw: bytes, addresses: list[str]) -> bytes:
    """``raw`` with its Bcc header (if any) replaced by one listing ``addresses``."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and dropping:
            continue
        dropping = line.lower().startswith(b"bcc:")
        if not dropping:
            kept.append(line)
    bcc = b"Bcc: " + ", ".join(addresses).encode("utf-8")
    return b"\r\n".join([bcc, *kept]) + sep + body


class GmailProvider(RestProvider):
    """Sends as each sender through the Gmail API."""

    type = "gmail"

    def __init__(
        self,
        provider_id: str,
        account: ServiceAccount,
        client: httpx.AsyncClient,
        token_url: str = DEFAULT_TOKEN_URL,
        max_connections: int = 16,
    ) -> None:
        super().__init__(provider_id, client, max_connections)
        self.account = account
        self.token_url = token_url
        self.tokens = TokenCache(account, token_url, (GMAIL_SEND,))

    @classmethod
    def from_config(cls, pc: ProviderConfig, config: Config) -> GmailProvider:
        account = load_account(pc)
        timeout, connections = client_settings(pc)
        base = str(pc.option("base_url") or DEFAULT_BASE_URL).rstrip("/")
        token_url = str(pc.option("token_url") or account.token_uri or DEFAULT_TOKEN_URL)
        return cls(
            pc.id,
            account,
            make_client(base, timeout, connections),
            token_url=token_url,
            max_connections=connections,
        )

    def _prepare(self, envelope: Envelope) -> tuple[str, bytes | None, str]:
        """The sender to act as and the bytes to hand Gmail (None with a reason if refused)."""
        headers = BytesHeaderParser(policy=default_policy).parsebytes(envelope.raw)
        # The mailbox Gmail sends as is the From author (the envelope sender may be a
        # VERP return path or empty for a bounce).
        sender = parseaddr(str(headers.get("From", "")))[1] or envelope.mail_from
        visible = {a.lower() for a in _addresses([str(v) for v in headers.get_all("To", [])])} | {
            a.lower() for a in _addresses([str(v) for v in headers.get_all("Cc", [])])
        }
        blind = [str(v) for v in headers.get_all("Bcc", [])]
        listed = visible | {a.lower() for a in _addresses(blind)}
        wanted = {r.address.lower() for r in envelope.recipients}
        outside = sorted(listed - wanted)
        if outside:
            reason = (
                "gmail delivers to every To/Cc/Bcc address, and the envelope leaves out "
                f"{', '.join(outside[:5])}: use a provider that takes an envelope"
            )
            return sender, None, reason
        if wanted <= listed:
            return sender, envelope.raw, ""
        hidden = [r.address for r in envelope.recipients if r.address.lower() not in visible]
        return sender, _with_bcc(envelope.raw, hidden), ""

    async def send(self, envelope: Envelope) -> DeliveryResult:
        if not envelope.recipients:
            raise ValueError("an envelope needs at least one recipient")
        sender, raw, reason = self._prepare(envelope)
        if raw is None:
            return DeliveryResult.uniform(
                PERMANENT, envelope.recipients, reply=reason, remote=self.remote
            )
        if not sender:
            reply = "gmail needs a sender to act as (MAIL FROM or From)"
            return DeliveryResult.uniform(PERMANENT, envelope.recipients, reply=reply)
        if len(raw) > MAX_MESSAGE_BYTES:
            reply = f"the message is {len(raw)} bytes; Gmail sends at most 35 MB"
            return DeliveryResult.uniform(PERMANENT, envelope.recipients, reply=reply)
        async with self._slots:
            # Google's advice on a 401 (an expired or revoked token): refresh it, once.
            for _ in range(2):
                try:
                    token = await self.tokens.token(self.client, sender)
                except TokenError as exc:
                    return DeliveryResult.uniform(
                        exc.kind, envelope.recipients, reply=exc.reply, remote=self.remote
                    )
                try:
                    response = await self._post(raw, token)
                except httpx.HTTPError as exc:
                    return self.failure(exc, envelope.recipients)
                if response.status_code != 401:
                    break
                self.tokens.forget(sender)
        if response.status_code == 200:
            try:
                message_id = str(response.json()["id"])
            except (ValueError, KeyError, TypeError):
                message_id = None
            return DeliveryResult.uniform(
                SENT,
                envelope.recipients,
                200,
                reply_text(response),
                provider_message_id=message_id,
                remote=self.remote,
            )
        if response.status_code == 401:
            return self.refused(response, envelope.recipients, AUTH_ERROR)
        if response.status_code == 403:
            kind = TEMPORARY if _reasons(response) & RATE_REASONS else AUTH_ERROR
            return self.refused(response, envelope.recipients, kind)
        return self.refused(response, envelope.recipients)

    async def _post(self, raw: bytes, token: str) -> httpx.Response:
        """``messages.send``: JSON ``raw`` on the metadata URI, or a multipart media upload.

        The metadata URI refuses bodies of a few MB (413); larger messages go to
        the upload URI, which takes up to 35 MB.
        """
        auth = {"Authorization": f"Bearer {token}"}
        if len(raw) <= UPLOAD_THRESHOLD:
            body = {"raw": base64.urlsafe_b64encode(raw).decode("ascii")}
            return await self.request("POST", SEND_PATH, json=body, headers=auth)
        boundary = secrets.token_hex(16)
        while boundary.encode() in raw:
            boundary = secrets.token_hex(16)
        content = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                f"{{}}\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n".encode(),
                raw,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        return await self.request(
            "POST",
            "/upload" + SEND_PATH,
            params={"uploadType": "multipart"},
            content=content,
            headers={**auth, "Content-Type": f"multipart/related; boundary={boundary}"},
        )

    async def check(self) -> HealthResult:
        """A fresh token for the service account itself: the key is live and accepted."""
        started = time.monotonic()
        assertion = self.account.assertion(self.token_url, (GMAIL_SEND,), None, int(time.time()))
        try:
            await exchange(self.client, self.token_url, assertion)
        except TokenError as exc:
            return HealthResult(False, int((time.monotonic() - started) * 1000), exc.reply)
        return HealthResult(True, int((time.monotonic() - started) * 1000), self.account.email)


def _reasons(response: httpx.Response) -> set[str]:
    """The ``reason`` values of a Google API error body."""
    try:
        error = response.json().get("error") or {}
        return {str(e.get("reason")) for e in error.get("errors") or [] if isinstance(e, dict)}
    except (ValueError, AttributeError):
        return set()
