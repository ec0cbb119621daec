"""The client against servers that are not a well-behaved relayd.

A relayd itself is exercised in test_cli.py; these responses are what a proxy, a
different program on the port or a broken network produce, which a real relayd cannot.
"""

from __future__ import annotations

import httpx
import pytest

from relayctl.client import Client
from relayctl.errors import (
    ApiError,
    AuthError,
    ConfigurationError,
    EndpointNotFoundError,
    InvalidRequestError,
    NotFoundError,
    RelayError,
    UnreachableError,
)


def client_for(handler: httpx.MockTransport) -> Client:
    return Client(api_key="t", base_url="http://relay.test:8080", transport=handler)


def test_html_error_page_becomes_api_error_with_status() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="<h1>Bad</h1>"))
    with client_for(transport) as client, pytest.raises(ApiError) as caught:
        client.list_messages()
    assert (caught.value.code, caught.value.status) == ("HTTP_502", 502)


def test_success_without_envelope_is_invalid_response() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="hello"))
    with client_for(transport) as client, pytest.raises(ApiError) as caught:
        client.get_message("msg-1")
    assert caught.value.code == "INVALID_RESPONSE"
    assert "http://relay.test:8080" in caught.value.message


def test_plain_error_string_body_keeps_its_message() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(401, json={"error": "nope"}))
    with client_for(transport) as client, pytest.raises(AuthError) as caught:
        client.health()
    assert (caught.value.message, caught.value.status) == ("nope", 401)


def test_request_shape_headers_and_quoted_ids() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"success": True, "data": {"id": "x"}})

    with Client("tok", "ws-1", "http://relay.test", transport=httpx.MockTransport(handler)) as c:
        c.get_message("msg-1?x#y")
    request = seen[0]
    assert request.url.raw_path == b"/api/messages/msg-1%3Fx%23y"
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.headers["X-Workspace-ID"] == "ws-1"


@pytest.mark.parametrize(
    ("message_id", "raw_path"),
    [
        ("../admin/config", b"/api/messages/..%2Fadmin%2Fconfig"),
        ("a/b", b"/api/messages/a%2Fb"),
        (".", b"/api/messages/%2E"),
        ("..", b"/api/messages/%2E%2E"),
    ],
)
def test_an_id_stays_one_path_segment(message_id: str, raw_path: bytes) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"success": True, "data": {"message_id": message_id}})

    with Client("tok", None, "http://relay.test", transport=httpx.MockTransport(handler)) as c:
        c.get_message(message_id)
        c.cancel_message(message_id)
        c.retry_message(message_id)
    assert [r.url.raw_path for r in seen] == [raw_path, raw_path, raw_path + b"/retry"]


def test_timeout_is_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(UnreachableError) as e:
        client.health()
    assert e.value.message == "cannot reach relayd at http://relay.test:8080: timed out"


@pytest.mark.parametrize("url", ["relay.test:8080", "ftp://relay.test", "http://"])
def test_malformed_base_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="expected http"):
        Client(api_key="t", base_url=url)


def test_degraded_health_is_an_answer_not_an_error() -> None:
    body = {"status": "degraded", "version": "0.1.0", "database": "unavailable"}
    transport = httpx.MockTransport(lambda request: httpx.Response(503, json=body))
    with client_for(transport) as client:
        assert client.health() == body
        with pytest.raises(ApiError) as caught:
            client.list_messages()
    assert caught.value.status == 503


@pytest.mark.parametrize(
    ("token", "workspace", "code"),
    [
        ("tök", None, "INVALID_TOKEN"),
        ("t\r\nX: y", None, "INVALID_TOKEN"),
        ("t", "wö", "INVALID_WORKSPACE"),
    ],
)
def test_header_values_httpx_cannot_send_are_a_configuration_error(
    token: str, workspace: str | None, code: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Client(api_key=token, workspace_id=workspace, base_url="http://relay.test")
    assert caught.value.code == code


def envelope(code: str) -> dict[str, object]:
    return {"success": False, "error": {"code": code, "message": code.lower(), "details": {}}}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        # A missing resource: relayd's *_NOT_FOUND codes and the Maylng "... not found".
        (404, envelope("MESSAGE_NOT_FOUND"), NotFoundError),
        (404, envelope("WORKSPACE_NOT_FOUND"), NotFoundError),
        (404, {"error": "account not found"}, NotFoundError),
        # A missing endpoint: relayd's own 404 for a route, or a 404 that is not relayd's.
        (404, envelope("ROUTE_NOT_FOUND"), EndpointNotFoundError),
        (404, {"error": "No such endpoint"}, EndpointNotFoundError),
        (404, "<h1>Not Found</h1>", EndpointNotFoundError),
        (404, {"detail": "Not Found"}, EndpointNotFoundError),
        # Input refused as invalid.
        (400, envelope("INVALID_REQUEST"), InvalidRequestError),
        (400, envelope("MISSING_REQUIRED_FIELD"), InvalidRequestError),
        (400, envelope("INVALID_EMAIL_FORMAT"), InvalidRequestError),
        (413, envelope("MESSAGE_TOO_LARGE"), InvalidRequestError),
        (400, {"error": "expires_at must be an ISO 8601 date-time"}, InvalidRequestError),
        # The daemon's state, limits and failures are not the input's fault.
        (409, envelope("INVALID_STATE"), ApiError),
        (422, envelope("IDEMPOTENCY_KEY_REUSED"), ApiError),
        (429, envelope("RATE_LIMIT_EXCEEDED"), ApiError),
        (503, envelope("MAINTENANCE_MODE"), ApiError),
        (400, "<h1>Bad Request</h1>", ApiError),
    ],
)
def test_error_classes(status: int, body: object, expected: type[RelayError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    with client_for(httpx.MockTransport(handler)) as client, pytest.raises(RelayError) as caught:
        client.list_messages()
    assert type(caught.value) is expected
    assert caught.value.status == status


def test_messages_never_show_a_password_in_the_url() -> None:
    url = "http://ops:s3cret@relay.test:8080"

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    transport = httpx.MockTransport(handler)
    with Client("t", None, url, transport=transport) as client:
        assert client.display_url == "http://ops:***@relay.test:8080"
        with pytest.raises(UnreachableError) as caught:
            client.health()
    assert "s3cret" not in caught.value.message
    assert caught.value.message.startswith("cannot reach relayd at http://ops:***@relay.test:8080")
    html = httpx.MockTransport(lambda request: httpx.Response(200, text="hello"))
    with Client("t", None, url, transport=html) as client, pytest.raises(ApiError) as invalid:
        client.get_message("msg-1")
    assert "s3cret" not in invalid.value.message


def test_without_discovery_only_what_is_given_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_URL", "http://env.test:1")
    monkeypatch.setenv("RELAY_TOKEN", "env-token")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "healthy"})

    transport = httpx.MockTransport(handler)
    with Client(None, None, "http://given.test:2", transport=transport, discover=False) as c:
        c.health()
    assert seen[0].url.host == "given.test"
    assert "Authorization" not in seen[0].headers
    with Client(transport=transport) as c:  # the library default still reads the environment
        c.health()
    assert seen[1].url.host == "env.test"
    assert seen[1].headers["Authorization"] == "Bearer env-token"
