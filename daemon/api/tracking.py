"""``GET /webhook/pixel`` and ``GET /webhook/click``: opens and clicks of tracked mail.

Public, cheap and never a 500. The pixel always answers the 43-byte GIF (an
unknown message simply records nothing). A click redirects only when ``sig``
is our HMAC over the message, the recipient and the URL, the message is one we
tracked and the URL is http(s); anything else is 400 and redirects nowhere.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from daemon.core import tracking
from daemon.service import RelayService

log = logging.getLogger("relayd.tracking")

NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
}


def _service(request: Request) -> RelayService:
    service: RelayService = request.app.state.service
    return service


def _params(request: Request) -> tuple[str, str, str | None, str | None]:
    try:
        query = request.query_params
        return query.get("mid", ""), query.get("rid", ""), query.get("url"), query.get("sig")
    except Exception:
        return "", "", None, None


def _agent(request: Request) -> dict[str, str]:
    agent = request.headers.get("user-agent", "")[:300]
    return {"user_agent": agent} if agent else {}


async def pixel(request: Request) -> Response:
    """The open pixel: record an open (unique and total) and answer a transparent GIF."""
    mid, rid, _, _ = _params(request)
    if tracking.valid_id(mid) and tracking.valid_id(rid):
        try:
            await _service(request).engagement.track("opened", mid, rid, extra=_agent(request))
        except Exception as exc:
            log.warning("could not record an open of %s: %s", mid, exc)
    return Response(tracking.PIXEL_GIF, media_type="image/gif", headers=NO_CACHE)


def _refuse(reason: str) -> Response:
    return PlainTextResponse(f"Bad tracking link: {reason}\n", status_code=400, headers=NO_CACHE)


async def click(request: Request) -> Response:
    """A tracked link: 302 to the signed URL and record the click, or 400."""
    mid, rid, url, sig = _params(request)
    service = _service(request)
    if not (tracking.valid_id(mid) and tracking.valid_id(rid)):
        return _refuse("missing or malformed mid or rid")
    if url is None or not tracking.is_web_url(url):
        return _refuse("the target is not an http(s) URL")
    if not tracking.verify_click(service.engagement.secret, mid, rid, url, sig):
        return _refuse("the signature does not match")
    try:
        known = await service.engagement.track("clicked", mid, rid, url, _agent(request))
    except Exception as exc:
        log.warning("could not record a click of %s: %s", mid, exc)
        known = True
    if not known:
        return _refuse("unknown message")
    return RedirectResponse(url, status_code=302, headers=NO_CACHE)


def routes() -> list[Route]:
    return [
        Route("/webhook/pixel", pixel, methods=["GET"]),
        Route("/webhook/click", click, methods=["GET"]),
    ]
