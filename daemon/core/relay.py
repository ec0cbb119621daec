"""Relay permission and envelope-address policy (pure: no I/O, no clock).

Who may relay: an authenticated client, or one connecting from a trusted
network (unless ``require_auth``). Everyone else is refused at RCPT.

What may be relayed: the final address after RFC 5321 source routes are
stripped, checked for syntax by email-validator (no DNS). Addresses that ask
the relay to route mail itself are refused even for allowed clients: the old
``user%host@relay`` and ``host!user@relay`` forms, a second ``@``
(``user@x@y``), and quoted local parts that hide any of these characters.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

import email_validator

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ROUTING_CHARS = frozenset("@%!")


class RelayDecision(enum.Enum):
    """Whether a client may hand us mail for delivery elsewhere."""

    ALLOWED = "allowed"
    AUTH_REQUIRED = "auth_required"
    DENIED = "denied"


class SmtpRejection(Exception):
    """A refusal carrying the SMTP reply that explains it (code, enhanced status, text)."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(f"{code} {status} {text}")
        self.code = code
        self.status = status
        self.text = text

    @property
    def reply(self) -> str:
        return f"{self.code} {self.status} {self.text}"


class AddressRejected(SmtpRejection):
    """An envelope address we refuse."""


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse ``smtp.trusted_networks`` entries (already validated by the config)."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _peer_address(peer_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return None
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(peer_ip: str, networks: Sequence[IPNetwork]) -> bool:
    """True when ``peer_ip`` lies in one of ``networks``; unparsable peers are never trusted."""
    return _trusted(peer_ip, tuple(networks))


@functools.lru_cache(maxsize=4096)
def _trusted(peer_ip: str, networks: tuple[IPNetwork, ...]) -> bool:
    # Cached: asked at every RCPT, for the same few peers (parsing an address is slow).
    address = _peer_address(peer_ip)
    if address is None:
        return False
    return any(address.version == net.version and address in net for net in networks)


def relay_decision(
    peer_ip: str,
    authenticated: bool,
    networks: Sequence[IPNetwork],
    require_auth: bool = False,
) -> RelayDecision:
    """May this client relay? AUTH always may; trusted peers may unless AUTH is forced."""
    if authenticated:
        return RelayDecision.ALLOWED
    if require_auth:
        return RelayDecision.AUTH_REQUIRED
    if is_trusted(peer_ip, networks):
        return RelayDecision.ALLOWED
    return RelayDecision.DENIED


def split_path(text: str) -> tuple[str, str]:
    """Split ``<path> params`` (or a bare ``addr params``) into the path and the rest.

    The path is returned without angle brackets; ``<>`` gives ``""``. Quoted
    strings may contain ``>`` and spaces. Raises ValueError on an unclosed path.
    """
    text = text.strip()
    if not text.startswith("<"):
        path, _, rest = text.partition(" ")
        if not path or "<" in path or ">" in path:
            raise ValueError("malformed address")
        return path, rest.strip()
    if '"' not in text:  # nothing quoted (the usual case): the first ">" closes the path
        end = text.find(">")
        if end < 0 or "<" in text[1:end]:
            raise ValueError("malformed address")
        rest = text[end + 1 :]
        if rest and not rest.startswith(" "):
            raise ValueError("malformed address")
        return text[1:end], rest.strip()
    in_quote = escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\" and in_quote:
            escaped = True
        elif char == '"':
            in_quote = not in_quote
        elif char == ">" and not in_quote:
            rest = text[index + 1 :]
            if rest and not rest.startswith(" "):
                raise ValueError("malformed address")
            return text[1:index], rest.strip()
        elif char == "<" and not in_quote:
            break
    raise ValueError("malformed address")


def strip_source_route(path: str) -> str:
    """Drop an RFC 5321 source route: ``@a,@b:user@c`` becomes ``user@c``."""
    if not path.startswith("@"):
        return path
    route, colon, mailbox = path.partition(":")
    if not colon or not mailbox:
        raise ValueError("source route without a mailbox")
    for hop in route.split(","):
        if not hop.startswith("@") or len(hop) < 2:
            raise ValueError("malformed source route")
    return mailbox


def _split_mailbox(address: str) -> tuple[str, str]:
    """Split at the ``@`` that ends the local part, honouring a quoted local part."""
    if address.startswith('"'):
        escaped = False
        for index in range(1, len(address)):
            char = address[index]
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                return address[: index + 1], address[index + 1 :]
        raise ValueError("unterminated quoted local part")
    at = address.find("@")
    if at < 0:
        return address, ""
    return address[:at], address[at:]


def _unquote(local: str) -> str:
    if not local.startswith('"'):
        return local
    out: list[str] = []
    escaped = False
    for char in local[1:-1]:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _syntax_error(address: str) -> str | None:
    try:
        email_validator.validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=True,
            allow_domain_literal=False,
            globally_deliverable=False,
            test_environment=True,
        )
    except email_validator.EmailNotValidError as exc:
        return str(exc)
    return None


def check_address(path: str, role: str = "recipient") -> str:
    """Return the final address for an envelope path, or raise AddressRejected.

    Source routes are stripped first; routing tricks are refused with
    ``553 5.7.1``; any other bad syntax with ``553 5.1.3`` (recipient) or
    ``553 5.1.7`` (sender).
    """
    verdict = _address_verdict(path, role)
    if isinstance(verdict, tuple):
        raise AddressRejected(*verdict)
    return verdict


@functools.lru_cache(maxsize=4096)
def _address_verdict(path: str, role: str) -> str | tuple[int, str, str]:
    # Cached (the policy is pure): asked at every MAIL and RCPT, mostly for the same
    # few senders and recipients. A refusal is cached as its (code, status, text).
    syntax_status = "5.1.7" if role == "sender" else "5.1.3"
    try:
        address = strip_source_route(path)
        local, domain = _split_mailbox(address)
    except ValueError as exc:
        return (553, syntax_status, f"Bad {role} address syntax: {exc}")
    if not domain:
        return (553, syntax_status, f"Bad {role} address syntax: no domain")
    if _ROUTING_CHARS & set(_unquote(local)) or "@" in domain[1:]:
        return (553, "5.7.1", f"<{address}>: Routing syntax (% ! @ in the address) is not allowed")
    error = _syntax_error(address)
    if error is not None:
        return (553, syntax_status, f"Bad {role} address syntax: {error}")
    return address


# -- local delivery: the VERP bounce domain ---------------------------------------------

_BOUNCE_LOCAL = re.compile(r"^bounces\+msg-[0-9A-Za-z]{26}\Z", re.IGNORECASE)


def is_local(address: str, bounce_domain: str) -> bool:
    """True when ``address`` is at the bounce domain (mail we take, never relay)."""
    host = address.rpartition("@")[2].lower().rstrip(".")
    return bool(bounce_domain) and host == bounce_domain.lower().rstrip(".")


def local_recipient(path: str, bounce_domain: str) -> str | None:
    """A recipient at the bounce domain: the address when it is a VERP return path.

    None when the address is elsewhere (the relay policy applies). Other local
    parts at the bounce domain get ``550 5.1.1``: it is not a mailbox host. Any
    client may send here, authenticated or not: bounces come from everywhere.
    """
    if not bounce_domain:
        return None
    try:
        address = strip_source_route(path)
        local, domain = _split_mailbox(address)
    except ValueError:
        return None
    if not domain or not is_local(address, bounce_domain):
        return None
    if not _BOUNCE_LOCAL.match(local):
        raise AddressRejected(
            550, "5.1.1", f"<{address}>: Recipient address rejected: no such user"
        )
    return address


def mixes_local_and_relay(existing: Sequence[str], new_is_local: bool, bounce_domain: str) -> bool:
    """Bounces and relayed mail never share a transaction (they go different ways)."""
    return any(is_local(a, bounce_domain) != new_is_local for a in existing)
