"""Sortable unique identifiers (ULID layout: 48-bit millisecond time + 80 random bits)."""

from __future__ import annotations

import os
import re
from collections import deque

# What a workspace id may be, wherever one is named (API paths, bodies, headers, SMTP).
# \Z, not $: "$" also matches before a final newline, which let "ws-a\n" through.
WORKSPACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}\Z")
WORKSPACE_ID_RULE = "1-200 letters, digits, '.', '_', ':' or '-'"

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
# Two digits (10 bits) at a time, most significant first: 5 pairs of time, 8 of randomness.
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]
_SHIFTS = (70, 60, 50, 40, 30, 20, 10, 0)
_POOL_SIZE = 4096
_TOKEN = 16
# Random tokens of 16 bytes, each handed out once: deque.popleft is atomic, so
# threads need no lock. A forked child drops the tokens it inherited.
_tokens: deque[bytes] = deque()
os.register_at_fork(after_in_child=_tokens.clear)


def random_bytes(count: int) -> bytes:
    """``os.urandom(count)``, drawn from the OS a block at a time (up to 16 bytes).

    Each os.urandom call is a system call that lets go of the GIL; a busy API
    makes three per request. The bytes are the same CSPRNG output.
    """
    if count > _TOKEN:
        return os.urandom(count)
    while True:
        try:
            return _tokens.popleft()[:count]
        except IndexError:
            block = os.urandom(_POOL_SIZE)
            _tokens.extend(block[i : i + _TOKEN] for i in range(0, _POOL_SIZE, _TOKEN))


_last_time: tuple[int, str] = (-1, "")


def _time_digits(now_ms: int) -> str:
    """The 10 digits of the 48-bit time (the same for every id of a millisecond)."""
    global _last_time
    last_ms, digits = _last_time
    if last_ms != now_ms:
        value = now_ms & ((1 << 48) - 1)
        digits = "".join([_PAIRS[(value >> shift) & 1023] for shift in (40, 30, 20, 10, 0)])
        _last_time = (now_ms, digits)
    return digits


def ulid(now_ms: int) -> str:
    """Return a 26-character ULID for the given Unix time in milliseconds."""
    value = int.from_bytes(random_bytes(10), "big")  # 80 bits: 16 digits
    return _time_digits(now_ms) + "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


# The RFC 4122 variant digit: the top two bits of the random digit become 10.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def uuid4() -> str:
    """``str(uuid.uuid4())``, from the same pooled random source, without a UUID object."""
    text = random_bytes(16).hex()
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-{text[20:]}"


def message_id(now_ms: int) -> str:
    """A queue id: ``msg-`` followed by a ULID, so ids sort by arrival time."""
    return "msg-" + ulid(now_ms)


def is_message_id(value: str) -> bool:
    """True when ``value`` has the shape of an id made by :func:`message_id`."""
    return len(value) == 30 and value.startswith("msg-") and all(c in _ALPHABET for c in value[4:])
