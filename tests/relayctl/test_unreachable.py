"""A daemon that is not there: one line naming the URL and what to do, exit 5."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from relayctl.client import Client
from relayctl.errors import UnreachableError
from tests.relayctl.conftest import run

NO_ENDPOINT = (
    "has no such endpoint ({code}) (is --url pointing at relayd, and is relayd up to date?)\n"
)


@pytest.mark.parametrize(
    "args",
    [
        ["queue", "ls"],
        ["queue", "show", "msg-1"],
        ["send", "--from", "a@example.com", "--to", "b@example.org", "--text", "x"],
    ],
)
def test_closed_port_exits_5_with_one_line(closed_port: int, args: list[str]) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    result = run(["--url", url, "--token", "t", *args])
    assert result.exit_code == 5
    assert result.stdout == ""
    assert result.stderr == (
        f"relayctl: cannot reach relayd at {url}: connection refused "
        "(is relayd running? set --url or RELAY_URL)\n"
    )


def test_default_url_is_named(closed_port: int) -> None:
    result = run(["queue", "ls"], env={"RELAY_URL": f"http://127.0.0.1:{closed_port}/"})
    assert result.exit_code == 5
    assert f"cannot reach relayd at http://127.0.0.1:{closed_port}: " in result.stderr


def test_version_still_prints_the_client_version(closed_port: int) -> None:
    result = run(["--url", f"http://127.0.0.1:{closed_port}", "version"])
    assert result.exit_code == 5
    assert result.stdout.startswith("relayctl 0.1.0\n")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "url", ["localhost:8080", "http://[::1", "http://h:port", "http://h:99999"]
)
def test_malformed_url_is_a_usage_error(url: str) -> None:
    result = run(["--url", url, "queue", "ls"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"relayctl: invalid relayd URL '{url}'")
    assert len(result.stderr.splitlines()) == 1


def test_library_raises_unreachable_naming_the_url(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    with Client(api_key="t", base_url=url) as client, pytest.raises(UnreachableError) as caught:
        client.list_messages()
    assert caught.value.url == url
    assert caught.value.reason == "connection refused"
    assert caught.value.status is None


def test_root_help_documents_exit_codes() -> None:
    result = run(["--help"])
    assert result.exit_code == 0
    for line in (
        "0  ok",
        "3  not found",
        "4  authentication",
        "5  relayd unreachable",
        "6  partial success",
    ):
        assert line in result.stdout


class NotRelayd(BaseHTTPRequestHandler):
    """Another web server on the port: 404 for every path, as HTML or as its own JSON."""

    def do_GET(self) -> None:
        as_json = self.path.startswith("/json")
        body = b'{"detail": "Not Found"}' if as_json else b"<h1>404 Not Found</h1>"
        self.send_response(404)
        self.send_header("Content-Type", "application/json" if as_json else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def not_relayd() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotRelayd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("path", ["", "/json"])
async def test_a_server_that_is_not_relayd_is_not_not_found(not_relayd: str, path: str) -> None:
    url = not_relayd + path
    for args in (["queue", "ls"], ["queue", "show", "msg-1"]):
        result = await asyncio.to_thread(run, ["--url", url, "--token", "t", *args])
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("relayctl: ")
        assert result.stderr.endswith(f"relayd at {url} " + NO_ENDPOINT.format(code="HTTP_404"))


async def test_route_not_found_is_not_a_missing_resource(relay: Any) -> None:
    url = relay.base_url + "/not-the-api-root"
    for args in (["queue", "ls"], ["queue", "show", "msg-1"]):
        result = await asyncio.to_thread(run, ["--url", url, "--token", relay.admin_token, *args])
        assert result.exit_code == 1, result.output
        assert result.stderr.endswith(
            f"relayd at {url} " + NO_ENDPOINT.format(code="ROUTE_NOT_FOUND")
        )
    # A missing resource is still 3.
    missing = await asyncio.to_thread(
        run, ["--url", relay.base_url, "--token", relay.admin_token, "queue", "show", "msg-1"]
    )
    assert missing.exit_code == 3
    assert "(MESSAGE_NOT_FOUND)" in missing.stderr


def open_streams(server: Any) -> float:
    value: float = server.service.metrics.realtime_clients.collect()[0].samples[0].value
    return value


@pytest.mark.parametrize("flags", [["--json"], []], ids=["json", "lines"])
async def test_top_exits_5_when_relayd_stops(relay: Any, flags: list[str]) -> None:
    url = relay.base_url
    args = ["--url", url, "--token", relay.admin_token, "top", *flags]
    watching = asyncio.ensure_future(asyncio.to_thread(run, args))
    for _ in range(200):  # until relayctl's stream is open
        if open_streams(relay) or watching.done():
            break
        await asyncio.sleep(0.05)
    assert open_streams(relay) == 1
    await asyncio.sleep(0.3)  # the first event, sent as the stream opens, is read
    await relay.stop()
    result = await watching
    assert result.exit_code == 5, result.output
    assert result.stdout.count("\n") >= 1  # the events seen before
    assert result.stderr == (
        f"relayctl: cannot reach relayd at {url}: the event stream ended "
        "(relayd stopped?) (is relayd running? set --url or RELAY_URL)\n"
    )
