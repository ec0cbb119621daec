"""API versioning: deprecating a route (reference "API Versioning", "Deprecation Policy").

Every relay route is served under ``/api`` and ``/v1`` (see daemon.api.app). A
route marked with :func:`deprecate` answers, success or error alike, with::

    Sunset: Sat, 31 Dec 2024 23:59:59 GMT
    Deprecation: true
    Link: <https://docs.example/migration>; rel="deprecation"

Mark a route where the routes are declared: ``deprecate(Route(...), sunset, link)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from starlette.datastructures import MutableHeaders
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class Deprecation:
    """When a deprecated route goes away and where its migration guide is."""

    sunset: datetime
    link: str

    def headers(self) -> dict[str, str]:
        sunset = format_datetime(self.sunset.astimezone(UTC), usegmt=True)
        return {
            "Sunset": sunset,
            "Deprecation": "true",
            "Link": f'<{self.link}>; rel="deprecation"',
        }


class _DeprecatedApp:
    def __init__(self, app: ASGIApp, deprecation: Deprecation) -> None:
        self.app = app
        self.deprecation = deprecation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extra = self.deprecation.headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name == "Link" and "link" in headers:  # keep pagination links too
                        headers["Link"] = headers["link"] + ", " + value
                    else:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def deprecate(route: Route, sunset: datetime, link: str) -> Route:
    """Mark ``route`` deprecated: its responses carry Sunset, Deprecation and Link headers."""
    if not isinstance(route.app, _DeprecatedApp):
        route.app = _DeprecatedApp(route.app, Deprecation(sunset, link))
    return route


def deprecation_of(route: Route) -> Deprecation | None:
    """The deprecation a route was marked with (for the OpenAPI document)."""
    app = route.app
    return app.deprecation if isinstance(app, _DeprecatedApp) else None
