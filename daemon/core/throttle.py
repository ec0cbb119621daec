"""A provider's send budget: ``rate_limit`` per UTC day and ``rate_limit_per_second``.

Pure: the caller passes the time (monotonic seconds for the per-second window,
the UTC date and the seconds left in it for the daily one) and the limits (read
live from the configuration, so a change through the admin API applies at once).
The per-second limit is a sliding window: no span of one second ever holds more
than ``per_second`` sends, also across a second boundary.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

DAILY = "daily rate limit"
PER_SECOND = "per-second rate limit"


@dataclass(frozen=True)
class Verdict:
    """Whether one more send fits; if not, which limit binds and when it frees up."""

    allowed: bool
    limit: str = ""
    retry_in: float = 0.0


ALLOWED = Verdict(True)


class Throttle:
    """Sends counted against one provider's limits (0 means unlimited)."""

    def __init__(self, day: str = "", day_count: int = 0) -> None:
        self.day = day
        self.day_count = day_count
        self._recent: deque[float] = deque()

    def check(
        self, now: float, day: str, day_left: float, per_day: int, per_second: int
    ) -> Verdict:
        """Would one more send fit now? Counts nothing."""
        if self.day != day:
            self.day, self.day_count = day, 0
        if per_day and self.day_count >= per_day:
            return Verdict(False, DAILY, max(day_left, 0.0))
        if per_second:
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= per_second:
                return Verdict(False, PER_SECOND, max(self._recent[0] + 1.0 - now, 0.0))
        return ALLOWED

    def take(self, now: float, day: str, day_left: float, per_day: int, per_second: int) -> Verdict:
        """Count one send when it fits; otherwise say which limit binds."""
        verdict = self.check(now, day, day_left, per_day, per_second)
        if verdict.allowed:
            self.day_count += 1
            if per_second:
                self._recent.append(now)
        return verdict

    def sent_in_last_second(self, now: float) -> int:
        return sum(1 for t in self._recent if now - t < 1.0)
