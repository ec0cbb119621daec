"""Sortable unique identifiers (ULID layout: 48-bit millisecond time + 80 random bits)."""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32


def ulid(now_ms: int) -> str:
    """Return a 26-character ULID for the given Unix time in milliseconds."""
    value = (now_ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def message_id(now_ms: int) -> str:
    """A queue id: ``msg-`` followed by a ULID, so ids sort by arrival time."""
    return "msg-" + ulid(now_ms)


def is_message_id(value: str) -> bool:
    """True when ``value`` has the shape of an id made by :func:`message_id`."""
    return len(value) == 30 and value.startswith("msg-") and all(c in _ALPHABET for c in value[4:])
