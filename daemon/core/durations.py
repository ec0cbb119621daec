"""Durations as operators write them: "30s", "5m", "2h", "90d"."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*\Z")
# A century: longer is a typo, and past what datetime arithmetic on it can hold.
MAX_SECONDS = 36500 * 86400.0


@dataclass(frozen=True)
class Duration:
    """A length of time, kept with the text it was written as."""

    seconds: float
    text: str

    @classmethod
    def parse(cls, value: object) -> Duration:
        """Parse "30s"/"5m"/"2h"/"90d" (a bare number means seconds)."""
        if isinstance(value, Duration):
            return value
        if isinstance(value, bool):
            raise ValueError('expected a duration such as "30s", "5m" or "2h"')
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return cls(float(_bounded(value)), f"{value:g}s")
        if not isinstance(value, str):
            raise ValueError('expected a duration such as "30s", "5m" or "2h"')
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration (use a number and a unit: ms, s, m, h, d, w)"
            )
        number, unit = match.group(1), match.group(2) or "s"
        return cls(_bounded(float(number) * _UNITS[unit]), value.strip())

    def __str__(self) -> str:
        return self.text


def _bounded(seconds: float) -> float:
    """``seconds`` unless past MAX_SECONDS (compared before any float conversion overflows)."""
    if not seconds <= MAX_SECONDS:  # also NaN and infinity
        raise ValueError("a duration must be at most 36500d")
    return seconds
