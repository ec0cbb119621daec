"""``/webhook/unsubscribe``: one-click unsubscribe (RFC 8058) and its confirmation page.

``GET ?token=...`` shows a small page with a button. ``POST`` acts on the signed
token alone (in the URL, as RFC 8058 clients send ``List-Unsubscribe=One-Click``
and nothing else, or as a ``token`` form field) and also takes the reference's
form fields ``email``, ``campaign_id`` and ``reason``; the email and campaign
must be the ones the token stands for. It marks the recipient UNSUBSCRIBED in
the message's workspace (creating the recipient row when the address was not
known, so later sends stay suppressed) and answers the reference's page.
Without a valid token nothing changes: no one can unsubscribe someone else.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from daemon.core import tracking
from daemon.service import RelayService
from daemon.store import engagement as tables

log = logging.getLogger("relayd.tracking")

_MAX_BODY = 64 * 1024
# The page holds a signed token: never cached, never sent on as a referrer, never framed
# (a hidden frame could click its button), no script or outside resource at all.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
_INVALID = (
    "<html>\n<body>\n  <h1>Invalid unsubscribe link</h1>\n"
    "  <p>This unsubscribe link is not valid. Nothing was changed.</p>\n</body>\n</html>\n"
)
DONE = (
    "<html>\n<body>\n  <h1>Unsubscribed Successfully</h1>\n"
    "  <p>You have been unsubscribed from our mailing list.</p>\n</body>\n</html>\n"
)


def _confirm(token: str, email: str | None) -> str:
    who = f" <strong>{html.escape(email)}</strong>" if email else ""
    action = html.escape(tracking.UNSUBSCRIBE_PATH + "?token=" + token, quote=True)
    return f"""<!doctype html>
<html>
<head><meta charset="utf-8"><title>Unsubscribe</title></head>
<body>
  <h1>Unsubscribe</h1>
  <p>Stop receiving this mailing list at{who}?</p>
  <form method="post" action="{action}">
    <input type="hidden" name="List-Unsubscribe" value="One-Click">
    <label>Reason (optional)
      <select name="reason" id="reason">
        <option value="">-</option>
        <option value="not_interested">Not interested</option>
        <option value="too_frequent">Too frequent</option>
        <option value="never_signed_up">Never signed up</option>
      </select>
    </label>
    <button type="submit" id="unsubscribe">Unsubscribe</button>
  </form>
</body>
</html>
"""


def _service(request: Request) -> RelayService:
    service: RelayService = request.app.state.service
    return service


def _page(body: str, status: int = 200) -> Response:
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


async def _form(request: Request) -> dict[str, str]:
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            return {}
    try:
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    except ValueError:
        return {}


def _clean(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    text = "".join(c for c in value if c.isprintable()).strip()
    return text[:limit] or None


async def _resolve(
    service: RelayService, token: str | None, email: str | None
) -> tuple[object, str] | None:
    """The tracking row and recipient address a valid token (and form email) stand for."""
    claim = tracking.read_unsubscribe_token(service.engagement.secret, token)
    if claim is None:
        return None
    mid, rid = claim
    row = await service.engagement.tracked(mid)
    if row is None or row.rid != rid:
        return None
    if row.recipient is not None:
        if email and email.lower() != row.recipient:
            return None
        return row, row.recipient
    if not email:
        return None
    addresses = await service.reader.run(lambda c: tables.message_recipient_addresses(c, mid))
    if email.lower() not in {a.lower() for a in addresses}:
        return None
    return row, email.lower()


async def confirm_page(request: Request) -> Response:
    """GET: the confirmation page with its button (changes nothing)."""
    service = _service(request)
    token = request.query_params.get("token")
    try:
        resolved = await _resolve(service, token, request.query_params.get("email"))
    except Exception as exc:
        log.warning("unsubscribe page: %s", exc)
        resolved = None
    if resolved is None or token is None:
        return _page(_INVALID, 400)
    return _page(_confirm(token, resolved[1]))


async def unsubscribe(request: Request) -> Response:
    """POST: unsubscribe the recipient the signed token names."""
    service = _service(request)
    form = await _form(request)
    token = request.query_params.get("token") or form.get("token")
    email = _clean(form.get("email"), 320)
    campaign_id = _clean(form.get("campaign_id"), 200)
    try:
        resolved = await _resolve(service, token, email)
        if resolved is None:
            return _page(_INVALID, 400)
        row, address = resolved
        if campaign_id and campaign_id != getattr(row, "campaign_id", None):
            return _page(_INVALID, 400)
        one_click = form.get("List-Unsubscribe") == "One-Click"
        reason = _clean(form.get("reason"), 200) or (
            "one-click unsubscribe" if one_click else "unsubscribe link"
        )
        extra = {"one_click": one_click, "user_agent": request.headers.get("user-agent", "")[:300]}
        await service.engagement.unsubscribe(row, address, reason, extra)
    except Exception as exc:
        log.warning("unsubscribe failed: %s", exc)
        return _page("<html><body><h1>Please try again later</h1></body></html>\n", 503)
    return _page(DONE)


def routes() -> list[Route]:
    return [
        Route("/webhook/unsubscribe", confirm_page, methods=["GET"]),
        Route("/webhook/unsubscribe", unsubscribe, methods=["POST"]),
    ]
