"""Credentials masked out of text that is shown or logged: a URL's password.

Pure. A database or provider URL carries its password either in the userinfo
(``postgresql+psycopg://user:pw@host/db``) or, as libpq also takes it, in the
query (``...?password=pw``, ``sslpassword=pw``); both are masked.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "********"
# Query parameters that hold a password (libpq's connection parameters among them).
SECRET_PARAMETERS = frozenset({"password", "sslpassword", "passwd", "pass", "secret", "token"})


def mask_url_password(value: str) -> str:
    """``value`` with any password in it masked; text that is not a URL is returned as is."""
    if "://" not in value or ("@" not in value and "?" not in value):
        return value
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    netloc = parts.netloc
    if password:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() in SECRET_PARAMETERS for name, _ in pairs):
            query = urlencode(
                [(n, MASK if n.lower() in SECRET_PARAMETERS else v) for n, v in pairs],
                safe="*",
            )
    if netloc == parts.netloc and query == parts.query:
        return value
    return urlunsplit(parts._replace(netloc=netloc, query=query))
