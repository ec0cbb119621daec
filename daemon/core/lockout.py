"""Failed authentication attempts per client address: when a client is locked out.

Used by SMTP AUTH (daemon.smtp) and the HTTP API (daemon.api.auth_lockout), each
with counts of its own. Pure: the caller passes the time (monotonic seconds) and the
limits (read live from ``[smtp]`` or ``[http]``, so a SIGHUP or ``PUT
/api/admin/config`` applies at once). A
client with ``limit`` failures within the last ``window`` seconds is locked out
until the oldest of them is ``window`` old: a sliding window, so a steady guesser
gets ``limit`` tries per window at most, however many connections it opens.
A success does not clear the count: a guesser holding one valid credential could
otherwise reset it between guesses.

Memory is bounded: at most ``max_clients`` addresses are tracked (the one seen
longest ago is forgotten first) and each keeps at most ``limit`` failure times.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque

MAX_CLIENTS = 10000


def client_key(peer_ip: str) -> str:
    """What failures are counted by: the IPv4 address (also when a dual-stack listener
    reports it as ``::ffff:a.b.c.d``), or the /64 of an IPv6 address, since one host
    holds a whole /64 and can change its address within it at will."""
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return peer_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AuthLockout:
    """Recent AUTH failures by client address."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float, window: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and now - times[0] >= window:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def locked_for(self, client: str, now: float, limit: int, window: float) -> float:
        """Seconds until ``client`` may try AUTH again; 0.0 when it may now (``limit`` 0: never
        locked)."""
        if limit <= 0 or window <= 0:
            return 0.0
        times = self._recent(client, now, window)
        if times is None or len(times) < limit:
            return 0.0
        return max(times[-limit] + window - now, 0.0)

    def failed(self, client: str, now: float, limit: int, window: float) -> float:
        """Count one failure of ``client``; the seconds it is now locked out for (as
        :meth:`locked_for`)."""
        if limit <= 0 or window <= 0:
            return 0.0
        times = self._recent(client, now, window)
        if times is None:
            if len(self._failures) >= self.max_clients:
                self._failures.popitem(last=False)
            times = self._failures[client] = deque(maxlen=limit)
        elif times.maxlen != limit:  # the limit changed since: keep the newest that fit
            times = self._failures[client] = deque(times, maxlen=limit)
        times.append(now)
        self._failures.move_to_end(client)
        return self.locked_for(client, now, limit, window)

    def __len__(self) -> int:
        return len(self._failures)
