"""The webhook sender: signed JSON POSTs to workspace endpoints, retried, then dead-lettered.

Before every connection (the first and each redirect, which is followed by hand
at most ``MAX_REDIRECTS`` times) the host is resolved and every address checked
(daemon.core.webhooks.refusal); the request then goes to the checked address
itself, with the name in ``Host`` and in TLS SNI, so a second DNS answer cannot
swap in an internal address between check and connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from daemon.core import webhooks as policy
from daemon.core.durations import Duration
from daemon.service import RelayService
from daemon.store import deliveries
from daemon.store.engine import FailureLog

log = logging.getLogger("relayd.webhooks")

MAX_REDIRECTS = 3
LEASE = timedelta(minutes=2)
IDLE = 5.0
USER_AGENT = "relayd-webhooks/1"

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (literals resolve to themselves)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Result:
    """One delivery attempt: delivered or not, the status code and why not."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None


class Refused(Exception):
    """The endpoint (or a redirect) points where the relay must not connect."""


class WebhookSender:
    """Delivers due webhook deliveries; one per daemon (claims make several safe)."""

    def __init__(self, service: RelayService, resolver: Resolver = system_resolver) -> None:
        self.service = service
        self.resolver = resolver
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._failures = FailureLog(log, "webhook sender")

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        return self._client

    async def start(self) -> None:
        self.service.engagement.deliveries_waiting = self._wake
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()
        self.service.engagement.deliveries_waiting = None

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.run_once()
                if sent:
                    continue
                due = await self.service.reader.run(deliveries.next_due)
                wait = IDLE
                if due is not None:
                    wait = max(0.05, min(IDLE, (due - self.service.clock()).total_seconds()))
                self._failures.worked()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database outage must not end the sender
                self._failures.failed(exc)
                await asyncio.sleep(1.0)

    async def run_once(self) -> int:
        """Claim and send one batch of due deliveries; how many were attempted."""
        config = self.service.config.webhooks
        now = self.service.clock()
        batch = await self.service.committer.run(
            lambda c: deliveries.claim(c, now, config.batch_size, LEASE)
        )
        if batch:
            await asyncio.gather(*(self._attempt(row) for row in batch))
        return len(batch)

    async def _attempt(self, row: Any) -> None:
        result = await self.deliver(row.url, row.secret, row.body.encode(), row.event_type, row.id)
        delays = [Duration.parse(d).seconds for d in self.service.config.webhooks.retry_delays]
        now = self.service.clock()
        attempts = row.attempts + 1
        if result.delivered:
            status, next_at = "delivered", None
        else:
            next_at = policy.next_attempt(attempts, delays, now)
            status = "pending" if next_at is not None else "dead"
            log.info(
                "webhook %s to %s failed (attempt %d%s): %s",
                row.id,
                row.webhook_id,
                attempts,
                ", dead-lettered" if status == "dead" else "",
                result.error,
            )
        await self.service.committer.run(
            lambda c: deliveries.settle(
                c,
                row.id,
                now=now,
                status=status,
                attempts=attempts,
                next_attempt_at=next_at,
                error=result.error,
                status_code=result.status_code,
            )
        )

    async def deliver(
        self, url: str, secret: str, body: bytes, event_type: str, delivery_id: str
    ) -> Result:
        """One signed POST, following redirects by hand and checking every hop."""
        timeout = self.service.config.webhooks.timeout.seconds
        try:
            return await asyncio.wait_for(
                self._post(url, secret, body, event_type, delivery_id), timeout
            )
        except TimeoutError:
            return Result(False, None, f"timed out after {timeout:g}s")
        except Refused as exc:
            return Result(False, None, f"refused: {exc}")
        except (httpx.HTTPError, OSError, ValueError) as exc:
            return Result(False, None, f"{type(exc).__name__}: {exc}"[:500])

    async def _post(
        self, url: str, secret: str, body: bytes, event_type: str, delivery_id: str
    ) -> Result:
        for _ in range(MAX_REDIRECTS + 1):
            target, host_header, sni = await self._checked(url)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "Host": host_header,
                policy.SIGNATURE_HEADER: policy.sign(secret, int(time.time()), body),
                "X-Relay-Event": event_type,
                "X-Relay-Delivery": delivery_id,
            }
            extensions = {"sni_hostname": sni} if sni else {}
            response = await self._http().post(
                target, content=body, headers=headers, extensions=extensions
            )
            await response.aclose()
            if response.status_code in (301, 302, 303, 307, 308):
                location = response.headers.get("location")
                if not location:
                    return Result(False, response.status_code, "redirect without Location")
                url = urljoin(url, location)
                continue
            if 200 <= response.status_code < 300:
                return Result(True, response.status_code)
            return Result(False, response.status_code, f"HTTP {response.status_code}")
        return Result(False, None, f"more than {MAX_REDIRECTS} redirects")

    async def _checked(self, url: str) -> tuple[str, str, str | None]:
        """The URL to connect to (by checked address), the Host header and the SNI name."""
        problem = policy.valid_endpoint(url)
        if problem is not None:
            raise Refused(f"{url[:200]}: {problem}")
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self.resolver(host, port)
        except OSError as exc:
            raise Refused(f"{host} does not resolve: {exc}") from None
        why = policy.refusal(host, addresses, self.service.config.webhooks.allowlist)
        if why is not None:
            raise Refused(why)
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        netloc = f"{literal}:{parts.port}" if parts.port else literal
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        host_header = parts.netloc.rpartition("@")[2]
        sni = host if parts.scheme == "https" and host != address else None
        return target, host_header, sni
