"""A daemon that is not there: one line naming the URL and what to do, exit 5."""

from __future__ import annotations

import pytest

from relayctl.client import Client
from relayctl.errors import UnreachableError
from tests.relayctl.conftest import run


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
