"""Relay permission and envelope-address policy, as tables."""

from __future__ import annotations

import pytest

from daemon.core.relay import (
    AddressRejected,
    IPNetwork,
    RelayDecision,
    check_address,
    is_trusted,
    parse_networks,
    relay_decision,
    split_path,
    strip_source_route,
)

LOOPBACK = parse_networks(["127.0.0.0/8", "::1/128"])
OFFICE = parse_networks(["10.9.9.0/24"])


@pytest.mark.parametrize(
    ("peer", "authenticated", "networks", "require_auth", "expected"),
    [
        ("127.0.0.1", False, LOOPBACK, False, RelayDecision.ALLOWED),
        ("::1", False, LOOPBACK, False, RelayDecision.ALLOWED),
        ("::ffff:127.0.0.1", False, LOOPBACK, False, RelayDecision.ALLOWED),
        ("127.0.0.1", False, OFFICE, False, RelayDecision.DENIED),
        ("10.9.9.77", False, OFFICE, False, RelayDecision.ALLOWED),
        ("10.9.10.1", False, OFFICE, False, RelayDecision.DENIED),
        ("203.0.113.5", True, OFFICE, False, RelayDecision.ALLOWED),
        ("127.0.0.1", False, LOOPBACK, True, RelayDecision.AUTH_REQUIRED),
        ("127.0.0.1", True, LOOPBACK, True, RelayDecision.ALLOWED),
        ("not-an-ip", False, LOOPBACK, False, RelayDecision.DENIED),
        ("", False, LOOPBACK, False, RelayDecision.DENIED),
        ("fe80::1%eth0", False, parse_networks(["fe80::/10"]), False, RelayDecision.ALLOWED),
    ],
)
def test_relay_decision(
    peer: str,
    authenticated: bool,
    networks: tuple[IPNetwork, ...],
    require_auth: bool,
    expected: RelayDecision,
) -> None:
    assert relay_decision(peer, authenticated, networks, require_auth) is expected


def test_ipv4_peer_never_matches_ipv6_network() -> None:
    assert not is_trusted("10.0.0.1", parse_networks(["::/0"]))


@pytest.mark.parametrize(
    ("text", "path", "rest"),
    [
        ("<a@example.org>", "a@example.org", ""),
        ("<a@example.org> SIZE=10 BODY=8BITMIME", "a@example.org", "SIZE=10 BODY=8BITMIME"),
        ("  <a@example.org>  ", "a@example.org", ""),
        ("<>", "", ""),
        ("<> RET=HDRS", "", "RET=HDRS"),
        ('<"a> b"@example.org> NOTIFY=NEVER', '"a> b"@example.org', "NOTIFY=NEVER"),
        ('<"a\\" >"@example.org>', '"a\\" >"@example.org', ""),
        ("a@example.org SIZE=1", "a@example.org", "SIZE=1"),
        ("<@relay.example,@b.example:u@c.example>", "@relay.example,@b.example:u@c.example", ""),
    ],
)
def test_split_path(text: str, path: str, rest: str) -> None:
    assert split_path(text) == (path, rest)


@pytest.mark.parametrize(
    "text", ["<a@example.org", "<a@example.org>x", "a<b>@example.org", "", "<<a@b.c>>", '<"a@b.c>']
)
def test_split_path_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        split_path(text)


@pytest.mark.parametrize(
    ("path", "final"),
    [
        ("@a.example:user@c.example", "user@c.example"),
        ("@a.example,@b.example:user@c.example", "user@c.example"),
        ("user@c.example", "user@c.example"),
    ],
)
def test_source_route_is_stripped(path: str, final: str) -> None:
    assert strip_source_route(path) == final
    assert check_address(path) == final


@pytest.mark.parametrize("path", ["@a.example", "@a.example:", "@a.example,b.example:u@c.example"])
def test_malformed_source_route(path: str) -> None:
    with pytest.raises(AddressRejected) as info:
        check_address(path)
    assert (info.value.code, info.value.status) == (553, "5.1.3")


@pytest.mark.parametrize(
    "path",
    [
        "user@example.org",
        "first.last+tag@sub.example.org",
        '"john doe"@example.org',
        "b@relay.test",
        "UPPER@Example.ORG",
    ],
)
def test_acceptable_recipients(path: str) -> None:
    assert check_address(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "user%other.example@relay.example",
        "other.example!user@relay.example",
        "user@x.example@y.example",
        '"user@other.example"@relay.example',
        '"user%other.example"@relay.example',
        '"other.example!user"@relay.example',
        '"user\\@other.example"@relay.example',
        "@a.example:user%b.example@c.example",
    ],
)
def test_routing_tricks_are_refused(path: str) -> None:
    with pytest.raises(AddressRejected) as info:
        check_address(path)
    assert info.value.reply.startswith("553 5.7.1 ")
    assert "Routing" in info.value.text


@pytest.mark.parametrize(
    "path",
    [
        "no-at-sign",
        "user@",
        "@",
        "user@-bad-.example",
        "user@[192.0.2.1]",
        "us er@example.org",
        "user..dots@example.org",
        "user@localhost",
        '"unterminated@example.org',
    ],
)
def test_bad_syntax_is_refused(path: str) -> None:
    with pytest.raises(AddressRejected) as info:
        check_address(path)
    assert info.value.reply.startswith("553 5.1.3 ")


def test_sender_syntax_uses_5_1_7() -> None:
    with pytest.raises(AddressRejected) as info:
        check_address("no-at-sign", role="sender")
    assert info.value.reply.startswith("553 5.1.7 Bad sender address syntax")
