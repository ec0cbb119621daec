"""The OpenAPI document, a schemathesis run against a live relayd, and route deprecation."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import BaseSchema
from starlette.routing import Mount, Route

from daemon.api.versioning import deprecate
from daemon.server import Server
from tests.api.conftest import AUTH

EXAMPLES_PER_OPERATION = 15
# Server-Sent Events never end on their own; tests/api covers that route directly.
NOT_FUZZED = r"/stats/realtime$"


async def test_document_lists_every_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path, method in [
        ("/api/messages", "post"),
        ("/api/messages/{message_id}", "delete"),
        ("/api/admin/workspaces/{workspace_id}", "put"),
        ("/api/admin/keys", "post"),
        ("/api/rate-limit", "get"),
        ("/health", "get"),
    ]:
        assert method in paths[path], (path, method)
    app_paths = set()
    for route in client._transport.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Mount) and route.path == "/api":
            app_paths |= {"/api" + r.path for r in route.routes if isinstance(r, Route)}
    documented = {p for p in paths if p.startswith("/api")}
    assert len(app_paths) == len(documented)


def _serve(config: Any) -> Iterator[Server]:
    """A real relayd on its own event loop in a thread (schemathesis calls are blocking)."""
    loop = asyncio.new_event_loop()
    server = Server(config)
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())

    thread = threading.Thread(target=run, name="relayd-under-test")
    thread.start()
    try:
        ready.wait(60)
        if failure:
            raise failure[0]
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(60)
        loop.close()


@pytest.fixture
def live(make_config: Callable[..., Any], sqlite_url: str) -> Iterator[Server]:
    yield from _serve(make_config(sqlite_url))


def test_schemathesis_finds_no_server_error_or_schema_violation(live: Server) -> None:
    schema: BaseSchema = schemathesis.openapi.from_url(f"{live.base_url}/openapi.json")
    schema = schema.exclude(path_regex=NOT_FUZZED)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    failures: list[str] = []
    calls: list[int] = []
    operations = 0
    for result, mode in itertools.product(
        schema.get_all_operations(), (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ):
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            calls.append(
                case.call_and_validate(headers=AUTH, checks=checks, timeout=10).status_code
            )

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label} ({mode.value}): {str(exc)[:2000]}")
    assert operations >= 20
    assert len(calls) >= operations * 2  # the run really talked to the server
    assert failures == [], "\n\n".join(failures)


async def test_a_deprecated_route_sends_sunset_deprecation_and_link(
    client: httpx.AsyncClient,
) -> None:
    app = client._transport.app  # type: ignore[attr-defined]
    mount = next(r for r in app.routes if isinstance(r, Mount) and r.path == "/v1")
    route = next(r for r in mount.routes if isinstance(r, Route) and r.path == "/rate-limit")
    deprecate(route, datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), "https://docs.example/mig")

    wrong = {"Authorization": "Bearer wrong"}
    for response in (
        await client.get("/v1/rate-limit"),
        await client.get("/v1/rate-limit", headers=wrong),
    ):
        assert response.headers["Sunset"] == "Tue, 31 Dec 2024 23:59:59 GMT"
        assert response.headers["Deprecation"] == "true"
        assert response.headers["Link"] == '<https://docs.example/mig>; rel="deprecation"'
    current = await client.get("/api/rate-limit")
    assert "Deprecation" not in current.headers
    app.state.openapi = None
    document = (await client.get("/openapi.json")).json()
    assert "deprecated" not in document["paths"]["/api/rate-limit"]["get"]
