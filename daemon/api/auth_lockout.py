"""Failed HTTP authentication per client address: 429 once an address has guessed too often.

A request whose credentials fail (401 ``INVALID_TOKEN``: a wrong, revoked or expired
token or API key, a JWT badly signed, or an Authorization header that is not
``Bearer <token>``) counts one failure against its client address: the IPv4
address, or the /64 of an IPv6 one (daemon.core.lockout, shared with SMTP AUTH).
A request without credentials (401 ``AUTH_REQUIRED``) counts nothing.

With ``http.auth_lockout_failures`` failures within ``http.auth_lockout_window``,
every request from that address that carries credentials is answered 429
``RATE_LIMIT_EXCEEDED`` with ``Retry-After`` and the X-RateLimit-* headers of the
failure window, before its token is looked at (the right token included: the
lockout is what stops a guesser, and letting the right guess through would tell
it apart), until the oldest failure ages out. The window slides, so a steady
guesser gets ``auth_lockout_failures`` tries per window however it spreads them;
a success from one address changes nothing for it or any other. Requests without
credentials are not refused: the public routes and ``/health`` stay reachable.
Both settings are read at each request, so a SIGHUP or ``PUT /api/admin/config``
applies at once; the counts live in the daemon's memory and a restart clears them.

Loopback is not exempt. A reverse proxy on the same host that does not pass
``X-Forwarded-For`` makes every client look like 127.0.0.1: exempting loopback
would switch the lockout off for such a deployment, and local users can guess
too. relayctl on the relay's host with a stale token is locked out at most for
the window (it says when to try again); an operator who cannot wait sets
``http.auth_lockout_failures = 0`` or restarts relayd.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from starlette.requests import Request

from daemon.api.errors import ApiError, iso_utc
from daemon.api.ratelimit import ANONYMOUS
from daemon.core import plans
from daemon.core.lockout import AuthLockout, client_key

if TYPE_CHECKING:
    from daemon.service import RelayService

log = logging.getLogger("relayd.api")

WINDOW_NAME = "auth_failures"


def _peer(request: Request) -> str:
    client = request.scope.get("client")
    return str(client[0]) if client else ""


class HttpAuthLockout:
    """Recent HTTP authentication failures by client address, for one app."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._failures = AuthLockout()
        self._monotonic = monotonic

    def check(self, request: Request, service: RelayService) -> None:
        """Raise 429 ``RATE_LIMIT_EXCEEDED`` when the request's client address is locked out."""
        http = service.config.http
        limit, window = http.auth_lockout_failures, http.auth_lockout_window.seconds
        if limit <= 0 or not len(self._failures):
            return
        wait = self._failures.locked_for(
            client_key(_peer(request)), self._monotonic(), limit, window
        )
        if wait > 0:
            raise _locked_out(service, limit, window, wait)

    def failed(self, request: Request, service: RelayService) -> None:
        """Count one failed authentication of the request's client address."""
        http = service.config.http
        limit, window = http.auth_lockout_failures, http.auth_lockout_window.seconds
        if limit <= 0:
            return
        peer = _peer(request)
        locked = self._failures.failed(client_key(peer), self._monotonic(), limit, window)
        if locked > 0:
            # Said once per lockout: the requests refused during it are not logged.
            log.warning(
                "HTTP auth locked out for %.0fs peer=%s (%d failures within %s)",
                locked,
                peer,
                limit,
                http.auth_lockout_window.text,
            )


def _locked_out(service: RelayService, limit: int, window: float, wait: float) -> ApiError:
    now = service.clock()
    seconds = max(1, math.ceil(wait))
    reset_at = now + timedelta(seconds=seconds)
    use = plans.WindowUse(WINDOW_NAME, math.ceil(window), limit, limit, reset_at)
    headers = plans.rate_headers(use, ANONYMOUS, now)
    return ApiError(
        "RATE_LIMIT_EXCEEDED",
        f"too many failed authentication attempts from this address; try again in {seconds}s",
        {
            "limit": limit,
            "window": WINDOW_NAME,
            "window_seconds": use.seconds,
            "reset_at": iso_utc(reset_at),
        },
        {**headers, "Retry-After": str(seconds)},
    )
