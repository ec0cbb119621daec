"""What the HTTP API providers (mailgun, gmail, sendgrid) share.

Each holds one ``httpx.AsyncClient`` (injected, so tests point it at a local
fake; closed in ``close()``), bounds its calls in flight with ``max_connections``
and turns transport failures into temporary results: a timeout, a refused or
dropped connection is worth another try, through the next provider.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence

import httpx

from daemon.config import ConfigError, ProviderConfig
from daemon.core.message import Recipient
from daemon.core.retry import TEMPORARY, classify_http
from daemon.providers.base import DeliveryResult, HealthResult

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 16
USER_AGENT = "relayd"
_REPLY_LIMIT = 500


class LaneTransport(httpx.AsyncBaseTransport):
    """``max_connections`` single-connection pools ("lanes"), each request on the least busy.

    httpcore's pool scans every connection for every request and slows sharply past a
    few connections (1,300 requests/s with one, under 200 with 64 on a 2-core machine);
    lanes of one connection each keep that scan trivial and reuse every connection.
    """

    def __init__(self, lanes: int) -> None:
        # httpcore writes a request's head and body separately: without TCP_NODELAY, Nagle
        # can hold the body until the peer's delayed ACK.
        options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        tls = httpx.create_ssl_context()  # one for all lanes: loading the CAs takes ~20 ms
        self._lanes = [
            httpx.AsyncHTTPTransport(verify=tls, limits=limits, socket_options=options)
            for _ in range(max(1, lanes))
        ]
        self._busy = [0] * len(self._lanes)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        lane = self._busy.index(min(self._busy))
        self._busy[lane] += 1
        try:
            response = await self._lanes[lane].handle_async_request(request)
        except BaseException:
            self._busy[lane] -= 1
            raise
        response.stream = _Released(response.stream, lambda: self._release(lane))
        return response

    def _release(self, lane: int) -> None:
        self._busy[lane] -= 1

    async def aclose(self) -> None:
        for lane in self._lanes:
            await lane.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that frees its lane once read and closed."""

    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, release: Callable[[], None]
    ) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._release is not None:
                self._release()
                self._release = None


def make_client(base_url: str, timeout: float, max_connections: int) -> httpx.AsyncClient:
    """The provider's shared client: ``max_connections`` kept-alive connections."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        transport=LaneTransport(max_connections),
        headers={"User-Agent": USER_AGENT},
    )


def client_settings(pc: ProviderConfig) -> tuple[float, int]:
    """``timeout`` (seconds) and ``max_connections`` of a provider's config."""
    timeout = pc.option("timeout")
    seconds = timeout.seconds if timeout is not None else DEFAULT_TIMEOUT
    connections = int(pc.option("max_connections", DEFAULT_MAX_CONNECTIONS))
    if connections < 1:
        raise ConfigError(f"providers.{pc.id}.max_connections", "must be at least 1")
    return seconds, connections


def required(pc: ProviderConfig, key: str) -> str:
    """A required option (or its ``_file``), else a ConfigError naming it."""
    try:
        value = pc.option(key)
    except OSError as exc:
        raise ConfigError(f"providers.{pc.id}.{key}_file", str(exc)) from None
    if not value:
        raise ConfigError(f"providers.{pc.id}.{key}", f"a {pc.type} provider needs {key}")
    return str(value)


def reply_text(response: httpx.Response) -> str:
    """``<status> <body>`` cut short: what the provider said, for the message's error."""
    body = " ".join(response.text.split())[:_REPLY_LIMIT]
    return f"{response.status_code} {body}".strip()


def transport_reply(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout: no answer ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RestProvider:
    """Base of the HTTP API providers: the client, the concurrency bound, shared mappings."""

    type = "rest"

    def __init__(self, provider_id: str, client: httpx.AsyncClient, max_connections: int) -> None:
        self.id = provider_id
        self.client = client
        self._slots = asyncio.Semaphore(max(1, max_connections))

    @property
    def remote(self) -> str:
        return self.client.base_url.host or str(self.client.base_url)

    def failure(self, exc: Exception, recipients: Sequence[Recipient]) -> DeliveryResult:
        """A transport failure: temporary for every recipient."""
        return DeliveryResult.uniform(
            TEMPORARY, recipients, reply=transport_reply(exc), remote=self.remote
        )

    def refused(
        self, response: httpx.Response, recipients: Sequence[Recipient], kind: str | None = None
    ) -> DeliveryResult:
        """A non-success answer, classified by its HTTP status unless ``kind`` says otherwise."""
        outcome = kind or classify_http(response.status_code)
        return DeliveryResult.uniform(
            outcome, recipients, response.status_code, reply_text(response), remote=self.remote
        )

    async def probe(
        self, method: str, path: str, auth: httpx.Auth | None = None, **kwargs: object
    ) -> tuple[HealthResult, httpx.Response | None]:
        """A cheap authenticated request: unhealthy unless it answers 200."""
        started = time.monotonic()
        try:
            response = await self.client.request(method, path, auth=auth, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            return HealthResult(False, _ms(started), transport_reply(exc)), None
        if response.status_code != 200:
            return HealthResult(False, _ms(started), reply_text(response)), response
        return HealthResult(True, _ms(started), self.remote), response

    async def close(self) -> None:
        await self.client.aclose()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
