"""What the HTTP API providers (mailgun, gmail, sendgrid) share.

Each holds one ``httpx.AsyncClient`` (injected, so tests point it at a local
fake; closed in ``close()``), bounds its calls in flight with ``max_connections``
and turns transport failures into temporary results: a timeout, a refused or
dropped connection is worth another try, through the next provider.

httpx's timeouts bound each network operation (a connect, a read, a write), not a
whole call: an API that trickles its answer a byte at a time would keep the call,
and so the message's lease and a delivery slot, for ever. Every call therefore goes
through :func:`bounded_request`, which bounds it as a whole by the provider's
``timeout``, plus time to send a large body (:func:`daemon.providers.base.upload_budget`).
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from daemon.config import ConfigError, ProviderConfig
from daemon.core.message import Recipient
from daemon.core.retry import TEMPORARY, classify_http
from daemon.providers.base import MIN_UPLOAD_RATE, DeliveryResult, HealthResult, upload_budget

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


class DeadlineExceeded(httpx.TimeoutException):
    """A call that went past the provider's ``timeout`` as a whole (:func:`bounded_request`);
    a timeout like httpx's own, so a temporary failure. ``str`` names the bound."""


def call_timeout(client: httpx.AsyncClient) -> float | None:
    """The provider's ``timeout`` as its client holds it (:func:`make_client` sets every
    per-operation timeout to it): the longest one set; None when none is."""
    t = client.timeout
    values = [v for v in (t.connect, t.read, t.write, t.pool) if v is not None]
    return max(values) if values else None


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}s"


async def bounded_request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    content: bytes | None = None,
    data: Mapping[str, str] | None = None,
    json: object = None,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    auth: httpx.Auth | tuple[str, str] | None = None,
    min_upload_rate: float = MIN_UPLOAD_RATE,
) -> httpx.Response:
    """One HTTP call through ``client``, its answer read whole, bounded as a whole.

    The call (connecting, TLS, sending the request, the answer to its last byte) must
    end within the client's timeout (:func:`call_timeout`) plus the request body's size
    at ``min_upload_rate`` (:func:`upload_budget`): the answer is only due once the
    body is through, and when its last byte has left is not known (the kernel's send
    buffer takes megabytes), so a large body on a slow link is not cut short while an
    answer trickled a byte at a time still ends. Past it the call is abandoned, its
    connection closed, and :class:`DeadlineExceeded` raised. A client without any
    timeout is not bounded.
    """
    request = client.build_request(
        method, url, content=content, data=data, json=json, params=params, headers=headers
    )
    seconds = call_timeout(client)
    if seconds is None:
        return await client.send(request, auth=auth)
    size = int(request.headers.get("Content-Length") or 0)
    budget = upload_budget(seconds, size, min_upload_rate)
    # httpx bounds the body's one write and the wait for the answer's first byte (the
    # rest of the upload) each by itself: they get the call's budget too.
    timeouts = dict(request.extensions.get("timeout") or {})
    timeouts.update(write=budget, read=budget)
    request.extensions["timeout"] = timeouts
    deadline = asyncio.timeout(budget)
    try:
        async with deadline:
            return await client.send(request, auth=auth)
    except (TimeoutError, httpx.HTTPError) as exc:
        # Past the deadline, whatever the cancelled call raised (TimeoutError, or an httpx
        # timeout firing at the same moment) is ours; anything before is the call's own.
        if not deadline.expired():
            raise
        extra = budget - seconds
        allowance = f", plus {_seconds(extra)} to send {size} bytes" if extra >= 0.05 else ""
        why = f"no complete answer within {_seconds(budget)} (the provider's timeout{allowance})"
        raise DeadlineExceeded(why, request=request) from exc


def transport_reply(exc: Exception) -> str:
    if isinstance(exc, DeadlineExceeded):
        return f"timeout: {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout: no answer ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RestProvider:
    """Base of the HTTP API providers: the client, the concurrency bound, shared mappings."""

    type = "rest"
    # The slowest upload waited for (bytes/s): see :func:`bounded_request`.
    min_upload_rate: float = MIN_UPLOAD_RATE

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

    async def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        json: object = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | None = None,
    ) -> httpx.Response:
        """A call to the provider's API, bounded as a whole (:func:`bounded_request`)."""
        return await bounded_request(
            self.client,
            method,
            path,
            content=content,
            json=json,
            params=params,
            headers=headers,
            auth=auth,
            min_upload_rate=self.min_upload_rate,
        )

    async def probe(
        self,
        method: str,
        path: str,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> tuple[HealthResult, httpx.Response | None]:
        """A cheap authenticated request: unhealthy unless it answers 200."""
        started = time.monotonic()
        try:
            response = await self.request(method, path, auth=auth, headers=headers, params=params)
        except httpx.HTTPError as exc:
            return HealthResult(False, _ms(started), transport_reply(exc)), None
        if response.status_code != 200:
            return HealthResult(False, _ms(started), reply_text(response)), response
        return HealthResult(True, _ms(started), self.remote), response

    async def close(self) -> None:
        await self.client.aclose()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
