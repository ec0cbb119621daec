"""Sortable unique identifiers (ULID layout: 48-bit millisecond time + 80 random bits)."""

from __future__ import annotations

import os
import threading

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
# Two digits (10 bits) at a time: 13 pairs make the 26 digits, most significant first.
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]
_SHIFTS = tuple(range(120, -1, -10))
_POOL_SIZE = 4096

_lock = threading.Lock()
_pool = b""
_taken = 0


def random_bytes(count: int) -> bytes:
    """``os.urandom(count)``, drawn from the OS a block at a time.

    Each os.urandom call is a system call that lets go of the GIL; a busy API
    makes three per request. The bytes are the same CSPRNG output, each handed
    out once (a forked child starts a block of its own).
    """
    global _pool, _taken
    with _lock:
        if _taken + count > len(_pool):
            _pool = os.urandom(max(_POOL_SIZE, count))
            _taken = 0
        start = _taken
        _taken += count
        return _pool[start:_taken]


def _forget_pool() -> None:
    global _lock, _pool, _taken
    _lock = threading.Lock()
    _pool, _taken = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def ulid(now_ms: int) -> str:
    """Return a 26-character ULID for the given Unix time in milliseconds."""
    value = (now_ms & ((1 << 48) - 1)) << 80 | int.from_bytes(random_bytes(10), "big")
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def message_id(now_ms: int) -> str:
    """A queue id: ``msg-`` followed by a ULID, so ids sort by arrival time."""
    return "msg-" + ulid(now_ms)


def is_message_id(value: str) -> bool:
    """True when ``value`` has the shape of an id made by :func:`message_id`."""
    return len(value) == 30 and value.startswith("msg-") and all(c in _ALPHABET for c in value[4:])
