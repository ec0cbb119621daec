"""The HTTP client of relayd's API: what relayctl runs on, and the public Python library.

Example::

    from relayctl.client import Client

    with Client(api_key="...", workspace_id="ws-001") as client:
        result = client.send_message(
            from_email="sender@example.com", to=["rcpt@example.org"], subject="Hi", text="Hi"
        )
        print(result.message_id)
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from relayctl import __version__
from relayctl.endpoints import Endpoints, path_segment
from relayctl.errors import (
    ApiError,
    AuthError,
    ConfigurationError,
    EndpointNotFoundError,
    InvalidRequestError,
    NotFoundError,
    RelayError,
    UnreachableError,
    error_for_status,
)
from relayctl.maylng import MaylngEndpoints
from relayctl.settings import TokenFileError, redact_url, resolve_token, resolve_url

__all__ = [
    "ApiError",
    "Attachment",
    "AuthError",
    "Client",
    "ConfigurationError",
    "EndpointNotFoundError",
    "InvalidRequestError",
    "NotFoundError",
    "RelayError",
    "SendResult",
    "UnreachableError",
]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# A live stream may stay quiet between events; only connecting is bounded tightly.
_STREAM_TIMEOUT = httpx.Timeout(60.0, connect=5.0)

JSON = dict[str, Any]


@dataclass(frozen=True)
class SendResult:
    """What ``POST /api/messages`` answered: the new message's id, status and times."""

    message_id: str
    status: str
    queued_at: str | None
    estimated_send_time: str | None
    data: JSON = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Attachment:
    """A file to attach; ``content`` is raw bytes (the client base64-encodes it)."""

    filename: str
    content: bytes
    content_type: str = "application/octet-stream"

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], content_type: str | None = None) -> Attachment:
        """Read a file; the content type is guessed from its name unless given."""
        file = Path(path)
        guessed, _ = mimetypes.guess_type(file.name)
        return cls(file.name, file.read_bytes(), content_type or guessed or cls.content_type)

    def to_json(self) -> JSON:
        """The API's attachment object."""
        return {
            "filename": self.filename,
            "content_type": self.content_type,
            "content": base64.b64encode(self.content).decode("ascii"),
        }


AttachmentLike = Attachment | Mapping[str, Any] | str | os.PathLike[str]


def check_base_url(url: str) -> None:
    """Raise ConfigurationError (``INVALID_URL``) unless ``url`` is http(s)://host[:port]."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        valid = False
    if not valid:
        raise ConfigurationError(
            "INVALID_URL", f"invalid relayd URL {redact_url(url)!r}: expected http(s)://host:port"
        )


class Client(Endpoints, MaylngEndpoints):
    """A synchronous client of one relayd.

    ``api_key`` defaults to ``RELAY_TOKEN``, then, for a loopback ``base_url`` only, to the
    admin token file a daemon on this host wrote (``$RELAY_DATA_DIR/admin.token``,
    ``./relay-data/admin.token``); ``base_url``
    defaults to ``RELAY_URL``, then ``http://127.0.0.1:8080``. With ``discover=False`` the
    client uses only what it is given: no ``RELAY_URL``, ``RELAY_TOKEN`` or token file (the
    caller resolved them). ``transport`` replaces the network (``httpx.MockTransport`` in
    tests). Every failure raises a :class:`RelayError`; a password in the URL is never shown.
    """

    def __init__(
        self,
        api_key: str | None = None,
        workspace_id: str | None = None,
        base_url: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        discover: bool = True,
    ) -> None:
        if discover:
            self.base_url = resolve_url(base_url)
        else:
            self.base_url = (base_url or "").rstrip("/")
        check_base_url(self.base_url)
        self.workspace_id = workspace_id
        headers = {"User-Agent": f"relayctl/{__version__}", "Accept": "application/json"}
        if discover:
            try:
                token = resolve_token(api_key, url=self.base_url)
            except TokenFileError as exc:
                raise ConfigurationError("INVALID_TOKEN_FILE", str(exc)) from None
        else:
            token = api_key.strip() if api_key and api_key.strip() else None
        if token:
            if not _header_safe(token):
                # Never echo the token: it is a secret even when malformed.
                raise ConfigurationError(
                    "INVALID_TOKEN", "invalid token: only printable ASCII characters may be used"
                )
            headers["Authorization"] = f"Bearer {token}"
        if workspace_id:
            if not _header_safe(workspace_id):
                raise ConfigurationError(
                    "INVALID_WORKSPACE",
                    f"invalid workspace id {workspace_id!r}: only printable ASCII characters "
                    "may be used",
                )
            headers["X-Workspace-ID"] = workspace_id
        self.has_token = token is not None
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, transport=transport, timeout=timeout
        )

    @property
    def display_url(self) -> str:
        """The base URL as messages show it (a password in it masked)."""
        return redact_url(self.base_url)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying connections."""
        self._http.close()

    # -- messages ---------------------------------------------------------------------------

    def send_message(
        self,
        from_email: str,
        to: str | Sequence[str],
        subject: str,
        html: str | None = None,
        text: str | None = None,
        cc: str | Sequence[str] | None = None,
        bcc: str | Sequence[str] | None = None,
        attachments: Sequence[AttachmentLike] | None = None,
        headers: Mapping[str, str] | None = None,
        campaign_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        send_at: datetime | str | None = None,
        timezone: str | None = None,
        **extra: Any,
    ) -> SendResult:
        """Queue one message (``POST /api/messages``); extra keyword fields go in the body."""
        body: JSON = {"from": from_email, "to": _addresses(to), "subject": subject}
        if cc:
            body["cc"] = _addresses(cc)
        if bcc:
            body["bcc"] = _addresses(bcc)
        if text is not None:
            body["text_body"] = text
        if html is not None:
            body["html_body"] = html
        if attachments:
            body["attachments"] = [_attachment_json(item) for item in attachments]
        if headers:
            body["headers"] = dict(headers)
        if self.workspace_id:
            body["workspace_id"] = self.workspace_id
        if campaign_id:
            body["campaign_id"] = campaign_id
        if metadata:
            body["metadata"] = dict(metadata)
        if send_at is not None or timezone:
            scheduling: JSON = {"send_at": _timestamp(send_at)} if send_at is not None else {}
            if timezone:
                scheduling["timezone"] = timezone
            body["scheduling"] = scheduling
        body.update(extra)
        data = self._data(self._request("POST", "/api/messages", json=body))
        message_id = data.get("message_id")
        if not isinstance(message_id, str):
            raise ApiError("INVALID_RESPONSE", "relayd accepted the message but sent no message_id")
        return SendResult(
            message_id=message_id,
            status=str(data.get("status", "")),
            queued_at=data.get("queued_at"),
            estimated_send_time=data.get("estimated_send_time"),
            data=data,
        )

    def list_messages(
        self, status: str | None = None, limit: int = 50, offset: int = 0, **filters: Any
    ) -> JSON:
        """One page of messages: ``{"messages": [...], "pagination": {...}}``."""
        params: JSON = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        params.update({key: value for key, value in filters.items() if value is not None})
        return self._data(self._request("GET", "/api/messages", params=params))

    def get_message(self, message_id: str) -> JSON:
        """A message's details: headers, bodies, recipients, attempts."""
        return self._data(self._request("GET", _message_path(message_id)))

    def cancel_message(self, message_id: str) -> JSON:
        """Cancel a queued or scheduled message; other states raise ``ApiError`` (409)."""
        payload = self._request("DELETE", _message_path(message_id))
        data = payload.get("data")
        if isinstance(data, dict):
            return data
        return {key: value for key, value in payload.items() if key != "success"}

    def retry_message(self, message_id: str) -> JSON:
        """Queue a failed or auth_error message again; other states raise ``ApiError`` (409)."""
        return self._data(self._request("PUT", _message_path(message_id) + "/retry"))

    def health(self) -> JSON:
        """The daemon's ``GET /health`` answer (status, version...), also when degraded."""
        # A degraded daemon answers 503 with the same body: still a useful answer here.
        payload = self._request("GET", "/health", also_ok=(503,))
        data = payload.get("data")
        return data if isinstance(data, dict) else payload

    def events(self, path: str = "/api/stats/realtime") -> Iterator[tuple[str, JSON]]:
        """Server-Sent Events from ``path`` as ``(event, data)`` pairs, until the stream ends."""
        try:
            with self._http.stream(
                "GET", path, headers={"Accept": "text/event-stream"}, timeout=_STREAM_TIMEOUT
            ) as response:
                if not response.is_success:
                    response.read()
                    try:
                        payload = response.json()
                    except ValueError:
                        payload = None
                    raise _response_error(response, payload)
                event, lines = "message", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        lines.append(line[5:].strip())
                    elif not line and lines:
                        try:
                            data = json.loads("\n".join(lines))
                        except ValueError:
                            data = {"raw": "\n".join(lines)}
                        yield event, data if isinstance(data, dict) else {"value": data}
                        event, lines = "message", []
        except httpx.TimeoutException as exc:
            raise UnreachableError(self.base_url, "timed out") from exc
        except httpx.TransportError as exc:
            raise UnreachableError(self.base_url, _transport_reason(exc)) from exc

    # -- transport --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: JSON | None = None,
        params: JSON | None = None,
        also_ok: tuple[int, ...] = (),
        headers: Mapping[str, str] | None = None,
    ) -> JSON:
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise UnreachableError(self.base_url, "timed out") from exc
        except httpx.TransportError as exc:
            raise UnreachableError(self.base_url, _transport_reason(exc)) from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code == 204:  # No Content: a Maylng delete
            return {}
        if response.is_success or (
            response.status_code in also_ok and isinstance(payload, dict) and "status" in payload
        ):
            if not isinstance(payload, dict) or payload.get("success") is False:
                raise ApiError(
                    "INVALID_RESPONSE",
                    f"{method} {path} got HTTP {response.status_code} without the API's JSON "
                    f"envelope (is {self.display_url} a relayd?)",
                    response.status_code,
                )
            return payload
        raise _response_error(response, payload)

    @staticmethod
    def _data(payload: JSON) -> JSON:
        data = payload.get("data")
        if not isinstance(data, dict):
            raise ApiError("INVALID_RESPONSE", "relayd's answer has no data object")
        return data


def _response_error(response: httpx.Response, payload: Any) -> RelayError:
    """The typed error for an HTTP error response, from the API's envelope when it has one."""
    status = response.status_code
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or f"HTTP_{status}")
        message = str(error.get("message") or response.reason_phrase)
        request_id = error.get("request_id")
        return error_for_status(
            status,
            code,
            message,
            error.get("details"),
            request_id if isinstance(request_id, str) else None,
        )
    if isinstance(error, str):  # the Maylng dialect: {"error": "..."}
        return error_for_status(status, f"HTTP_{status}", error, None, None, dialect="maylng")
    reason = response.reason_phrase or "error"
    return error_for_status(status, f"HTTP_{status}", reason, None, None, dialect=None)


def _transport_reason(exc: httpx.TransportError) -> str:
    """A short human reason for a failed connection: "connection refused", "unknown host"..."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__


def _header_safe(value: str) -> bool:
    """Whether ``value`` can travel in an HTTP header (httpx refuses anything else)."""
    return value.isascii() and value.isprintable()


def _message_path(message_id: str) -> str:
    return "/api/messages/" + path_segment(message_id, "message id")


def _addresses(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _timestamp(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        return value.isoformat()
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _attachment_json(item: AttachmentLike) -> JSON:
    if isinstance(item, Attachment):
        return item.to_json()
    if isinstance(item, Mapping):
        result = dict(item)
        if isinstance(result.get("content"), bytes | bytearray):
            result["content"] = base64.b64encode(result["content"]).decode("ascii")
        return result
    return Attachment.from_path(item).to_json()
