"""Ids holding a "/" (or a "%") in a request path: routing on the path as the client encoded it.

uvicorn hands the application the path already percent-decoded (``scope["path"]``),
so an id sent with its slash encoded, as a client must send it, arrives as two
segments: ``GET /api/recipients/a%2Fb@example.com`` (a legal address) would be
routed as ``/api/recipients/a/b@example.com`` and match no route. Campaign ids
(from ``X-Campaign-ID`` or ``campaign_id``) may hold a slash too.

So before routing, :func:`route_on_encoded_path` rebuilds ``scope["path"]`` from
``scope["raw_path"]``: each segment decoded, with only "%" and "/" encoded again
(``%25``, ``%2F``). A path segment therefore never holds a decoded "/", and every
"%" in it starts one of those two escapes, so the ``id`` convertor (``{name:id}``
in a route) gives back the exact id by percent-decoding the segment. A path
without "%" (nearly every request) is left as it is.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import Scope

__all__ = ["IdConvertor", "route_on_encoded_path"]


def _segment(raw: str) -> str:
    """One raw path segment, decoded, with only "%" and "/" encoded again."""
    return unquote(raw).replace("%", "%25").replace("/", "%2F")


def route_on_encoded_path(scope: Scope) -> None:
    """Make ``scope["path"]`` keep each segment's encoded "/" (and "%") for routing."""
    raw = scope.get("raw_path")
    if not raw or b"%" not in raw:
        return
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return  # not what uvicorn passes on; route on the path as given
    text = text.split("?", 1)[0]
    root = scope.get("root_path", "")
    path = "/".join(_segment(part) for part in text.split("/"))
    # uvicorn's raw_path holds root_path, and so does its path: keep them alike.
    if root and not path.startswith(root):
        return
    scope["path"] = path


class IdConvertor(Convertor[str]):
    """A path segment that is an id: decoded exactly, "/" and "%" included."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unquote(value) if "%" in value else value

    def to_string(self, value: str) -> str:
        if not value:
            raise ValueError("an id in a path must not be empty")
        return value.replace("%", "%25").replace("/", "%2F")


register_url_convertor("id", IdConvertor())
