"""What the HTTP API providers (mailgun, gmail, sendgrid) share.

Each holds one ``httpx.AsyncClient`` (injected, so tests point it at a local
fake; closed in ``close()``), bounds its calls in flight with ``max_connections``
and turns transport failures into temporary results: a timeout, a refused or
dropped connection is worth another try, through the next provider.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from daemon.config import ConfigError, ProviderConfig
from daemon.core.message import Recipient
from daemon.core.retry import TEMPORARY, classify_http
from daemon.providers.base import DeliveryResult, HealthResult

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 16
USER_AGENT = "relayd"
_REPLY_LIMIT = 500
# The longest wait a provider's answer is believed for (a reset a day away is a bad clock).
LONGEST_REQUESTED_WAIT = 86400.0
# X-RateLimit-Reset values past this are epoch seconds (SendGrid); smaller ones, seconds to wait.
_EPOCH_FROM = 1_000_000_000


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


def secret(pc: ProviderConfig, key: str) -> str:
    """The value of ``key`` or the content of ``<key>_file`` ("" when neither is set);
    a file that cannot be read, is not UTF-8 text or is empty is a ConfigError naming it."""
    value = pc.options.get(key) or ""
    path = pc.options.get(f"{key}_file") or ""
    if value or not path:
        return str(value)
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"providers.{pc.id}.{key}_file", f"cannot read {path!r}: {reason}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"providers.{pc.id}.{key}_file", f"{path!r} is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"providers.{pc.id}.{key}_file", f"file {path!r} is empty")
    return text


def required(pc: ProviderConfig, key: str, has_file: bool = True) -> str:
    """A required option (or its ``_file``), else a ConfigError naming it."""
    value = secret(pc, key)
    if not value:
        alternative = f" or {key}_file" if has_file else ""
        raise ConfigError(
            f"providers.{pc.id}.{key}", f"a {pc.type} provider needs {key}{alternative}"
        )
    return value


def reply_text(response: httpx.Response) -> str:
    """``<status> <body>`` cut short: what the provider said, for the message's error."""
    body = " ".join(response.text.split())[:_REPLY_LIMIT]
    return f"{response.status_code} {body}".strip()


def requested_wait(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds the provider asks us to wait before calling it again, if it says.

    ``Retry-After`` (RFC 9110: seconds or an HTTP date, Mailgun and Google) or, on a
    429, ``X-RateLimit-Reset`` (SendGrid: the epoch second its rate-limit window
    resets). None when neither is there or readable, or the time has passed.
    """
    now = time.time() if now is None else now
    wait: float | None = None
    value = response.headers.get("Retry-After", "").strip()
    if value:
        if value.isdigit():
            wait = float(value)
        else:
            try:
                wait = parsedate_to_datetime(value).timestamp() - now
            except (TypeError, ValueError, IndexError, OverflowError):
                wait = None
    if wait is None and response.status_code == 429:
        reset = response.headers.get("X-RateLimit-Reset", "").strip()
        if reset.isdigit():
            wait = float(reset) - now if int(reset) >= _EPOCH_FROM else float(reset)
    if wait is None or wait <= 0:
        return None
    return min(wait, LONGEST_REQUESTED_WAIT)


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
        """A non-success answer, classified by its HTTP status unless ``kind`` says otherwise.

        A temporary one says how long the provider asked us to wait, if it did
        (:func:`requested_wait`).
        """
        outcome = kind or classify_http(response.status_code)
        reply = reply_text(response)
        wait = requested_wait(response) if outcome == TEMPORARY else None
        if wait is not None:
            reply = f"{reply} (the provider asks for no retry within {math.ceil(wait)}s)"
        return DeliveryResult.uniform(
            outcome, recipients, response.status_code, reply, remote=self.remote, retry_in=wait
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
