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
