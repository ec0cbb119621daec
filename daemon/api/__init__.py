"""The HTTP API (Starlette): relay routes under /api and /v1, and /health."""

from daemon.api.app import create_app

__all__ = ["create_app"]
