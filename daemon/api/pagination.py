"""Pagination of list endpoints: limit/offset or page/per_page in, the body's
``pagination`` object and the headers of reference 6.4 out."""

from __future__ import annotations

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
        """X-Total-Count, X-Page-Count, X-Current-Page, X-Per-Page and Link (6.4).

        When ``offset`` is a multiple of ``limit`` the links name pages, as 6.4 shows
        (``page=2&per_page=50``). Otherwise the list is cut into pages at ``offset``:
        the links carry ``offset`` and ``limit`` so that next and last continue
        from this page and prev (and first) end where it starts, without a row seen
        twice or missed; the first page then holds the ``offset % limit`` rows before
        the others, and X-Current-Page and X-Page-Count count pages so cut.
        """
        size, offset = self.limit, self.offset
        head = offset % size  # rows in a first page shorter than the others
        current = -(-offset // size) + 1  # ceil: the short first page counts
        pages = max(1, (1 if head else 0) + -(-max(0, total - head) // size))
        headers = {
            "X-Total-Count": str(total),
            "X-Page-Count": str(pages),
            "X-Current-Page": str(current),
            "X-Per-Page": str(size),
        }
        kept = [(k, v) for k, v in request.query_params.multi_items() if k not in _PAGING_PARAMS]

        def link(params: list[tuple[str, int]], rel: str) -> str:
            query = urlencode([*kept, *((name, str(value)) for name, value in params)])
            return f'<{request.url.path}?{query}>; rel="{rel}"'

        def at(start: int, rows: int = size) -> list[tuple[str, int]]:
            if head:
                return [("offset", start), ("limit", rows)]
            return [("page", start // size + 1), ("per_page", size)]

        last = head + (total - 1 - head) // size * size if total > head else 0
        links = []
        if offset + size < total:
            links.append(link(at(offset + size), "next"))
        if offset > 0:
            before = max(0, offset - size)
            links.append(link(at(before, offset - before), "prev"))
            links.append(link(at(0, head or size), "first"))
        links.append(link(at(last, head if head and last == 0 else size), "last"))
        headers["Link"] = ", ".join(links)
        return headers
