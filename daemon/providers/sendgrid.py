"""The sendgrid provider: SendGrid v3 ``POST /v3/mail/send`` with a bearer key.

SendGrid takes no MIME: the JSON body is built from the parsed message
(:func:`mail_send_body`). Answers: 202 accepted (``X-Message-Id`` is the
provider id); 400 and 413 the message is refused (permanent); 401/403 the key is
refused (auth_error); 429 and 5xx temporary, like timeouts. The health check is
``GET /v3/scopes``: the key is live and holds ``mail.send``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default as default_policy
from email.utils import getaddresses, parseaddr
from typing import Any

import httpx

from daemon.config import Config, ProviderConfig
from daemon.core.message import Recipient
from daemon.core.retry import PERMANENT, SENT
from daemon.providers.base import DeliveryResult, Envelope, HealthResult, batches
from daemon.providers.rest import RestProvider, client_settings, make_client, required

DEFAULT_BASE_URL = "https://api.sendgrid.com"
_OFFLOAD_BYTES = 256 * 1024  # parse larger messages off the event loop
MAX_RECIPIENTS = 1000  # to + cc + bcc in one request (and so personalizations too)
# Headers SendGrid refuses in ``headers`` (its reserved list) or that the JSON
# fields already carry; everything else (Message-ID, References, List-*, X-*) goes on.
DROPPED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
        "mime-version",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
        "date",
        "return-path",
        "sender",
    }
)


def _person(name: str, email: str) -> dict[str, str]:
    return {"email": email, "name": name} if name else {"email": email}


def _header_addresses(message: Message, name: str) -> list[tuple[str, str]]:
    return [(n, a) for n, a in getaddresses([str(v) for v in message.get_all(name, [])]) if a]


def personalizations(
    message: Message, recipients: list[str]
) -> list[dict[str, list[dict[str, str]]]]:
    """to/cc/bcc from the envelope: To-header recipients as ``to``, Cc as ``cc``, the rest bcc.

    SendGrid needs a ``to`` in each personalization: when no envelope recipient
    is in the To header, each recipient gets a personalization of its own.
    """
    names = {a.lower(): n for n, a in _header_addresses(message, "To")}
    cc_names = {a.lower(): n for n, a in _header_addresses(message, "Cc")}
    to: list[dict[str, str]] = []
    cc: list[dict[str, str]] = []
    bcc: list[dict[str, str]] = []
    seen: set[str] = set()
    for address in recipients:
        key = address.lower()
        if key in seen:  # SendGrid refuses an address twice in one personalization
            continue
        seen.add(key)
        if key in names:
            to.append(_person(names[key], address))
        elif key in cc_names:
            cc.append(_person(cc_names[key], address))
        else:
            bcc.append({"email": address})
    if not to:
        return [{"to": [person]} for person in cc + bcc]
    block: dict[str, list[dict[str, str]]] = {"to": to}
    if cc:
        block["cc"] = cc
    if bcc:
        block["bcc"] = bcc
    return [block]


def _leaves(part: Message) -> Iterator[Message]:
    """Leaf parts, an attached message/rfc822 counting as one leaf."""
    if part.is_multipart() and part.get_content_type() != "message/rfc822":
        for sub in part.get_payload():
            assert isinstance(sub, Message)
            yield from _leaves(sub)
    else:
        yield part


def _payload_bytes(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        inner_message = inner[0] if isinstance(inner, list) else inner
        assert isinstance(inner_message, Message)
        return inner_message.as_bytes()
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _attachment(part: Message, index: int) -> dict[str, str]:
    content_id = str(part.get("Content-ID", "")).strip().removeprefix("<").removesuffix(">")
    disposition = part.get_content_disposition()
    inline = disposition == "inline" or (disposition is None and bool(content_id))
    item = {
        "content": base64.b64encode(_payload_bytes(part)).decode("ascii"),
        "type": part.get_content_type(),
        "filename": part.get_filename() or content_id or f"attachment-{index}",
        "disposition": "inline" if inline and content_id else "attachment",
    }
    if inline and content_id:
        item["content_id"] = content_id
    return item


def _custom_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    head = BytesParser(policy=default_policy).parsebytes(raw, headersonly=True)
    for name, value in head.raw_items():
        if name.lower() in DROPPED_HEADERS or name.lower() in (h.lower() for h in headers):
            continue
        headers[name] = " ".join(str(value).split())
    return headers


def mail_send_body(raw: bytes, mail_from: str, recipients: list[str]) -> dict[str, Any]:
    """The ``mail/send`` JSON for a stored message and (at most 1,000) envelope recipients."""
    return mail_send_bodies(raw, mail_from, recipients)[0][1]


def mail_send_bodies(
    raw: bytes, mail_from: str, recipients: list[str]
) -> list[tuple[list[str], dict[str, Any]]]:
    """The ``mail/send`` requests for a stored message, each with the recipients it carries.

    SendGrid takes at most 1,000 recipients (to + cc + bcc) per request, each
    address once: more recipients take more requests, To then Cc recipients first.
    """
    message = BytesParser(policy=default_policy).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    common = _common_fields(message, raw, mail_from)
    listed = {a.lower() for _, a in _header_addresses(message, "To")}
    listed |= {a.lower() for _, a in _header_addresses(message, "Cc")}
    unique: dict[str, str] = {}
    for address in recipients:
        unique.setdefault(address.lower(), address)
    ordered = sorted(unique.values(), key=lambda a: a.lower() not in listed)  # stable
    return [
        (list(batch), {"personalizations": personalizations(message, list(batch)), **common})
        for batch in batches(ordered, MAX_RECIPIENTS)
    ]


def _common_fields(message: EmailMessage, raw: bytes, mail_from: str) -> dict[str, Any]:
    """Everything of the ``mail/send`` JSON but the personalizations."""
    from_name, from_email = parseaddr(str(message.get("From", "")))
    body: dict[str, Any] = {"from": _person(from_name, from_email or mail_from)}
    subject = str(message.get("Subject", ""))
    if subject:
        body["subject"] = subject
    reply_to = _header_addresses(message, "Reply-To")
    if len(reply_to) == 1:
        body["reply_to"] = _person(*reply_to[0])
    elif reply_to:
        body["reply_to_list"] = [_person(n, a) for n, a in reply_to]
    content: list[dict[str, str]] = []
    chosen: list[Message] = []
    for kind in ("plain", "html"):  # SendGrid wants text/plain first, then text/html
        part = message.get_body(preferencelist=(kind,))
        if part is not None and part.get_content_type() == f"text/{kind}":
            assert isinstance(part, EmailMessage)
            chosen.append(part)
            value = str(part.get_content())
            if value:  # SendGrid refuses an empty value: an empty part is left out
                content.append({"type": f"text/{kind}", "value": value})
    body["content"] = content or [{"type": "text/plain", "value": " "}]
    attachments = [
        _attachment(part, index)
        for index, part in enumerate(
            (p for p in _leaves(message) if not any(p is c for c in chosen)), start=1
        )
    ]
    if attachments:
        body["attachments"] = attachments
    headers = _custom_headers(raw)
    if headers:
        body["headers"] = headers
    return body


class SendgridProvider(RestProvider):
    """Delivers through SendGrid's v3 Web API."""

    type = "sendgrid"

    def __init__(
        self, provider_id: str, api_key: str, client: httpx.AsyncClient, max_connections: int = 16
    ) -> None:
        super().__init__(provider_id, client, max_connections)
        self._headers = {"Authorization": f"Bearer {api_key}"}

    @classmethod
    def from_config(cls, pc: ProviderConfig, config: Config) -> SendgridProvider:
        timeout, connections = client_settings(pc)
        base = str(pc.option("base_url") or DEFAULT_BASE_URL).rstrip("/")
        return cls(
            pc.id,
            api_key=required(pc, "api_key"),
            client=make_client(base, timeout, connections),
            max_connections=connections,
        )

    async def send(self, envelope: Envelope) -> DeliveryResult:
        if not envelope.recipients:
            raise ValueError("an envelope needs at least one recipient")
        addresses = [r.address for r in envelope.recipients]
        try:
            if len(envelope.raw) > _OFFLOAD_BYTES:
                requests = await asyncio.to_thread(
                    mail_send_bodies, envelope.raw, envelope.mail_from, addresses
                )
            else:
                requests = mail_send_bodies(envelope.raw, envelope.mail_from, addresses)
        except Exception as exc:  # the same bytes would fail the same way every time
            reply = f"the message cannot be expressed as SendGrid JSON: {exc}"
            return DeliveryResult.uniform(PERMANENT, envelope.recipients, reply=reply)
        by_address: dict[str, list[Recipient]] = {}
        for r in envelope.recipients:  # an address twice in the envelope shares one result
            by_address.setdefault(r.address.lower(), []).append(r)
        results = []
        for batch, body in requests:
            recipients = [r for a in batch for r in by_address[a.lower()]]
            results.append(await self._send_one(body, recipients))
        return DeliveryResult.merge(results)

    async def _send_one(self, body: dict[str, Any], recipients: list[Recipient]) -> DeliveryResult:
        async with self._slots:
            try:
                response = await self.client.post("/v3/mail/send", json=body, headers=self._headers)
            except httpx.HTTPError as exc:
                return self.failure(exc, recipients)
        if response.status_code in (200, 202):
            return DeliveryResult.uniform(
                SENT,
                recipients,
                response.status_code,
                f"{response.status_code} Accepted",
                provider_message_id=response.headers.get("X-Message-Id"),
                remote=self.remote,
            )
        return self.refused(response, recipients)

    async def check(self) -> HealthResult:
        """``GET /v3/scopes``: the key is live and may send mail."""
        result, response = await self.probe("GET", "/v3/scopes", headers=self._headers)
        if not result.healthy or response is None:
            return result
        try:
            scopes = response.json().get("scopes") or []
        except (ValueError, AttributeError):
            scopes = []
        if "mail.send" not in scopes:
            return HealthResult(False, result.latency_ms, "the API key lacks the mail.send scope")
        return HealthResult(True, result.latency_ms, "mail.send")
