"""``POST /webhook/mandrill`` (and ``HEAD``, Mandrill's URL check): provider events in.

Mandrill posts ``application/x-www-form-urlencoded`` with one parameter,
``mandrill_events``, a JSON array. With ``[webhooks] mandrill_key`` set, only
such form posts are taken and ``X-Mandrill-Signature`` must verify against
``[webhooks] mandrill_url`` (the exact URL configured at Mandrill; empty: the
URL of this request); missing is 401 ``AUTH_REQUIRED``, wrong 401
``INVALID_TOKEN``, and neither changes anything. Without a key the
reference's JSON body ``{"mandrill_events": [...]}`` is taken too; such an
unsigned post could come from anyone, so only its events about a message this
relay sent, to an address it sent that message to, are applied (the message id
is the proof of knowledge); the rest count as skipped. A replayed batch applies
nothing twice.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl

from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.api.errors import ApiError
from daemon.api.fields import check_text, read_body
from daemon.api.responses import ok
from daemon.core import mandrill
from daemon.service import RelayService
from daemon.store import engagement as tables

log = logging.getLogger("relayd.mandrill")

MAX_BODY = 10 * 1024 * 1024
MAX_EVENTS = 10000
FORM = "application/x-www-form-urlencoded"


def _service(request: Request) -> RelayService:
    service: RelayService = request.app.state.service
    return service


def mandrill_key(service: RelayService) -> str:
    section = service.config.webhooks
    if section.mandrill_key:
        return section.mandrill_key
    if section.mandrill_key_file:
        try:
            return Path(section.mandrill_key_file).read_text().strip()
        except OSError as exc:
            # A configured key that cannot be read must not turn signing off.
            log.warning("cannot read webhooks.mandrill_key_file: %s", exc)
            raise ApiError(
                "INTERNAL_ERROR", "the Mandrill key cannot be read; nothing was applied"
            ) from None
    return ""


def _events(text: str) -> list[object]:
    try:
        events = json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError(
            "INVALID_REQUEST", "mandrill_events is not valid JSON", {"field": "mandrill_events"}
        ) from None
    if not isinstance(events, list):
        raise ApiError(
            "INVALID_REQUEST", "mandrill_events must be a JSON array", {"field": "mandrill_events"}
        )
    if len(events) > MAX_EVENTS:
        raise ApiError("INVALID_REQUEST", f"at most {MAX_EVENTS} events per post")
    check_text(events, "mandrill_events")  # NUL: neither email nor PostgreSQL takes it
    return events


def _about_our_mail(conn: Connection, items: list[object], now: datetime) -> list[bool]:
    """For each event: may an unsigned post apply it? Unreadable ones pass (to be
    counted as skipped); readable ones only when they name a message of ours and
    one of its recipients."""
    verdicts = []
    for item in items:
        try:
            event = mandrill.read_event(item, now)
        except mandrill.BadEvent:
            verdicts.append(True)
            continue
        if tables.get_message(conn, event.message_id) is None:
            verdicts.append(False)
            continue
        addresses = tables.message_recipient_addresses(conn, event.message_id)
        verdicts.append(event.email in {a.lower() for a in addresses})
    return verdicts


async def receive(request: Request) -> Response:
    """POST: verify (when keyed), read the batch, apply each event once."""
    service = _service(request)
    key = mandrill_key(service)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, MAX_BODY)
    if key and ctype != FORM:
        raise ApiError("AUTH_REQUIRED", "only signed form posts are accepted")
    if ctype == FORM:
        try:
            params = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise ApiError("INVALID_REQUEST", "the form body is not valid UTF-8") from None
        if key:
            url = service.config.webhooks.mandrill_url or str(request.url)
            header = request.headers.get("x-mandrill-signature")
            if not header:
                raise ApiError("AUTH_REQUIRED", "X-Mandrill-Signature is missing")
            if not mandrill.verify(key, url, params, header):
                raise ApiError("INVALID_TOKEN", "X-Mandrill-Signature does not verify")
        values = [v for k, v in params if k == "mandrill_events"]
        if not values:
            raise ApiError(
                "MISSING_REQUIRED_FIELD",
                "mandrill_events is required",
                {"field": "mandrill_events"},
            )
        events = _events(values[0])
    elif ctype == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise ApiError("INVALID_REQUEST", "Malformed JSON body") from None
        if not isinstance(data, dict) or "mandrill_events" not in data:
            raise ApiError(
                "MISSING_REQUIRED_FIELD",
                "mandrill_events is required",
                {"field": "mandrill_events"},
            )
        raw = data["mandrill_events"]
        events = _events(raw) if isinstance(raw, str) else _events(json.dumps(raw))
    else:
        raise ApiError("INVALID_REQUEST", f"Content-Type must be {FORM} or application/json")
    refused = 0
    if not key:
        now = service.clock()
        verdicts = await service.reader.run(lambda c: _about_our_mail(c, events, now))
        refused = verdicts.count(False)
        if refused:
            log.info("unsigned mandrill post: %d event(s) not about our mail skipped", refused)
        events = [e for e, take in zip(events, verdicts, strict=True) if take]
    counts = await service.engagement.mandrill(events)
    counts["skipped"] += refused
    log.info("mandrill batch: %s", counts)
    return ok(counts)


async def check(request: Request) -> Response:
    """HEAD (and GET): Mandrill checks that the URL answers 200 before saving it."""
    return Response(status_code=200)


def routes() -> list[Route]:
    return [
        Route("/webhook/mandrill", receive, methods=["POST"]),
        Route("/webhook/mandrill", check, methods=["GET", "HEAD"]),
    ]
