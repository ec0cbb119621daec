"""Outbound webhooks: the signature, the retry schedule, and which addresses are off limits.

Pure. A delivery is a JSON POST carrying ``X-Relay-Signature: t=<unix>,v1=<hex
HMAC-SHA256 of "<t>.<body>">``, as Stripe signs: the receiver recomputes it
with the endpoint's secret and refuses stale timestamps. Endpoints may not
resolve to loopback, private, link-local, shared, multicast, reserved or cloud
metadata addresses unless the allowlist names them (a host name, an address
or a network).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Relay-Signature"
EVENT_TYPES = (
    "delivered",
    "opened",
    "clicked",
    "unsubscribed",
    "complained",
    "bounced",
    "soft_bounced",
    "rejected",
)
ALL = "*"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Cloud metadata services answer on these even where they are not link-local.
_METADATA = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Relay-Signature value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: int, tolerance: int = 300) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, not False).
    return hmac.compare_digest(expected.encode(), fields.get("v1", "").encode("utf-8", "replace"))


def next_attempt(attempts: int, delays: Sequence[float], now: datetime) -> datetime | None:
    """When to try again after ``attempts`` failed tries; None: dead-letter it."""
    if attempts < 1 or attempts > len(delays):
        return None
    return now + timedelta(seconds=delays[attempts - 1])


def valid_endpoint(url: str) -> str | None:
    """Why ``url`` cannot be a webhook endpoint, or None when it can."""
    if len(url) > 2000 or any(ord(c) < 33 for c in url):
        return "url must be an absolute http(s) URL without spaces"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "url is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "url must be an absolute http(s) URL"
    if parts.username or parts.password:
        return "url must not carry credentials"
    return None


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forbidden(address: str) -> str | None:
    """Why the relay must not connect to ``address``, or None when it is public."""
    ip = _address(address)
    if ip is None:
        return "not an IP address"
    # A 6to4 address (2002::/16) carries an IPv4 address that a 6to4 relay or router on
    # the path unwraps and connects to: judged as that address.
    if isinstance(ip, ipaddress.IPv6Address) and ip.sixtofour is not None:
        inner = forbidden(str(ip.sixtofour))
        return None if inner is None else f"a 6to4 address wrapping {ip.sixtofour}, {inner}"
    if any(ip.version == net.version and ip in net for net in _METADATA):
        return "a link-local or cloud metadata address"
    if ip.version == 4 and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    for test, what in (
        (ip.is_loopback, "a loopback address"),
        (ip.is_private, "a private address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_reserved, "a reserved address"),
    ):
        if test:
            return what
    return None


def allowed(host: str, address: str, allowlist: Sequence[str]) -> bool:
    """True when the allowlist names the host, the address or a network holding it."""
    ip = _address(address)
    host = host.lower().rstrip(".")
    for item in allowlist:
        entry = item.strip().lower().rstrip(".")
        if entry == host:
            return True
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if ip is not None and ip.version == net.version and ip in net:
            return True
    return False


# RFC 6761: localhost names are loopback whatever a resolver says.
_LOCALHOST = ("127.0.0.1", "::1")


def literal_addresses(host: str) -> tuple[str, ...] | None:
    """The addresses a host stands for without asking a resolver: an address literal
    (the inet_aton forms ``127.1`` and ``0x7f.0.0.1`` that resolvers accept included) or
    a localhost name; None for any other name, which only delivery can resolve."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return _LOCALHOST
    if _address(host) is not None:
        return (host,)
    if host and all(c in "0123456789abcdefx." for c in host):
        try:
            return (socket.inet_ntoa(socket.inet_aton(host)),)
        except OSError:
            return None
    return None


def endpoint_refusal(url: str, allowlist: Sequence[str]) -> str | None:
    """Why ``url`` (already a valid endpoint) can be refused when it is registered: its
    host is an address, or localhost, that delivery would refuse. A name is decided at
    delivery, when it is resolved."""
    host = urlsplit(url).hostname or ""
    addresses = literal_addresses(host)
    if addresses is None:
        return None
    for address in addresses:
        why = forbidden(address)
        if why is not None and not allowed(host, address, allowlist):
            return (
                f"{host} is {why}; the relay delivers there only when webhooks.allowlist names it"
            )
    return None


def refusal(host: str, addresses: Sequence[str], allowlist: Sequence[str]) -> str | None:
    """Why delivering to ``host`` (resolved to ``addresses``) is refused, or None.

    Every resolved address must be acceptable, so a name that resolves to a
    public and a private address cannot be used to reach the private one.
    """
    if not addresses:
        return f"{host} does not resolve"
    for address in addresses:
        why = forbidden(address)
        if why is not None and not allowed(host, address, allowlist):
            return f"{host} resolves to {address}, {why}"
    return None
