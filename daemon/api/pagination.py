"""Pagination of list endpoints: limit/offset or page/per_page in, the body's
``pagination`` object and the headers of reference 6.4 out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request

from daemon.api.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
_PAGING_PARAMS = ("limit", "offset", "page", "per_page")


def query_int(query: QueryParams, name: str, minimum: int, maximum: int) -> int | None:
    """An integer query parameter within bounds, or None when absent."""
    text = query.get(name)
    if text is None:
        return None
    digits = text[1:] if text[:1] in ("-", "+") else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 12:
        raise ApiError("INVALID_REQUEST", f"{name} must be an integer", {"parameter": name})
    value = int(text)
    if not minimum <= value <= maximum:
        raise ApiError(
            "INVALID_REQUEST",
            f"{name} must be between {minimum} and {maximum}",
            {"parameter": name},
        )
    return value


@dataclass(frozen=True)
class Page:
    """Which slice of a list to return."""

    limit: int
    offset: int

    @classmethod
    def from_query(cls, query: QueryParams) -> Page:
        """Read limit/offset, or page/per_page as the headers of 6.4 name them (not both)."""
        limit = query_int(query, "limit", 1, MAX_LIMIT)
        offset = query_int(query, "offset", 0, 10**12)
        page = query_int(query, "page", 1, 10**9)
        per_page = query_int(query, "per_page", 1, MAX_LIMIT)
        if (page is not None or per_page is not None) and (limit is not None or offset is not None):
            raise ApiError(
                "INVALID_REQUEST",
                "use either limit/offset or page/per_page, not both",
                {"parameter": "page"},
            )
        if page is not None or per_page is not None:
            size = per_page or DEFAULT_LIMIT
            return cls(limit=size, offset=((page or 1) - 1) * size)
        return cls(limit=limit or DEFAULT_LIMIT, offset=offset or 0)

    def body(self, total: int) -> dict[str, int | bool]:
        """The ``pagination`` object of a list response."""
        return {
            "total": total,
            "limit": self.limit,
            "offset": self.offset,
            "has_more": self.offset + self.limit < total,
        }

    def headers(self, request: Request, total: int) -> dict[str, str]:
        """X-Total-Count, X-Page-Count, X-Current-Page, X-Per-Page and Link (6.4)."""
        pages = max(1, math.ceil(total / self.limit))
        current = self.offset // self.limit + 1
        headers = {
            "X-Total-Count": str(total),
            "X-Page-Count": str(pages),
            "X-Current-Page": str(current),
            "X-Per-Page": str(self.limit),
        }
        kept = [(k, v) for k, v in request.query_params.multi_items() if k not in _PAGING_PARAMS]

        def link(page: int, rel: str) -> str:
            query = urlencode([*kept, ("page", str(page)), ("per_page", str(self.limit))])
            return f'<{request.url.path}?{query}>; rel="{rel}"'

        links = []
        if self.offset + self.limit < total:
            links.append(link(current + 1, "next"))
        if current > 1:
            links.append(link(current - 1, "prev"))
            links.append(link(1, "first"))
        links.append(link(pages, "last"))
        headers["Link"] = ", ".join(links)
        return headers
