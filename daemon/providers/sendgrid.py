"""The sendgrid provider: SendGrid v3 ``POST /v3/mail/send`` with a bearer key.

SendGrid takes no MIME: the JSON body is built from the parsed message
(:func:`mail_send_body`), within the limits its Mail Send reference and errors
list publish: addresses in ASCII (an internationalized domain goes as its IDNA
2008 A-label; a non-ASCII local part cannot be expressed, so such a recipient
fails for good on its own rather than the whole request being refused), a
subject of at least one character (a message without one gets a single space),
custom header values in ASCII (raw UTF-8 ones as RFC 2047 encoded words), and no
';', ',' or line breaks in attachment names, content ids and types. Answers: 202
accepted (``X-Message-Id`` is the provider id); 400 and 413 the message is
refused (permanent); 401/403 the key is refused (auth_error); 429 and 5xx
temporary, like timeouts. The health check is ``GET /v3/scopes``: the key is
live and holds ``mail.send``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from email.header import Header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default as default_policy
from email.utils import getaddresses, parseaddr
from typing import Any

import httpx
import idna

from daemon.config import Config, ProviderConfig
from daemon.core.message import Recipient
from daemon.core.retry import PERMANENT, SENT
from daemon.providers.base import (
    DeliveryResult,
    Envelope,
    HealthResult,
    RecipientResult,
    batches,
)
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
# "Header keys cannot contain non-ASCII characters and empty spaces" (RFC 5322 ftext).
_HEADER_NAME = re.compile(r"[!-9;-~]+")
# Mail Send errors: an attachment's filename, content_id and type "may not include the
# characters ';', ',', CR or LF".
_FORBIDDEN = re.compile(r"[;,\r\n]")
_SEPARATOR = re.compile(r"[,;]")
NO_SUBJECT = " "  # Mail Send requires a subject of at least one character


class Unsendable(ValueError):
    """An address (or the message) that SendGrid's Mail Send cannot take; ``str`` says why,
    ``status`` is the RFC 3463 status a recipient refused for it reports in its DSN."""

    def __init__(self, reason: str, status: str = "5.6.7") -> None:
        super().__init__(reason)
        self.status = status


def sendgrid_address(address: str) -> str:
    """``address`` as Mail Send takes it (``format: email``, ASCII): an internationalized
    domain as its IDNA 2008 A-label ("xn--"). Unsendable for a non-ASCII (SMTPUTF8) local
    part, which SendGrid does not take, or a domain that is no valid IDN."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not local.isascii() or not at:
        raise Unsendable(
            f"{address} has a non-ASCII local part (SMTPUTF8), which SendGrid does not take"
        )
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        reason = f"{domain} is not a valid internationalized domain name: {exc}"
        raise Unsendable(reason, "5.1.3") from None
    return f"{local}@{ascii_domain}"


def _key(address: str) -> str:
    """How two spellings of one address compare (case, Unicode or A-label domain)."""
    try:
        return sendgrid_address(address).lower()
    except Unsendable:
        return address.lower()


def _person(name: str, email: str) -> dict[str, str]:
    return {"email": email, "name": name} if name else {"email": email}


def _recipient(name: str, email: str) -> dict[str, str]:
    """A to/cc object. Mail Send limitation: to/cc/bcc names "cannot include commas or
    semicolons" (SendGrid then drops the mail as an invalid address after its 202); such
    a name goes quoted, as SendGrid's own Node.js library does."""
    if name and _SEPARATOR.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _person(name, email)


def _header_addresses(message: Message, name: str) -> list[tuple[str, str]]:
    return [(n, a) for n, a in getaddresses([str(v) for v in message.get_all(name, [])]) if a]


def _sender(name: str, address: str, field: str) -> dict[str, str]:
    """A from or reply_to object; the message cannot go through SendGrid if its address cannot."""
    try:
        return _person(name, sendgrid_address(address))
    except Unsendable as exc:
        raise Unsendable(f"{field}: {exc}") from None


def personalizations(
    message: Message, recipients: list[str]
) -> list[dict[str, list[dict[str, str]]]]:
    """to/cc/bcc from the envelope: To-header recipients as ``to``, Cc as ``cc``, the rest bcc.

    SendGrid needs a ``to`` in each personalization: when no envelope recipient
    is in the To header, each recipient gets a personalization of its own.
    """
    names = {_key(a): n for n, a in _header_addresses(message, "To")}
    cc_names = {_key(a): n for n, a in _header_addresses(message, "Cc")}
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
            to.append(_recipient(names[key], address))
        elif key in cc_names:
            cc.append(_recipient(cc_names[key], address))
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


def _attachment(part: Message, index: int) -> dict[str, str] | None:
    """The attachment object of a leaf part; None for an empty one, which SendGrid refuses
    ("The attachment content must be a string at least one character in length")."""
    data = _payload_bytes(part)
    if not data:
        return None
    content_id = str(part.get("Content-ID", "")).strip().removeprefix("<").removesuffix(">")
    content_id = _FORBIDDEN.sub("_", content_id)
    disposition = part.get_content_disposition()
    inline = disposition == "inline" or (disposition is None and bool(content_id))
    kind = part.get_content_type()
    item = {
        "content": base64.b64encode(data).decode("ascii"),
        "type": "application/octet-stream" if _FORBIDDEN.search(kind) else kind,
        "filename": _FORBIDDEN.sub("_", part.get_filename() or "")
        or content_id
        or f"attachment-{index}",
        "disposition": "inline" if inline and content_id else "attachment",
    }
    if inline and content_id:
        item["content_id"] = content_id
    return item


def _custom_headers(message: Message) -> dict[str, str]:
    """The message's own headers SendGrid may carry, once each, values in ASCII."""
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in message.raw_items():
        key = name.lower()
        if key in DROPPED_HEADERS or key in seen or not _HEADER_NAME.fullmatch(name):
            continue
        seen.add(key)
        text = " ".join(str(value).split())
        headers[name] = text if text.isascii() else _encoded_words(text)
    return headers


def _encoded_words(text: str) -> str:
    """A header value in raw UTF-8 (RFC 6532; undecodable bytes reach us as surrogates)
    as RFC 2047 encoded words, which every SMTP hop takes."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(Header(text, "utf-8").encode().split())


def mail_send_body(raw: bytes, mail_from: str, recipients: list[str]) -> dict[str, Any]:
    """The ``mail/send`` JSON for a stored message and (at most 1,000) envelope recipients."""
    return mail_send_bodies(raw, mail_from, recipients)[0][1]


def mail_send_bodies(
    raw: bytes, mail_from: str, recipients: list[str]
) -> list[tuple[list[str], dict[str, Any]]]:
    """The ``mail/send`` requests for a stored message, each with the recipients it carries.

    ``recipients`` are in the form SendGrid takes (:func:`sendgrid_address`). SendGrid
    takes at most 1,000 recipients (to + cc + bcc) per request, each address once: more
    recipients take more requests, To then Cc recipients first. Raises
    :class:`Unsendable` when the From or Reply-To address cannot be expressed.
    """
    message = BytesParser(policy=default_policy).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    common = _common_fields(message, mail_from)
    listed = {_key(a) for _, a in _header_addresses(message, "To")}
    listed |= {_key(a) for _, a in _header_addresses(message, "Cc")}
    unique: dict[str, str] = {}
    for address in recipients:
        unique.setdefault(address.lower(), address)
    ordered = sorted(unique.values(), key=lambda a: a.lower() not in listed)  # stable
    return [
        (list(batch), {"personalizations": personalizations(message, list(batch)), **common})
        for batch in batches(ordered, MAX_RECIPIENTS)
    ]


def encode_body(body: dict[str, Any]) -> bytes:
    """The JSON bytes of a request, always valid UTF-8 ("Invalid UTF8 in request" is a 400):
    raw 8-bit message text that was not UTF-8 reaches us as surrogates."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode("utf-8")


def _requests(raw: bytes, mail_from: str, recipients: list[str]) -> list[tuple[list[str], bytes]]:
    return [
        (batch, encode_body(body)) for batch, body in mail_send_bodies(raw, mail_from, recipients)
    ]


def _common_fields(message: EmailMessage, mail_from: str) -> dict[str, Any]:
    """Everything of the ``mail/send`` JSON but the personalizations."""
    from_name, from_email = parseaddr(str(message.get("From", "")))
    if not (from_email or mail_from):
        raise Unsendable("SendGrid needs a from address: the message has no From and no sender")
    body: dict[str, Any] = {"from": _sender(from_name, from_email or mail_from, "From")}
    body["subject"] = str(message.get("Subject", "")) or NO_SUBJECT
    # reply_to_list: "uniqueItems", so each address once.
    reply_to = list({_key(a): (n, a) for n, a in _header_addresses(message, "Reply-To")}.values())
    if len(reply_to) == 1:
        body["reply_to"] = _sender(*reply_to[0], "Reply-To")
    elif reply_to:
        body["reply_to_list"] = [_sender(n, a, "Reply-To") for n, a in reply_to]
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
        item
        for index, part in enumerate(
            (p for p in _leaves(message) if not any(p is c for c in chosen)), start=1
        )
        if (item := _attachment(part, index)) is not None
    ]
    if attachments:
        body["attachments"] = attachments
    headers = _custom_headers(message)
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
        self._post_headers = {**self._headers, "Content-Type": "application/json"}

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
        addresses: list[str] = []
        by_address: dict[str, list[Recipient]] = {}
        refused: list[RecipientResult] = []
        for r in envelope.recipients:  # an address twice in the envelope shares one result
            try:
                address = sendgrid_address(r.address)
            except Unsendable as exc:  # that recipient alone: the others can still go
                reply = f"553 {exc.status} {exc}"
                refused.append(RecipientResult(r.address, PERMANENT, 553, reply))
                continue
            if address.lower() not in by_address:
                addresses.append(address)
            by_address.setdefault(address.lower(), []).append(r)
        results: list[DeliveryResult] = []
        if addresses:
            try:
                if len(envelope.raw) > _OFFLOAD_BYTES:
                    requests = await asyncio.to_thread(
                        _requests, envelope.raw, envelope.mail_from, addresses
                    )
                else:
                    requests = _requests(envelope.raw, envelope.mail_from, addresses)
            except Exception as exc:  # the same bytes would fail the same way every time
                reply = f"the message cannot be expressed as SendGrid JSON: {exc}"
                return DeliveryResult.uniform(PERMANENT, envelope.recipients, reply=reply)
            for batch, body in requests:
                recipients = [r for a in batch for r in by_address[a.lower()]]
                results.append(await self._send_one(body, recipients))
        if refused:
            reply = refused[0].reply if len(refused) == 1 else f"{refused[0].reply} (and others)"
            results.append(DeliveryResult(PERMANENT, tuple(refused), 553, reply))
        return DeliveryResult.merge(results)

    async def _send_one(self, body: bytes, recipients: list[Recipient]) -> DeliveryResult:
        async with self._slots:
            try:
                response = await self.request(
                    "POST", "/v3/mail/send", content=body, headers=self._post_headers
                )
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
