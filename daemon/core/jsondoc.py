"""Strict JSON for what clients send and relayd stores: what it takes in, it can answer with.

Python's decoder takes ``NaN``, ``Infinity`` and numbers that overflow a float
(``1e400`` becomes ``inf``), and nesting until the interpreter's recursion limit.
None of that can be written back: the API's encoder refuses non-finite numbers
(``allow_nan=False``, as JSON requires), and a document stored near the
decoder's depth limit is too deep to encode once a response wraps it. A stored
``1e400`` in one message's metadata would make every list holding it a 500, so
documents are refused at the door instead (400 on the API, 550 on SMTP).
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64  # arrays and objects inside one another in one document


class JsonRefused(ValueError):
    """Valid to Python's decoder, but not a document relayd keeps."""


def _constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused(f"the number {text[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_finite)


def depth(document: Any) -> int:
    """How many arrays and objects are nested in ``document`` at the deepest (0: a scalar)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        stack.extend((child, level) for child in children)
    return deepest


def loads(text: str) -> Any:
    """``json.loads(text)``, refusing NaN, Infinity, overflowing numbers and deep nesting.

    Raises ValueError (JsonRefused or json's own JSONDecodeError) or RecursionError.
    """
    document = _DECODER.decode(text)
    # Depth can only pass the limit with that many brackets: most documents skip the walk.
    if text.count("[") + text.count("{") > MAX_DEPTH and depth(document) > MAX_DEPTH:
        raise JsonRefused(f"nested deeper than {MAX_DEPTH} levels")
    return document


def unstorable_text(value: Any, path: str = "") -> tuple[str, str] | None:
    """Where (a dotted path from ``path``) and why a string or key in ``value`` cannot be
    stored: a NUL, or a lone surrogate (``"\\ud800"``), neither of which survives email,
    PostgreSQL or UTF-8. None when every string is plain Unicode text."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            texts = [item]
        elif isinstance(item, dict):
            texts = [key for key in item if isinstance(key, str)]
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            texts = []
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        else:
            continue
        for text in texts:
            if "\x00" in text:
                return where, "strings must not contain NUL characters"
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return where, "strings must be valid Unicode"
    return None
